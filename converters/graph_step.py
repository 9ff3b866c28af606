"""A graph model's one-frame step, planned once: what ``GraphStream.step`` / ``GraphPool.step`` run.

The general path (``GraphModel._forward``) evaluates the whole graph for every call, and its
recurrent nodes go through the engine's sequence path (``Model.run``): ~80 µs a frame for a small
residual LSTM, 4x onnxruntime (bench/NOTES.md 122). A frame (T = 1) of B streams needs less:

* nodes that compute shapes (``Shape`` of a tensor whose shape follows from X's, ``Gather`` /
  ``Concat`` / ``Unsqueeze`` of such dims, ...) give the same values for every frame of the same
  B, so they run once per B and their values are kept (:meth:`StepPlan.frame`);
* the other nodes run per frame, in order: layout nodes that keep the data's order for that B
  (most transposes, when T = 1) as reshapes, the recurrent ones through the engine's one-frame
  kernels (the caller's ``Stream`` / ``Pool`` of the node's one-layer model, see ``NodeRunner``),
  the rest through their numpy ops.

The caller keeps the graph model's flat state; a node runner copies its rows in, steps and
returns the rows after the step, and the caller writes them back only when the whole frame has
succeeded, so a failed step changes no state. Where the plan does not apply to a frame (a
recurrent node fed other than (1, B, I)), :class:`NotStepwise` says so before any state is
written, and the caller takes the general path.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from .graph import GNode, Graph
from .onnx_ops import Op
from .graph_plan import IOPlan

log = logging.getLogger("streamrnn")

#: Ops whose outputs' shapes follow from their inputs' shapes, and from the values of the inputs
#: listed here (e.g. Reshape's shape). An op missing here (one added to the registry later) makes
#: its outputs' shapes unknown: a Shape of them is then recomputed every frame, never kept.
_SHAPE_ARGS: dict[str, tuple[int, ...]] = {
    **dict.fromkeys((
        "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Concat", "Constant", "Div", "Dropout", "Elu",
        "Equal", "Exp", "Flatten", "Floor", "Gather", "Gemm", "Greater", "GreaterOrEqual",
        "HardSigmoid", "Identity", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "MatMul",
        "Max", "Min", "Mul", "Neg", "Not", "Or", "PRelu", "Pow", "Reciprocal", "Relu", "Selu",
        "Shape", "Sigmoid", "Size", "Softmax", "Softplus", "Softsign", "Sqrt", "Sub", "Sum", "Tanh",
        "ThresholdedRelu", "Transpose", "Where", "Xor", "LSTM", "GRU", "RNN", "Conv",
    ), ()),
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2"), (1,)),
    "Pad": (1, 3),
    "Reshape": (1,), "Expand": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
}
_SHAPE_ONLY_OPS = ("Shape", "Size")  # outputs depend on the input's shape, not its values
_REC_CUT = (4, 5, 6)  # sequence_lens, initial_h, initial_c: the runner holds the state
_LAYOUT_OPS = ("Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity")
_OP, _RESHAPE, _REC = 0, 1, 2  # kinds of a frame's entries
FRAMES_KEPT = 256  # frame plans kept (one per batch size seen)

#: ``runner(x (B, I) C-contiguous) -> (y (B, H), rows (B, S))``: one frame of a recurrent node
#: for the call's B streams, from the caller's state rows; ``rows`` is the node's state after it
NodeRunner = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


class NotStepwise(Exception):
    """This frame cannot take the planned step (raised before any state is written)."""


class StepPlan:
    """The per-frame part of a streaming graph model and its once-per-batch-size part."""

    def __init__(self, graph: Graph, plan: IOPlan):
        self.graph, self.plan = graph, plan
        self.rec_index = {r.node.name: i for i, r in enumerate(plan.rec)}
        self.outputs = [plan.y.name] + [f.out for f in plan.feedback]
        nodes = graph.plan(self.outputs, frozenset(self.rec_index), True)
        fed = {plan.x.name} | {li.name for li in plan.roles.lengths_inputs} | {f.name for f in plan.feedback}
        need = {i for n in nodes for k, i in enumerate(n.inputs) if i and not self._cut(n, k)}
        missing = sorted(i for i in need if i not in graph.consts and i not in graph.producer and i not in fed)
        if missing:  # e.g. a state input read by a node other than its recurrent node
            raise NotStepwise(f"graph inputs {missing} are needed every frame")
        varies = {plan.x.name} | {f.name for f in plan.feedback}  # values that change from frame to frame
        self.shaped = set(fed) | set(graph.consts)  # values whose shapes follow from B
        self.dynamic: list[tuple[GNode, list[str], int | None]] = []
        for n in nodes:
            ins = ["" if self._cut(n, k) else i for k, i in enumerate(n.inputs)]
            used = [i for i in ins if i]
            args = _SHAPE_ARGS.get(n.op_type)
            if args is not None and all(i in self.shaped for i in used) and not any(
                    k < len(ins) and ins[k] in varies for k in args):
                self.shaped.update(o for o in n.outputs if o)
            if n.recurrent or (n.op_type not in _SHAPE_ONLY_OPS and any(i in varies for i in used)) or (
                    n.op_type in _SHAPE_ONLY_OPS and used[0] not in self.shaped):
                varies.update(o for o in n.outputs if o)
                self.dynamic.append((n, ins, self.rec_index.get(n.name) if n.recurrent else None))
        # what the per-frame nodes read that is not computed per frame (consts and kept values)
        self.kept = sorted({i for _, ins, _ in self.dynamic for i in ins if i and i not in varies})
        self.read = {i for _, ins, _ in self.dynamic for i in ins if i} | set(self.outputs)
        # per recurrent node: layout, input size, the columns of h (and c) in its state rows
        self._rec = []
        for r in plan.rec:
            slots = {k: (off, off + m) for _, _, k, off, m in r.model.spec.state_slots()}
            kinds = ("h", "c") if r.node.op.kind == "LSTM" else ("h",)
            self._rec.append((r.node.op.layout, r.model.input_size, [slots[k] for k in kinds]))
        self._frames: dict[int, tuple[dict[str, Any], list[tuple], tuple]] = {}
        log.debug("graph %r: a frame runs %d of %d nodes", graph.name, len(self.dynamic), len(nodes))

    def _cut(self, n: GNode, k: int) -> bool:
        return n.recurrent and k in _REC_CUT

    def frame(self, B: int) -> tuple[dict[str, Any], list[tuple], tuple]:
        """A frame of B streams: the values its nodes read that are the same for every frame (kept),
        its entries (kind, node, input names, output names, arg), and the shapes of the graph's X
        and of Y as (B, O) (None: Y's data is in another order), planned the first time B is seen
        from one general evaluation of a frame (whose shapes are every frame's)."""
        fr = self._frames.get(B)
        if fr is not None:
            return fr
        p, g = self.plan, self.graph
        # a frame of random values (zeros would make e.g. x / x NaN and stop a recurrent node)
        X = np.random.default_rng(B).uniform(0.5, 1.0, size=(B, 1, p.input_size)).astype(p.dtype)
        feeds = p.feeds(g, X, False, False)
        for f in p.feedback:
            feeds[f.name] = f.tensor(np.random.default_rng(B).uniform(0.5, 1.0, size=(B, f.size)).astype(p.dtype))
        zero = {r.node.name: np.zeros((B, r.size), p.dtype) for r in p.rec}
        known = [o for n, _, _ in self.dynamic for o in n.outputs if o in self.shaped]
        want = self.kept + [i for i in known if i not in self.kept] + [p.x.name] + self.outputs
        vals, _ = g.evaluate(feeds, list(dict.fromkeys(want)), rec_init=zero)
        prog = []
        for n, ins, ri in self.dynamic:
            outs = [o if o in self.read else "" for o in n.outputs]
            if ri is not None:
                prog.append((_REC, n, ins, outs, ri))
            elif n.op_type in _LAYOUT_OPS and len(n.outputs) == 1 and n.outputs[0] in vals and ins[0] in vals \
                    and _same_order(n, np.shape(vals[ins[0]])):
                prog.append((_RESHAPE, n, ins, outs, np.shape(vals[n.outputs[0]])))  # a view: same data order
            elif type(n.op) is Op:  # its function called directly, the inputs as Op.__call__ lays them out
                nin = n.op.nin
                prog.append((_OP, n, ins if nin is None else (list(ins) + [""] * nin)[:nin], outs, n.op.fn))
            else:
                prog.append((_OP, n, ins, outs, None))
        y = np.shape(vals[p.y.name]) if p.y.name in vals else None
        y_view = y is not None and _same_order_perm(p.y_order(len(y)), y)
        shapes = (np.shape(vals[p.x.name]), (B, p.output_size) if y_view else None)
        fr = ({i: vals[i] for i in self.kept}, prog, shapes)
        # a pool stepping varying id counts plans each count once (~0.4 ms, residual LSTM H=128):
        # past FRAMES_KEPT counts the oldest plan goes, not all of them (each pop is atomic)
        while len(self._frames) >= FRAMES_KEPT:
            self._frames.pop(next(iter(self._frames), None), None)
        self._frames[B] = fr
        return fr

    def counts(self) -> tuple[int, int]:
        """(nodes a frame runs, of them as reshapes), for one stream."""
        _, prog, _ = self.frame(1)
        return len(prog), sum(kind == _RESHAPE for kind, *_ in prog)

    def step(self, X: np.ndarray, runners: list) -> tuple[np.ndarray, list[np.ndarray]]:
        """One frame of B streams: X (B, I) -> (Y (B, O), the state rows after it: each recurrent
        node's (B, S_i), then each state the graph feeds back (B, S_j)).

        ``runners``: a NodeRunner per recurrent node, then per state fed back a function giving
        its rows before the frame. Writes no state (the runners step their own buffers);
        NotStepwise where the plan does not apply (the caller then takes the general path)."""
        p = self.plan
        B = X.shape[0]
        kept, prog, (x_shape, y_shape) = self.frame(B)
        env = dict(kept)
        env[p.x.name] = X.reshape(x_shape)  # (1, B, I), (B, 1, I) or (1, I): T = 1, the same data order
        nrec = len(p.rec)
        for j, f in enumerate(p.feedback):
            env[f.name] = f.tensor(runners[nrec + j]())
        rows: list[Any] = [None] * (nrec + len(p.feedback))
        n = None
        try:
            for kind, n, ins, outs, arg in prog:
                if kind == _RESHAPE:
                    env[outs[0]] = env[ins[0]].reshape(arg)
                    continue
                if kind == _OP:
                    if arg is None:
                        vals = n.op([env[i] if i else None for i in ins])
                    else:
                        vals = arg(*[env[i] if i else None for i in ins])
                        if not isinstance(vals, (tuple, list)):
                            vals = (vals,)
                else:
                    vals, rows[arg] = self._recurrent(n, arg, env[ins[0]], B, runners[arg], outs)
                for o, v in zip(outs, vals):
                    if o:
                        env[o] = v
        except Graph.NODE_ERRORS as e:
            raise Graph.node_error(n.name, n.op_type, e) from None
        for j, f in enumerate(p.feedback):
            rows[nrec + j] = f.rows(env[f.out], B)
        y = env[p.y.name]
        if y_shape is not None and y.size == B * p.output_size:  # the graph's Y in (B, O) data order
            return y.reshape(y_shape).astype(p.dtype), rows  # a copy: y may be a view of X
        Y = p.y_frames(y, B, 1)  # (B, 1, O)
        if Y.shape[2] != p.output_size:
            raise NotStepwise(f"Y: {Y.shape[2]} features per frame")
        return Y[:, 0].astype(p.dtype), rows

    def _recurrent(self, n: GNode, ri: int, x, B: int, runner: NodeRunner, outs: list[str]):
        """A recurrent node's ONNX outputs [Y, Y_h(, Y_c)] for one frame (None where not read),
        and its state rows."""
        layout, I, parts = self._rec[ri]
        x = np.asarray(x)
        if x.shape != ((1, B, I) if layout == 0 else (B, 1, I)):
            raise NotStepwise(f"node {n.name!r}: X of shape {x.shape} for {B} streams")
        if x.dtype != self.plan.dtype:
            raise NotStepwise(f"node {n.name!r}: X of dtype {x.dtype}")
        y, rows = runner(np.ascontiguousarray(x.reshape(B, I)))  # (B, H), (B, S)
        if layout == 0:  # Y (1, 1, B, H), Y_h / Y_c (1, B, H)
            st = [rows[None, :, a:b].copy() if o else None for (a, b), o in zip(parts, outs[1:])]
            return [y[None, None]] + st, rows
        st = [rows[:, None, a:b].copy() if o else None for (a, b), o in zip(parts, outs[1:])]
        return [y[:, None, None]] + st, rows  # (B, 1, 1, H), (B, 1, H)


def _same_order(n: GNode, shape: tuple[int, ...]) -> bool:
    """Whether layout node ``n`` on an input of ``shape`` keeps the data in C order (a reshape)."""
    if n.op_type != "Transpose":
        return True  # Squeeze, Unsqueeze, Reshape, Flatten, Identity
    perm = n.attrs.get("perm")
    return _same_order_perm(list(range(len(shape)))[::-1] if perm is None else list(perm), shape)


def _same_order_perm(perm: list[int], shape: tuple[int, ...]) -> bool:
    """Whether ``transpose(perm)`` of an array of ``shape`` keeps the data in C order."""
    moved = [a for a in perm if shape[a] != 1]
    return moved == sorted(moved)
