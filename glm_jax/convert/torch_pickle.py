"""Read PyTorch checkpoints without importing torch and without running pickled code.

``torch.save`` (torch >= 1.6) writes a zip archive::

    <archive>/data.pkl        the pickled object; tensors appear as
                              torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
                              and each storage as a persistent id
                              ("storage", torch.<Dtype>Storage, key, location, numel)
    <archive>/data/<key>      the raw bytes of storage <key> (stored, not compressed)
    <archive>/byteorder       "little" or "big" (absent in old files: little)

:class:`TorchCheckpoint` unpickles ``data.pkl`` with a restricted
:class:`pickle.Unpickler`. Only a handful of globals are resolved: the tensor and
parameter rebuild functions, the storage classes and ``collections.OrderedDict``.
Every other global (optimizer classes, ``argparse.Namespace``, numpy RNG state, ...)
becomes an inert :class:`Opaque` placeholder that records its arguments and never
calls anything. Tensors come back as :class:`LazyTensor` records, and only the
ones you :meth:`~TorchCheckpoint.materialize` are read, so a pretraining checkpoint's
optimizer state (several times the model's size) is never loaded.

Legacy (pre-1.6, non-zip) files fall back to ``torch.load(weights_only=True)``,
which needs the optional ``torch`` extra.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable, Optional, Union

import ml_dtypes
import numpy as np

PathLike = Union[str, Path]

# torch.<Name>Storage -> numpy dtype of one element.
STORAGE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype)
    for name, dtype in {
        "FloatStorage": np.float32,
        "DoubleStorage": np.float64,
        "HalfStorage": np.float16,
        "BFloat16Storage": ml_dtypes.bfloat16,
        "LongStorage": np.int64,
        "IntStorage": np.int32,
        "ShortStorage": np.int16,
        "CharStorage": np.int8,
        "ByteStorage": np.uint8,
        "BoolStorage": np.bool_,
        "ComplexFloatStorage": np.complex64,
        "ComplexDoubleStorage": np.complex128,
        "Float8_e4m3fnStorage": ml_dtypes.float8_e4m3fn,
        "Float8_e5m2Storage": ml_dtypes.float8_e5m2,
        # Untyped storages count bytes.
        "UntypedStorage": np.uint8,
    }.items()
}

_LOCAL_FILE_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_LOCAL_FILE_SIGNATURE = b"PK\x03\x04"


class Opaque:
    """Placeholder for a pickled object whose class this reader refuses to import.

    Records what the pickle would have passed to the constructor (``args``), to
    ``__setstate__`` (``state``) and through item/append opcodes (``items``), so that
    callers can still look at e.g. an ``argparse.Namespace``'s fields, but nothing
    of the original class ever runs. Subclasses are made per global name by
    :meth:`for_global`; ``qualname`` is that name.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Opaque":
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded everything.

    def __call__(self, *args: Any, **kwargs: Any) -> "Opaque":
        # A pickle may call the result of an earlier REDUCE; stay inert.
        return type(self)(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f"<not unpickled: {self.qualname}>"

    _classes: dict[str, type] = {}

    @classmethod
    def for_global(cls, module: str, name: str) -> type:
        qualname = f"{module}.{name}"
        if qualname not in cls._classes:
            cls._classes[qualname] = type(f"Opaque[{qualname}]", (Opaque,), {"qualname": qualname})
        return cls._classes[qualname]


@dataclasses.dataclass(frozen=True)
class LazyStorage:
    """A storage record in the archive: ``numel`` elements of ``dtype`` at ``data/<key>``."""

    key: str
    dtype: np.dtype
    numel: int


@dataclasses.dataclass(frozen=True)
class LazyTensor:
    """A tensor not read yet: a strided view ``(offset, shape, stride)`` into a storage.

    ``offset`` and ``stride`` count elements, as in torch.
    """

    storage: LazyStorage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.storage.dtype


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *unused: Any) -> Any:
    """Stands in for torch._utils._rebuild_tensor(_v2): builds a :class:`LazyTensor`."""
    if not isinstance(storage, LazyStorage):
        # E.g. a storage of a dtype this reader does not know (see persistent_load).
        return Opaque.for_global("torch", "Tensor")(storage, offset, size, stride)
    return LazyTensor(storage, int(offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, *unused: Any) -> Any:
    """torch._utils._rebuild_parameter(_with_state): a Parameter is just its data here."""
    return data


_TORCH_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What ``torch.FloatStorage`` etc. resolve to while unpickling."""

    name: str
    dtype: np.dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_TORCH_FUNCTIONS`` and storage types; see module doc."""

    def __init__(self, file: Any, source: str, records: set[str]):
        super().__init__(file)
        self._source = source
        self._records = records

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        return Opaque.for_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"{self._source}: unexpected persistent id {pid!r} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            return Opaque.for_global("torch", "Storage")(storage_type, key)
        key = str(key)
        if key not in self._records:
            raise ValueError(f"{self._source}: data.pkl refers to storage {key!r}, which the archive lacks")
        return LazyStorage(key, storage_type.dtype, int(numel))


class TorchCheckpoint:
    """An open torch checkpoint: ``root`` is the unpickled object with lazy tensors.

    Use as a context manager::

        with TorchCheckpoint(path) as ckpt:
            state_dict = ckpt.materialize(ckpt.root["module"])

    Legacy (non-zip) files are read eagerly with torch; their ``root`` already holds
    numpy arrays.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._file: Optional[io.BufferedReader] = None
        self._zip: Optional[zipfile.ZipFile] = None
        if not zipfile.is_zipfile(self.path):
            _check_not_zip_like(self.path)
            self.root = _load_legacy(self.path)
            return
        # Kept open for the object's lifetime: materialize() reads storages from it.
        self._file = open(self.path, "rb")  # noqa: SIM115
        try:
            self._zip = zipfile.ZipFile(self._file)
            self.root = self._unpickle()
        except BaseException:
            self.close()
            raise

    def _unpickle(self) -> Any:
        assert self._zip is not None
        names = self._zip.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(
                f"{self.path}: not a torch checkpoint archive (expected one <name>/data.pkl, found {pickles})"
            )
        self._prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = self._prefix + "byteorder"
        self._byteorder = "little"
        if byteorder_name in names:
            self._byteorder = self._zip.read(byteorder_name).decode("ascii").strip()
        if self._byteorder not in ("little", "big"):
            raise ValueError(f"{self.path}: unknown byteorder {self._byteorder!r}")
        data_prefix = self._prefix + "data/"
        records = {n[len(data_prefix):] for n in names if n.startswith(data_prefix)}
        with self._zip.open(pickles[0]) as f:
            try:
                return _RestrictedUnpickler(f, str(self.path), records).load()
            except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as e:
                # A corrupt or hand-made pickle fails in many ways; report them as one.
                raise ValueError(f"{self.path}: cannot unpickle {pickles[0]}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "TorchCheckpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def materialize(self, obj: Any) -> Any:
        """``obj`` with every :class:`LazyTensor` inside dicts/lists/tuples read into numpy.

        Tensors that cover a whole storage come back without a copy; views are copied
        into their own contiguous arrays.
        """
        cache: dict[str, np.ndarray] = {}

        def read(x: Any) -> Any:
            return self._read_tensor(x, cache) if isinstance(x, LazyTensor) else x

        return _map_leaves(read, obj)

    def _read_storage(self, storage: LazyStorage) -> np.ndarray:
        """The storage's elements as a writable 1-D array (read straight from the file)."""
        assert self._zip is not None and self._file is not None
        name = f"{self._prefix}data/{storage.key}"
        info = self._zip.getinfo(name)
        nbytes = storage.numel * storage.dtype.itemsize
        if info.file_size < nbytes:
            raise ValueError(
                f"{self.path}: storage record {name} holds {info.file_size} bytes, "
                f"but {storage.numel} x {storage.dtype} needs {nbytes}"
            )
        dtype = storage.dtype
        if self._byteorder == "big" and dtype.itemsize > 1:
            if dtype.kind not in "biufc":
                raise ValueError(f"{self.path}: big-endian {dtype} storages are not supported")
            dtype = dtype.newbyteorder(">")
        if info.compress_type == zipfile.ZIP_STORED:
            # torch stores records uncompressed: read them in place, no temporary bytes.
            self._file.seek(info.header_offset)
            signature, name_len, extra_len = _LOCAL_FILE_HEADER.unpack(self._file.read(_LOCAL_FILE_HEADER.size))
            if signature != _LOCAL_FILE_SIGNATURE:
                raise ValueError(f"{self.path}: corrupt zip local header for {name}")
            self._file.seek(info.header_offset + _LOCAL_FILE_HEADER.size + name_len + extra_len)
            # Read in place into a writable buffer: no temporary copy of the record.
            raw = bytearray(info.file_size)
            got = self._file.readinto(raw)
            if got != info.file_size:
                raise ValueError(f"{self.path}: storage record {name} is truncated "
                                 f"({got} of {info.file_size} bytes): the file is damaged")
            # The archive's CRC-32 of the record: damaged weight bytes would otherwise
            # convert silently into wrong (or NaN) parameters.
            if zlib.crc32(raw) != info.CRC:
                raise ValueError(f"{self.path}: storage record {name} fails its CRC-32 check: the file is "
                                 "damaged (re-download or re-copy it)")
            array = np.frombuffer(raw, dtype=dtype, count=storage.numel)
        else:
            try:
                raw = self._zip.read(name)  # zipfile checks the CRC of what it inflates
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise ValueError(f"{self.path}: storage record {name} is damaged: {e}") from None
            array = np.frombuffer(raw, dtype=dtype, count=storage.numel).copy()
        return array.astype(dtype.newbyteorder("="), copy=False)

    def _read_tensor(self, tensor: LazyTensor, cache: dict[str, np.ndarray]) -> np.ndarray:
        key = tensor.storage.key
        if key not in cache:
            cache[key] = self._read_storage(tensor.storage)
        return view_storage(cache[key], tensor.offset, tensor.shape, tensor.stride, f"{self.path}: storage {key}")


def view_storage(
    storage: np.ndarray, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], what: str
) -> np.ndarray:
    """The tensor ``storage[offset + sum(i_k * stride_k)]`` of ``shape``, bounds-checked.

    Args:
      storage: 1-D array, ``[numel]``.
      offset, stride: in elements, as torch records them.
      what: names the storage in error messages.

    Returns the storage itself (reshaped) when the tensor covers it exactly and
    contiguously, else a contiguous copy. Never reads outside ``storage``: the
    pickle is untrusted, and ``as_strided`` would happily read foreign memory.
    """
    if len(shape) != len(stride):
        raise ValueError(f"{what}: size {shape} and stride {stride} differ in rank")
    if offset < 0 or any(n < 0 for n in shape) or any(s < 0 for s in stride):
        raise ValueError(f"{what}: negative offset/size/stride ({offset}, {shape}, {stride})")
    numel = math.prod(shape)
    if numel == 0:
        return np.zeros(shape, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= storage.size:
        raise ValueError(
            f"{what}: tensor of size {shape}, stride {stride} at offset {offset} reaches element {last}, "
            f"but the storage has {storage.size}"
        )
    if offset == 0 and numel == storage.size and _is_contiguous(shape, stride):
        return storage.reshape(shape)
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=shape, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in reversed(list(zip(shape, stride, strict=True))):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _check_not_zip_like(path: Path) -> None:
    """Refuses, with the reason, a file that is neither a zip archive nor a legacy
    torch pickle (empty, a damaged zip, or another kind of file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ValueError(f"{path}: cannot read it: {e.strerror or e}") from None
    if not head:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint; re-download or re-copy it")
    if head.startswith(b"PK"):
        raise ValueError(f"{path} is a damaged or truncated zip archive (its central directory is missing or "
                         "unreadable): re-download or re-copy it")
    if not head.startswith(b"\x80"):  # a legacy torch file starts with a pickle protocol marker
        raise ValueError(f"{path} is not a torch checkpoint (neither a zip archive nor a legacy torch pickle; "
                         f"it starts with {head!r})")


def _load_legacy(path: Path) -> Any:
    """Read a pre-zip torch file with torch itself (weights only), as numpy."""
    try:
        import torch  # imported here: torch is an optional extra, needed only for legacy files
    except ImportError:
        raise ValueError(
            f"{path} is not a zip-format torch checkpoint (a legacy torch<1.6 file, or not a torch file "
            "at all); reading legacy files needs torch: pip install 'glm-jax[torch]'"
        ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises many types here
        # Not torch's own advice: it suggests weights_only=False, which runs the
        # file's pickled code.
        raise ValueError(f"{path}: not a readable legacy torch checkpoint of tensors ({type(e).__name__}; "
                         "the file is damaged, truncated, or holds more than weights)") from None

    def to_numpy(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; reinterpret the bits.
            return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return x.numpy()

    return _map_leaves(to_numpy, obj)


def _map_leaves(fn: Callable[[Any], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every value inside dicts, lists and tuples
    (recursively) that is none of those; the containers keep their types."""
    if isinstance(obj, dict):
        return type(obj)((k, _map_leaves(fn, v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_leaves(fn, v) for v in obj)
    return fn(obj)


def load_torch_checkpoint(path: PathLike) -> Any:
    """Unpickle a whole torch checkpoint safely; every tensor becomes a numpy array.

    bfloat16 tensors come back as ``ml_dtypes.bfloat16`` arrays. Objects of classes
    other than tensors, dicts, lists and tuples are :class:`Opaque` placeholders.
    Prefer :class:`TorchCheckpoint` to read only part of a big file.
    """
    with TorchCheckpoint(path) as ckpt:
        return ckpt.materialize(ckpt.root)
