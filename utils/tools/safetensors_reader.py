"""Read `.safetensors` files as NumPy arrays, bfloat16 included, without extra packages.

The format: an 8-byte little-endian header size, a JSON header naming each tensor's dtype,
shape and byte range, then the packed little-endian bytes. NumPy has no bfloat16, so the
`safetensors` package's NumPy loader refuses such files (timm and Hugging Face publish
many); here bfloat16 is widened to float32, as for `.pth` files.
"""

import json
import math
import os

import numpy as np

from utils.core.errors import UserError
from utils.tools.torch_reader import bfloat16_to_float32, itemsize

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": "bfloat16",
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def load(path: str) -> dict:
    """The tensors of the .safetensors file at `path`, by name.

    Args:
        path: the file.

    Raises:
        UserError: the file is truncated, not safetensors, or holds an unknown dtype.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        start = handle.read(8)
        length = int.from_bytes(start, "little") if len(start) == 8 else -1
        if not 0 < length <= size - 8:
            raise UserError(f"{path}: not a .safetensors file (bad header size)")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, RecursionError):  # RecursionError: hostile nesting
            raise UserError(f"{path}: not a .safetensors file (header is not JSON)") from None
        data = handle.read()
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a .safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    return {name: _tensor(path, name, entry, data) for name, entry in header.items()}


def _tensor(path, name, entry, data):
    try:
        dtype, shape, (begin, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
        if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)):
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise UserError(f"{path}: tensor {name!r} has a malformed header entry") from None
    if dtype not in DTYPES:
        raise UserError(f"{path}: tensor {name!r} has dtype {dtype}, not one of {list(DTYPES)}")
    kind = DTYPES[dtype]
    if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * itemsize(kind):
        raise UserError(
            f"{path}: tensor {name!r} lies outside the file or has the wrong size: "
            "the file is truncated or damaged, download it again"
        )
    raw = memoryview(data)[begin:end]  # a view: no copy of a large file
    if kind == "bfloat16":
        return bfloat16_to_float32(raw).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(kind).newbyteorder("<")).reshape(shape)
