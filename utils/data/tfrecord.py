"""TFRecord framing in plain Python: CRC-32C, a walker over record headers, DALI indexes.

A record is a uint64 length, its masked CRC-32C, the payload and the payload's CRC. The
record counter and the DALI indexer walk the headers only (no payload reads, no TensorFlow
import); payload CRCs are left to the readers.
"""

import os
import struct
from typing import Iterator, Tuple

HEADER = 12  # uint64 length + uint32 masked CRC32C of the length
FOOTER = 4  # uint32 masked CRC32C of the payload
_LAST_LINE_BYTES = 128  # more than the longest "offset size\n" line of an index


class RecordFileError(Exception):
    """A file that is not a complete TFRecord file; the message names it and where."""


def _make_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _make_table()


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord stores after each length and payload."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def walk_records(path: str) -> Iterator[Tuple[int, int]]:
    """(offset, size) of every record of the TFRecord file at `path`, size counting the
    header and footer. RecordFileError at a bad length header or a cut-off record."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        offset, count = 0, 0
        while offset < size:
            header = os.pread(f.fileno(), HEADER, offset)
            if len(header) < HEADER:
                raise RecordFileError(
                    f"{path}: truncated record file (record {count} runs past the end of the "
                    f"file) inside its header at byte {offset}"
                )
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                raise RecordFileError(
                    f"{path}: not a TFRecord file or corrupt (bad record header at byte {offset})"
                )
            record_size = HEADER + length + FOOTER
            if offset + record_size > size:
                raise RecordFileError(
                    f"{path}: truncated record file (record {count} runs past the end of the "
                    f"file) at byte {offset}: it needs {record_size} bytes, {size - offset} left"
                )
            yield offset, record_size
            offset += record_size
            count += 1


def index_text(path: str) -> str:
    """The DALI index of the TFRecord file at `path`, byte for byte as `tfrecord2idx`
    writes it: one "<offset> <size>" line per record."""
    return "".join(f"{offset} {size}\n" for offset, size in walk_records(path))


def count_index_records(index_path: str) -> int:
    """Number of records an index file lists (its line count)."""
    with open(index_path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def index_problem(record_path: str, index_path: str):
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
