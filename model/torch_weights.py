"""Read a PyTorch state dict (``torch.save`` file) into numpy arrays, without torch.

:func:`read_state_dict` reads both formats ``torch.save`` writes:

* the zip format (torch >= 1.6): a zip archive holding ``<archive>/data.pkl``, the pickled
  state dict, and one file ``<archive>/data/<key>`` of raw little-endian bytes per storage;
* the legacy format: five pickles one after another (magic number, protocol version 1001,
  system info, the state dict, the list of storage keys), then, for each key in that list,
  its element count as a little-endian int64 followed by the storage's raw bytes.

The state dict is unpickled by a restricted :class:`pickle.Unpickler`: ``find_class``
answers only ``collections.OrderedDict``, torch's tensor rebuild functions and the
``torch.*Storage`` types, each mapped onto a stand-in of this module, and refuses every other
global, so a file cannot make the reader import or call anything else. Storages are
persistent ids (``("storage", storage_type, key, location, numel[, view])``); a tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. Tensors become numpy
arrays of the storage's dtype, copied out of the file, with their size, stride and offset
checked against the storage.

A truncated, foreign or malicious file raises :class:`~model.errors.ModelError` naming the
file, and nothing is returned half loaded.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from model.errors import ModelError

__all__ = ["read_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage type -> numpy dtype (byte order added per file).
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}

# What an unreadable pickle or archive can raise while it is read.
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    MemoryError,
    struct.error,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
)


def _refuse_state(self: object, state: object) -> None:
    """``__setstate__`` of every stand-in: a pickle's BUILD opcode may not change one."""
    raise ModelError(f"refusing to set the state of a {type(self).__name__.lstrip('_')}")


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stand-in for a ``torch.<Name>Storage`` class: only its numpy dtype code matters."""

    __setstate__ = _refuse_state

    name: str
    dtype: str


@dataclass(frozen=True, slots=True)
class _Storage:
    """A storage named in the pickle: its key, type and element count (data read later)."""

    __setstate__ = _refuse_state

    key: str
    storage_type: _StorageType
    numel: int
    view_offset: int = 0
    view_numel: int | None = None


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor named in the pickle, materialised once the storages' bytes are known."""

    __setstate__ = _refuse_state

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _whole_numbers(value: object, what: str) -> tuple[int, ...]:
    """Return ``value`` as a tuple of non-negative ints, or raise ModelError."""
    if not isinstance(value, tuple | list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    ):
        raise ModelError(f"tensor {what} must be non-negative whole numbers, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, *_: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (and ``_rebuild_tensor``)."""
    if not isinstance(storage, _Storage):
        raise ModelError(f"a tensor must be built on a storage, got {type(storage).__name__}")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ModelError(f"tensor storage offset must be a whole number, got {offset!r}")
    shape = _whole_numbers(size, "size")
    strides = _whole_numbers(stride, "stride")
    if len(shape) != len(strides):
        raise ModelError(f"tensor size {shape} and stride {strides} differ in length")
    return _Tensor(storage, offset, shape, strides)


def _rebuild_parameter(data: object, requires_grad: object = None, *_: Any) -> Any:
    """Stand-in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    if not isinstance(data, _Tensor):
        raise ModelError(f"a parameter must hold a tensor, got {type(data).__name__}")
    return data


@dataclass(frozen=True, slots=True)
class _Function:
    """A stand-in function: slotted and frozen, so a pickle's BUILD cannot change it."""

    __setstate__ = _refuse_state

    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        """Call the wrapped function."""
        return self.function(*args)


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    """Unpickles a torch state dict with stand-ins; every other global is refused."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        """Return a new stand-in for ``module.name``, or raise ModelError for anything else.

        Stand-ins are made afresh for every lookup and are frozen and slotted, so nothing a
        file does to them (BUILD opcodes) outlives its reading or affects another file.
        """
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict  # a BUILD on the class itself fails: its __dict__ is read-only
        if (module, name) in _FUNCTIONS:
            return _Function(_FUNCTIONS[(module, name)])
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise ModelError(f"refusing global {module}.{name}: a torch state dict holds only tensors")

    def persistent_load(self, pid: Any) -> Any:
        """Return the :class:`_Storage` a persistent id names, one object per key."""
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise ModelError(f"unknown persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise ModelError(f"storage type must be a torch storage class, got {storage_type!r}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise ModelError(f"bad storage key or size in persistent id {pid!r}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type, numel)
        elif storage.storage_type.name != storage_type.name:
            raise ModelError(f"storage {key!r} is used with two types")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return storage
        # Legacy files: a view (view_key, offset, numel) into the root storage.
        if not (isinstance(view, tuple) and len(view) == 3):
            raise ModelError(f"bad storage view {view!r}")
        _view_key, view_offset, view_numel = view
        if not (isinstance(view_offset, int) and isinstance(view_numel, int)):
            raise ModelError(f"bad storage view {view!r}")
        if view_offset < 0 or view_numel < 0 or view_offset + view_numel > numel:
            raise ModelError(f"storage view {view!r} lies outside storage {key!r}")
        return _Storage(key, storage_type, numel, view_offset, view_numel)


def _unpickle(file: BinaryIO, storages: dict[str, _Storage]) -> Any:
    """Unpickle one object from ``file`` with the restricted unpickler."""
    return _Unpickler(file, storages).load()


def _plain_unpickle(file: BinaryIO) -> Any:
    """Unpickle a header object (numbers, strings, dicts, lists) that names no global."""
    return _Unpickler(file, {}).load()


def _materialise(
    state: object, storages: dict[str, _Storage], data: dict[str, bytes], byteorder: str
) -> dict[str, np.ndarray]:
    """Turn the unpickled state dict into ``name -> array``, checking every tensor."""
    if not isinstance(state, dict):
        raise ModelError(f"the file holds a {type(state).__name__}, not a state dict")
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, _Tensor):
            raise ModelError(f"state dict entry {name!r} is not a named tensor")
        storage = tensor.storage
        dtype = np.dtype(byteorder + storage.storage_type.dtype)
        raw = data.get(storage.key)
        if raw is None:
            raise ModelError(f"tensor {name!r}: the data of storage {storage.key!r} is missing")
        if len(raw) != storage.numel * dtype.itemsize:
            raise ModelError(
                f"tensor {name!r}: storage {storage.key!r} has {len(raw)} bytes, "
                f"expected {storage.numel} x {dtype.itemsize}"
            )
        limit = storage.numel if storage.view_numel is None else storage.view_numel
        offset = tensor.offset
        if 0 in tensor.size:
            last = offset - 1  # an empty tensor reads no element
        else:
            last = offset + sum(
                (n - 1) * s for n, s in zip(tensor.size, tensor.stride, strict=True)
            )
        if offset > limit or last >= limit:
            raise ModelError(
                f"tensor {name!r} of size {tensor.size} and stride {tensor.stride} at offset "
                f"{offset} lies outside its storage of {limit} elements"
            )
        flat = np.frombuffer(raw, dtype=dtype)[storage.view_offset :]
        view = np.lib.stride_tricks.as_strided(
            flat[offset:] if flat.size > offset else flat[:0],
            shape=tensor.size,
            strides=tuple(s * dtype.itemsize for s in tensor.stride),
            writeable=False,
        )
        arrays[name] = np.array(view, dtype=dtype.newbyteorder("="))
    return arrays


def _read_zip(path: Path, archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    """Read a zip-format checkpoint."""
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise ModelError(
            f"torch checkpoint {str(path)!r}: expected one <archive>/data.pkl, found {pickles}"
        )
    prefix = pickles[0].removesuffix("data.pkl")
    byteorder = "<"
    if f"{prefix}byteorder" in archive.namelist():
        order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise ModelError(f"torch checkpoint {str(path)!r}: unknown byte order {order!r}")
        byteorder = "<" if order == "little" else ">"
    storages: dict[str, _Storage] = {}
    state = _unpickle(io.BytesIO(archive.read(pickles[0])), storages)
    data = {key: archive.read(f"{prefix}data/{key}") for key in storages}
    return _materialise(state, storages, data, byteorder)


def _read_legacy(path: Path, content: bytes) -> dict[str, np.ndarray]:
    """Read a legacy-format checkpoint (a sequence of pickles, then the storages)."""
    file = io.BytesIO(content)
    if _plain_unpickle(file) != _LEGACY_MAGIC:
        raise ModelError(f"{str(path)!r} is not a torch checkpoint (no zip, no magic number)")
    protocol = _plain_unpickle(file)
    if protocol != _LEGACY_PROTOCOL:
        raise ModelError(f"torch checkpoint {str(path)!r}: unknown protocol {protocol!r}")
    info = _plain_unpickle(file)
    if not isinstance(info, dict):
        raise ModelError(f"torch checkpoint {str(path)!r}: bad system info {info!r}")
    byteorder = "<" if info.get("little_endian", True) else ">"
    storages: dict[str, _Storage] = {}
    state = _unpickle(file, storages)
    keys = _plain_unpickle(file)
    if not isinstance(keys, list) or set(keys) != set(storages) or len(keys) != len(storages):
        raise ModelError(
            f"torch checkpoint {str(path)!r}: the storage list does not match the tensors"
        )
    data: dict[str, bytes] = {}
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack(byteorder + "q", file.read(8))
        if numel != storage.numel:
            raise ModelError(
                f"torch checkpoint {str(path)!r}: storage {key!r} holds {numel} elements, "
                f"expected {storage.numel}"
            )
        size = numel * np.dtype(storage.storage_type.dtype).itemsize
        data[key] = file.read(size)
        if len(data[key]) != size:
            raise ModelError(f"torch checkpoint {str(path)!r} is truncated in storage {key!r}")
    return _materialise(state, storages, data, byteorder)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of the PyTorch state dict saved at ``path``, by name.

    Both ``torch.save`` formats are read (see the module docstring); torch is not needed.
    Raises :class:`ModelError` naming the file when it cannot be read, is truncated, is not
    a torch state dict, or names any global other than the torch tensor machinery.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ModelError(f"cannot read torch checkpoint {str(path)!r}: {error}") from error
    try:
        if zipfile.is_zipfile(io.BytesIO(content)):
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                return _read_zip(path, archive)
        return _read_legacy(path, content)
    except ModelError as error:
        if str(path) in str(error):
            raise
        raise ModelError(f"torch checkpoint {str(path)!r}: {error}") from error
    except _READ_ERRORS as error:
        raise ModelError(
            f"torch checkpoint {str(path)!r} is truncated or not a torch state dict: "
            f"{type(error).__name__}: {error}"
        ) from error
