"""An ONNX graph compiled to numpy: converters per node, constants folded, pruned evaluation.

:class:`Graph` is the common core of :class:`~streamrnn.converters.onnx_session.InferenceSession`
and of the graph models of :func:`~streamrnn.converters.onnx_import.model_from_onnx`.
At load time every node goes through its converter (``UnsupportedError`` for what is not
supported), and nodes whose inputs are all known are evaluated once (constant folding). Shape
arithmetic folds too: ``Shape`` of a tensor whose shape is static (initializer, declared or
inferred) becomes a constant, as does ``Gather`` of the static entries of a partly known shape.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import FormatError, StreamRNNError
from . import onnx_io
from .onnx_ops import NodeView, Op, RecurrentOp, convert
from .onnx_ops.tensor import shape_range

log = logging.getLogger("streamrnn")


@dataclass
class GNode:
    """A compiled node (only nodes left after constant folding)."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    op: Op
    attrs: dict[str, Any]

    @property
    def recurrent(self) -> bool:
        return isinstance(self.op, RecurrentOp)


@dataclass
class ValueInfo:
    """A graph input or output: name, numpy dtype, ONNX type string and declared shape
    (None when not even the rank is declared)."""

    name: str
    dtype: np.dtype | None
    type: str
    shape: list[int | str | None] | None


def _value_info(vi) -> ValueInfo:
    et = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
    try:
        dt = onnx_io.np_dtype(et) if et else None
    except StreamRNNError:
        dt = None
    tstr = onnx_io.type_string(et) if et else "unknown"
    return ValueInfo(vi.name, dt, tstr, onnx_io.value_info_shape(vi))


class Graph:
    """A compiled ONNX graph.

    Parameters
    ----------
    proto : a checked ``onnx.ModelProto`` (see :func:`onnx_io.load_proto`).
    float_dtype : cast every float initializer / constant to this dtype (None: keep).
    """

    def __init__(self, proto, float_dtype: Any = None):
        self.opset = onnx_io.default_opset(proto)
        g = proto.graph
        self.name = g.name or "onnx"
        self.float_dtype = None if float_dtype is None else np.dtype(float_dtype)
        self.consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self.consts[t.name] = self._cast_const(onnx_io.to_array(t))
        self.initializer_names = set(self.consts)
        self.inputs = [_value_info(vi) for vi in g.input if vi.name not in self.initializer_names]
        self.outputs = [_value_info(vi) for vi in g.output]
        self._static = self._static_shapes(proto)
        self._partial: dict[str, list[int | None]] = {}
        self.nodes: list[GNode] = []
        self._compile(g)
        self.producer: dict[str, tuple[GNode, int]] = {
            o: (n, k) for n in self.nodes for k, o in enumerate(n.outputs) if o
        }
        self._plans: dict[tuple, list[GNode]] = {}

    # -- loading ----------------------------------------------------------------------------
    def _cast_const(self, a: np.ndarray) -> np.ndarray:
        if self.float_dtype is not None and a.dtype.kind == "f" and a.dtype != self.float_dtype:
            return a.astype(self.float_dtype)
        return a

    def _static_shapes(self, proto) -> dict[str, list[int | None]]:
        """Static dims (int, or None when unknown / symbolic) of inputs and inferred values."""
        out: dict[str, list[int | None]] = {}
        vis = list(proto.graph.input) + list(proto.graph.value_info)
        try:
            import onnx

            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
            vis += list(inferred.graph.value_info)
        except Exception as e:  # best effort: folding only gets less
            log.debug("onnx shape inference failed (%s); folding less", e)
        for vi in vis:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                dims = onnx_io.value_info_shape(vi) or []
                out[vi.name] = [d if isinstance(d, int) else None for d in dims]
        return out

    def _compile(self, g) -> None:
        known = set(self.consts) | {vi.name for vi in self.inputs}
        for i, pn in enumerate(g.node):
            name = pn.name or f"{pn.op_type}_{i}"
            for k, inp in enumerate(pn.input):
                if inp and inp not in known:
                    raise FormatError(
                        f"node {name!r} ({pn.op_type}): input {k} {inp!r} is neither a graph input, an "
                        "initializer nor the output of an earlier node (truncated or unsorted graph?)"
                    )
            view = NodeView(name, pn.op_type, list(pn.input), list(pn.output), onnx_io.attributes(pn),
                            self.opset, self.consts)
            op = convert(view, pn.domain)
            known.update(o for o in pn.output if o)
            if not self._fold(view, op):
                self.nodes.append(GNode(name, pn.op_type, list(pn.input), list(pn.output), op, view.attrs))
        for o in self.outputs:
            if o.name not in known:
                raise FormatError(f"graph output {o.name!r}: expected it produced by a node, got no producer")

    def _fold(self, view: NodeView, op: Op) -> bool:
        """Evaluate the node now if its value is known at load time; True when folded."""
        ins, outs = view.inputs, [o for o in view.outputs if o]
        if op.foldable and all(i == "" or i in self.consts for i in ins):
            vals = self._call(view.name, view.op_type, op, [self.consts[i] if i else None for i in ins])
            for name, v in zip(view.outputs, vals):
                if name:
                    self.consts[name] = self._cast_const(np.asarray(v))
            return True
        if view.op_type == "Shape" and ins[0] in self._static:
            dims = self._static[ins[0]]
            s, e = shape_range(len(dims), int(view.attr("start", 0)), view.attr("end"))
            sel = dims[s:e]
            if all(d is not None for d in sel):
                self.consts[outs[0]] = np.array(sel, dtype=np.int64)
                return True
            self._partial[outs[0]] = sel
        if view.op_type == "Gather" and ins[0] in self._partial and view.is_const(1):
            dims, idx = self._partial[ins[0]], np.asarray(view.const(1), np.int64)
            if int(view.attr("axis", 0)) == 0 and np.all((idx >= -len(dims)) & (idx < len(dims))):
                sel = [dims[j] for j in idx.reshape(-1).tolist()]
                if all(d is not None for d in sel):
                    self.consts[outs[0]] = np.array(sel, dtype=np.int64).reshape(idx.shape)
                    return True
        return False

    # -- evaluation ---------------------------------------------------------------------------
    #: what a node's numpy code may raise on bad values / shapes (reported as StreamRNNError)
    NODE_ERRORS = (StreamRNNError, ValueError, IndexError, TypeError, ArithmeticError)

    @staticmethod
    def node_error(name: str, op_type: str, e: Exception) -> StreamRNNError:
        """One of NODE_ERRORS raised by node ``name``, as the StreamRNNError that names it."""
        if isinstance(e, StreamRNNError):
            return e if f"{name!r}" in str(e) else type(e)(f"node {name!r} ({op_type}): {e}")
        return StreamRNNError(f"node {name!r} ({op_type}): {type(e).__name__}: {e}")

    @staticmethod
    def _call(name: str, op_type: str, op: Op, ins, **kw):
        try:
            return op.run(ins, **kw) if kw else op(ins)
        except Graph.NODE_ERRORS as e:
            raise Graph.node_error(name, op_type, e) from None

    def plan(self, outputs: Iterable[str], cut_init: frozenset = frozenset(), cut_lengths: bool = False) -> list[GNode]:
        """The nodes needed for ``outputs`` in order; recurrent nodes in ``cut_init`` do not need
        their initial_h / initial_c, and none needs sequence_lens when ``cut_lengths``."""
        key = (tuple(outputs), cut_init, cut_lengths)
        p = self._plans.get(key)
        if p is not None:
            return p
        need = set(key[0])
        keep = []
        for n in reversed(self.nodes):
            if not any(o in need for o in n.outputs if o):
                continue
            keep.append(n)
            for k, i in enumerate(n.inputs):
                if not i or (n.recurrent and ((k in (5, 6) and n.name in cut_init) or (k == 4 and cut_lengths))):
                    continue
                need.add(i)
        p = self._plans[key] = keep[::-1]
        return p

    def evaluate(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Iterable[str],
        rec_init: Mapping[str, np.ndarray] | None = None,
        rec_lengths: np.ndarray | None = None,
        device: str = "cpu",
        hook: Callable[[GNode, list], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Compute ``outputs`` from ``feeds``.

        Parameters
        ----------
        rec_init : recurrent node name -> (B, S) flat initial state replacing initial_h/c.
        rec_lengths : (B,) lengths replacing every recurrent node's sequence_lens.
        hook : called with (node, inputs) before each recurrent node runs.

        Returns
        -------
        (values, finals) : the requested values by name, and the (B, S) final state of each
        recurrent node that ran, by node name.
        """
        rec_init = rec_init or {}
        outputs = list(outputs)
        env: dict[str, Any] = dict(self.consts)
        env.update(feeds)
        finals: dict[str, np.ndarray] = {}
        for n in self.plan(outputs, frozenset(rec_init), rec_lengths is not None):
            ins = []
            for k, i in enumerate(n.inputs):
                cut = n.recurrent and ((k in (5, 6) and n.name in rec_init) or (k == 4 and rec_lengths is not None))
                if not i or cut:
                    ins.append(None)
                elif i in env:
                    ins.append(env[i])
                else:
                    raise StreamRNNError(f"feeds: expected a value for graph input {i!r}, got none")
            if n.recurrent:
                if hook is not None:
                    hook(n, ins)
                outs, finals[n.name] = self._call(
                    n.name, n.op_type, n.op, ins, init=rec_init.get(n.name), lengths=rec_lengths, device=device
                )
            else:
                outs = self._call(n.name, n.op_type, n.op, ins)
            for name, v in zip(n.outputs, outs):
                if name:
                    env[name] = v
        missing = [o for o in outputs if o not in env]
        if missing:
            raise StreamRNNError(f"feeds: expected values for graph inputs {missing}, got none")
        return {o: env[o] for o in outputs}, finals

    # -- structure helpers ------------------------------------------------------------------
    @property
    def recurrent_nodes(self) -> list[GNode]:
        return [n for n in self.nodes if n.recurrent]

    def consumers(self, name: str) -> list[tuple[GNode, int]]:
        return [(n, k) for n in self.nodes for k, i in enumerate(n.inputs) if i == name]

    def ancestors(self, name: str, stop: Callable[[GNode], bool] = lambda n: False) -> set[str]:
        """Every tensor name ``name`` depends on (itself included), not walking past ``stop`` nodes."""
        seen, todo = set(), [name]
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            p = self.producer.get(t)
            if p is not None and not stop(p[0]):
                todo.extend(i for i in p[0].inputs if i)
        return seen
