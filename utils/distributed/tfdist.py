"""The process-group interface (`group.ProcessGroup`) on tf.distribute collectives.

MultiWorkerMirroredStrategy starts this rank's gRPC server from TF_CONFIG (bootstrap.py) and
configures the collective executor; the collectives are then TensorFlow's own collective
ops (`collective_ops`: ring on CPU, NCCL on GPU), called from the same custom training loop
as Horovod's, inside or outside a tf.function; gradients go in packs of RNXT_TFDIST_PACK_MB.
Every rank must call them in the same order and trace its tf.functions alike (instance keys
are given out in call order). A dead or stuck peer: the waiting rank's watchdog
(RNXT_HOROVOD_TIMEOUT, shared with Horovod) prints one line and exits with status 1.
"""

import itertools
import os
import re
from typing import Callable, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import collective_ops

from utils.core.errors import UserError
from utils.distributed import bootstrap
from utils.distributed.group import ProcessGroup

_GRADIENT_GROUP, _HOST_GROUP = 101, 102  # group keys; the strategy's own start at 1
PACK_BYTES = int(float(os.environ.get("RNXT_TFDIST_PACK_MB", "4")) * 2**20)
_FAILURE = re.compile(
    r"Collective ops is aborted|[Cc]ollective|Socket closed|failed to connect|"
    r"Connection reset|UNAVAILABLE|Deadline Exceeded|peer"
)


def collective_failure(error: BaseException) -> Optional[str]:
    """The short cause of a collective that failed because a peer died or stopped, or None
    when `error` is something else.

    Args:
        error: what a collective (or a step holding collectives) raised.
    """
    if not isinstance(error, tf.errors.OpError):
        return None
    text = str(error)
    if not _FAILURE.search(text):
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    skip = ("Graph execution error", "Detected at node", "[[", "File ", "Additional GRPC")
    causes = [line for line in lines if not line.startswith(skip)] or [text]
    cause = causes[0]
    following = lines[lines.index(cause) + 1 :] if cause in lines else []
    if cause.endswith(":") and following:  # a list of tasks comes on the next line
        cause = f"{cause} {following[0]}"
    cause = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", cause)
    cause = re.sub(r"\s*\[Op:[^\]]*\].*$", "", cause)
    return cause[:200]


class _Tape:
    """A GradientTape whose gradients come out averaged over the ranks."""

    def __init__(self, tape: tf.GradientTape, average: Callable):
        self._tape, self._average = tape, average

    def gradient(self, target, sources, **kwargs):
        grads = self._tape.gradient(target, sources, **kwargs)
        if tf.nest.is_nested(sources):
            return tf.nest.pack_sequence_as(sources, self._average(tf.nest.flatten(grads)))
        return self._average([grads])[0]

    def __getattr__(self, name):
        return getattr(self._tape, name)


class TfDistProcesses(ProcessGroup):
    """tf.distribute collectives: gradients averaged, variables broadcast from rank 0."""

    engine = "TensorFlow"

    def __init__(self, before_start: Optional[Callable[["TfDistProcesses"], None]] = None):
        """Joins the job: TF_CONFIG, then TensorFlow's server and collective executor.

        Args:
            before_start: called with this object (rank, size, local_rank known) before
                TensorFlow's runtime starts: the place to pick this rank's GPU.
        """
        cluster = bootstrap.discover()
        super().__init__(cluster.rank, cluster.size, cluster.local_rank, cluster.local_size)
        self.workers = cluster.workers
        if before_start is not None:
            before_start(self)
            self.devices_ready = True
        gpu = bool(tf.config.get_visible_devices("GPU"))
        kind = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=kind.NCCL if gpu else kind.RING
        )
        cluster.release()  # TensorFlow's server binds the port next (no SO_REUSEPORT)
        try:
            with self.watch("the start of the other processes' servers"):
                self._strategy = tf.distribute.MultiWorkerMirroredStrategy(
                    communication_options=options
                )
        except (ValueError, RuntimeError, tf.errors.OpError) as error:
            raise UserError(
                f"tf.distribute could not start: {str(error).splitlines()[0]}"
            ) from None
        device = "GPU:0" if gpu else "CPU:0"
        self._device = f"/job:worker/replica:0/task:{self.rank}/device:{device}"
        self._host = f"/job:worker/replica:0/task:{self.rank}/device:CPU:0"
        self._hint = "nccl" if gpu else "ring"
        self._keys = itertools.count(1)

    # -- collectives (every rank calls them in the same order) --------------------------

    def _all_reduce(self, tensor, op="Add", host=False):
        final = "Div" if op == "Mean" else "Id"
        with tf.device(self._host if host else self._device):
            return collective_ops.all_reduce_v2(
                tensor,
                group_size=self.size,
                group_key=_HOST_GROUP if host else _GRADIENT_GROUP,
                instance_key=next(self._keys),
                merge_op="Add",
                final_op=final,
                communication_hint="ring" if host else self._hint,
            )

    def _fused(self, tensors: Sequence, op: str, host=False) -> List:
        """All-reduces `tensors` in packs: the tensors of one dtype, in order, flattened and
        concatenated up to PACK_BYTES (a larger tensor is a pack of its own). On GPU the
        packs are chained so every rank launches them in one order (NCCL needs it); on CPU
        they run concurrently (the ring's transfers overlap)."""
        out: List = [None] * len(tensors)
        packs: list = []
        open_packs: dict = {}  # dtype -> (indices, bytes) of the pack being filled
        for index, tensor in enumerate(tensors):
            if tensor is None:
                continue
            dtype = tf.as_dtype(tensor.dtype)
            nbytes = int(np.prod(tensor.shape)) * dtype.size
            indices, size = open_packs.get(dtype, (None, 0))
            if indices is None or size + nbytes > PACK_BYTES:
                indices, size = [], 0
                packs.append(indices)
            indices.append(index)
            open_packs[dtype] = (indices, size + nbytes)
        previous: list = []
        chain = self._hint == "nccl" and not host
        for indices in packs:
            parts = [tf.convert_to_tensor(tensors[i]) for i in indices]
            flat = tf.concat([tf.reshape(part, [-1]) for part in parts], 0)
            with tf.control_dependencies(previous):
                reduced = self._all_reduce(flat, op, host)
            previous = [reduced] if chain else []
            sizes = [int(np.prod(part.shape)) for part in parts]
            for i, part, piece in zip(indices, parts, tf.split(reduced, sizes)):
                out[i] = tf.reshape(piece, tf.shape(part))
        return out

    def gradient_tape(self, tape: tf.GradientTape):
        """Averages gradients over ranks (still loss-scaled), inside the train step.

        Args:
            tape: the step's GradientTape.
        """
        return _Tape(tape, self.average_gradients)

    def average_gradients(self, grads: Iterable) -> List:
        """The ranks' mean of each gradient (None stays None).

        Args:
            grads: this rank's gradients.
        """
        return self._fused(list(grads), "Mean")

    def broadcast_variables(self, variables: Iterable[tf.Variable]) -> None:
        """Every rank's variables take rank 0's values.

        Args:
            variables: the same variables, in the same order, on every rank.
        """
        variables = list(variables)
        if not variables:
            return
        with self.watch("broadcast of the initial variables from rank 0"):
            mine = [v.read_value() if self.is_chief else tf.zeros_like(v) for v in variables]
            # On the host ring, whatever the dtype (step counters are int64), once per run.
            for variable, value in zip(variables, self._fused(mine, "Add", host=True)):
                variable.assign(value)

    def sum(self, value) -> np.ndarray:
        """The sum over ranks of `value` (a number or array).

        Args:
            value: this rank's value.
        """
        with self.watch("a sum over ranks"):
            return self._all_reduce(tf.convert_to_tensor(value), "Add", host=True).numpy()

    def mean(self, values) -> np.ndarray:
        """The mean over ranks of `values`, as float64.

        Args:
            values: this rank's numbers.
        """
        with self.watch("an average over ranks"):
            tensor = tf.constant(np.asarray(values, np.float64))
            return self._all_reduce(tensor, "Mean", host=True).numpy()

    def gather(self, value, name: str = "gather") -> np.ndarray:
        """Every rank's `value` (a number or 1-D array): an array [size, ...].

        Args:
            value: this rank's value (the same shape on every rank).
            name: what is gathered, for the watchdog's message.
        """
        value = np.asarray(value)
        with self.watch(f"a gather over ranks ({name})"), tf.device(self._host):
            flat = collective_ops.all_gather_v2(
                tf.constant(value.reshape(1, -1)),
                group_size=self.size,
                group_key=_HOST_GROUP,
                instance_key=next(self._keys),
                communication_hint="ring",
            )
        return flat.numpy().reshape((self.size, *value.shape))

    def barrier(self) -> None:
        with self.watch("a barrier"):
            self._all_reduce(tf.constant(0, tf.int32), "Add", host=True).numpy()

    def _peer_failure(self, error):
        return collective_failure(error)
