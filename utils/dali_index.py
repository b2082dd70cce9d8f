"""DALI index files for ImageNet TFRecords, written in parallel without TensorFlow.

DALI's TFRecord reader needs, next to every record file, an index file with one line per
record: "<offset> <size>\\n" in decimal bytes, where size counts the record's 8-byte length,
4-byte length CRC, payload and 4-byte payload CRC. That is the format of the `tfrecord2idx`
script shipped with DALI, byte for byte; this module writes the same files, but walks only
the record headers (no payload reads, no TensorFlow import) and indexes several files at
once in a process pool. Each record's length header is checked against its CRC, and a file
that ends inside a record is an error, so a broken or non-TFRecord file gets no index.

Index files are named like their record files (DST/train-00000-of-01024 indexes
SRC/train-00000-of-01024) and written to a temporary file that is renamed into place, so an
interrupted run never leaves a partial index. An index that is up to date (newer than its
record file and ending exactly where the record file ends) is left alone unless --force.

    python utils/dali_index.py [-j N] [--force] SRC_DIR DST_DIR

`utils/dali_index.sh SRC_DIR DST_DIR` calls this; `utils/dali_utils.py` uses
`index_problem` to refuse missing or stale index files.
"""

import argparse
import concurrent.futures
import contextlib
import os
import struct
import sys
import tempfile
import time

from utils.crc32c import masked_crc32c

SPLITS = ("train", "validation")
_HEADER = 12  # uint64 length + uint32 masked CRC32C of the length
_FOOTER = 4  # uint32 masked CRC32C of the payload
_LAST_LINE_BYTES = 128  # more than the longest "offset size\n" line


class RecordFileError(Exception):
    """A file that is not a complete TFRecord file."""


def record_files(src_dir):
    """Sorted paths of the train-* and validation-* files in `src_dir`."""
    names = sorted(
        name
        for name in os.listdir(src_dir)
        if name.startswith(tuple(f"{split}-" for split in SPLITS))
        and os.path.isfile(os.path.join(src_dir, name))
    )
    return [os.path.join(src_dir, name) for name in names]


def index_text(path):
    """The index of the TFRecord file at `path`, as tfrecord2idx would write it."""
    lines = []
    offset = 0
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        while offset < size:
            header = os.pread(f.fileno(), _HEADER, offset)
            if len(header) < _HEADER:
                raise RecordFileError(
                    f"{path}: truncated TFRecord file (ends inside the header of record "
                    f"{len(lines)} at byte {offset})"
                )
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise RecordFileError(
                    f"{path}: not a TFRecord file or corrupt (bad record header at byte {offset})"
                )
            record_size = _HEADER + length + _FOOTER
            if offset + record_size > size:
                raise RecordFileError(
                    f"{path}: truncated TFRecord file (record {len(lines)} at byte {offset} "
                    f"needs {record_size} bytes, the file has {size - offset} left)"
                )
            lines.append(f"{offset} {record_size}\n")
            offset += record_size
    return "".join(lines)


def write_index(record_path, index_path):
    """Index `record_path` into `index_path` atomically; returns the number of records."""
    text = index_text(record_path)
    directory = os.path.dirname(os.path.abspath(index_path))
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(index_path)}.", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "w", encoding="ascii", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; others may share the index
        os.replace(tmp, index_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return text.count("\n")


def index_problem(record_path, index_path):
    """None if `index_path` is a current index of `record_path`, else what is wrong with
    it, as a phrase: "is missing", "is older than ...", "does not match ...".

    Current means: the index is not older than the record file, and its last record ends
    exactly where the record file ends (an empty index for an empty file).
    """
    try:
        index_stat = os.stat(index_path)
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"is unreadable ({e.strerror})"
    record_stat = os.stat(record_path)
    if record_stat.st_mtime_ns > index_stat.st_mtime_ns:
        return "is older than its record file"
    try:
        end = _index_end(index_path, index_stat.st_size)
    except (OSError, ValueError):
        return "is not a DALI index file"
    if end != record_stat.st_size:
        return (
            f"does not match its record file (the index ends at byte {end}, "
            f"the record file has {record_stat.st_size} bytes)"
        )
    return None


def count_index_records(index_path):
    """Number of records an index file lists (its line count)."""
    with open(index_path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _index_end(index_path, index_size):
    """Byte where the last indexed record ends: offset + size of the last line."""
    if index_size == 0:
        return 0
    with open(index_path, "rb") as f:
        f.seek(max(0, index_size - _LAST_LINE_BYTES))
        tail = f.read()
    if not tail.endswith(b"\n"):
        raise ValueError("no final newline")
    offset, size = tail[:-1].rsplit(b"\n", 1)[-1].split(b" ")
    return int(offset) + int(size)


def _index_one(record_path, index_path):
    try:
        return record_path, write_index(record_path, index_path), None
    except (RecordFileError, OSError) as e:
        message = str(e) if isinstance(e, RecordFileError) else f"{record_path}: {e}"
        return record_path, 0, message


def index_dir(src_dir, dst_dir, jobs=None, force=False, log=print):
    """Index every train-*/validation-* file of `src_dir` into `dst_dir`.

    Returns (indexed, up_to_date, errors): counts of files and a list of messages.
    """
    files = record_files(src_dir)
    if not files:
        raise RecordFileError(f"{src_dir}: no train-* or validation-* files to index")
    os.makedirs(dst_dir, exist_ok=True)
    if os.path.samefile(src_dir, dst_dir):  # index files take their record files' names
        raise RecordFileError(f"{dst_dir}: the index directory must not be the data directory")
    todo = []
    for path in files:
        index_path = os.path.join(dst_dir, os.path.basename(path))
        if force or index_problem(path, index_path) is not None:
            todo.append((path, index_path))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    if jobs == 1:
        results = (_index_one(*task) for task in todo)
        pool = None
    else:
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=jobs)
        results = pool.map(_index_one, *zip(*todo), chunksize=max(1, len(todo) // (8 * jobs)))
    errors = []
    try:
        for path, count, error in results:
            if error:
                errors.append(error)
            else:
                log(f"{path}: {count} records")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return len(todo) - len(errors), len(files) - len(todo), errors


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write DALI index files (tfrecord2idx format) for the train-* and "
        "validation-* TFRecord files of SRC_DIR into DST_DIR, in parallel."
    )
    parser.add_argument("src_dir")
    parser.add_argument("dst_dir")
    parser.add_argument(
        "-j", "--jobs", type=int, default=None, help="processes (default: all CPUs)"
    )
    parser.add_argument(
        "--force", action="store_true", help="rewrite index files that are already up to date"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("-j must be at least 1")
    if not os.path.isdir(args.src_dir):
        print(f"error: {args.src_dir}: no such directory", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        indexed, current, errors = index_dir(
            args.src_dir,
            args.dst_dir,
            jobs=args.jobs,
            force=args.force,
            log=(lambda _: None) if args.quiet else print,
        )
    except (RecordFileError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(
        f"indexed {indexed} file(s) into {args.dst_dir} ({current} already up to date, "
        f"{len(errors)} failed) in {time.perf_counter() - start:.1f} s"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
