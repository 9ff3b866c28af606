"""Read ``torch.save`` files without torch and without running pickled code.

A ``torch.save`` file (the zip format, PyTorch >= 1.6) is a zip archive::

    <name>/data.pkl        the pickled object; tensors refer to storages by persistent id
    <name>/data/<key>      the raw bytes of storage <key>
    <name>/byteorder       "little" or "big" (absent in old files: little)
    <name>/version, ...    bookkeeping, ignored

``data.pkl`` is read by a restricted unpickler: :meth:`_RestrictedUnpickler.find_class` hands out
only this module's own stand-ins for the few globals a checkpoint of tensors needs
(``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter``, the typed storage
classes, ``collections.OrderedDict``, ``builtins.set`` ...). The stand-ins build numpy arrays
from the ``data/<key>`` records and never import torch. Any other global (``os.system``,
``builtins.eval``, a model class, ``numpy`` reconstructors ...) is refused with a
:class:`~streamrnn.errors.FormatError` naming it, before anything is called; ``BUILD`` (the
``__setstate__`` hook) is only honoured on the ``OrderedDict`` of a state_dict, where it is a
no-op. With ``opaque=True`` (how checkpoints are read), a global outside ``_REFUSED_MODULES``
becomes an :class:`Opaque` record instead: REDUCE / NEWOBJ / BUILD / SETITEMS on it record
their arguments, its class is never imported and nothing of it is called; the checkpoint
reader refuses such records inside the state_dict and ignores them elsewhere (a Lightning
checkpoint's hyper-parameters). Tensors come back as numpy arrays (bfloat16 widened to float32, big-endian files
byte-swapped to native order).

Example
-------
>>> obj = load_torch_file("model.pt")      # e.g. an OrderedDict of numpy arrays
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import logging
import math
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from streamrnn.errors import FormatError
from streamrnn.fileformat import bf16_to_f32

log = logging.getLogger("streamrnn")

#: Largest ``data.pkl`` accepted (the pickle only holds metadata; tensors live in records).
MAX_PICKLE_BYTES = 256 * 1024 * 1024
#: A tensor view may hold more elements than its storage only up to this many (stride-0 views).
MAX_EXPANDED_ELEMENTS = 1 << 28

_LEGACY_HINT = (
    "re-save it with torch.save's default zip format (torch.save(obj, path) in PyTorch >= 1.6, "
    "without _use_new_zipfile_serialization=False), or as .safetensors"
)


# ---------------------------------------------------------------------------------------------
# Stand-ins for the allowed globals
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only carries the element dtype."""

    name: str
    dtype: np.dtype  # the dtype of the raw bytes (bfloat16: uint16, widened on read)
    bfloat16: bool = False


@dataclass(frozen=True)
class TorchDtype:
    """Stand-in for a pickled ``torch.float32`` & co (kept as its name, never used for math)."""

    name: str


@dataclass(frozen=True)
class _Marker:
    """Stand-in for a class that may only appear as an argument (``torch.Tensor`` ...)."""

    name: str


_STORAGE_DTYPES: dict[str, tuple[Any, bool]] = {
    "FloatStorage": (np.float32, False),
    "DoubleStorage": (np.float64, False),
    "HalfStorage": (np.float16, False),
    "BFloat16Storage": (np.uint16, True),
    "LongStorage": (np.int64, False),
    "IntStorage": (np.int32, False),
    "ShortStorage": (np.int16, False),
    "CharStorage": (np.int8, False),
    "ByteStorage": (np.uint8, False),
    "BoolStorage": (np.bool_, False),
    "ComplexFloatStorage": (np.complex64, False),
    "ComplexDoubleStorage": (np.complex128, False),
    "UntypedStorage": (np.uint8, False),
}

_TORCH_DTYPE_NAMES = frozenset(
    "float32 float float64 double float16 half bfloat16 int64 long int32 int int16 short int8 "
    "uint8 bool complex64 cfloat complex128 cdouble".split()
)


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise FormatError(f"{what}: expected an int, got {type(v).__name__} {v!r:.60}")
    return int(v)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a numpy copy of the strided view."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise FormatError(f"tensor storage: expected a storage record, got {type(storage).__name__}")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise FormatError(f"tensor size/stride: expected tuples, got {size!r:.80} / {stride!r:.80}")
    if len(size) != len(stride) or len(size) > 32:
        raise FormatError(f"tensor size/stride: expected equal ranks <= 32, got {size!r:.80} / {stride!r:.80}")
    off = _as_int(storage_offset, "tensor storage_offset")
    shape = tuple(_as_int(s, "tensor size") for s in size)
    steps = tuple(_as_int(s, "tensor stride") for s in stride)
    if off < 0 or any(s < 0 for s in shape) or any(s < 0 for s in steps):
        raise FormatError(f"tensor: expected non-negative offset/size/stride, got {off}, {shape}, {steps}")
    numel = math.prod(shape)  # Python ints: a huge size cannot wrap to a small one
    if numel == 0:
        return np.zeros(shape, dtype=storage.dtype)
    last = off + sum((n - 1) * s for n, s in zip(shape, steps))
    if last >= storage.size:
        raise FormatError(
            f"tensor: expected its view (offset {off}, size {shape}, stride {steps}) inside its "
            f"storage of {storage.size} elements, got last index {last}"
        )
    if numel > max(storage.size, MAX_EXPANDED_ELEMENTS):
        raise FormatError(f"tensor: size {shape} expands its storage of {storage.size} elements too far")
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[off:], shape=shape, strides=tuple(s * item for s in steps), writeable=False
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> np.ndarray:
    """Stand-in for ``torch._utils._rebuild_parameter[_with_state]``: the data itself."""
    if not isinstance(data, np.ndarray):
        raise FormatError(f"parameter: expected a tensor, got {type(data).__name__}")
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> np.ndarray:
    """Stand-in for ``torch._tensor._rebuild_from_type_v2`` (a tensor with Python attributes)."""
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or not isinstance(args, tuple):
        raise FormatError(f"_rebuild_from_type_v2: expected a tensor rebuild function, got {func!r:.80}")
    if not (isinstance(new_type, _Marker) and new_type.name in ("torch.Tensor", "torch.nn.parameter.Parameter")):
        raise FormatError(f"_rebuild_from_type_v2: tensor subclass {new_type!r:.80} is refused")
    return func(*args)


def _codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: how protocol-2 pickles spell ``bytes`` (latin-1 only)."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise FormatError(f"_codecs.encode: expected (str, 'latin1'), got ({type(obj).__name__}, {encoding!r:.40})")
    return obj.encode("latin-1")


def _device(*args: Any) -> str:
    """Stand-in for ``torch.device``: its string (tensors are always read to numpy on the CPU)."""
    return ":".join(str(a) for a in args)


def _allowed_global(module: str, name: str) -> Any:
    """The stand-in for ``module.name``, or None when the global is refused."""
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "builtins" and name in ("set", "frozenset"):
        return {"set": set, "frozenset": frozenset}[name]
    if module == "_codecs" and name == "encode":
        return _codecs_encode
    if module == "torch._utils":
        if name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module in ("torch", "torch.cuda", "torch.storage") and name in _STORAGE_DTYPES:
        dt, bf = _STORAGE_DTYPES[name]
        return StorageType(name, np.dtype(dt), bf)
    if module == "torch" and name in _TORCH_DTYPE_NAMES:
        return TorchDtype(name)
    if module == "torch" and name == "device":
        return _device
    if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _Marker(f"{module}.{name}")
    return None


#: modules whose globals are refused even where other unknown objects are kept opaque: a
#: checkpoint has no reason to name them (a file that does is hostile or broken), and a whole
#: pickled model (torch.nn, TorchScript) deserves the hint to save its state_dict instead
_REFUSED_MODULES = (
    "builtins", "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy",
    "code", "codeop", "pickle", "_pickle", "copyreg", "marshal", "types", "ctypes", "functools",
    "operator", "io", "pty", "signal", "multiprocessing", "asyncio", "threading", "webbrowser",
    "tempfile", "glob", "inspect", "gc", "__torch__", "torch.nn", "torch.jit", "torch.fx",
)


#: builtins a hyper-parameter may name (a complex, a range, defaultdict(list) ...): kept opaque
#: like other classes; every other builtin (eval, exec, getattr, open, __import__ ...) is refused
_INERT_BUILTINS = frozenset(("complex", "list", "dict", "tuple", "slice", "range", "bytearray", "bytes", "int",
                             "float", "str", "bool", "object"))


def _refused_module(module: str, name: str) -> bool:
    if module == "builtins" and name in _INERT_BUILTINS:
        return False
    return any(module == m or module.startswith(m + ".") for m in _REFUSED_MODULES)


class Opaque:
    """A pickled object of a class this reader does not rebuild (a Lightning ``AttributeDict``
    of hyper-parameters, an ``argparse.Namespace`` ...): the class's dotted name and the data
    the pickle gave it, recorded. The class is never imported and nothing of it is called; a
    checkpoint may hold such objects outside its state_dict, which ignores them."""

    __slots__ = ("qualname", "args", "state", "items")

    def __init__(self, qualname: str, args: tuple = ()):
        self.qualname, self.args, self.state, self.items = qualname, args, None, {}

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) of a dict subclass
        self.items[key] = value

    def append(self, value: Any) -> None:  # APPEND(S) of a list subclass
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for v in values:
            self.append(v)

    def __repr__(self) -> str:
        return f"<pickled {self.qualname}, not rebuilt>"


class _OpaqueClass:
    """``find_class``'s stand-in for a global it does not know: calling it (REDUCE, NEWOBJ, INST)
    records an :class:`Opaque`, whatever the arguments."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return Opaque(self.qualname, args)

    def __repr__(self) -> str:
        return f"<pickled global {self.qualname}, not imported>"


# ---------------------------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------------------------


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be vetted
    """Unpickler that resolves only allowed globals and reads storages from the zip."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, load_storage: Callable[[StorageType, str, int], np.ndarray], where: str,
                 opaque: bool = False):
        super().__init__(io.BytesIO(data), fix_imports=True, encoding="utf-8")
        self._load_storage = load_storage
        self._where = where
        self._opaque = opaque  # unknown globals (outside _REFUSED_MODULES) become _OpaqueClass

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 spells builtins "__builtin__"
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = _allowed_global(module, name)
        if obj is None and self._opaque and not _refused_module(module, name):
            return _OpaqueClass(f"{module}.{name}")
        if obj is None:
            hint = ""
            if module.startswith("__torch__"):
                hint = " (a TorchScript class: save model.state_dict() with torch.save instead)"
            elif module.startswith("torch.nn") or not module.startswith(("torch", "builtins", "collections")):
                hint = " (save the model's state_dict() rather than the object, or use .safetensors)"
            raise FormatError(
                f"{self._where}: refused to load global {module}.{name}: only tensors, state_dicts "
                f"and plain containers are read (no pickled code is ever run){hint}"
            )
        return obj

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise FormatError(f"{self._where}: expected a ('storage', type, key, location, numel) record id, got {pid!r:.120}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, StorageType):
            raise FormatError(f"{self._where}: expected a storage type in record id, got {stype!r:.80}")
        if not isinstance(key, str):
            raise FormatError(f"{self._where}: expected a str storage key, got {key!r:.80}")
        return self._load_storage(stype, key, _as_int(numel, "storage numel"))

    def load_build(self) -> None:
        """``BUILD``: honoured only as the (ignored) ``_metadata`` of a state_dict's OrderedDict,
        and recorded on an :class:`Opaque` (never a ``__setstate__`` of the pickle's choosing)."""
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if isinstance(inst, collections.OrderedDict) and isinstance(state, (dict, tuple, type(None))):
            return  # torch.save puts the state_dict's _metadata (versions) here; not needed
        if isinstance(inst, Opaque):
            inst.state = state
            return
        raise FormatError(
            f"{self._where}: refused BUILD (__setstate__) on a {type(inst).__name__}: only the "
            "OrderedDict of a state_dict may carry state"
        )

    dispatch[pickle.BUILD[0]] = load_build

    def load_newobj(self) -> None:
        """``NEWOBJ`` (``cls.__new__(cls, *args)``): an Opaque for an unknown class; otherwise as
        pickle does, for the few allowed classes (OrderedDict, set ...)."""
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(cls(*args) if isinstance(cls, _OpaqueClass) else cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(cls(*args) if isinstance(cls, _OpaqueClass) else cls.__new__(cls, *args, **kwargs))

    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex


# ---------------------------------------------------------------------------------------------
# The zip container
# ---------------------------------------------------------------------------------------------


def _check_magic(path: str, head: bytes) -> None:
    """Raise a FormatError that says what the file is when it is not a zip."""
    if head[:2] == b"PK":
        return
    if head[:1] == b"\x80":
        raise FormatError(
            f"path: {path!r} is a legacy (pre-1.6, non-zip) torch.save file, which cannot be read "
            f"without running pickled code; {_LEGACY_HINT}"
        )
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise FormatError(f"path: {path!r} is a legacy tar-format torch.save file; {_LEGACY_HINT}")
    raise FormatError(
        f"path: expected a torch.save zip archive (starting with 'PK'), got a file starting with "
        f"{head[:8]!r} in {path!r}"
    )


def load_torch_file(path: str | os.PathLike, *, opaque: bool = False) -> Any:
    """Unpickle a ``torch.save`` zip file into plain Python containers of numpy arrays.

    Parameters
    ----------
    path : str or PathLike
        A file written by ``torch.save`` (zip format).
    opaque : bool
        False: any global beyond tensors and plain containers is refused. True: one outside
        ``_REFUSED_MODULES`` comes back as an :class:`Opaque` record instead (its class never
        imported, nothing of it run), for the caller to refuse where it matters (the state_dict).

    Returns
    -------
    object
        What was saved, with every tensor (or Parameter) as a numpy array; ``torch.device`` as
        its string, ``torch.float32``-style dtypes as :class:`TorchDtype`.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FormatError
        Legacy non-zip format, truncated or corrupt archive, or a refused global / opcode.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise
    except OSError as e:  # a directory, no permission ...
        raise FormatError(f"path: {p!r} is unreadable ({e})") from None
    _check_magic(p, head)
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise FormatError(f"path: {p!r} is a truncated or corrupt zip archive ({e})") from None
    with zf:
        return _load_from_zip(p, zf, opaque)


def _load_from_zip(p: str, zf: zipfile.ZipFile, opaque: bool = False) -> Any:
    names = zf.namelist()
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if not pkls and "data.pkl" in names:
        pkls = ["data.pkl"]
    if len(pkls) != 1:
        raise FormatError(
            f"path: expected one '<name>/data.pkl' record in the torch.save archive {p!r}, got {pkls[:5]}"
        )
    prefix = pkls[0][: -len("data.pkl")]
    if any(n.startswith(prefix + "code/") for n in names) or prefix + "constants.pkl" in names:
        raise FormatError(
            f"path: {p!r} is a TorchScript archive (torch.jit.save); save model.state_dict() "
            "with torch.save, or export to ONNX, instead"
        )
    infos = {i.filename: i for i in zf.infolist()}

    def read(name: str, limit: int | None = None) -> bytes:
        info = infos.get(name)
        if info is None:
            raise FormatError(f"path: {p!r} lacks the record {name!r} (truncated or corrupt archive)")
        if limit is not None and info.file_size > limit:
            raise FormatError(f"path: {p!r} record {name!r} is {info.file_size} bytes, expected at most {limit}")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1000 * info.compress_size + (1 << 20):
            raise FormatError(  # torch.save never compresses: refuse a decompression bomb
                f"path: {p!r} record {name!r} inflates {info.compress_size} bytes to {info.file_size}"
            )
        try:
            return zf.read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise FormatError(f"path: {p!r} record {name!r} is unreadable: truncated or corrupt ({e})") from None

    order = "little"
    if prefix + "byteorder" in infos:
        order = read(prefix + "byteorder", 16).decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise FormatError(f"path: {p!r} byteorder: expected 'little' or 'big', got {order!r}")

    cache: dict[str, np.ndarray] = {}

    def load_storage(stype: StorageType, key: str, numel: int) -> np.ndarray:
        if key in cache:
            return cache[key]
        dt = stype.dtype.newbyteorder("<" if order == "little" else ">") if stype.dtype.itemsize > 1 else stype.dtype
        need = numel * dt.itemsize
        raw = read(f"{prefix}data/{key}", max(need, 0))
        if numel < 0 or len(raw) < need:
            raise FormatError(
                f"path: {p!r} storage {key!r}: expected {need} bytes ({numel} x {stype.name}), "
                f"got {len(raw)} (truncated or corrupt)"
            )
        arr = np.frombuffer(raw, dtype=dt, count=numel)
        arr = arr.astype(dt.newbyteorder("="), copy=True)
        if stype.bfloat16:
            arr = bf16_to_f32(arr)
        cache[key] = arr
        return arr

    data = read(pkls[0], MAX_PICKLE_BYTES)
    where = f"path {p!r}"
    try:
        return _RestrictedUnpickler(data, load_storage, where, opaque).load()
    except FormatError:
        raise
    except RecursionError:
        raise FormatError(f"{where}: the pickle nests too deeply (corrupt or hostile)") from None
    except Exception as e:  # any malformed pickle: the stand-ins never run foreign code
        raise FormatError(f"{where}: corrupt pickle in {pkls[0]!r} ({type(e).__name__}: {e})") from None
