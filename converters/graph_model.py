"""Graph models: an ONNX graph that is not a plain chain of layers, run node by node.

Stateless nodes run vectorised in numpy over a whole chunk; recurrent nodes run on the engine's
kernels (a one-layer model per node). The recurrent state of a stream is the state of every
recurrent node, carried from chunk to chunk, so ``stream()`` / ``pool()`` work when the graph
is causal frame by frame (checked at load time on a probe input: running a sequence whole must
equal running it in two chunks). States the graph computes itself (``plan.feedback``) follow the
recurrent nodes' in the flat state and are fed back from output to input chunk by chunk.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

import numpy as np

from ..errors import CapacityError, ShapeError, StreamRNNError, UnsupportedError
from ..model import _as_float, _check_finite, _check_out, _live_id, _live_ids
from ..state import State, state_from_bytes
from .graph import Graph
from .graph_plan import IOPlan
from .graph_step import NotStepwise, StepPlan

log = logging.getLogger("streamrnn")


class GraphModel:
    """A model backed by a compiled ONNX graph (same ``run`` / ``stream`` / ``pool`` API as
    :class:`streamrnn.Model`; ``spec`` is None and ``save`` is not available)."""

    spec = None

    def __init__(self, graph: Graph, plan: IOPlan, *, device: str = "cpu"):
        self.graph, self.plan = graph, plan
        self.dtype = np.dtype(plan.dtype)
        self.device = device
        self._slots = [
            (i, d, k, r.offset + off, n)
            for i, r in enumerate(plan.rec)
            for _, d, k, off, n in r.model.spec.state_slots()
        ] + [(len(plan.rec) + j, 0, f.name, f.offset, f.size) for j, f in enumerate(plan.feedback)]
        desc = json.dumps(["onnx-graph", [r.node.name for r in plan.rec], self._slots])
        self._key = hashlib.sha1(desc.encode()).hexdigest()[:16]
        self._step = None  # the general path while the graph is checked
        self._stream_why = self._check_streamable()
        self._step = self._step_plan()

    # -- description -----------------------------------------------------------------------
    input_size = property(lambda self: self.plan.input_size, doc="Features per time step.")
    output_size = property(lambda self: self.plan.output_size, doc="Outputs per time step.")
    state_size = property(lambda self: self.plan.state_size, doc="Floats of recurrent state per stream.")

    @property
    def streamable(self) -> bool:
        """Whether ``stream()`` / ``pool()`` accept this graph (see ``not_streamable_because``)."""
        return self._stream_why is None

    @property
    def not_streamable_because(self) -> str | None:
        """Why ``stream()`` / ``pool()`` refuse this graph (None: they do not)."""
        return self._stream_why

    @property
    def frame_step(self) -> dict[str, Any] | None:
        """How ``stream().step`` / ``pool().step`` run a frame (None: the graph does not stream):
        ``{"planned": True, "per_frame": k, "as_reshapes": r, "of": n}`` (k of the graph's n nodes
        run every frame, r of them as reshapes, the rest once per batch size), or
        ``{"planned": False, "of": n}`` (the whole graph every frame: the CUDA engine)."""
        if self._stream_why is not None:
            return None
        n = len(self.graph.nodes)
        if self._step is None:
            return {"planned": False, "of": n}
        per_frame, as_reshapes = self._step.counts()
        return {"planned": True, "per_frame": per_frame, "as_reshapes": as_reshapes, "of": n}

    def num_params(self) -> int:
        """Float initializers of the graph (weights, biases), as ``ModelSpec.num_params``."""
        return int(sum(a.size for a in self.graph.consts.values() if a.dtype.kind == "f"))

    def __repr__(self) -> str:
        return (f"<streamrnn GraphModel {self.graph.name!r} {self.input_size}->{self.output_size} "
                f"{self.dtype} {self.device}>")

    def __str__(self) -> str:
        lines = [f"{self.graph.name}: ONNX graph model, input {self.input_size} -> output {self.output_size}"]
        for n in self.graph.nodes:
            lines.append(f"  {n.op_type:<16} {n.name}")
        lines.append(f"  parameters={self.num_params()}  state floats/stream={self.state_size}  streamable="
                     + ("yes" if self.streamable else f"no ({self._stream_why})"))
        if self.plan.feedback:
            lines.append("  states the graph feeds back: " + ", ".join(
                f"{f.out} -> {f.name} ({f.size} floats)" for f in self.plan.feedback))
        fs = self.frame_step
        if fs is not None and fs["planned"]:
            rest = fs["of"] - fs["per_frame"]
            lines.append(f"  a frame (stream / pool step) runs {fs['per_frame']} of the {fs['of']} nodes "
                         f"({fs['as_reshapes']} as reshapes)" + (f"; {rest} run once per batch size" if rest else ""))
        elif fs is not None:
            lines.append(f"  a frame (stream / pool step) runs the whole graph ({self.device} engine)")
        return "\n".join(lines)

    # -- core ---------------------------------------------------------------------------------
    def _fresh(self, B: int) -> np.ndarray | None:
        if any(r.fresh is None for r in self.plan.rec):
            return None
        v = np.concatenate([r.fresh for r in self.plan.rec] + [np.zeros(f.size) for f in self.plan.feedback]
                           + [np.zeros(0)])
        return np.tile(v.astype(self.dtype), (B, 1))

    def _forward(self, X3: np.ndarray, st: np.ndarray | None, lengths: np.ndarray | None):
        """X3 (B, T, I), st (B, S) or None (fresh) -> (Y (B, T, O), final state (B, S))."""
        p, g = self.plan, self.graph
        B, T = X3.shape[:2]
        if B == 0 or T == 0:  # no frames: no outputs, every state as it was
            init = st if st is not None else self._fresh(B) if B else np.zeros((0, self.state_size), self.dtype)
            if init is None:
                raise ShapeError(f"X: expected at least one frame (this graph computes its initial state from "
                                 f"its input), got shape {X3.shape}")
            return np.zeros((B, T, self.output_size), self.dtype), np.array(init, dtype=self.dtype)
        if p.fixed_T == 1 and T > 1:  # a graph of one frame (a step exported for streaming)
            return self._frame_by_frame(X3, st, lengths)
        if p.fixed_T is not None and T != p.fixed_T:
            raise ShapeError(f"X: expected {p.fixed_T} frames (the graph fixes its time dimension), got {T}")
        if (p.per_item and B != 1) or (p.feedback and lengths is not None):
            # one sequence at a time; a state fed back by the graph is its state after every frame
            # it is given, so each sequence gets only its own frames
            parts = [self._forward(X3[b : b + 1], None if st is None else st[b : b + 1], None) if lengths is None
                     else self._forward_upto(X3[b : b + 1], None if st is None else st[b : b + 1], int(lengths[b]))
                     for b in range(B)]
            return np.concatenate([y for y, _ in parts]), np.concatenate([f for _, f in parts])
        init: dict[str, np.ndarray] = {}
        for r in p.rec:
            if st is not None:
                init[r.node.name] = np.ascontiguousarray(st[:, r.offset : r.offset + r.size])
            elif r.fresh is not None:
                init[r.node.name] = r.fresh[None].astype(self.dtype)
        computed = st is None and any(r.fresh is None for r in p.rec)
        feeds = p.feeds(g, X3, lengths is not None, computed)
        for f in p.feedback:  # states the graph feeds back: zeros for a new stream
            rows = np.zeros((B, f.size), self.dtype) if st is None else st[:, f.offset : f.offset + f.size]
            feeds[f.name] = np.ascontiguousarray(f.tensor(rows), dtype=self.dtype)
        vals, finals = g.evaluate(feeds, [p.y.name] + [f.out for f in p.feedback], rec_init=init or None,
                                  rec_lengths=lengths, device=self.device)
        Y = np.ascontiguousarray(p.y_frames(vals[p.y.name], B, T), dtype=self.dtype)
        if Y.shape[2] != self.output_size:
            raise ShapeError(f"Y: expected {self.output_size} features per frame, got shape {Y.shape}")
        if lengths is not None:
            Y[np.arange(T)[None, :] >= lengths[:, None]] = 0
        final = np.zeros((B, self.state_size), dtype=self.dtype)
        for r in p.rec:
            f = finals.get(r.node.name, init.get(r.node.name))
            if f is not None:
                final[:, r.offset : r.offset + r.size] = f
        for f in p.feedback:
            final[:, f.offset : f.offset + f.size] = f.rows(vals[f.out], B)
        return Y, final

    def _forward_upto(self, X1: np.ndarray, st: np.ndarray | None, n: int):
        """One sequence X1 (1, T, I) of which the first n frames count: outputs past them 0, the
        state after them."""
        Y = np.zeros(X1.shape[:2] + (self.output_size,), self.dtype)
        if n == 0:
            init = st if st is not None else self._fresh(1)
            return Y, np.array(init, dtype=self.dtype)
        Y[:, :n], fin = self._forward(X1[:, :n], st, None)
        return Y, fin

    def _frame_by_frame(self, X3: np.ndarray, st: np.ndarray | None, lengths: np.ndarray | None):
        """A graph whose time dimension is fixed to 1, over T frames: one frame at a time, the
        recurrent state carried; past its length a sequence's output is 0 and its state kept."""
        B, T = X3.shape[:2]
        if st is None:
            st = self._fresh(B)
            if st is None and lengths is not None and (lengths == 0).any():
                raise StreamRNNError("lengths: expected at least 1 frame per sequence (this graph computes its "
                                     "initial state from its input), got a length of 0")
        if self._step is not None and st is not None:
            return self._planned_frames(X3, st, lengths)
        Ys = []
        for t in range(T):
            Y, fin = self._forward(X3[:, t : t + 1], st, None)
            if lengths is not None and st is not None:
                done = lengths <= t
                Y[done] = 0
                fin[done] = st[done]
            Ys.append(Y)
            st = fin
        return np.concatenate(Ys, axis=1), st

    def _planned_frames(self, X3: np.ndarray, st: np.ndarray, lengths: np.ndarray | None):
        """``_frame_by_frame`` on planned steps: through a graph stream (B = 1) or a pool of B
        streams made for this call (its node pools: the engine's pool kernels, compiled the first
        time a pool is made in the process), started from the states ``st`` (B, S)."""
        B, T = X3.shape[:2]
        n = np.full(B, T) if lengths is None else lengths
        Y = np.zeros((B, T, self.output_size), self.dtype)
        if B == 1:
            s = GraphStream(self)
            s._st = st.copy()
            for t in range(int(n[0])):
                s.step(X3[0, t], out=Y[0, t])
            return Y, s._st
        pool = GraphPool(self, B)
        ids = pool.open(B)  # 0 .. B - 1
        pool._arena[:] = st
        for t in range(T):
            act = ids if lengths is None else ids[n > t]  # past its length a sequence rests
            if len(act):
                Y[act, t] = pool.step(act, X3[act, t])
        return Y, pool._arena

    def _check_streamable(self) -> str | None:
        p = self.plan
        bad = [r.node.name for r in p.rec if r.node.op.direction != "forward"]
        if bad:
            return f"reverse or bidirectional recurrent nodes {bad} need the future of the sequence"
        if any(r.fresh is None for r in p.rec):
            return "the graph computes the recurrent nodes' initial state"
        if p.fixed_T not in (None, 1):  # fixed to 1: a step, streamed one frame at a time
            return f"the graph's time dimension is fixed to {p.fixed_T}"
        rng = np.random.default_rng(1)
        B = 1 if p.per_item else 2
        X = rng.uniform(-1, 1, size=(B, 6, self.input_size)).astype(self.dtype)
        try:
            Y, _ = self._forward(X, None, None)
            Ya, s = self._forward(X[:, :2], None, None)
            Yb, _ = self._forward(X[:, 2:], s, None)
        except StreamRNNError as e:
            return f"running the graph in chunks fails ({e})"
        if not np.allclose(np.concatenate([Ya, Yb], axis=1), Y, rtol=1e-4, atol=1e-5):
            return "its output at a frame depends on frames after it (not causal frame by frame)"
        return None

    def _step_plan(self) -> StepPlan | None:
        """The planned one-frame step of ``stream().step`` / ``pool().step`` (CPU; None: they
        take the general path, ``_forward``)."""
        if self._stream_why is not None or self.device != "cpu":
            return None
        try:
            plan = StepPlan(self.graph, self.plan)
            plan.frame(1)  # the first frame of a stream plans nothing
        except (NotStepwise, StreamRNNError) as e:
            log.info("graph %r: frames take the general path (%s)", self.graph.name, e)
            return None
        return plan

    # -- state helpers ------------------------------------------------------------------------
    def _new_state(self, data: np.ndarray) -> State:
        return State(data, self._slots, self._key)

    def _state_array(self, state: Any, name: str, batch: int | None) -> np.ndarray:
        S = self.state_size
        if isinstance(state, State):
            if state._key != self._key:
                raise StreamRNNError(f"{name}: expected a state of this model's layout, got one of another model")
            data = state.data
        else:
            data = np.asarray(state)
            if data.dtype.kind not in "fiu":
                raise ShapeError(f"{name}: expected a State or float array, got {type(state).__name__}")
        data = np.array(data, dtype=self.dtype, copy=True)
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
        """A State from :meth:`GraphStream.state_bytes` output of this model."""
        return state_from_bytes(blob, self._key, self._slots, self.dtype)

    # -- public -------------------------------------------------------------------------------
    def run(self, X: Any, state: Any = None, return_state: bool = False, lengths: Any = None):
        """Run whole sequences: X (T, I) or (B, T, I) -> Y (T, O) or (B, T, O) (see Model.run)."""
        X = _as_float(X, "X", self.dtype)
        I = self.input_size
        if X.ndim not in (2, 3) or X.shape[-1] != I:
            raise ShapeError(f"X: expected shape (T, {I}) or (B, T, {I}), got {X.shape}")
        single = X.ndim == 2
        X3 = X[None] if single else X
        B, T, _ = X3.shape
        _check_finite(X, "X")  # the index in the caller's rank
        L = None
        if lengths is not None:
            la = np.asarray(lengths)
            if la.dtype.kind not in "iu" or la.shape != (B,):
                raise ShapeError(f"lengths: expected an int array of shape ({B},), got {la.dtype} {la.shape}")
            L = la.astype(np.int64)
            if (L < 0).any() or (L > T).any():
                raise ShapeError(f"lengths: expected values in [0, {T}], got min {L.min()} max {L.max()}")
        st = None if state is None else self._state_array(state, "state", B)
        Y, fin = self._forward(X3, st, L)
        Y = Y[0] if single else Y
        if return_state:
            return Y, self._new_state(fin[0] if single else fin)
        return Y

    def _require_streamable(self, what: str) -> None:
        if self._stream_why is not None:
            raise StreamRNNError(f"{what}: expected a graph model that streams, got one that cannot: "
                                 f"{self._stream_why}; use model.run() instead")

    def stream(self) -> "GraphStream":
        """A new live stream (fresh state)."""
        self._require_streamable("stream()")
        return GraphStream(self)

    def pool(self, capacity: int = 4096) -> "GraphPool":
        """Preallocated state for up to ``capacity`` streams."""
        self._require_streamable("pool()")
        return GraphPool(self, capacity)

    def save(self, path: str) -> None:
        """Refused: a graph model has no .srnn form (keep its .onnx file)."""
        raise UnsupportedError(
            f"save: a graph model ({self.graph.name!r}) has no .srnn form; only chains of layers do. "
            "Keep the .onnx file"
        )


def _frames(model: GraphModel, X: Any, name: str, rows: str = "frame") -> np.ndarray:
    """X (n, input_size) of finite values: frames of one stream (push), or one frame per stream
    (``rows="row"``, pool.step); a refusal names the first bad frame / row as the chain model's."""
    X = _as_float(X, name, model.dtype)
    if X.ndim != 2 or X.shape[1] != model.input_size:
        raise ShapeError(f"{name}: expected shape ({'T' if rows == 'frame' else 'n'}, {model.input_size}), got {X.shape}")
    _check_finite(X, name, (rows, "feature"))
    return X


#: a chunk of up to this many frames is pushed as planned steps (~16 µs each, residual LSTM at
#: H=32) rather than as one evaluation of the whole graph (~77 µs at any length up to 16;
#: bench/NOTES.md 130)
PLANNED_PUSH_MAX = 4


class GraphStream:
    """One live stream of a :class:`GraphModel` (API of :class:`streamrnn.Stream`)."""

    def __init__(self, model: GraphModel):
        self.model = model
        self._st = model._fresh(1)  # (1, S): the stream's state, every recurrent node's
        self._lock = threading.Lock()
        # the planned step: one Stream per recurrent node, its state copied in from _st each frame
        self._runners = None if model._step is None else [
            self._runner(r.model.stream(), r.offset, r.size) for r in model.plan.rec] + [
            self._fed_back(f.offset, f.size) for f in model.plan.feedback]

    def _runner(self, node, off: int, S: int):
        sbuf = node._sbuf  # [state | scratch | flag] of the node's Stream (engine/cpu.py)

        def run(x):  # x (1, I) -> y (1, H), the node's state after the frame (1, S)
            sbuf[:S] = self._st[0, off : off + S]
            y = node.step(x[0])
            return y[None], sbuf[None, :S]

        return run

    def _fed_back(self, off: int, S: int):
        return lambda: self._st[:, off : off + S]  # (1, S): a state the graph feeds back, before the frame

    def step(self, x: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Advance one frame: x (input_size,) -> y (output_size,)."""
        xa = _as_float(x, "x", self.model.dtype)
        if xa.shape != (self.model.input_size,):
            raise ShapeError(f"x: expected shape ({self.model.input_size},), got {xa.shape}")
        _check_out(out, (self.model.output_size,), self.model.dtype)
        _check_finite(xa, "x", ("feature",))
        y = None
        if self._runners is not None:
            with self._lock:
                y = self._planned(xa[None])
        y = self.push(xa[None])[0] if y is None else y[0]
        if out is None:
            return y
        out[...] = y
        return out

    def _planned(self, X: np.ndarray) -> np.ndarray | None:
        """Frames X (T, I) on planned steps, under the lock; None: they take the general path,
        and no state has changed (nor has it where a frame raises)."""
        plan = self.model._step
        saved = self._st.copy() if len(X) > 1 else None  # a later frame may fail
        Ys, done = [], False
        try:
            for t in range(len(X)):
                Yt, rows = plan.step(X[t : t + 1], self._runners)  # (1, O)
                for (off, size), st in zip(plan.plan.parts(), rows):
                    self._st[0, off : off + size] = st[0]
                Ys.append(Yt)
            done = True
        except NotStepwise:
            return None
        finally:
            if not done and saved is not None:
                self._st[...] = saved
        return Ys[0] if len(Ys) == 1 else np.concatenate(Ys)

    def push(self, X: Any) -> np.ndarray:
        """Advance a chunk: X (T, input_size) -> Y (T, output_size)."""
        X = _frames(self.model, X, "X")
        with self._lock:
            if self._runners is not None and 0 < len(X) <= PLANNED_PUSH_MAX:
                Y = self._planned(X)
                if Y is not None:
                    return Y
            Y, st = self.model._forward(X[None], self._st, None)
            self._st = st
        return Y[0]

    def reset(self) -> None:
        """Back to the fresh state (as a new ``model.stream()``)."""
        with self._lock:
            self._st = self.model._fresh(1)

    @property
    def state(self) -> State:
        """A copy of the stream's recurrent state; assign a State to restore it."""
        with self._lock:
            return self.model._new_state(self._st[0].copy())

    @state.setter
    def state(self, value: Any) -> None:
        data = self.model._state_array(value, "state", None)
        with self._lock:
            self._st = data[None].copy()

    def state_bytes(self) -> bytes:
        """The state as portable bytes (restore with :meth:`load_state_bytes`)."""
        return self.state.to_bytes()

    def load_state_bytes(self, blob: bytes) -> None:
        """Restore the state from :meth:`state_bytes` output of this model."""
        self.state = self.model.state_from_bytes(blob)


class GraphPool:
    """Many streams of a :class:`GraphModel` (API of :class:`streamrnn.Pool`)."""

    def __init__(self, model: GraphModel, capacity: int):
        if not isinstance(capacity, (int, np.integer)) or capacity <= 0:
            raise StreamRNNError(f"capacity: expected a positive int, got {capacity!r}")
        self.model = model
        self._capacity = int(capacity)
        self._fresh = model._fresh(1)[0]
        self._arena = np.zeros((self._capacity, model.state_size), dtype=model.dtype)
        self._alive = np.zeros(self._capacity, dtype=bool)
        self._free = list(range(self._capacity - 1, -1, -1))
        self._lock = threading.Lock()
        # the planned step: one Pool per recurrent node, every id open there; a step copies the
        # listed streams' rows in from _arena (the state of record)
        self._runners = None if model._step is None else [
            self._runner(r.model.pool(self._capacity), r.offset, r.size) for r in model.plan.rec] + [
            self._fed_back(f.offset, f.size) for f in model.plan.feedback]
        self._ids_now = np.zeros(0, np.int64)  # the ids of the step in progress (under _lock)

    def _runner(self, node, off: int, S: int):
        node.open(self._capacity)  # ids 0 .. capacity - 1, as this pool's
        rows = node._arena  # (capacity, S) of the node's Pool

        def run(x):  # x (n, I) -> y (n, H), the node's state after the frame (n, S)
            ids = self._ids_now
            rows[ids, :S] = self._arena[ids, off : off + S]
            y = node.step(ids, x)
            return y, rows[ids, :S]

        return run

    def _fed_back(self, off: int, S: int):
        return lambda: self._arena[self._ids_now, off : off + S]  # (n, S): before the frame

    capacity = property(lambda self: self._capacity, doc="The most streams this pool holds open at once.")

    def __len__(self) -> int:
        return int(self._alive.sum())

    def open(self, n: int | None = None):
        """Open one stream (an int id) or ``n`` streams (an int64 array of ids) in the fresh
        state; past the capacity CapacityError, and nothing is opened."""
        k = 1 if n is None else n
        if not isinstance(k, (int, np.integer)) or k < 0:
            raise StreamRNNError(f"n: expected a non-negative int, got {n!r}")
        with self._lock:
            if k > len(self._free):
                raise CapacityError(f"n: expected at most {len(self._free)} more streams (capacity "
                                    f"{self._capacity}), got {k}; nothing was opened")
            ids = np.array([self._free.pop() for _ in range(k)], dtype=np.int64)
            self._arena[ids] = self._fresh
            self._alive[ids] = True
        return int(ids[0]) if n is None else ids

    def _ids(self, ids: Any, name: str = "ids") -> np.ndarray:
        return _live_ids(ids, name, self._alive)

    def close(self, ids: Any) -> None:
        """Close open streams; their ids may be reused by a later ``open``."""
        with self._lock:
            a = self._ids(ids)
            self._alive[a] = False
            self._free.extend(int(i) for i in a[::-1])

    def reset(self, ids: Any) -> None:
        """Back to the fresh state for open streams."""
        with self._lock:
            self._arena[self._ids(ids)] = self._fresh

    def get_state(self, sid: int) -> State:
        """A copy of stream ``sid``'s state."""
        with self._lock:
            return self.model._new_state(self._arena[_live_id(sid, self._alive)].copy())

    def set_state(self, sid: int, state: Any) -> None:
        """Restore stream ``sid`` from a State of this model."""
        data = self.model._state_array(state, "state", None)
        with self._lock:
            self._arena[_live_id(sid, self._alive)] = data

    def step(self, ids: Any, X: Any, out: np.ndarray | None = None) -> np.ndarray:
        """Each listed stream advances one frame: ids (n,), X (n, input_size) -> (n, output_size)."""
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):  # one id, x (input_size,)
            x = _as_float(X, "X", self.model.dtype)
            if x.ndim != 1:
                raise ShapeError(f"X: expected shape ({self.model.input_size},) with one int stream id, got {x.shape}")
            _check_out(out, (self.model.output_size,), self.model.dtype)
            y = self.step(np.array([ids]), x[None])[0]
            if out is None:
                return y
            out[...] = y
            return out
        X = _frames(self.model, X, "X", rows="row")
        _check_out(out, (X.shape[0], self.model.output_size), self.model.dtype)
        with self._lock:
            a = self._ids(ids)
            if X.shape[0] != len(a):
                raise ShapeError(f"X: expected {len(a)} rows (one per id), got {X.shape[0]}")
            Y = self._planned(a, X) if self._runners is not None else None
            if Y is None:
                Y, fin = self.model._forward(X[:, None, :], self._arena[a], None)
                Y = Y[:, 0]
                self._arena[a] = fin
        if out is None:
            return Y
        out[...] = Y
        return out

    def _planned(self, a: np.ndarray, X: np.ndarray) -> np.ndarray | None:
        """The planned step of streams ``a`` (under the lock; None: the general path, no state changed)."""
        plan = self.model._step
        if len(a) == 0:
            return None
        # a graph of one sequence at a time (batch fixed to 1 or absent): one planned step per stream
        parts = [(a[r : r + 1], X[r : r + 1]) for r in range(len(a))] if plan.plan.per_item else [(a, X)]
        done = []
        for ids, x in parts:
            self._ids_now = ids
            try:
                done.append((ids,) + plan.step(x, self._runners))
            except NotStepwise:
                return None
        for ids, _, rows in done:  # every stream's frame has succeeded: the states
            for (off, size), st in zip(plan.plan.parts(), rows):
                self._arena[ids, off : off + size] = st
        return done[0][1] if len(done) == 1 else np.concatenate([Y for _, Y, _ in done])

    def push(self, sid: int, X: Any) -> np.ndarray:
        """One stream advances a chunk: X (T, input_size) -> (T, output_size)."""
        X = _frames(self.model, X, "X")
        with self._lock:
            a = _live_id(sid, self._alive)
            if self._runners is not None and 0 < len(X) <= PLANNED_PUSH_MAX:
                Y = self._planned_chunk(a, X)
                if Y is not None:
                    return Y
            Y, fin = self.model._forward(X[None], self._arena[a : a + 1], None)
            self._arena[a] = fin[0]
        return Y[0]

    def _planned_chunk(self, a: int, X: np.ndarray) -> np.ndarray | None:
        """Stream ``a``'s frames X (T, I) on planned steps, under the lock; None: the general
        path, and no state has changed (nor has it where a frame raises)."""
        saved, ids = self._arena[a].copy(), np.array([a], np.int64)
        Ys = []
        try:
            for t in range(len(X)):
                y = self._planned(ids, X[t : t + 1])  # (1, O); None: no state changed by it
                if y is None:
                    return None
                Ys.append(y)
        finally:
            if len(Ys) < len(X):  # a frame gave up or raised: the earlier ones are undone
                self._arena[a] = saved
        return np.concatenate(Ys)
