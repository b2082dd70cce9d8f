"""DALI index files for ImageNet TFRecords, written in parallel without TensorFlow.

Writes, for every train-*/validation-* file of SRC_DIR, an index file of the same name in
DST_DIR in `tfrecord2idx`'s format, byte for byte, from the record headers alone, several
files at once. A broken or non-TFRecord file gets no index; an up-to-date index is kept
unless --force. Each index is written atomically.

    .venv/bin/python -m utils.tools.dali_index [-j N] [--force] SRC_DIR DST_DIR
"""

import argparse
import concurrent.futures
import os
import sys
import time

from utils.core.fileio import atomic_write
from utils.data import schema
from utils.data.tfrecord import RecordFileError, index_problem, index_text


def record_files(src_dir):
    """Sorted paths of the train-* and validation-* files in `src_dir`."""
    names = sorted(
        name
        for name in os.listdir(src_dir)
        if schema.is_split_file(name) and os.path.isfile(os.path.join(src_dir, name))
    )
    return [os.path.join(src_dir, name) for name in names]


def write_index(record_path, index_path):
    """Index `record_path` into `index_path` atomically; returns the number of records."""
    text = index_text(record_path)
    with atomic_write(index_path, encoding="ascii", newline="") as f:
        f.write(text)
    return text.count("\n")


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
