"""The public objects: :class:`Model`, :class:`Stream` (one live stream), :class:`Pool` (many).

Non-finite inputs (NaN / Inf) are **refused**: the call raises :class:`NonFiniteError` and no
stream's state changes. Every failed call leaves every state exactly as it was.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from .engine import cpu
from .engine.pack import pack
from .errors import CapacityError, NonFiniteError, ShapeError, StreamIdError, StreamRNNError, describe_buffer
from .spec import ModelSpec
from .state import State, layout_key, state_from_bytes

log = logging.getLogger("streamrnn")

_DTYPES = {"float32": np.float32, "float64": np.float64}
_I64 = np.dtype(np.int64)
_I64_MAX = int(np.iinfo(np.int64).max)


def _resolve_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.type not in (np.float32, np.float64):
        raise StreamRNNError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt


def _as_float(x: Any, name: str, dtype: np.dtype) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise ShapeError(f"{name}: expected a float array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)  # (a scalar becomes 1-D: one frame of a 1-input model)


def _check_finite(a: np.ndarray, name: str, axes: tuple[str, ...] | None = None) -> None:
    """NonFiniteError naming the first non-finite value of ``a``: by its index, or by ``axes``
    (one word per axis: ``("frame", "feature")`` -> "at frame 1, feature 3")."""
    if not np.isfinite(a).all():
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        where = f"index {idx}" if axes is None else ", ".join(f"{w} {i}" for w, i in zip(axes, idx))
        raise NonFiniteError(
            f"{name}: expected finite values, got {a[idx]} at {where} (non-finite inputs are refused; no state was changed)"
        )


def _check_out(out: Any, shape: tuple, dtype: np.dtype) -> None:
    """A caller's ``out=`` buffer (None: none): a C-contiguous array of ``dtype`` and ``shape``,
    or ShapeError saying what it is instead."""
    if out is not None and not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == dtype
                                and out.flags.c_contiguous):
        raise ShapeError(f"out: expected a C-contiguous {dtype} array of shape {shape}, got {describe_buffer(out)}")


def _id_array(a: np.ndarray, name: str, what: str) -> np.ndarray:
    """Stream ids ``a`` (an array) as a C-contiguous 1-D int64 array, or StreamIdError naming
    ``name`` and ``what`` was expected. An empty list is no ids (numpy makes it float64);
    unsigned ids past the int64 range are refused with their value (a cast would wrap them)."""
    if a.ndim == 1 and a.size == 0:
        return np.zeros(0, np.int64)
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise StreamIdError(f"{name}: expected {what}, got {a.dtype} {a.shape}")
    if a.dtype.kind == "u" and int(a.max()) > _I64_MAX:
        r = int(np.argmax(a > _I64_MAX))
        raise StreamIdError(f"{name}[{r}]: expected an id of an open stream, got {int(a[r])} (unknown)")
    return np.ascontiguousarray(a, dtype=np.int64)


def _live_ids(ids: Any, name: str, alive: np.ndarray) -> np.ndarray:
    """``ids`` (an int or 1-D int array) as int64 ids of open streams of a pool whose open rows
    are ``alive`` (capacity rows), distinct; or StreamIdError naming ``name``, the id and why."""
    a = np.asarray(ids)
    a = _id_array(a.reshape(1) if a.ndim == 0 else a, name, "an int or 1-D int array of stream ids")
    n, cap = a.shape[0], alive.shape[0]
    if n == 1:
        bad = not (0 <= a[0] < cap and alive[a[0]])
    else:  # whole-array calls (a loop over 64 ids took 19.5 us; np.unique 108 us for 1024 ids)
        bad = n > 0 and (a.min() < 0 or a.max() >= cap or not alive[a].all())
    if bad:  # the first bad row, as a loop over the ids would find it
        known = (a >= 0) & (a < cap)
        ok = known.copy()
        ok[known] = alive[a[known]] != 0
        r = int(np.argmin(ok))
        if not known[r]:
            raise StreamIdError(f"{name}[{r}]: expected an id of an open stream, got {a[r]} (unknown)")
        raise StreamIdError(f"{name}[{r}]: expected an open stream id, got {a[r]} (closed or never opened)")
    if n > 1:
        s = np.sort(a)
        if (s[1:] == s[:-1]).any():
            raise StreamIdError(f"{name}: expected distinct ids, got repeats in {a.tolist()}")
    return a


def _live_id(sid: Any, alive: np.ndarray) -> int:
    """One open stream id ``sid`` (an int, or a sequence of one): get_state, set_state, push."""
    a = _live_ids(sid, "sid", alive)
    if a.shape[0] != 1:
        raise StreamIdError(f"sid: expected one stream id, got {a.shape[0]}: {a.tolist()}")
    return int(a[0])


class Model:
    """A recurrent model ready to run, stream and pool.

    Build one with :func:`streamrnn.load`, :func:`streamrnn.from_onnx`,
    :func:`streamrnn.from_torch` or ``Model(spec)`` from a :class:`~streamrnn.spec.ModelSpec`.

    Parameters
    ----------
    spec : ModelSpec
        The layers (weights in the ONNX layout).
    dtype : {"float32", "float64"}
        Precision of weights, states and outputs.
    device : {"cpu", "cuda"}
        Where the kernels run.
    weights : {"float", "bfloat16"}
        Opt-in reduced precision for the per-frame paths (CPU, float32 models): the recurrent
        weight matrices are rounded to bfloat16 (half the bytes to stream per step; float32
        accumulation). Every path of the model (step, push, pool, run) then uses the same
        rounded weights, so they still agree to float32 rounding with each other; against the
        float weights the outputs move by the weight rounding (relative ~2^-9 per weight; see
        ``tests/test_bfloat16.py`` for the measured error).
    """

    def __init__(self, spec: ModelSpec, *, dtype: Any = "float32", device: str = "cpu", weights: str = "float"):
        if not isinstance(spec, ModelSpec):
            raise StreamRNNError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
        self.spec = spec
        self.dtype = _resolve_dtype(dtype)
        if device not in ("cpu", "cuda"):
            raise StreamRNNError(f"device: expected 'cpu' or 'cuda', got {device!r}")
        self.device = device
        if weights not in ("float", "bfloat16"):
            raise StreamRNNError(f"weights: expected 'float' or 'bfloat16', got {weights!r}")
        if weights == "bfloat16" and (self.dtype != np.float32 or device != "cpu"):
            raise StreamRNNError(
                f"weights: 'bfloat16' needs dtype='float32' and device='cpu', got dtype={self.dtype}, device={device!r}"
            )
        self.weights = weights
        self._packed = pack(spec, self.dtype, weights)
        self._key = layout_key(spec)
        self._slots = spec.state_slots()
        if device == "cuda":
            from .engine import cuda as cuda_engine  # imported only when asked for

            self._cuda = cuda_engine.CudaEngine(self)
        else:
            self._cuda = None
            if self.streamable:
                cpu.compile_for(self.dtype, "stream")
                cpu.compile_for(self.dtype, cpu.step_group(self._packed))  # the step its streams use

    # -- description -----------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Features per time step (the last axis of ``x`` / ``X``)."""
        return self.spec.input_size

    @property
    def output_size(self) -> int:
        """Outputs per time step (the last axis of ``y`` / ``Y``)."""
        return self.spec.output_size

    @property
    def state_size(self) -> int:
        """Floats of recurrent state per stream."""
        return self._packed.state_size

    @property
    def streamable(self) -> bool:
        """False when a layer is reverse or bidirectional (``run`` only)."""
        return self.spec.streamable

    def __repr__(self) -> str:
        return f"<streamrnn.Model {self.spec.name!r} {self.input_size}->{self.output_size} {self.dtype} {self.device}>"

    def __str__(self) -> str:
        return self.spec.summary() + f"\n  dtype={self.dtype}  device={self.device}"

    # -- state helpers ---------------------------------------------------------------------
    def _new_state(self, data: np.ndarray) -> State:
        return State(data, self._slots, self._key)

    def _state_array(self, state: Any, name: str, batch: int | None) -> np.ndarray:
        """Validate a State / array and return a fresh float array (S,) or (B, S)."""
        S = self.state_size
        if isinstance(state, State):
            if state._key != self._key:
                raise StreamRNNError(f"{name}: expected a state of this model's layout, got one of another model")
            data = state.data
        else:
            data = np.asarray(state)
            if data.dtype.kind not in "fiu":
                raise ShapeError(f"{name}: expected a State or float array, got {type(state).__name__}")
        data = np.array(data, dtype=self.dtype, copy=True, order="C")
        if batch is None:
            if data.shape != (S,):
                raise ShapeError(f"{name}: expected one stream's state of shape ({S},), got {data.shape}")
        else:
            if data.shape == (S,):
                data = np.broadcast_to(data, (batch, S)).copy()
            if data.shape != (batch, S):
                raise ShapeError(f"{name}: expected a state of shape ({batch}, {S}) or ({S},), got {data.shape}")
        _check_finite(data, name)
        return data

    def state_from_bytes(self, blob: bytes) -> State:
        """Parse bytes written by ``State.to_bytes`` / ``Stream.state_bytes``."""
        return state_from_bytes(blob, self._key, self._slots, self.dtype)

    # -- offline ---------------------------------------------------------------------------
    def run(
        self,
        X: Any,
        state: Any = None,
        return_state: bool = False,
        lengths: Any = None,
    ):
        """Run whole sequences.

        Parameters
        ----------
        X : array (T, input_size) or (B, T, input_size)
        state : State or array, optional
            Initial state; a one-stream state is broadcast over the batch. Zeros if None.
        return_state : bool
            Also return the final state (a batched State for 3-D X).
        lengths : int array (B,), optional
            Valid steps per sequence (ragged batch, ONNX ``sequence_lens``). Outputs past a length
            are exactly 0; the returned state of a sequence is its state at its last valid step.

        Returns
        -------
        Y : array (T, output_size) or (B, T, output_size), or ``(Y, State)``.
        """
        X = _as_float(X, "X", self.dtype)
        if X.ndim not in (2, 3):
            raise ShapeError(f"X: expected rank 2 (T, {self.input_size}) or 3 (B, T, {self.input_size}), got shape {X.shape}")
        single = X.ndim == 2
        X3 = X[None] if single else X
        B, T, I = X3.shape
        if I != self.input_size:
            raise ShapeError(f"X: expected {self.input_size} features in the last axis, got shape {X.shape}")
        _check_finite(X, "X")  # the index in the caller's rank
        if lengths is None:
            L = np.full(B, T, dtype=np.int64)
        else:
            la = np.asarray(lengths)
            if la.dtype.kind not in "iu" or la.shape != (B,):
                raise ShapeError(f"lengths: expected an int array of shape ({B},), got {la.dtype} {la.shape}")
            L = np.ascontiguousarray(la, dtype=np.int64)
            if (L < 0).any() or (L > T).any():
                raise ShapeError(f"lengths: expected values in [0, {T}], got min {L.min()} max {L.max()}")
        if state is None:
            st = np.zeros((B, self.state_size), dtype=self.dtype)
        else:
            st = self._state_array(state, "state", B)
        if self._cuda is not None:
            Y = self._cuda.run(X3, L, st)
        else:
            cpu.compile_for(self.dtype, "run")
            Y = cpu.run_sequence(self._packed, X3, L, st)
        Y = Y[0] if single else Y
        if return_state:
            return Y, self._new_state(st[0] if single else st)
        return Y

    # -- online ----------------------------------------------------------------------------
    def _require_streamable(self, what: str) -> None:
        if not self.streamable:
            bad = [l.describe() for l in self.spec.layers if not l.streamable]
            raise StreamRNNError(
                f"{what}: expected a model of forward layers only, got {bad}: a reverse or "
                "bidirectional layer needs the future of the sequence; use model.run() instead"
            )

    def stream(self) -> "Stream":
        """A new live stream with zero state (see :class:`Stream`)."""
        self._require_streamable("stream()")
        return Stream(self)

    def pool(self, capacity: int = 4096) -> "Pool":
        """A preallocated pool for up to ``capacity`` live streams (see :class:`Pool`)."""
        self._require_streamable("pool()")
        return Pool(self, capacity)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model in streamrnn's ``.srnn`` format (JSON architecture + safetensors).

        Parameters
        ----------
        path : a path ending in ``.srnn`` (``streamrnn.load`` picks the format by the suffix).

        Raises
        ------
        StreamRNNError : ``path`` does not end in ``.srnn``.
        FileNotFoundError : its folder does not exist.
        """
        from .fileformat import save_srnn

        save_srnn(self.spec, path)


def _raise_status(rc: int, model: Model, xname: str, x, out, ids=None) -> None:
    code, idx = rc & 0xFF, rc >> 8
    if code == cpu.E_XLEN:
        shape = getattr(x, "shape", None)
        raise ShapeError(f"{xname}: expected {model.input_size} features per frame, got shape {shape}")
    if code == cpu.E_OUTLEN:
        raise ShapeError(f"out: expected shape matching {model.output_size} outputs per frame, got {getattr(out, 'shape', None)}")
    if code == cpu.E_NONFINITE:
        t, k = idx >> 32, idx & 0xFFFFFFFF
        where = f"frame {t}" if xname == "X" and ids is None else f"row {idx}" if ids is not None else f"feature {k}"
        raise NonFiniteError(f"{xname}: expected finite values, got NaN/Inf at {where} (refused; no state changed)")
    if code in (cpu.E_ID_RANGE, cpu.E_ID_CLOSED, cpu.E_ID_DUP):
        sid = int(ids[idx])
        why = {cpu.E_ID_RANGE: "an id of an open stream", cpu.E_ID_CLOSED: "an open stream id", cpu.E_ID_DUP: "distinct ids"}[code]
        got = {cpu.E_ID_RANGE: f"{sid} (unknown)", cpu.E_ID_CLOSED: f"{sid} (closed or never opened)", cpu.E_ID_DUP: f"{sid} repeated"}[code]
        raise StreamIdError(f"ids[{idx}]: expected {why}, got {got}; no state changed")
    raise StreamRNNError(f"internal status {rc}")  # pragma: no cover


class Stream:
    """One live stream: the model's recurrent state, advanced frame by frame.

    ``step(x)`` (one frame) and ``push(X)`` (a chunk) give the same results as ``Model.run`` on
    the whole sequence. ``reset()`` returns to the zero state. Thread-safe: calls on one stream
    are serialised; different streams run in parallel (the kernels release the GIL).
    """

    def __init__(self, model: Model):
        self.model = model
        pk = model._packed
        self._S = pk.state_size
        self._I, self._O = model.input_size, model.output_size
        self._dtype = model.dtype
        self._W, self._meta, self._Wh = pk.W, pk.meta, pk.Wh
        # [state | scratch | row-order flag] (engine/cpu.py: _stream_step_impl)
        self._sbuf = np.zeros(pk.state_size + pk.scratch_size + 1, dtype=model.dtype)
        self._lock = threading.Lock()
        # small models: the kernel holds the GIL (it serialises calls, no lock needed); large
        # ones release it (other threads run) and take the lock
        group = cpu.step_group(pk)  # the step kernel the model compiled for its streams
        self._gil_step = group in ("step_gil", "bfloat16_gil")
        self._cuda = model._cuda.stream() if model._cuda is not None else None
        self._fast = self._cuda is None and group == "step_gil"
        # the fast step's buffers by address (one argument instead of three; see step_context)
        self._ctx = cpu.step_context(self._sbuf, pk.W, pk.meta) if self._fast else None
        self._kstep = cpu.stream_step_gil(model.dtype)

    def step(self, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Advance one frame: x (input_size,) -> y (output_size,).

        ``out``: a caller's C-contiguous buffer of the model dtype to write into (no allocation).
        """
        if out is None:
            out = np.empty(self._O, self._dtype)
        if self._fast:  # small float model on the CPU: GIL-held kernel, no lock (see __init__)
            try:
                rc = self._kstep(x, out, self._ctx)
            except TypeError:  # not a contiguous array of the model dtype: convert, then retry
                x, out = self._coerce(x, out)
                rc = self._kstep(x, out, self._ctx)
            if rc:
                _raise_status(rc, self.model, "x", x, out)
            return out
        return self._step_other(x, out)

    def _step_other(self, x, out):
        """step() for the CUDA engine, bfloat16 weights and large models (which release the GIL
        and take the stream's lock)."""
        if self._cuda is not None:
            return self._cuda.step(x, out)
        if self._Wh.shape[0] > 1:
            return self._step_bf16(x, out)
        with self._lock:
            try:
                rc = cpu._stream_step(x, out, self._sbuf, self._W, self._meta)
            except TypeError:
                x, out = self._coerce(x, out)
                rc = cpu._stream_step(x, out, self._sbuf, self._W, self._meta)
        if rc:
            _raise_status(rc, self.model, "x", x, out)
        return out

    def _step_bf16(self, x, out):
        k = cpu._stream_step_gil_h if self._gil_step else cpu._stream_step_h
        with self._lock:
            try:
                rc = k(x, out, self._sbuf, self._W, self._Wh, self._meta)
            except TypeError:
                x, out = self._coerce(x, out)
                rc = k(x, out, self._sbuf, self._W, self._Wh, self._meta)
        if rc:
            _raise_status(rc, self.model, "x", x, out)
        return out

    def _coerce(self, x, out):
        x = _as_float(x, "x", self._dtype)
        if x.ndim != 1:
            raise ShapeError(f"x: expected shape ({self._I},), got {x.shape}")
        if not (isinstance(out, np.ndarray) and out.dtype == self._dtype and out.flags.c_contiguous and out.ndim == 1):
            raise ShapeError(
                f"out: expected a C-contiguous {self._dtype} array of shape ({self._O},), got "
                f"{describe_buffer(out)}"
            )
        return x, out

    def push(self, X: Any) -> np.ndarray:
        """Advance a chunk: X (T, input_size) -> Y (T, output_size)."""
        X = _as_float(X, "X", self._dtype)
        if X.ndim != 2:
            raise ShapeError(f"X: expected rank 2 (T, {self._I}), got shape {X.shape}")
        if self._cuda is not None:
            return self._cuda.push(X)
        with self._lock:
            rc, Y = cpu.push_chunk(self.model._packed, X, self._sbuf)
        if rc:
            _raise_status(rc, self.model, "X", X, Y)
        return Y

    def reset(self) -> None:
        """Back to the zero state (as a fresh ``model.stream()``)."""
        with self._lock:
            if self._cuda is not None:
                self._cuda.reset()
            self._sbuf[: self._S] = 0

    @property
    def state(self) -> State:
        """A copy of the full recurrent state; assign a State to restore it."""
        with self._lock:
            if self._cuda is not None:
                return self.model._new_state(self._cuda.get_state())
            return self.model._new_state(self._sbuf[: self._S].copy())

    @state.setter
    def state(self, value: Any) -> None:
        data = self.model._state_array(value, "state", None)
        with self._lock:
            if self._cuda is not None:
                self._cuda.set_state(data)
            else:
                self._sbuf[: self._S] = data

    def state_bytes(self) -> bytes:
        """The state as portable bytes (restore with :meth:`load_state_bytes`, on any device)."""
        return self.state.to_bytes()

    def load_state_bytes(self, blob: bytes) -> None:
        """Restore the state from :meth:`state_bytes` output (of this model, on any device)."""
        self.state = self.model.state_from_bytes(blob)


class Pool:
    """Preallocated state for up to ``capacity`` live streams, advanced together.

    Streams never see each other's state. Opening past capacity raises and opens nothing.
    Closed, unknown and negative ids raise on every call. Thread-safe (serialised per pool).
    """

    #: pool.step steps the listed streams as a batch (``cpu.BatchedStep``: float32 on column
    #: panels, on the spinning team of threads; float64 on BLAS) from this many streams on, or
    #: from two streams on where streams x weight-floats reach BATCH_MIN_WORK; below, one
    #: whole-stack mat-vec kernel per stream, serially (bench/NOTES.md entry 60: at 8 streams the
    #: batch is 1.2x (H=64) to 4.6x (H=512) faster than that kernel; at H=128 from 2 streams on)
    GEMM_MIN_STREAMS = 8
    BATCH_MIN_WORK = 1 << 18

    def __init__(self, model: Model, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or capacity <= 0:
            raise StreamRNNError(f"capacity: expected a positive int, got {capacity!r}")
        self.model = model
        pk = model._packed
        self._capacity = int(capacity)
        self._S, self._I, self._O = pk.state_size, model.input_size, model.output_size
        self._dtype = model.dtype
        self._W, self._meta = pk.W, pk.meta
        self._arena = np.zeros((self._capacity, max(self._S, 1)), dtype=model.dtype)  # (cap, S)
        self._alive = np.zeros(self._capacity, dtype=np.uint8)
        self._stamp = np.zeros(self._capacity, dtype=np.int64)
        self._epoch = 0
        self._scr = np.zeros((1, pk.scratch_size), dtype=model.dtype)  # the serial kernel's scratch
        if model._cuda is None:
            cpu.compile_for(model.dtype, "pool")
        self._batched = cpu.BatchedStep(pk, self._arena, self._alive, self._stamp)
        if model._cuda is None:
            self._batched.start_team()
        # stack of free ids, top at _nfree - 1 (lowest id opened first); an int64 array, not a
        # list of Python ints (4 MB per 100,000 streams)
        self._free = np.arange(self._capacity - 1, -1, -1, dtype=np.int64)
        self._nfree = self._capacity
        self._n_open = 0
        self._lock = threading.Lock()
        self._cuda = model._cuda.pool(self._capacity) if model._cuda is not None else None

    @property
    def capacity(self) -> int:
        """The most streams this pool holds open at once."""
        return self._capacity

    def __len__(self) -> int:
        return self._n_open

    def __repr__(self) -> str:
        return f"<streamrnn.Pool {self._n_open}/{self._capacity} streams>"

    # -- ids -------------------------------------------------------------------------------
    def open(self, n: int | None = None):
        """Open one stream (returns an int id) or ``n`` streams (an int64 array of ids).

        A fresh pool hands out 0, 1, 2, ...; closed ids are reused first, the most recently
        closed first. Past the capacity: CapacityError, and nothing is opened."""
        k = 1 if n is None else n
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise StreamRNNError(f"n: expected a non-negative int, got {n!r}")
        with self._lock:
            if k > self._nfree:
                raise CapacityError(
                    f"n: expected at most {self._nfree} more streams (capacity {self._capacity}, "
                    f"{self._n_open} open), got {k}; nothing was opened"
                )
            ids = self._free[self._nfree - k : self._nfree][::-1].copy()
            self._nfree -= k
            self._arena[ids] = 0
            if self._cuda is not None:
                self._cuda.reset(ids)
            self._alive[ids] = 1
            self._n_open += k
        return int(ids[0]) if n is None else ids

    def _ids(self, ids: Any, name: str = "ids") -> np.ndarray:
        return _live_ids(ids, name, self._alive)

    def close(self, ids: Any) -> None:
        """Close streams; their ids may be reused by a later ``open``."""
        with self._lock:
            a = self._ids(ids)
            self._alive[a] = 0
            self._free[self._nfree : self._nfree + len(a)] = a[::-1]
            self._nfree += len(a)
            self._n_open -= len(a)

    def reset(self, ids: Any) -> None:
        """Zero the state of open streams."""
        with self._lock:
            a = self._ids(ids)
            self._arena[a] = 0
            if self._cuda is not None:
                self._cuda.reset(a)

    def get_state(self, sid: int) -> State:
        """A copy of stream ``sid``'s state."""
        with self._lock:
            sid = _live_id(sid, self._alive)
            if self._cuda is not None:
                return self.model._new_state(self._cuda.get_state(sid))
            return self.model._new_state(self._arena[sid, : self._S].copy())

    def set_state(self, sid: int, state: Any) -> None:
        """Restore stream ``sid`` from a State (e.g. ``Stream.state`` or ``get_state``)."""
        data = self.model._state_array(state, "state", None)
        with self._lock:
            sid = _live_id(sid, self._alive)
            if self._cuda is not None:
                self._cuda.set_state(sid, data)
            else:
                self._arena[sid, : self._S] = data

    # -- compute ---------------------------------------------------------------------------
    def _step_one(self, sid: int, x: Any, out: np.ndarray | None) -> np.ndarray:
        """``step`` of one int id: x (input_size,) -> (output_size,), written into ``out`` if given."""
        dt = self._dtype
        x = _as_float(x, "X", dt)
        if x.ndim != 1:
            raise ShapeError(f"X: expected shape ({self._I},) with one int stream id, got {x.shape}")
        _check_out(out, (self._O,), dt)  # here: the batched call below would name the reshaped (1, n) buffer
        y = self.step(np.array([sid], np.int64), x.reshape(1, -1), None if out is None else out.reshape(1, -1))
        return y[0]

    def step(self, ids: Any, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Each listed stream advances one frame: ids (n,), X (n, input_size) -> Y (n, output_size).

        An int ``ids`` with X (input_size,) returns (output_size,).
        """
        dt = self._dtype
        # the checks of a well-formed call first (``is``: dtype objects of native types are
        # singletons; ~0.3 us less than ``==`` on three arrays), the general ones where they fail
        if not (type(ids) is np.ndarray and ids.dtype is _I64 and ids.ndim == 1 and ids.flags.c_contiguous):
            if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
                return self._step_one(ids, X, out)
            ids = _id_array(np.asarray(ids), "ids", "a 1-D int array of stream ids")
        if not (type(X) is np.ndarray and X.dtype is dt and X.flags.c_contiguous):
            X = _as_float(X, "X", dt)
        if X.ndim != 2:
            raise ShapeError(f"X: expected rank 2 ({len(ids)}, {self._I}), got shape {X.shape}")
        n = ids.shape[0]
        if out is None:
            out = np.empty((n, self._O), dt)
        elif not (type(out) is np.ndarray and out.dtype is dt and out.ndim == 2 and out.flags.c_contiguous):
            if not (isinstance(out, np.ndarray) and out.dtype == dt and out.flags.c_contiguous and out.ndim == 2):
                raise ShapeError(f"out: expected a C-contiguous {dt} array ({n}, {self._O}), got {describe_buffer(out)}")
        if self._cuda is not None:
            with self._lock:
                self._cuda.step(ids, X, out, self._alive)
            return out
        with self._lock:
            self._epoch += 1
            if n >= self.GEMM_MIN_STREAMS or n > 1 and n * self._W.size >= self.BATCH_MIN_WORK:
                rc = self._batched.step(ids, X, out, self._epoch)
            else:
                rc = cpu._pool_step(ids, X, out, self._arena, self._scr, self._W, self.model._packed.Wh, self._meta,
                                    self._alive, self._stamp, self._epoch)
        if rc:
            _raise_status(rc, self.model, "X", X, out, ids)
        return out

    def push(self, sid: int, X: Any) -> np.ndarray:
        """One stream advances a chunk: X (T, input_size) -> Y (T, output_size)."""
        X = _as_float(X, "X", self._dtype)
        if X.ndim != 2:
            raise ShapeError(f"X: expected rank 2 (T, {self._I}), got shape {X.shape}")
        with self._lock:
            sid = _live_id(sid, self._alive)
            if self._cuda is not None:
                return self._cuda.push(sid, X)
            sbuf = np.empty(self._S + self._scr.shape[1], self._dtype)
            sbuf[: self._S] = self._arena[sid, : self._S]
            rc, Y = cpu.push_chunk(self.model._packed, X, sbuf)
            if rc:
                _raise_status(rc, self.model, "X", X, Y)
            self._arena[sid, : self._S] = sbuf[: self._S]
        return Y
