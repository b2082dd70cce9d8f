"""The TFRecord files of a data directory: listing, sharding over processes, counting.

Counts walk the record framing (each header's CRC, the file ending on a record boundary)
without reading payloads, and are cached in `.record_counts.json` beside the data (or in
`cache_dir` if the data directory is read-only), reused while size and mtime are unchanged.
"""

import hashlib
import logging
import os
import re

from utils.core import fileio
from utils.core.errors import UserError
from utils.data import schema, tfrecord

logger = logging.getLogger(__name__)

RECORD_COUNT_CACHE = ".record_counts.json"
_SHARD_NAME = re.compile(r"(\d+)-of-(\d+)")


def list_files(data_dir: str, split: str) -> list:
    """Sorted paths of the `<split>-*` files in `data_dir`; a UserError if there are none,
    if one is not a file, or if shards of an `-of-NNNNN` set are missing or mixed.

    Args:
      data_dir: the data directory. split: "train" or "validation".
    """
    schema.check_split(split)
    expected = (
        f"TFRecord files named {split}-00000-of-NNNNN (utils/tools/build_tfrecords.py writes them)"
    )
    if data_dir and os.path.islink(data_dir) and not os.path.exists(data_dir):
        raise UserError(
            f"--data_dir {data_dir!r} is a symbolic link to nothing (broken or a loop); "
            f"it must be a directory holding {expected}"
        )
    if not data_dir or not os.path.exists(data_dir):
        raise UserError(
            f"data directory {data_dir!r} does not exist; --data_dir must hold {expected}"
        )
    if not os.path.isdir(data_dir):
        raise UserError(
            f"--data_dir {data_dir!r} is a file, not a directory; give the directory that "
            f"holds {expected}"
        )
    try:
        names = sorted(name for name in os.listdir(data_dir) if not name.startswith("."))
    except OSError as e:
        raise UserError(f"data directory {data_dir!r}: cannot list it ({e.strerror})") from None
    if not names:
        raise UserError(f"data directory {data_dir!r} is empty; --data_dir must hold {expected}")
    mine = [name for name in names if schema.is_split_file(name, split)]
    for name in mine:
        if not os.path.isfile(os.path.join(data_dir, name)):
            raise UserError(
                f"{os.path.join(data_dir, name)} is not a file (a directory or a broken link); "
                f"--data_dir must hold {expected}"
            )
    if not mine:
        found = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(
            f"data directory {data_dir!r} has no {split}-* files (found: {found}); "
            f"expected {expected}"
        )
    _check_shard_set(data_dir, split, mine)
    return [os.path.join(data_dir, name) for name in mine]


def _check_shard_set(data_dir, split, names):
    """Every shard of a `<split>-i-of-N` set present, and only one set."""
    totals = {}
    for name in names:
        match = _SHARD_NAME.fullmatch(name[len(split) + 1 :])
        if match:
            totals.setdefault(int(match.group(2)), set()).add(int(match.group(1)))
    if len(totals) > 1:
        sets = " and ".join(f"{len(v)} of {n}" for n, v in sorted(totals.items()))
        raise UserError(
            f"data directory {data_dir!r} mixes {split} shard sets ({sets}), as an interrupted "
            "conversion leaves them; re-run utils/tools/build_tfrecords.py --overwrite"
        )
    for total, present in totals.items():
        beyond = sorted(i for i in present if i >= total)
        if beyond:
            raise UserError(
                f"data directory {data_dir!r} has {split}-{beyond[0]:05d}-of-{total:05d}: "
                f"shard {beyond[0]} of a set of {total} (numbered 0..{total - 1})"
            )
        missing = [schema.shard_name(split, i, total) for i in range(total) if i not in present]
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise UserError(
                f"data directory {data_dir!r} has {len(present)} of the {total} {split} "
                f"shards: missing {shown}; re-create them (utils/tools/build_tfrecords.py)"
            )


def shard_files(files, num_shards, shard_index):
    """The files process `shard_index` of `num_shards` trains on: every num_shards-th file."""
    check_shard(num_shards, shard_index)
    return list(files[shard_index::num_shards])


def shard_size(total, num_shards, shard_index):
    """How many of `total` records fall in a record-level shard (index % num_shards)."""
    check_shard(num_shards, shard_index)
    return max(0, (total - shard_index + num_shards - 1) // num_shards)


def count_records(files, cache_dir=None):
    """Total number of records in `files`, counted once and cached (see module docstring)."""
    return sum(record_counts(files, cache_dir))


def record_counts(files: list, cache_dir: str = None) -> list:
    """The number of records of each of `files`, in order, counted once and cached.

    Args:
      files: TFRecord paths. cache_dir: where to cache if the data directory is read-only.
    """
    by_dir = {}
    for path in files:
        by_dir.setdefault(os.path.dirname(os.path.abspath(path)), []).append(path)
    counts = {}
    for directory, paths in by_dir.items():
        found = _counts_in_dir(directory, paths, cache_dir)
        counts.update({path: found[os.path.basename(path)] for path in paths})
    return [counts[path] for path in files]


def _counts_in_dir(directory, paths, cache_dir):
    cache_paths = [os.path.join(directory, RECORD_COUNT_CACHE)]
    if cache_dir:
        digest = hashlib.sha1(directory.encode()).hexdigest()[:16]
        cache_paths.append(os.path.join(cache_dir, f"record_counts-{digest}.json"))
    cached = {}
    for cache_path in reversed(cache_paths):  # the copy next to the data wins
        cached.update(_read_json(cache_path))

    counts, fresh = {}, {}
    for path in paths:
        name = os.path.basename(path)
        try:
            stat = os.stat(path)
        except OSError as e:
            raise UserError(f"{path}: cannot read record file ({e.strerror})") from None
        entry = cached.get(name)
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("records"), int)
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            counts[name] = entry["records"]
            continue
        counts[name] = _count_file(path)
        fresh[name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "records": counts[name]}

    if fresh:
        for cache_path in cache_paths:
            if _update_json(cache_path, fresh):
                break
        else:
            logger.info("record counts for %s not cached: no writable location", directory)
    return counts


def _count_file(path):
    """Count records by walking the length headers; payload CRCs are left to the reader."""
    fix = "re-create it (utils/tools/build_tfrecords.py) or remove it from the data directory"
    try:
        return sum(1 for _ in tfrecord.walk_records(path))
    except tfrecord.RecordFileError as e:
        raise UserError(f"{e}; {fix}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read record file ({e.strerror})") from None


def _read_json(path):
    try:
        return fileio.read_json_object(path) or {}
    except (OSError, ValueError):  # a damaged cache is only a cache: count again
        return {}


def _update_json(path, entries):
    """Merge `entries` into the JSON object at `path` atomically. False if not writable."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fileio.write_json(path, {**_read_json(path), **entries})
    except OSError:
        return False
    return True


def check_shard(num_shards: int, shard_index: int) -> None:
    """ValueError unless 0 <= shard_index < num_shards."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}, {num_shards}")
