"""One interface for a single process and for Horovod data parallelism.

`init()` returns `SingleProcess` unless a launcher (mpiexec, horovodrun) started more than
one process, so a plain `python main.py` never imports Horovod. Horovod is initialised once
per process. The runtime calls only the methods below, never Horovod itself.

Collectives must be called by every rank in the same order. Errors follow three rules:
- `agree_on_errors()` (a phase) and `check(error)`: ranks that may fail differently (a data
  shard only one rank reads, a checkpoint only rank 0 restores) meet at the end of the
  phase; if any failed, the lowest failing rank prints its error (one `main.py: error:`
  line, or the traceback of a bug), and every rank exits with status 1.
- `fail(error)`: every rank has the same error (computed from shared values): rank 0
  prints it, all exit with status 1.
- `failures_as_errors()`: a collective that fails because another process died or failed
  outside those points becomes one line and status 1 (see below).

What Horovod 0.28.1 does when a peer fails (measured here, CPU, 2 processes):
- A rank raises and exits: Horovod shuts down everywhere; the others' next collective
  fails at once with "Horovod has been shut down" (mpiexec and horovodrun).
- A rank is killed (SIGKILL, OOM killer): mpiexec aborts the whole job at once (status 137);
  under horovodrun (Gloo) the others' collectives fail within a second ("Connection reset
  by peer"), and horovodrun then terminates them.
- A rank freezes (SIGSTOP, a dead node): with Gloo the others fail after
  HOROVOD_GLOO_TIMEOUT_SECONDS (default 30); with MPI they wait forever. A rank that hangs
  with its Horovod thread alive (a stuck input pipeline) makes the others wait forever
  under both (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS ends that under MPI only).
So every collective wait and every training step runs under a watchdog: a rank that waits
longer than RNXT_HOROVOD_TIMEOUT seconds (default 1800; 0 turns it off; the first training
step, which compiles, gets `FIRST_STEP_FACTOR` times as long) for the others prints one
line and exits with status 1, and the launcher then ends the job.
"""

import contextlib
import os
import re
import sys
import threading
import time
import traceback

import numpy as np
import tensorflow as tf

from utils.errors import UserError
from utils.launcher import launched_world_size

TIMEOUT_VAR = "RNXT_HOROVOD_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0
FIRST_STEP_FACTOR = 10
EXIT_FAILED = 1


def collective_timeout():
    """Seconds a rank waits for the others before it gives up (0: forever)."""
    value = os.environ.get(TIMEOUT_VAR, "")
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(
            f"{TIMEOUT_VAR}={value!r} is not a number of seconds (0 waits forever)"
        ) from None
    if seconds < 0:
        raise UserError(f"{TIMEOUT_VAR} must be 0 (wait forever) or positive, got {value}")
    return seconds


def _error_line(error):
    return f"main.py: error: {error}"


def horovod_failure(error):
    """The cause of a failed Horovod collective (a peer gone, Horovod shut down), or None
    when `error` did not come from a Horovod op."""
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


class SingleProcess:
    """One process: collectives are identities and errors simply propagate."""

    size = 1
    rank = 0
    local_rank = 0
    local_size = 1
    is_chief = True

    def gradient_tape(self, tape):
        return tape

    def average_gradients(self, grads):
        return grads

    def broadcast_variables(self, variables):
        del variables

    def sum(self, value):
        return np.asarray(value)

    def mean(self, values):
        return np.asarray(values, np.float64)

    def gather(self, value, name="gather"):
        """Every rank's `value` (a number or 1-D array): an array [size, ...]."""
        del name
        return np.asarray(value)[None]

    def any(self, flag):
        return bool(flag)

    def barrier(self):
        pass

    def check(self, error=None):
        if error is not None:
            raise error

    def fail(self, error):
        raise error

    def agree_on_errors(self):
        return contextlib.nullcontext()

    def failures_as_errors(self):
        return contextlib.nullcontext()

    def watch(self, what, factor=1):
        del what, factor
        return contextlib.nullcontext()


class _Watchdog:
    """Ends the process with one line when a watched wait lasts longer than `timeout`."""

    def __init__(self, timeout, rank):
        self.timeout = timeout
        self.rank = rank
        self._cond = threading.Condition()
        self._deadline = None
        self._what = None
        self._limit = timeout
        if timeout > 0:
            threading.Thread(target=self._run, name="rnxt-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def watch(self, what, factor=1):
        if self.timeout <= 0 or self._deadline is not None:  # off, or already watched
            yield
            return
        with self._cond:
            self._limit = factor * self.timeout
            self._deadline, self._what = time.monotonic() + self._limit, what
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = self._what = None

    def _run(self):
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                print(
                    _error_line(
                        f"rank {self.rank}: waited more than {self._limit:g} s for the other "
                        f"processes ({self._what}); one of them died or hangs. "
                        f"{TIMEOUT_VAR} sets this limit in seconds (0: wait forever)"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_FAILED)


class HorovodProcesses:
    """Horovod: gradients averaged, variables broadcast from rank 0, sums across ranks."""

    def __init__(self):
        timeout = collective_timeout()
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
        self.size = hvd.size()
        self.rank = hvd.rank()
        self.local_rank = hvd.local_rank()
        self.local_size = hvd.local_size()
        self.is_chief = self.rank == 0
        self._watchdog = _Watchdog(timeout, self.rank)

    # -- collectives (every rank calls them in the same order) --------------------------

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

    def any(self, flag):
        return bool(self.gather(int(bool(flag)), name="any").any())

    def barrier(self):
        with self.watch("a barrier"):
            self._hvd.allreduce(tf.constant(0), op=self._hvd.Sum, name="rnxt.barrier")

    # -- errors ---------------------------------------------------------------------------

    def check(self, error=None):
        """Collective: if any rank passes an error, all ranks end (see module docstring)."""
        failed = np.flatnonzero(self.gather(int(error is not None), name="errors"))
        if not failed.size:
            return
        if self.rank == failed[0]:
            self._report(error)
        self._exit_together()

    def fail(self, error):
        """Every rank has this same error: rank 0 reports it, all ranks end."""
        if self.is_chief:
            self._report(error)
        self._exit_together()

    @contextlib.contextmanager
    def agree_on_errors(self):
        """A phase whose errors may differ between ranks; all meet at its end."""
        error = None
        try:
            yield
        except Exception as caught:  # reported by check()
            error = caught
        self.check(error)

    @contextlib.contextmanager
    def failures_as_errors(self):
        """A collective failed because another process died or failed: one line, exit 1."""
        try:
            yield
        except tf.errors.OpError as error:
            detail = horovod_failure(error)
            if detail is None:
                raise
            raise UserError(
                f"rank {self.rank}: another process of this job failed or was stopped, so "
                f"this one stops too (Horovod says: {detail}); that process's messages say why"
            ) from None

    def watch(self, what, factor=1):
        """Arms the watchdog for `factor` x RNXT_HOROVOD_TIMEOUT around a wait."""
        return self._watchdog.watch(what, factor)

    def _report(self, error):
        if isinstance(error, UserError):
            prefix = f"rank {self.rank}: " if self.rank else ""
            print(_error_line(f"{prefix}{error}"), file=sys.stderr, flush=True)
        else:  # a bug: the whole traceback, once
            print(f"rank {self.rank}:", file=sys.stderr)
            traceback.print_exception(type(error), error, error.__traceback__)
            sys.stderr.flush()

    def _exit_together(self):
        # Meet once more so no rank exits (and makes the launcher kill the job) before the
        # reporting rank has printed.
        self.barrier()
        raise SystemExit(EXIT_FAILED)


_instance = None


def init():
    """The process group of this run, created once per process."""
    global _instance
    if _instance is None:
        _instance = HorovodProcesses() if launched_world_size() > 1 else SingleProcess()
    return _instance
