"""The ``.srnn`` format: a safetensors container whose metadata holds the architecture as JSON.

Layout (safetensors): 8-byte little-endian header length N, N bytes of JSON header, raw data.
The header's ``__metadata__`` holds ``{"format": "streamrnn", "version": "1", "spec": <JSON>}``;
tensors are the layers' arrays named ``layers.<i>.<field>`` (see ``ModelSpec.tensors``).
Reading parses the header with bounds checks and memory-maps the data: no pickle, no code.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from .errors import FormatError, StreamRNNError
from .spec import ModelSpec

FORMAT_VERSION = 1
# safetensors dtype -> the numpy dtype of its raw bytes (BF16: uint16 bits, widened on read)
_ST_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16,
              "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
              "U8": np.uint8, "BOOL": np.bool_}
_NP_TO_ST = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16"}
_MAX_HEADER = 100 * 1024 * 1024


def save_srnn(spec: ModelSpec, path: str | os.PathLike) -> None:
    """Write ``spec`` to ``path`` (weights stored in their own dtype, float32 or float64).

    ``path`` must end in ``.srnn``: :func:`streamrnn.load` picks the format by the suffix, so a
    file named ``model.onnx`` holding this format could not be loaded back. The file appears
    whole or not at all (written beside it, then renamed)."""
    path = os.fspath(path)
    if not isinstance(path, str) or not path.lower().endswith(".srnn"):
        raise StreamRNNError(f"path: expected a path ending in .srnn (load picks the format by the suffix), got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(2, "no such directory to save into", folder)
    tensors = spec.tensors()
    header: dict[str, Any] = {
        "__metadata__": {"format": "streamrnn", "version": str(FORMAT_VERSION), "spec": json.dumps(spec.to_json())}
    }
    off = 0
    blobs = []
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if a.dtype not in _NP_TO_ST:
            a = a.astype(np.float32)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        b = a.tobytes()
        header[name] = {"dtype": _NP_TO_ST[np.dtype(a.dtype.str.lstrip("<>|="))], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(h)))
            f.write(h)
            for b in blobs:
                f.write(b)
        os.replace(tmp, path)
    finally:  # a failed write (disk full, interrupted) leaves no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)


def _json_int(v: Any) -> int:
    """An int of a safetensors header (not a bool, a float or a string that looks like one)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an int, got {v!r}")
    return v


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32, exactly: the bf16 bits are the top half of a float32."""
    return (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)


def read_safetensors(path: str, *, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file without the safetensors package: (tensors, metadata).

    Every offset is bounds-checked; a malformed or truncated file raises FormatError. BF16
    tensors come back widened to float32 (exactly); an unknown dtype raises FormatError.
    """
    size = os.path.getsize(path)  # FileNotFoundError for a missing file
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise FormatError(f"path: {path!r} is truncated (expected a safetensors header)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, _MAX_HEADER):
            raise FormatError(f"path: {path!r} has a header length of {n} bytes, beyond the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"path: {path!r} has a corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"path: {path!r} header: expected a JSON object, got {type(header).__name__}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise FormatError(f"path: {path!r} header: expected __metadata__ to be a JSON object, got {type(meta).__name__}")
    data_start, data_len = 8 + n, size - 8 - n
    buf = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,)) if (mmap and data_len) else None
    if buf is None and data_len:
        with open(path, "rb") as f:
            f.seek(data_start)
            buf = np.frombuffer(f.read(), dtype=np.uint8)
    tensors = {}
    for name, info in header.items():
        if isinstance(info, dict) and isinstance(info.get("dtype"), str) and info["dtype"] not in _ST_DTYPES:
            raise FormatError(f"path: {path!r} tensor {name!r}: expected a dtype among {sorted(_ST_DTYPES)}, "
                              f"got {info['dtype']}")
        try:
            dt = _ST_DTYPES[info["dtype"]]
            shape = tuple(_json_int(s) for s in info["shape"])
            a, b = (_json_int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"path: {path!r} tensor {name!r}: bad header entry ({e!r})") from None
        nbytes = math.prod(shape) * np.dtype(dt).itemsize  # Python ints: no overflow to a small size
        if not (0 <= a <= b <= data_len) or b - a != nbytes or any(s < 0 for s in shape):
            raise FormatError(f"path: {path!r} tensor {name!r}: offsets {a}..{b} do not fit shape {shape} in {data_len} data bytes")
        arr = (buf[a:b] if nbytes else np.zeros(0, np.uint8)).view(np.dtype(dt).newbyteorder("<")).reshape(shape)
        tensors[name] = bf16_to_f32(arr) if info["dtype"] == "BF16" else arr  # (a float32 copy)
    return tensors, {str(k): str(v) for k, v in meta.items()}


def load_srnn(path: str) -> ModelSpec:
    """Read a ``.srnn`` file into a ModelSpec (weights memory-mapped)."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != "streamrnn":
        raise FormatError(f"path: {path!r} is not a streamrnn model (metadata format={meta.get('format')!r})")
    try:
        version = int(meta.get("version", "0"))
    except ValueError:
        raise FormatError(f"path: {path!r} has a bad format version {meta.get('version')!r}") from None
    if version > FORMAT_VERSION:
        raise FormatError(
            f"path: {path!r} is .srnn format version {version}, newer than this streamrnn reads "
            f"({FORMAT_VERSION}); upgrade streamrnn"
        )
    try:
        d = json.loads(meta["spec"])
        return ModelSpec.from_json(d, tensors)
    except FormatError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # ValueError: StreamRNNError, JSON too
        raise FormatError(f"path: {path!r} holds a bad architecture ({e})") from None
