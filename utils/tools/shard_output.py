"""Where the converter's shards go: a staging folder, then a swap with the old set.

The new shards are written into STAGING inside --output_dir. Only when all are complete
do the old split files move into BACKUP, the new ones move in, and the backup is deleted,
so an interrupted run (Ctrl-C, a full disk, kill -9) never leaves a partial set in place.
"""

import os
import shutil
import tempfile

from utils.core.errors import UserError
from utils.data import schema

STAGING = ".build_tfrecords-staging"  # in --output_dir: the new shards until all are written
BACKUP = ".build_tfrecords-backup"  # the replaced shards, while the new ones move in


def make_output_dir(output_dir: str) -> None:
    """Create `output_dir` if needed; UserError if it is a file or not writable.

    Args:
      output_dir: --output_dir.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir!r} is a file, not a directory")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        raise UserError(f"--output_dir {output_dir!r}: cannot write there ({e.strerror})") from None


def check_output(output_dir: str, split: str, overwrite: bool) -> None:
    """UserError if `split` files exist without `overwrite`, or a backup is left over.

    Args:
      output_dir: --output_dir. split: train or validation. overwrite: --overwrite.
    """
    backup = os.path.join(output_dir, BACKUP)
    if os.path.isdir(backup) and os.listdir(backup):
        raise UserError(
            f"{backup!r} holds the files an interrupted conversion replaced; move them back "
            "into --output_dir (or delete that folder) and run again"
        )
    for name in os.listdir(output_dir):
        if name.startswith(f".{split}-") and ".tmp" in name:
            os.unlink(os.path.join(output_dir, name))  # left by an older interrupted run
        elif name.startswith(f"{split}-") and not overwrite:
            raise UserError(
                f"--output_dir {output_dir!r} already has {split}-* files; "
                "pass --overwrite to replace them"
            )


def fresh_dir(path: str) -> str:
    """An empty directory at `path` (what an interrupted run left there is removed).

    Args:
      path: the directory.
    """
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def swap_in(output_dir: str, staging: str, splits: list) -> None:
    """Replace the old `splits` files of `output_dir` by the complete new set in `staging`.

    The old files move into a backup folder first and are deleted only once every new
    file is in place; if the swap fails, the error says where the old files are.

    Args:
      output_dir: --output_dir. staging: the folder holding the new files.
      splits: the split names being replaced.
    """
    backup = fresh_dir(os.path.join(output_dir, BACKUP))
    old = [
        name
        for name in os.listdir(output_dir)
        if any(schema.is_split_file(name, split) for split in splits)
    ]
    try:
        for name in old:
            os.replace(os.path.join(output_dir, name), os.path.join(backup, name))
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    except BaseException as e:
        message = getattr(e, "strerror", None) or type(e).__name__
        raise UserError(
            f"replacing the {'/'.join(splits)} files of {output_dir!r} failed ({message}); "
            f"the previous files are in {backup!r}"
        ) from None
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
