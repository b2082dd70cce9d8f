"""One interface for a single process and for Horovod data parallelism.

`init()` returns `SingleProcess` unless the process was started by a launcher with more
than one process (mpiexec, horovodrun), so a plain `python main.py` never pays for
Horovod's start-up. The runtime calls only the methods below, never Horovod itself.
"""

import os

import tensorflow as tf

# Environment variables by which launchers announce the world size.
_WORLD_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMI_SIZE", "PMIX_SIZE")


def launched_world_size():
    for name in _WORLD_SIZE_VARS:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


class SingleProcess:
    size = 1
    rank = 0
    local_rank = 0
    is_chief = True

    def gradient_tape(self, tape):
        return tape

    def broadcast_variables(self, variables):
        del variables

    def sum(self, value):
        return value

    def any(self, flag):
        return bool(flag)

    def barrier(self):
        pass


class HorovodProcesses:
    """Horovod: gradients averaged, variables broadcast from rank 0, sums across ranks."""

    def __init__(self):
        import horovod.tensorflow as hvd

        hvd.init()
        self._hvd = hvd
        self.size = hvd.size()
        self.rank = hvd.rank()
        self.local_rank = hvd.local_rank()
        self.is_chief = self.rank == 0

    def gradient_tape(self, tape):
        return self._hvd.DistributedGradientTape(tape)

    def broadcast_variables(self, variables):
        self._hvd.broadcast_variables(variables, root_rank=0)

    def sum(self, value):
        return self._hvd.allreduce(value, op=self._hvd.Sum)

    def any(self, flag):
        total = self._hvd.allreduce(tf.constant(int(bool(flag)), tf.int32), op=self._hvd.Sum)
        return int(total) > 0

    def barrier(self):
        self._hvd.allreduce(tf.constant(0), op=self._hvd.Sum)


def init():
    if launched_world_size() > 1:
        return HorovodProcesses()
    return SingleProcess()
