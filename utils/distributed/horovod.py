"""The Horovod engine: gradients averaged, variables broadcast from rank 0, sums, gathers.

What Horovod 0.28.1 does when a peer fails (measured, CPU, 2 processes) is in
docs/design.md ("Processes"); in short, a dead peer fails the next collective at once,
a frozen one may make the others wait forever, hence the watchdog.
"""

import os
import re

import numpy as np
import tensorflow as tf

from utils.core.errors import UserError
from utils.distributed.group import ProcessGroup
from utils.distributed.launcher import launched_world_size


def horovod_failure(error):
    """The cause of a failed Horovod collective (a peer gone, Horovod shut down), or None
    when `error` did not come from a Horovod op."""
    if not isinstance(error, tf.errors.OpError):
        return None
    text = str(error)
    if not re.search(r"(node |__wrapped__)\S*Horovod", text):
        return None
    skip = ("Graph execution error", "Detected at node", "[[")
    lines = [line.strip() for line in text.splitlines() if line[:1] not in ("", " ", "\t")]
    causes = [line for line in lines if not line.startswith(skip)] or lines or [text]
    cause = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", causes[-1])
    cause = re.sub(r"^\[[^\]]*\]\s*", "", cause)  # Gloo's [source:line] prefix
    cause = re.sub(r"\s*\[Op:[^\]]*\].*$", "", cause)
    return cause.split(". ")[0][:200]


class HorovodProcesses(ProcessGroup):
    """Horovod over MPI or Gloo (NCCL on GPUs)."""

    engine = "Horovod"

    def __init__(self):
        if not tf.config.list_physical_devices("GPU"):
            # CPU-only: TensorFlow already keeps every core busy, so let Open MPI's waits
            # yield the core instead of spinning (here a rank computed about 3x faster while
            # its peer waited in a collective). Read by MPI_Init; the environment wins.
            os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        try:
            import horovod.tensorflow as hvd
        except ImportError as error:
            raise UserError(
                f"this run was started as {launched_world_size()} processes, but Horovod "
                f"cannot be imported ({error}); install horovod or run one process"
            ) from None
        try:
            if not hvd.is_initialized():
                hvd.init()
        except Exception as error:  # any start-up failure is one line
            raise UserError(f"Horovod could not start: {str(error).splitlines()[0]}") from None
        self._hvd = hvd
        super().__init__(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size())

    def gradient_tape(self, tape):
        """Averages gradients over ranks (Horovod's default op), inside the train step."""
        return self._hvd.DistributedGradientTape(tape)

    def average_gradients(self, grads):
        """Averages gradients computed without `gradient_tape` (the --xla step)."""
        return self._hvd.grouped_allreduce(list(grads), op=self._hvd.Average)

    def broadcast_variables(self, variables):
        with self.watch("broadcast of the initial variables from rank 0"):
            self._hvd.broadcast_variables(list(variables), root_rank=0)

    def sum(self, value):
        with self.watch("a sum over ranks"):
            tensor = tf.convert_to_tensor(value)
            return self._hvd.allreduce(tensor, op=self._hvd.Sum, name="rnxt.sum").numpy()

    def mean(self, values):
        with self.watch("an average over ranks"):
            tensor = tf.constant(np.asarray(values, np.float64))
            return self._hvd.allreduce(tensor, op=self._hvd.Average, name="rnxt.mean").numpy()

    def gather(self, value, name="gather"):
        """`name` tells Horovod which gather this is; use one name per kind of value."""
        value = np.asarray(value)
        with self.watch(f"a gather over ranks ({name})"):
            flat = self._hvd.allgather(tf.constant(value.reshape(1, -1)), name=f"rnxt.{name}")
        return flat.numpy().reshape((self.size, *value.shape))

    def barrier(self):
        with self.watch("a barrier"):
            self._hvd.allreduce(tf.constant(0), op=self._hvd.Sum, name="rnxt.barrier")

    def _peer_failure(self, error):
        return horovod_failure(error)
