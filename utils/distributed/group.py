"""The process-group interface the runtime calls, and its single-process implementation.

Collectives must be called by every rank in the same order. Errors follow three rules:
- `agree_on_errors()` (a phase) and `check(error)`: ranks that may fail differently meet
  at the end of the phase; if any failed, the lowest failing rank prints its error and
  every rank exits with status 1.
- `fail(error)`: every rank has the same error: rank 0 prints it, all exit with status 1.
- `failures_as_errors()`: a collective that fails because another process died becomes
  one line and status 1 (each engine knows its own failure messages).
"""

import contextlib
import sys
import traceback

import numpy as np

from utils.core.errors import UserError
from utils.distributed.watchdog import EXIT_FAILED, Watchdog, collective_timeout, error_line


class SingleProcess:
    """One process: collectives are identities and errors simply propagate."""

    size = 1
    rank = 0
    local_rank = 0
    local_size = 1
    is_chief = True
    devices_ready = False  # True once the engine picked this process's devices

    def gradient_tape(self, tape):
        """`tape`, wrapped so its gradients come out averaged over ranks.

        Args:
          tape: the step's `tf.GradientTape`.
        """
        return tape

    def average_gradients(self, grads: list) -> list:
        """Gradients averaged over ranks (for steps that do not use `gradient_tape`).

        Args:
          grads: this rank's gradients, still loss-scaled under --amp.
        """
        return grads

    def broadcast_variables(self, variables: list) -> None:
        """Give every rank rank 0's values of `variables` (model, optimizer state)."""
        del variables

    def sum(self, value) -> np.ndarray:
        """`value` (a number or array) summed over ranks."""
        return np.asarray(value)

    def mean(self, values) -> np.ndarray:
        """`values` averaged over ranks, in float64."""
        return np.asarray(values, np.float64)

    def gather(self, value, name: str = "gather") -> np.ndarray:
        """Every rank's `value` (a number or 1-D array): an array [size, ...].

        Args:
          value: this rank's value; the same shape on every rank.
          name: which gather this is (one name per kind of value).
        """
        del name
        return np.asarray(value)[None]

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def check(self, error: Exception = None) -> None:
        """Collective: if any rank passes an error, every rank ends (module docstring)."""
        if error is not None:
            raise error

    def fail(self, error: Exception) -> None:
        """Every rank has this same error: rank 0 reports it, all ranks end."""
        raise error

    def agree_on_errors(self):
        """A phase whose errors may differ between ranks; all meet at its end."""
        return contextlib.nullcontext()

    def failures_as_errors(self):
        """A collective failing because another rank died becomes one line, exit 1."""
        return contextlib.nullcontext()

    def watch(self, what: str, factor: float = 1):
        """Arm the watchdog around a wait: `what` names it in the message, `factor`
        multiplies RNXT_HOROVOD_TIMEOUT (the compiling first step gets more)."""
        del what, factor
        return contextlib.nullcontext()


class ProcessGroup(SingleProcess):
    """Several processes. An engine sets size/rank/local_rank/local_size and implements
    the collectives (gradient_tape, average_gradients, broadcast_variables, sum, mean,
    gather, barrier) and `_peer_failure`; the error agreement is shared."""

    def __init__(self, rank: int, size: int, local_rank: int, local_size: int):
        self.rank, self.size = rank, size
        self.local_rank, self.local_size = local_rank, local_size
        self.is_chief = rank == 0
        self._watchdog = Watchdog(collective_timeout(), rank)

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
        except Exception as error:
            detail = self._peer_failure(error)
            if detail is None:
                raise
            raise UserError(
                f"rank {self.rank}: another process of this job failed or was stopped, so "
                f"this one stops too ({self.engine} says: {detail}); that process's "
                "messages say why"
            ) from None

    def watch(self, what, factor=1):
        """Arms the watchdog for `factor` x RNXT_HOROVOD_TIMEOUT around a wait."""
        return self._watchdog.watch(what, factor)

    def _peer_failure(self, error):
        """The cause when `error` is a collective failing for a peer's sake, else None."""
        raise NotImplementedError

    def _report(self, error):
        if isinstance(error, UserError):
            prefix = f"rank {self.rank}: " if self.rank else ""
            print(error_line(f"{prefix}{error}"), file=sys.stderr, flush=True)
        else:  # a bug: the whole traceback, once
            print(f"rank {self.rank}:", file=sys.stderr)
            traceback.print_exception(type(error), error, error.__traceback__)
            sys.stderr.flush()

    def _exit_together(self):
        # Meet once more so no rank exits (and makes the launcher kill the job) before the
        # reporting rank has printed.
        self.barrier()
        raise SystemExit(EXIT_FAILED)
