"""Writing files so that a reader sees the old content or the new, never half of either.

`atomic_write` writes a temporary file beside the target and renames it into place; on
any failure (a full disk, Ctrl-C) the temporary file is removed and the target untouched.
New files get the permissions the user's umask allows (not mkstemp's private 0600), so a
server running as another user can read what this program writes.
"""

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator


def umask() -> int:
    """The process umask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, rare)
    os.umask(current)
    return current


def default_mode(directory: bool = False) -> int:
    """Permissions of a new file (or directory) under the current umask."""
    return (0o777 if directory else 0o666) & ~umask()


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator:
    """Open a temporary file beside `path` for writing; rename it to `path` on success.

    Args:
      path: the file to create or replace.
      mode: "w" for text or "wb" for bytes.
      **open_kwargs: passed to `open` (encoding, newline).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str, data: Any) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_json_object(path: str) -> dict | None:
    """The JSON object stored at `path`, or None when there is no such file.

    Raises:
      ValueError: the file is not UTF-8 JSON holding an object (the message says which).
      OSError: the file exists but cannot be read.
    """
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except UnicodeDecodeError:
            raise ValueError("not UTF-8 text") from None
        except ValueError as error:
            raise ValueError(str(error)[:80]) from None
        except RecursionError:
            raise ValueError("nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data
