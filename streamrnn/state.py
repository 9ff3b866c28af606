"""Recurrent state snapshots: :class:`State`, and its portable bytes."""
from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np

from .errors import FormatError, ShapeError
from .spec import ModelSpec

_MAGIC = b"SRNNSTAT"
_VERSION = 1


def layout_key(spec: ModelSpec) -> str:
    """A short fingerprint of a model's state layout (slots and sizes), not of its weights."""
    desc = json.dumps([(i, d, k, o, n, type(spec.layers[i]).__name__) for i, d, k, o, n in spec.state_slots()])
    return hashlib.sha1(desc.encode()).hexdigest()[:16]


class State:
    """A copy of the full recurrent state of one stream (``batch is None``) or of a batch.

    ``data`` is the flat state: (S,) for one stream, (B, S) for a batch, in the layout of
    ``ModelSpec.state_slots`` (per recurrent layer and direction: h, then c for LSTM).
    Mutating a State never changes a stream; it is accepted by ``Stream.state = ...``,
    ``Pool.set_state`` and ``Model.run(X, state=...)``.
    """

    __slots__ = ("data", "_slots", "_key")

    def __init__(self, data: np.ndarray, slots, key: str):
        self.data = data
        self._slots = slots
        self._key = key

    @property
    def batch(self) -> int | None:
        """None for one stream's state, else the number of sequences."""
        return None if self.data.ndim == 1 else int(self.data.shape[0])

    def layers(self) -> dict[tuple[int, int, str], np.ndarray]:
        """Views of the state by ``(layer_index, direction, "h" | "c")``; each (size,) or (B, size)."""
        return {(i, d, k): self.data[..., o : o + n] for i, d, k, o, n in self._slots}

    def h(self, layer: int, direction: int = 0) -> np.ndarray:
        """Hidden state of recurrent layer ``layer`` (index in the model's layer list)."""
        return self.layers()[(layer, direction, "h")]

    def c(self, layer: int, direction: int = 0) -> np.ndarray:
        """Cell state of LSTM layer ``layer``."""
        return self.layers()[(layer, direction, "c")]

    def copy(self) -> "State":
        """An independent copy (its own data array)."""
        return State(self.data.copy(), self._slots, self._key)

    def __getitem__(self, b: int) -> "State":
        """The state of batch entry ``b`` as a one-stream State."""
        if self.data.ndim != 2:
            raise ShapeError("State: indexing needs a batched state, this one holds one stream")
        return State(self.data[b].copy(), self._slots, self._key)

    def to_bytes(self) -> bytes:
        """Portable bytes: header (magic, version, dtype, layout key, shape) + little-endian data."""
        hdr = json.dumps(
            {"v": _VERSION, "dtype": self.data.dtype.str.lstrip("<>|="), "key": self._key, "shape": list(self.data.shape)}
        ).encode()
        body = np.ascontiguousarray(self.data, dtype=self.data.dtype.newbyteorder("<")).tobytes()
        return _MAGIC + struct.pack("<I", len(hdr)) + hdr + body

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(state)``: the flat state ``data`` ((S,) or (B, S))."""
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        return self.data if dtype is None else self.data.astype(dtype, copy=False)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, State) and self._key == other._key and np.array_equal(self.data, other.data)

    def __repr__(self) -> str:
        b = "" if self.batch is None else f", batch={self.batch}"
        return f"State(floats={self.data.shape[-1]}{b}, dtype={self.data.dtype})"


def state_from_bytes(blob: bytes, spec_key: str, slots, dtype) -> State:
    """Parse :meth:`State.to_bytes` output for a model whose layout key is ``spec_key``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise FormatError(f"blob: expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 12 or blob[:8] != _MAGIC:
        raise FormatError("blob: expected streamrnn state bytes (magic 'SRNNSTAT'), got something else")
    (n,) = struct.unpack("<I", blob[8:12])
    try:
        hdr = json.loads(blob[12 : 12 + n])
        v, dt, key, shape = hdr["v"], np.dtype("<" + hdr["dtype"]), hdr["key"], tuple(hdr["shape"])
    except Exception as e:
        raise FormatError(f"blob: corrupt state header ({e})") from None
    if v > _VERSION:
        raise FormatError(f"blob: state format version {v} is newer than this streamrnn reads ({_VERSION})")
    if key != spec_key:
        raise FormatError(f"blob: state is for a different model layout (key {key}, expected {spec_key})")
    body = blob[12 + n :]
    if dt.kind != "f" or len(body) != int(np.prod(shape)) * dt.itemsize:
        raise FormatError(f"blob: expected {int(np.prod(shape)) * dt.itemsize} bytes of data, got {len(body)}")
    data = np.frombuffer(body, dtype=dt).reshape(shape).astype(dtype)
    return State(data, slots, key)
