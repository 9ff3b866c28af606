"""How a graph model feeds an ONNX graph: axes of X and Y, the recurrent nodes' states.

:func:`build_plan` finds, by running the graph on two small probe inputs of different sizes,
which axis of the graph's X is time and which is batch (from what the first recurrent node
receives), which axes of Y are time / batch / features, and each recurrent node's initial state
when a stream starts (zero, a constant, or computed by the graph).

Step exports (one frame per evaluation, bench/NOTES.md 133-134): a rank-2 X whose rows are
streams, not frames (``frame_rows``: the first recurrent node takes them as its batch, or the
graph runs only so); states the graph computes itself and gives back as outputs
(:class:`FeedbackInfo`, fed back from output to input each chunk); and a graph declared for one
stream whose rows compute on their own, found at load (:func:`_try_rows`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError, ShapeError, StreamRNNError, UnsupportedError
from .graph import GNode, Graph, ValueInfo
from .onnx_roles import Roles, glue_leaves

log = logging.getLogger("streamrnn")

_PROBES = ((5, 3), (4, 2))  # (axis-0 size, axis-1 size) of X for the two probes, where not fixed


@dataclass
class RecInfo:
    """A recurrent node of a graph model: its one-layer engine model and fresh state."""

    node: GNode
    model: Any  # streamrnn.Model of the node's one-layer spec (state layout, sizes)
    fresh: np.ndarray | None  # (S,) initial state of a new stream; None = computed by the graph
    offset: int = 0  # of its state in the graph model's flat state

    @property
    def size(self) -> int:
        return self.model.state_size


@dataclass
class FeedbackInfo:
    """A state the graph computes itself: graph input ``name`` takes the value graph output
    ``out`` had on the previous chunk (zeros for a new stream)."""

    name: str
    out: str
    shape: tuple[int, ...]  # one stream's part: the tensor's dims without the batch axis
    batch_axis: int | None  # None: the tensor holds one stream (the graph's batch is fixed to 1)
    offset: int = 0  # in the graph model's flat state
    size: int = field(init=False)  # floats per stream

    def __post_init__(self):
        self.size = int(np.prod(self.shape, dtype=np.int64))
        a = self.batch_axis
        # (B, *shape) <-> the tensor: axis orders made once (np.moveaxis costs ~5 µs a call)
        self._to_tensor = None if not a else list(range(1, a + 1)) + [0] + list(range(a + 1, len(self.shape) + 1))
        self._to_rows = None if not a else [a] + [i for i in range(len(self.shape) + 1) if i != a]

    def tensor(self, rows: np.ndarray) -> np.ndarray:
        """(B, size) state rows -> the graph input's tensor."""
        if self.batch_axis is None:
            return rows.reshape(self.shape)
        t = rows.reshape((rows.shape[0],) + self.shape)
        return t if self._to_tensor is None else t.transpose(self._to_tensor)

    def rows(self, v: Any, B: int) -> np.ndarray:
        """The graph output's tensor -> (B, size) state rows; ShapeError if it is not the input's shape."""
        v = np.asarray(v)
        if self.batch_axis is None and B != 1:
            raise ShapeError(f"input {self.name!r}: a state of one stream (declared {self.shape}) for {B} streams")
        want = self.shape if self.batch_axis is None else self.shape[: self.batch_axis] + (B,) + self.shape[self.batch_axis:]
        if v.shape != want:
            raise ShapeError(f"output {self.out!r}: expected the shape {want} of state input {self.name!r}, "
                             f"got {v.shape}")
        return (v if self._to_rows is None else v.transpose(self._to_rows)).reshape(B, self.size)


@dataclass
class IOPlan:
    """Everything a graph model needs to feed the graph and read Y."""

    roles: Roles
    dtype: np.dtype
    x_rank: int
    input_size: int
    rec: list[RecInfo]
    time_major: bool = True
    per_item: bool = False  # feed one sequence at a time (the graph's batch is fixed to 1 or absent)
    frame_rows: bool = False  # X (B, I): one frame of B streams, no time axis (a step exported with a batch)
    fixed_T: int | None = None
    y_time_axis: int | None = 0  # None: Y has no time axis (frame_rows)
    y_batch_axis: int | None = None
    output_size: int = 0
    notes: list[str] = field(default_factory=list)
    feedback: list[FeedbackInfo] = field(default_factory=list)

    @property
    def x(self) -> ValueInfo:
        return self.roles.x

    @property
    def y(self) -> ValueInfo:
        return self.roles.y

    def parts(self) -> list[tuple[int, int]]:
        """(offset, size) in the flat state of each recurrent node's state, then of each state fed back."""
        return [(r.offset, r.size) for r in self.rec] + [(f.offset, f.size) for f in self.feedback]

    @property
    def state_size(self) -> int:
        return sum(r.size for r in self.rec) + sum(f.size for f in self.feedback)

    # -- feeding ----------------------------------------------------------------------------
    def graph_x(self, X3: np.ndarray) -> np.ndarray:
        """(B, T, I) frames -> the graph's X layout."""
        if self.frame_rows:
            return X3[:, 0]  # T = 1 (fixed_T)
        if self.x_rank == 2:
            return X3[0]
        return X3.transpose(1, 0, 2) if self.time_major else X3

    def feeds(self, graph: Graph, X3: np.ndarray, with_lengths: bool, zero_states: bool) -> dict[str, np.ndarray]:
        """Feeds for X, full sequence lengths (unless ``with_lengths``: the caller overrides them)
        and, with ``zero_states``, zeros for the state inputs (batch dims: symbolic ones)."""
        B, T = X3.shape[:2]
        feeds = {self.x.name: np.ascontiguousarray(self.graph_x(X3), dtype=self.dtype)}
        if not with_lengths:
            for li in self.roles.lengths_inputs:
                feeds[li.name] = np.full(B, T, dtype=li.dtype or np.int32)
        if zero_states:
            for name in self.roles.state_inputs:
                vi = next(v for v in graph.inputs if v.name == name)
                shape = tuple(d if isinstance(d, int) else B for d in vi.shape or ())
                feeds[name] = np.zeros(shape, dtype=self.dtype)
        return feeds

    def y_frames(self, y: np.ndarray, B: int, T: int) -> np.ndarray:
        """The graph's Y -> (B, T, O)."""
        y = np.asarray(y)
        return y.transpose(self.y_order(y.ndim)).reshape(B, T, -1)

    def y_order(self, ndim: int) -> list[int]:
        """Y's axes in (batch, time, features) order, for a Y of ``ndim`` axes."""
        lead = [a for a in (self.y_batch_axis, self.y_time_axis) if a is not None]
        return lead + [a for a in range(ndim) if a not in lead]


def _input_size(graph: Graph, x: ValueInfo) -> int:
    if x.shape and isinstance(x.shape[-1], int):
        return int(x.shape[-1])
    todo, seen = [x.name], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for n, k in graph.consumers(t):
            if n.recurrent and k == 0 and n.op.static is not None:
                return n.op.static.input_size
            if n.op_type == "MatMul" and k == 0 and n.inputs[1] in graph.consts:
                return int(graph.consts[n.inputs[1]].shape[-2])
            if n.op_type == "Gemm" and k == 0 and n.inputs[1] in graph.consts:
                w = graph.consts[n.inputs[1]]
                return int(w.shape[1] if n.attrs.get("transB", 0) else w.shape[0])
            if n.op_type in ("Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout") and k == 0:
                todo.extend(o for o in n.outputs if o)
    raise UnsupportedError(
        f"input {x.name!r}: cannot tell the number of features per frame (declared shape {x.shape})"
    )


def _check_initial(n: GNode, model, kind: str, v: Any) -> None:
    """FormatError unless node ``n``'s initial_h / initial_c ``v`` has the shape the node implies:
    (D, batch, size), (batch, D, size) with layout 1 (onnxruntime refuses others when it runs;
    zeros of another size used to pass here as a fresh state)."""
    shape = np.shape(v)
    D = n.op.ndir
    size = next(m for _, _, k, _, m in model.spec.state_slots() if k == kind)
    if len(shape) == 3 and shape[1 if n.op.layout == 1 else 0] == D and shape[2] == size:
        return
    want = f"(batch, {D}, {size})" if n.op.layout == 1 else f"({D}, batch, {size})"
    hint = ""
    if n.op_type == "LSTM" and kind == "c" and len(shape) == 3 and shape[2] > size:
        hint = (" (torch.onnx.export(dynamo=True) exports an LSTM with proj_size as one without its "
                "projection; load the PyTorch checkpoint instead, which keeps it)")
    raise FormatError(f"node {n.name!r} ({n.op_type}): initial_{kind}: expected shape {want}, got {shape}{hint}")


def _fresh_state(graph: Graph, roles: Roles, n: GNode, model) -> np.ndarray | str:
    """A new stream's state of node ``n`` when the graph shows it (absent, zero-valued state
    inputs, a constant): an (S,) array; else "probe" (the probe runs look at what it gets)."""
    fresh = np.zeros(model.state_size, dtype=model.dtype)
    for k, kind in ((5, "h"), (6, "c")):
        if k >= len(n.inputs) or not n.inputs[k]:
            continue
        t = n.inputs[k]
        if t in graph.consts:
            _check_initial(n, model, kind, graph.consts[t])
            v = np.asarray(graph.consts[t])
            v = v.transpose(1, 0, 2) if n.op.layout == 1 and v.ndim == 3 else v
            if v.ndim != 3 or v.shape[1] != 1:
                return "probe"
            for _, d, kk, off, size in model.spec.state_slots():
                if kk == kind:
                    fresh[off : off + size] = v[d, 0]
            continue
        leaves = glue_leaves(graph, t)
        if not all(s in roles.state_inputs or (s in graph.consts and not np.any(graph.consts[s])) for s in leaves):
            return "probe"
    return fresh


def build_plan(graph: Graph, roles: Roles, dtype: np.dtype, device: str) -> IOPlan:
    """Probe the graph and return its :class:`IOPlan` (UnsupportedError if it cannot be a model)."""
    x = roles.x
    rec = []
    for n in graph.recurrent_nodes:
        if n.op.static is None:
            raise UnsupportedError(
                f"node {n.name!r} ({n.op_type}): weights W/R/B/P must be initializers for a model; "
                "with weights given as graph inputs use srnn.InferenceSession"
            )
        rec.append(RecInfo(n, n.op.model_for(n.op.static, dtype, device), None))
    if x.shape is None:  # rank not declared: (T, B, I) or (B, T, I), found by the probes
        x = roles.x = ValueInfo(x.name, x.dtype, x.type, [None, None, None])
    if len(x.shape) not in (2, 3):
        raise UnsupportedError(f"input {x.name!r}: expected rank 2 (T, I) or 3, got declared shape {x.shape}")
    off = 0
    for r in rec:
        r.offset, off = off, off + r.size
    feedback = []
    for name, out in roles.feedback.items():
        f = _feedback(graph, name, out)
        f.offset, off = off, off + f.size
        feedback.append(f)
    plan = IOPlan(roles=roles, dtype=dtype, x_rank=len(x.shape), input_size=_input_size(graph, x), rec=rec,
                  feedback=feedback)
    needed = {i for n in graph.plan([roles.y.name], frozenset(r.node.name for r in rec), True) for i in n.inputs}
    extra = [vi.name for vi in graph.inputs if vi.name in needed and vi.name != x.name
             and vi.name not in roles.state_inputs and vi.name not in {l.name for l in roles.lengths_inputs}]
    if extra:
        outs = [vi.name for vi in graph.outputs if vi.name != roles.y.name and vi.name not in roles.pairs.values()]
        hint = (f"; if they are states the graph gives back as outputs {outs}, pair them: "
                f"state_map={{{', '.join(f'{e!r}: ...' for e in extra)}}}") if outs else ""
        raise UnsupportedError(
            f"inputs {extra}: a model feeds only the frame input {x.name!r}, state inputs and sequence "
            f"lengths{hint}; for other graph inputs use srnn.InferenceSession"
        )
    probe_fresh = []
    for r in rec:
        f = _fresh_state(graph, roles, r.node, r.model)
        if isinstance(f, str):
            probe_fresh.append(r)
        else:
            r.fresh = f
    _probe_axes(graph, plan, probe_fresh, device)
    _try_rows(graph, plan, device)
    return plan


def _try_rows(graph: Graph, plan: IOPlan, device: str) -> None:
    """A one-frame graph declared for one stream (X (1, I), states of batch 1) often computes
    each row of a batch on its own all the same (Silero VAD's files): where an evaluation of 3
    rows equals the 3 rows evaluated one by one, on random inputs and states, outputs and states
    alike, the plan takes X's rows as streams (a pool steps them in one evaluation, not one per
    stream). Otherwise (a size baked into a Reshape, rows mixed) nothing changes."""
    if not (plan.per_item and plan.x_rank == 2 and plan.fixed_T == 1) or any(r.fresh is None for r in plan.rec):
        return
    fb = []
    for f in plan.feedback:  # the batch axis of a state declared for one stream: its one axis of size 1
        ones = [a for a, d in enumerate(f.shape) if d == 1]
        if f.batch_axis is not None or len(ones) != 1:
            return
        fb.append(FeedbackInfo(f.name, f.out, f.shape[: ones[0]] + f.shape[ones[0] + 1:], ones[0], f.offset))
    rng = np.random.default_rng(5)
    B, dt = 3, plan.dtype
    X = rng.uniform(-1, 1, size=(B, plan.input_size)).astype(dt)
    init = {r.node.name: rng.uniform(-0.5, 0.5, size=(B, r.size)).astype(dt) for r in plan.rec}
    rows0 = [rng.uniform(-0.5, 0.5, size=(B, f.size)).astype(dt) for f in fb]

    def run(sel: slice):
        n = sel.stop - sel.start
        feeds = {plan.x.name: X[sel]}
        for li in plan.roles.lengths_inputs:
            feeds[li.name] = np.ones(n, dtype=li.dtype or np.int32)
        for f, r in zip(fb, rows0):
            feeds[f.name] = f.tensor(r[sel])
        vals, finals = graph.evaluate(feeds, [plan.y.name] + [f.out for f in fb],
                                      rec_init={k: v[sel] for k, v in init.items()}, device=device)
        return (np.asarray(vals[plan.y.name]), [finals[r.node.name] for r in plan.rec]
                + [f.rows(vals[f.out], n) for f in fb])

    try:
        yb, sb = run(slice(0, B))
        parts = [run(slice(b, b + 1)) for b in range(B)]
    except (StreamRNNError,) + Graph.NODE_ERRORS:
        return
    y1 = parts[0][0]
    ax = [a for a in range(yb.ndim) if yb.ndim == y1.ndim and yb.shape[a] == B and y1.shape[a] == 1
          and yb.shape[:a] + yb.shape[a + 1:] == y1.shape[:a] + y1.shape[a + 1:]]
    if not ax:
        return
    tol = dict(rtol=1e-4, atol=1e-5) if dt == np.float32 else dict(rtol=1e-9, atol=1e-10)
    for b, (yr, sr) in enumerate(parts):
        if not np.allclose(np.take(yb, [b], axis=ax[0]), yr, **tol) or not all(
                np.allclose(x[b : b + 1], r, **tol) for x, r in zip(sb, sr)):
            return
    plan.per_item, plan.frame_rows, plan.feedback = False, True, fb
    plan.y_batch_axis = ax[0]
    t_ax = [a for a in range(yb.ndim) if a != ax[0] and yb.shape[a] == 1]
    plan.y_time_axis = t_ax[0] if t_ax else None
    log.info("ONNX graph %r: declared for one stream, it computes each row of a batch on its own: "
             "X's rows are taken as streams", graph.name)


def _feedback(graph: Graph, name: str, out: str) -> FeedbackInfo:
    """The FeedbackInfo of state input ``name`` from its declared shape: fixed dims, and at most
    one free one (the batch)."""
    vi = next(v for v in graph.inputs if v.name == name)
    if vi.shape is None:
        raise UnsupportedError(f"input {name!r}: a state the graph feeds back from {out!r} needs a declared shape")
    free = [a for a, d in enumerate(vi.shape) if not isinstance(d, int)]
    if len(free) > 1:
        raise UnsupportedError(f"input {name!r}: expected a state of fixed dims and at most one free (batch) "
                               f"dim, got declared shape {vi.shape}")
    return FeedbackInfo(name, out, tuple(d for d in vi.shape if isinstance(d, int)), free[0] if free else None)


class _StateShape(ShapeError):
    """A probe run gave a state fed back in another shape than it took."""


def _probe_shape(plan: IOPlan, k: int) -> tuple[int, int]:
    """Sizes of X's axes 0 and 1 for probe ``k`` (declared sizes where fixed)."""
    shp = plan.x.shape
    sizes = _PROBES[k]
    if plan.x_rank == 2:  # (T, I): a0 is the number of frames (as the callers read it)
        return (shp[0] if isinstance(shp[0], int) else sizes[0]), 1
    a0 = shp[0] if isinstance(shp[0], int) else sizes[0]
    a1 = shp[1] if isinstance(shp[1], int) else sizes[1]
    return a0, a1


def _probe_axes(graph: Graph, plan: IOPlan, probe_fresh: list[RecInfo], device: str) -> None:
    rng = np.random.default_rng(0)
    first = plan.rec[0].node.name if plan.rec else None
    init = {r.node.name: r.fresh[None] for r in plan.rec if r.fresh is not None}
    extra = [t for r in plan.rec for t in r.node.inputs[5:7] if t]  # initial states: shapes checked
    extra += [f.out for f in plan.feedback]
    runs: list = []
    for k in range(2):
        a0, a1 = _probe_shape(plan, k)
        shape = (a0, plan.input_size) if plan.x_rank == 2 else (a0, a1, plan.input_size)
        Xg = rng.uniform(-1, 1, size=shape).astype(plan.dtype)
        err = None
        # rank 2: the rows as frames of one sequence, else as streams (a cell that concatenates
        # x and h runs only so, its state fed with the rows' batch)
        tries = ((a1, a0), (a0, a1)) if plan.x_rank == 3 else ((a0, 1),) if plan.frame_rows else ((1, a0), (a0, 1))
        for Bg, Tg in tries:
            feeds = {plan.x.name: Xg}
            for name in plan.roles.state_inputs:
                vi = next(v for v in graph.inputs if v.name == name)
                feeds[name] = np.zeros(tuple(d if isinstance(d, int) else Bg for d in vi.shape or ()), plan.dtype)
            for li in plan.roles.lengths_inputs:
                feeds[li.name] = np.full(Bg, Tg, dtype=li.dtype or np.int32)
            seen: list = []

            def hook(n, ins, seen=seen):
                if n.name == first and not seen:
                    seen.append(np.asarray(ins[0]))

            try:
                vals, _ = graph.evaluate(feeds, [plan.y.name] + extra, rec_init=init, device=device, hook=hook)
                for f in plan.feedback:  # a state fed back comes back in the shape it went in
                    try:
                        f.rows(vals[f.out], Bg)
                    except ShapeError as e:
                        raise _StateShape(f"{e}; a state fed back keeps its shape") from None
            except StreamRNNError as e:
                err = e
                continue
            # the rows are streams: only so does the graph run (a cell on cat([x, h]); a cell whose
            # h of batch 1 grew to the rows' batch failed the shape check above), or the first
            # recurrent node takes them as its batch
            if k == 0 and plan.x_rank == 2 and not plan.frame_rows and a0 > 1 and (
                    Bg == a0 or _rows_are_streams(plan, seen, a0)):
                plan.frame_rows = True  # probe again with the state inputs' batch set to the rows
                return _probe_axes(graph, plan, probe_fresh, device)
            runs.append((a0, a1, Xg, seen[0] if seen else None, vals))
            break
        else:
            if isinstance(err, _StateShape):
                raise UnsupportedError(f"graph {graph.name!r}: {err}")
            hint = ""
            if any(not isinstance(d, int) for d in plan.x.shape[:2]):  # sizes the probes chose
                ran = f"it ran on X of shape {runs[0][2].shape}; " if runs else ""
                hint = (f"; {ran}the graph's nodes may fix a size that its declared input {plan.x.name!r} "
                        f"{plan.x.shape} leaves free (torch.onnx.export(dynamo=True) can bake the traced "
                        "sequence length into Reshape nodes: export with dynamo=False, or declare that size fixed)")
            raise UnsupportedError(f"graph {graph.name!r}: a probe run on X of shape {Xg.shape} failed: {err}{hint}")
    for r in plan.rec:
        for name, kind in zip(r.node.inputs[5:7], "hc"):
            for run in runs:
                if name and name in run[4]:
                    _check_initial(r.node, r.model, kind, run[4][name])

    _axes_from_runs(plan, runs)
    for r in probe_fresh:
        rows = [_initial_rows(r, run[4], plan.dtype) for run in runs]
        if all(x is not None for x in rows) and all(np.array_equal(x, rows[0][:1].repeat(len(x), 0)) for x in rows):
            r.fresh = rows[0][0]  # the same for every sequence and size: a constant initial state
        else:
            plan.notes.append(f"node {r.node.name!r}: its initial state is computed by the graph")
            log.info("ONNX graph %r: %s", graph.name, plan.notes[-1])


def _rows_are_streams(plan: IOPlan, seen: list, rows: int) -> bool:
    """Whether the rows of a rank-2 X are streams (one frame each), not frames: the first
    recurrent node got them as its batch, with a sequence of one frame."""
    if not seen or np.ndim(seen[0]) != 3 or rows < 2:
        return False
    t, b = (1, 0) if plan.rec[0].node.op.layout == 1 else (0, 1)
    return seen[0].shape[t] == 1 and seen[0].shape[b] == rows


def _initial_rows(r: RecInfo, vals: dict, dtype) -> np.ndarray | None:
    """The (B, S) initial state node ``r`` got in a probe run, or None if it cannot tell."""
    op, names = r.node.op, r.node.inputs[5:7]
    h0, c0 = (vals.get(n) if n else None for n in list(names) + [""] * (2 - len(names)))
    ref = h0 if h0 is not None else c0
    if ref is None or np.ndim(ref) != 3:
        return None
    B = ref.shape[0] if op.layout == 1 else ref.shape[1]
    try:
        return op.initial_state(r.model, B, h0, c0, dtype)
    except StreamRNNError:
        return None


def _axes_from_runs(plan: IOPlan, runs) -> None:
    (a0, a1, X1, seen1, v1), (b0, b1, _, seen2, v2) = runs
    if plan.x_rank == 3:
        if seen1 is not None and seen1.ndim == 3:
            tb = seen1.transpose(1, 0, 2) if plan.rec[0].node.op.layout == 1 else seen1  # (T, B, F)
            if a0 != a1:
                plan.time_major = tb.shape[0] == a0
            else:
                plan.time_major = not (tb.shape == X1.shape and np.array_equal(tb, X1.transpose(1, 0, 2))
                                       and not np.array_equal(tb, X1))
        elif isinstance(plan.x.shape[0], int) != isinstance(plan.x.shape[1], int):
            # no recurrent node shows the axes: of a fixed and a free one, the fixed one is time
            # (an exporter that unrolled a recurrence over the traced frames, or a one-step
            # export, leaves the batch free); read the other way, batch and time would mix
            plan.time_major = isinstance(plan.x.shape[0], int)
        T1, B1, T2, B2 = (a0, a1, b0, b1) if plan.time_major else (a1, a0, b1, b0)
        plan.per_item = B1 == 1 and B2 == 1
        tdecl = plan.x.shape[0 if plan.time_major else 1]
    elif plan.frame_rows:  # X (B, I): one frame of B streams
        T1, B1, T2, B2 = 1, a0, 1, b0
        tdecl = 1
    else:
        T1, B1, T2, B2 = a0, 1, b0, 1
        plan.per_item = True
        tdecl = plan.x.shape[0]
    plan.fixed_T = tdecl if isinstance(tdecl, int) else None
    y1, y2 = np.asarray(v1[plan.y.name]), np.asarray(v2[plan.y.name])
    if y1.ndim != y2.ndim:
        raise UnsupportedError(f"output {plan.y.name!r}: rank changes with the input's size")
    t_ax = [a for a in range(y1.ndim) if y1.shape[a] == T1 and y2.shape[a] == T2]
    b_ax = [a for a in range(y1.ndim) if y1.shape[a] == B1 and y2.shape[a] == B2 and a not in t_ax[:1]]
    if plan.frame_rows:  # Y (B, ...): a time axis only where one of size 1 is left besides the batch
        b_ax = [a for a in range(y1.ndim) if y1.shape[a] == B1 and y2.shape[a] == B2]
        t_ax = [a for a in t_ax if a not in b_ax[:1]] or [None]
    if not t_ax:
        raise UnsupportedError(
            f"output {plan.y.name!r}: expected a time axis (an output per frame), got shape {y1.shape} "
            f"for {T1} frames; for such graphs use srnn.InferenceSession"
        )
    plan.y_time_axis = t_ax[0]
    plan.y_batch_axis = None if plan.per_item else (b_ax[0] if b_ax else None)
    if plan.y_batch_axis is None and not plan.per_item:
        raise UnsupportedError(f"output {plan.y.name!r}: expected a batch axis, got shape {y1.shape}")
    feat = [a for a in range(y1.ndim) if a not in (plan.y_time_axis, plan.y_batch_axis)]
    o1 = int(np.prod([y1.shape[a] for a in feat], dtype=np.int64))
    o2 = int(np.prod([y2.shape[a] for a in feat], dtype=np.int64))
    if o1 != o2 or o1 == 0:
        raise UnsupportedError(f"output {plan.y.name!r}: features per frame vary with the input size ({o1} vs {o2})")
    plan.output_size = o1
