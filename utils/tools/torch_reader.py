"""Read PyTorch `torch.save` files (zip or legacy format) as NumPy arrays, without PyTorch.

Why: importing weights must not need PyTorch installed, and `torch.load` (like any plain
unpickling) runs whatever code the pickle names. Here `data.pkl` is unpickled with a
restricted Unpickler that knows only what a checkpoint of tensors, dicts and numbers uses
(`torch._utils._rebuild_tensor_v2` / `_rebuild_parameter`, `collections.OrderedDict`,
`torch.*Storage`, NumPy number scalars); any other global is refused with one line. Each
tensor's bytes (the archive's `data/<key>`, or after the pickle in the legacy format) are
viewed with its dtype, shape, strides and offset.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from utils.core.errors import UserError

# torch storage type -> NumPy dtype; bfloat16 is widened to float32 on read.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def bfloat16_to_float32(raw: bytes, byteorder: str = "<") -> np.ndarray:
    """Widen bfloat16 values (NumPy has no such dtype): each is the top half of a float32.

    Args:
        raw: the packed 2-byte values.
        byteorder: "<" little-endian or ">" big-endian.
    """
    bits = np.frombuffer(raw, dtype=byteorder + "u2", count=len(raw) // 2).astype(np.uint32)
    return (bits << 16).view(np.float32)


def itemsize(dtype) -> int:
    """Bytes per value of a NumPy dtype or of "bfloat16" (which NumPy lacks)."""
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


class _StorageType:
    """Stands in for a `torch.*Storage` class named in the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """One storage: its flat values, read when first used (from the zip archive's entry,
    or from `raw` bytes that the legacy format stores after the pickle)."""

    def __init__(self, archive, entry: str, dtype, numel: int, byteorder: str):
        self._archive, self._entry = archive, entry
        self.dtype, self.numel, self._byteorder = dtype, numel, byteorder
        self._values = None
        self.raw = None

    @property
    def pending(self) -> bool:
        return self._archive is None and self.raw is None

    def values(self) -> np.ndarray:
        if self._values is None:
            raw = self.raw if self._archive is None else self._archive.read(self._entry)
            if self.dtype == "bfloat16":
                values = bfloat16_to_float32(raw, self._byteorder)
            else:
                values = np.frombuffer(
                    raw, dtype=np.dtype(self.dtype).newbyteorder(self._byteorder)
                )
            if values.size < self.numel:
                raise UserError(
                    f"{self._entry}: {values.size} values stored, {self.numel} declared"
                )
            self._values = values
        return self._values


class _Deferred:
    """A tensor of the legacy format, whose storage bytes come after the pickle."""

    def __init__(self, *layout):
        self.layout = layout


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """A copy of the strided view `size`/`stride` at `offset` into `storage`'s values."""
    del unused  # requires_grad, backward hooks, metadata: training state
    if storage.pending:
        return _Deferred(storage, offset, size, stride)
    size, stride = tuple(int(n) for n in size), tuple(int(n) for n in stride)
    values = storage.values()
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise UserError(f"a tensor has a malformed layout: size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, dtype=values.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= values.size:  # as_strided does not check bounds: refuse reads past the end
        raise UserError(f"a tensor reaches past its storage ({last} >= {values.size} values)")
    view = np.lib.stride_tricks.as_strided(
        values[offset:], shape=size, strides=[s * values.itemsize for s in stride]
    )
    return np.array(view, dtype=values.dtype.newbyteorder("="))


def _rebuild_parameter(data, *unused):
    return data


def _numpy_dtype(name, *unused):
    """A numeric NumPy dtype (checkpoint dicts hold NumPy scalars, e.g. a best accuracy)."""
    dtype = np.dtype(str(name))
    if dtype.kind not in "biuf":
        raise UserError(f"refusing to unpickle a NumPy dtype {name!r}: not a number")
    return dtype


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UserError("refusing to unpickle a NumPy scalar that is not a plain number")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_bytes(text, encoding="latin1"):
    """`_codecs.encode`: how protocol-2 pickles store bytes (here a NumPy scalar's)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UserError("refusing to unpickle _codecs.encode with other arguments")
    return text.encode("latin1")


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _latin1_bytes,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, byteorder, source):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix
        self._byteorder, self._source = byteorder, source
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UserError(
            f"{self._source}: refusing to unpickle {module}.{name}: not part of a plain "
            "state_dict of tensors (only tensors, dicts, lists and numbers are read)"
        )

    def persistent_load(self, pid):
        # zip: (storage, type, key, location, numel); legacy: the same plus view_metadata
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise UserError(f"{self._source}: unknown persistent object {str(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise UserError(f"{self._source}: storage views of PyTorch < 1.0 are not supported")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UserError(f"{self._source}: storage {key} has no known type")
        if key not in self.storages:
            entry = f"{self._prefix}data/{key}"
            self.storages[key] = _Storage(
                self._archive, entry, storage_type.dtype, int(numel), self._byteorder
            )
        return self.storages[key]


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # what torch.save wrote first before PyTorch 1.6


def _resolve(value):
    """`value` with every `_Deferred` tensor made an array (dicts keep type and attributes)."""
    if isinstance(value, _Deferred):
        return _rebuild_tensor(*value.layout)
    if isinstance(value, dict):
        resolved = type(value)((k, _resolve(v)) for k, v in value.items())
        for name, attribute in getattr(value, "__dict__", {}).items():  # e.g. _metadata
            setattr(resolved, name, attribute)
        return resolved
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    return value


def _load_legacy(path: str):
    """The legacy format: magic, version, sys_info, the object, its storage keys, then
    each storage as an int64 element count and its bytes."""
    with open(path, "rb") as handle:
        data = handle.read()
    stream = io.BytesIO(data)

    def unpickle(byteorder="<"):
        try:
            unpickler = _Unpickler(stream, None, "", byteorder, path)
            return unpickler, unpickler.load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise UserError(f"{path} is not a torch.save file ({error})") from None

    if unpickle()[1] != LEGACY_MAGIC:
        raise UserError(f"{path} is not a torch.save file (neither zip nor legacy format)")
    unpickle()  # protocol version
    sys_info = unpickle()[1]
    byteorder = "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian") else ">"
    unpickler, obj = unpickle(byteorder)
    keys = unpickle()[1]
    position = stream.tell()
    for key in keys:
        storage = unpickler.storages.get(key)
        if storage is None:
            raise UserError(f"{path}: storage {key} is stored but never used")
        (numel,) = struct.unpack(byteorder + "q", data[position : position + 8])
        nbytes = numel * itemsize(storage.dtype)
        storage.raw = data[position + 8 : position + 8 + nbytes]
        position += 8 + nbytes
    return _resolve(obj)


def load(path: str):
    """The object `torch.save` wrote to `path`, tensors as NumPy arrays.

    Args:
        path: a `.pth` / `.pt` file written by `torch.save` (the zip format of PyTorch 1.6
            and newer, or the legacy format before it).

    Raises:
        UserError: not a torch.save file, or it pickles anything but tensors, dicts,
            lists and numbers.
    """
    if not zipfile.is_zipfile(path):
        return _load_legacy(path)
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UserError(f"{path}: expected one <name>/data.pkl in the archive")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = "<"
        if f"{prefix}byteorder" in names:
            byteorder = {"little": "<", "big": ">"}[archive.read(f"{prefix}byteorder").decode()]
        with archive.open(pickles[0]) as handle:
            try:
                return _Unpickler(handle, archive, prefix, byteorder, path).load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
                raise UserError(f"{path}: unreadable pickle ({error})") from None
