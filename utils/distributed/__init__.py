"""Data parallelism behind one interface: one process, or several under a launcher.

`init()` returns a `SingleProcess` unless a launcher (mpiexec, horovodrun, srun) started
more than one process, so a plain `python main.py` never imports an engine. The runtime
calls only the methods of `group.SingleProcess`; `group.ProcessGroup` holds the error
agreement every engine shares; `horovod.HorovodProcesses` (Horovod) and
`tfdist.TfDistProcesses` (tf.distribute collectives, `bootstrap` finds the peers) are
the engines.
"""

from utils.distributed import bootstrap
from utils.distributed.group import ProcessGroup, SingleProcess
from utils.distributed.launcher import launched_world_size
from utils.distributed.watchdog import FIRST_STEP_FACTOR, TIMEOUT_VAR

__all__ = ["FIRST_STEP_FACTOR", "TIMEOUT_VAR", "ProcessGroup", "SingleProcess", "init"]

_instance = None


def init(before_start=None):
    """The process group of this run, created once per process: Horovod where it is
    installed, else tf.distribute; RNXT_DIST_BACKEND=horovod|tfdist forces one.

    Args:
      before_start: called with the group before TensorFlow's runtime starts (the
        tf.distribute engine starts it): the place to pick this process's GPU.
    """
    global _instance
    if _instance is None:
        if launched_world_size() <= 1:
            _instance = SingleProcess()
        elif bootstrap.choose_backend() == "horovod":
            from utils.distributed.horovod import HorovodProcesses

            _instance = HorovodProcesses()
        else:
            from utils.distributed.tfdist import TfDistProcesses

            _instance = TfDistProcesses(before_start=before_start)
    return _instance
