"""Output locations checked before the first step, and the lock on --model_dir.

`prepare(args, is_chief)` checks that every location the run writes (--results_dir, the
log file, --model_dir when training, --export_dir) is a directory this process can write,
removes what an earlier killed save or export left (only names this program makes), and
takes the run's lock on --model_dir: an advisory `fcntl.flock` on `LOCK_FILE`, held by
rank 0 until the run ends. The kernel releases a flock when its process dies, so a lock
file that still names a process (pid and host) when the lock is free is a stale one.
"""

import atexit
import fcntl
import os
import re
import shutil
import socket
from typing import List, Optional

from utils.core import fileio
from utils.core.errors import UserError
from utils.modes import MODES

LOCK_FILE = ".main_py.lock"
CKPT_TEMP = re.compile(r"^ckpt-\d+_temp(_[0-9a-f]+)?$")  # TF's staging of `ckpt-N`
EXPORT_TEMP = re.compile(r"^\.export-tmp-(?P<host>.+)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _writable_dir(path: str, flag: str) -> None:
    """Create `path` if needed and prove it writable with a probe file; else one line."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a directory: pass a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as error:
        raise UserError(
            f"{flag} {path} is not writable ({error.strerror}): pass a writable directory"
        ) from None


def check_writable(args) -> None:
    """Every output location of this run is a writable directory (one line if not).

    Args:
      args: the parsed command line.
    """
    _writable_dir(args.results_dir, "--results_dir")
    log_dir = os.path.dirname(os.path.join(args.results_dir, args.log_filename))
    _writable_dir(log_dir, "--log_filename's folder")
    if MODES[args.mode].trains and not MODES[args.mode].benchmark:
        _writable_dir(args.model_dir, "--model_dir")
    if args.export_dir:
        from runtime.export import next_version  # refuses a file or a foreign folder

        next_version(os.path.abspath(args.export_dir))
        _writable_dir(args.export_dir, "--export_dir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(model_dir: Optional[str], export_dir: Optional[str]) -> List[str]:
    """Remove TensorFlow's `ckpt-N_temp` staging folders in `model_dir` (call with the
    lock held) and export staging folders in `export_dir` of dead processes on this host.

    Args:
      model_dir: the checkpoint folder, or None.
      export_dir: the export folder, or None.
    Returns:
      the paths removed.
    """
    removed = []
    if model_dir and os.path.isdir(model_dir):
        for name in os.listdir(model_dir):
            if CKPT_TEMP.match(name):
                removed.append(os.path.join(model_dir, name))
    if export_dir and os.path.isdir(export_dir):
        for name in os.listdir(export_dir):
            match = EXPORT_TEMP.match(name)
            if match and match["host"] == socket.gethostname() and not _alive(int(match["pid"])):
                removed.append(os.path.join(export_dir, name))
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
    return removed


class ModelDirLock:
    """The run's exclusive advisory lock on `model_dir` (see the module docstring)."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.stale = None  # "pid N on host H" of a dead holder whose lock was taken over
        flags = os.O_RDWR | os.O_CREAT
        self._fd = os.open(self.path, flags, fileio.default_mode())
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder() or "another process"
            os.close(self._fd)
            raise UserError(
                f"--model_dir {model_dir} is in use by another run ({holder}): wait for it "
                "to end or pass another --model_dir"
            ) from None
        self.stale = self._holder()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)

    def _holder(self) -> str:
        return os.pread(self._fd, 200, 0).decode("utf-8", "replace").strip()

    def release(self) -> None:
        """Clear the holder and release the lock (the file stays: removing it would race)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def prepare(args, is_chief: bool) -> Optional[ModelDirLock]:
    """Rank 0: check the outputs, lock --model_dir when training, clean stale temps.

    Args:
      args: the parsed command line.
      is_chief: whether this process is rank 0 (the only one that writes).
    Returns:
      the lock to release at the end of the run, or None.
    """
    if not is_chief:
        return None
    check_writable(args)
    lock = None
    mode = MODES[args.mode]
    if mode.trains and not mode.benchmark:
        lock = ModelDirLock(args.model_dir)
        atexit.register(lock.release)
        if lock.stale:
            print(
                f"taking over the lock on {args.model_dir} from a run that ended without "
                f"releasing it ({lock.stale})",
                flush=True,
            )
    for path in clean_stale_temps(args.model_dir if lock else None, args.export_dir):
        print(f"removed {path}, left by an interrupted save", flush=True)
    return lock
