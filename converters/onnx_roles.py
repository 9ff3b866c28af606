"""Model-level roles of an ONNX graph's inputs and outputs (API.md, "An ONNX graph at the model
level"): the frame input X, recurrent state inputs paired with the outputs carrying their final
values, sequence-length inputs, and the output Y.

A state input is a graph input that reaches a recurrent node's ``initial_h`` / ``initial_c``
(and not its ``X``); a state output is a graph output computed from recurrent ``Y_h`` / ``Y_c``
outputs through data-movement ops only (Concat, Slice, Squeeze, ...). Inputs and outputs pair
automatically when they share a recurrent node and a kind (h / c); ``state_map`` names pairs the
graph hides.

A graph with no recurrent node behind a state (an exported ``nn.LSTMCell`` / ``nn.GRUCell`` step,
a hand-written cell, a conv cache) computes the state itself: its other float inputs pair with
outputs by name (``h`` / ``hn``, ``state`` / ``stateN``, ``cache`` / ``cache_out``) and declared
shape, or by ``state_map``; those pairs are ``Roles.feedback``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import StreamRNNError, UnsupportedError
from .graph import GNode, Graph, ValueInfo

#: ops that move or select data without computing (walked through when tracing states)
GLUE = frozenset(
    {"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Cast", "Dropout",
     "Slice", "Gather", "Split", "Concat", "Expand"}
)


def glue_leaves(graph: Graph, name: str) -> set[str]:
    """Tensors ``name`` is made of through data-movement ops (their data inputs, not shapes)."""
    leaves, seen, todo = set(), set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        p = graph.producer.get(t)
        if p is not None and p[0].op_type in GLUE:
            n = p[0]
            data = n.inputs if n.op_type == "Concat" else n.inputs[:1]
            todo.extend(i for i in data if i)
        else:
            leaves.add(t)
    return leaves


def _stop_rec(n: GNode) -> bool:
    return n.recurrent


@dataclass
class Roles:
    """Which graph inputs / outputs play which part at the model level."""

    x: ValueInfo
    y: ValueInfo
    state_inputs: dict[str, str] = field(default_factory=dict)  # name -> "h" | "c" | "state"
    state_outputs: dict[str, str] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)  # state input -> state output
    lengths_inputs: list[ValueInfo] = field(default_factory=list)
    #: pairs whose input reaches no recurrent node: a state the graph computes itself (an
    #: exported LSTMCell / GRUCell step, a hand-written cell), fed back from output to input
    feedback: dict[str, str] = field(default_factory=dict)


#: name endings of a state input / output pair ("h" / "hn", "state" / "stateN", "h_in" / "h_out")
_STATE_SUFFIXES = ("_in", "in", "_out", "out", "_n", "n", "_next", "next", "_new", "new", "_prev", "prev",
                   "0", "1", "_0", "_1")


def _stems(name: str) -> set[str]:
    n = name.lower()
    return {n} | {n[: -len(x)] for x in _STATE_SUFFIXES if n.endswith(x) and len(n) > len(x)}


def _same_decl(a: ValueInfo, b: ValueInfo) -> bool:
    if a.shape is None or b.shape is None:
        return True
    return len(a.shape) == len(b.shape) and all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y for x, y in zip(a.shape, b.shape))


def _pair_by_name(ins: list[ValueInfo], outs: list[ValueInfo]) -> dict[str, str]:
    """Inputs paired with outputs by name (a common stem, see ``_STATE_SUFFIXES``) and declared
    shape, where every input finds exactly one output and no output two inputs; else {}."""
    pairs: dict[str, str] = {}
    for i in ins:
        c = [o for o in outs if _stems(i.name) & _stems(o.name) and _same_decl(i, o)]
        if len(c) != 1 or c[0].name in pairs.values():
            return {}
        pairs[i.name] = c[0].name
    return pairs


def find_roles(graph: Graph, state_map: dict[str, str] | None = None) -> Roles:
    """Assign the model-level roles (see the module docstring).

    Raises
    ------
    StreamRNNError : ``state_map`` names something that is not a graph input / output.
    UnsupportedError : no frame input or no output Y is left.
    """
    inputs = {vi.name: vi for vi in graph.inputs}
    outputs = {vi.name: vi for vi in graph.outputs}
    rec = graph.recurrent_nodes
    data_in: set[str] = set()
    for n in rec:
        data_in |= graph.ancestors(n.inputs[0], _stop_rec) & set(inputs)
    st_in: dict[str, str] = {}
    st_nodes: dict[str, set[str]] = {}
    len_in: set[str] = set()
    for n in rec:
        for k, kind in ((5, "h"), (6, "c"), (4, "len")):
            if k < len(n.inputs) and n.inputs[k]:
                src = (graph.ancestors(n.inputs[k], _stop_rec) & set(inputs)) - data_in
                for s in src:
                    if kind == "len":
                        len_in.add(s)
                    else:
                        st_in.setdefault(s, kind)
                        st_nodes.setdefault(s, set()).add(n.name)
    st_out: dict[str, str] = {}
    out_nodes: dict[str, set[str]] = {}
    for o in outputs:
        leaves = glue_leaves(graph, o)
        srcs = [graph.producer.get(t) for t in leaves if t not in graph.consts]
        if srcs and all(p is not None and p[0].recurrent and p[1] in (1, 2) for p in srcs):
            st_out[o] = "h" if all(p[1] == 1 for p in srcs) else "c" if all(p[1] == 2 for p in srcs) else "state"
            out_nodes[o] = {p[0].name for p in srcs}
    pairs: dict[str, str] = {}
    for s, kind in st_in.items():
        cands = [o for o, k in st_out.items() if k == kind and out_nodes[o] & st_nodes.get(s, set())]
        if len(cands) == 1 and cands[0] not in pairs.values():
            pairs[s] = cands[0]
    for s, o in (state_map or {}).items():
        if s not in inputs:
            raise StreamRNNError(f"state_map: expected keys among the graph inputs {sorted(inputs)}, got {s!r}")
        if o not in outputs:
            raise StreamRNNError(f"state_map[{s!r}]: expected one of the graph outputs {sorted(outputs)}, got {o!r}")
        st_in.setdefault(s, "state")
        st_out.setdefault(o, st_in[s])
        pairs[s] = o
    # states the graph computes itself (no recurrent node behind them): paired by name where
    # every other float input finds its output, the first input staying the frame input
    rest = [vi for vi in graph.inputs if vi.name not in st_in and vi.name not in len_in]
    if len(rest) > 1:
        cand = [vi for vi in rest[1:] if vi.dtype is None or np.dtype(vi.dtype).kind == "f"]
        outs = [vi for vi in graph.outputs if vi.name not in st_out and vi.name not in pairs.values()]
        auto = _pair_by_name(cand, outs[1:]) if len(cand) == len(rest) - 1 else {}
        for si, so in auto.items():
            st_in[si], st_out[so], pairs[si] = "state", "state", so
    xs = [vi for vi in graph.inputs if vi.name not in st_in and vi.name not in len_in]
    if not xs:
        raise UnsupportedError(
            f"inputs: expected a frame input besides the state inputs {sorted(st_in)}, got none"
        )
    ys = [vi for vi in graph.outputs if vi.name not in st_out]
    if not ys:  # Y_h-like outputs no state input pairs with are the output then
        ys = [vi for vi in graph.outputs if vi.name not in pairs.values()]
    if not ys:
        raise UnsupportedError(
            f"outputs: expected an output besides the state outputs {sorted(st_out)}, got none"
        )
    return Roles(
        x=xs[0], y=ys[0], state_inputs=st_in, state_outputs=st_out, pairs=pairs,
        lengths_inputs=[inputs[n] for n in inputs if n in len_in],
        feedback={si: so for si, so in pairs.items() if si not in st_nodes},
    )
