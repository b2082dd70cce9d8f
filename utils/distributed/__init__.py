"""Data parallelism behind one interface: one process, or several under a launcher.

`init()` returns a `SingleProcess` unless a launcher (mpiexec, horovodrun, srun) started
more than one process, so a plain `python main.py` never imports an engine. The runtime
calls only the methods of `group.SingleProcess`; `group.ProcessGroup` holds the error
agreement every engine shares, `horovod.HorovodProcesses` is the Horovod engine.
"""

from utils.distributed.group import ProcessGroup, SingleProcess
from utils.distributed.launcher import launched_world_size
from utils.distributed.watchdog import FIRST_STEP_FACTOR, TIMEOUT_VAR

__all__ = ["FIRST_STEP_FACTOR", "TIMEOUT_VAR", "ProcessGroup", "SingleProcess", "init"]

_instance = None


def init():
    """The process group of this run, created once per process."""
    global _instance
    if _instance is None:
        if launched_world_size() > 1:
            from utils.distributed.horovod import HorovodProcesses

            _instance = HorovodProcesses()
        else:
            _instance = SingleProcess()
    return _instance
