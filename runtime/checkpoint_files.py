"""Checkpoint files on disk: which `ckpt-N` are complete, and which read back intact.

A complete checkpoint has its `.index` and every `.data-K-of-N` shard; TF's `checkpoint`
state file is not needed to find it. Reading every tensor makes TF check each one's CRC,
so a truncated or corrupted file is named rather than surfacing later as a shape error.
"""

import glob
import logging
import os
import re

import tensorflow as tf

from utils.core.errors import UserError, tf_error_message

CKPT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def quiet_tf():
    """After a restore error: TF's warnings about unresolved objects would follow it."""
    tf.get_logger().setLevel(logging.ERROR)


def complete_checkpoints(directory: str) -> list:
    """Prefixes of the complete `ckpt-N` in `directory` (index and every data shard),
    newest first, whether or not TF's `checkpoint` state file lists them.

    Args:
      directory: the checkpoint folder.
    """
    found = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        match = CKPT_INDEX.match(name)
        if not match:
            continue
        prefix = os.path.join(directory, name[: -len(".index")])
        shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
        counts = {shard.rsplit("-of-", 1)[1] for shard in shards}
        if len(counts) == 1 and len(shards) == int(counts.pop()):
            found.append((int(match[1]), prefix))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def corruption(prefix: str):
    """None if every tensor of checkpoint `prefix` reads back (TF checks each one's CRC),
    else "<file>: <problem>" naming the file that fails.

    Args:
      prefix: the checkpoint prefix (`.../ckpt-N`).
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError, IndexError) as error:
        return f"{prefix}.index: {tf_error_message(error, limit=120)}"
    try:
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, ValueError, IndexError) as error:
        shards = sorted(glob.glob(glob.escape(prefix) + ".data-*"))
        return f"{', '.join(shards) or prefix + '.data'}: {tf_error_message(error, limit=120)}"
    return None


def pick_checkpoint(directory: str, fall_back: bool, log=print):
    """The newest intact checkpoint in `directory`, or None if there is none at all.

    A corrupt newest one is named; with `fall_back` the newest intact older one is used
    (and said), otherwise the error names the fix (a run that trains would write its
    next checkpoints over the corrupt one's numbers).

    Args:
      directory: the checkpoint folder.
      fall_back: use an older intact checkpoint when newer ones are corrupt.
      log: prints a message.
    """
    candidates = complete_checkpoints(directory)
    corrupt = []
    for prefix in candidates:
        problem = corruption(prefix)
        if problem is None:
            break
        corrupt.append(problem)
    else:
        prefix = None
    if corrupt and (prefix is None or not fall_back):
        quiet_tf()
        names = ", ".join(os.path.basename(p.split(":")[0]) for p in corrupt)
        fix = f"move them out of {directory}" + (
            f" to resume from {os.path.basename(prefix)} (intact)" if prefix else ""
        )
        raise UserError(f"corrupt checkpoint ({corrupt[0]}); corrupt: {names}: {fix}")
    if corrupt:
        log(f"{corrupt[0].split(':')[0]} is corrupt; using the newest intact checkpoint {prefix}")
    return prefix
