"""Signals outside the training loop (set-up, restore, evaluation, export): one line.

Training handles SIGTERM, SIGUSR1 and SIGINT itself (`runtime.training.StopRequest`: it
saves a checkpoint, then stops). Anywhere else there is nothing to save, so a SIGTERM or
SIGINT prints one line and exits at once with 128 + the signal number (143, 130); an
export stopped this way leaves only its hidden staging folder, removed on the next start.
"""

import os
import signal
import sys

HANDLED = (signal.SIGTERM, signal.SIGINT)


def _exit_now(signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    print(
        f"main.py: stopped by {name} outside training; checkpoints and exports already "
        "written are complete, an unfinished export is not left in place",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(128 + signum)


def install() -> None:
    """Make SIGTERM and SIGINT end the process with one line (main thread only)."""
    for sig in HANDLED:
        signal.signal(sig, _exit_now)
