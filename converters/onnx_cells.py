"""LSTM, GRU and Elman (RNN) cells written out as plain ops, fused into one ONNX LSTM / GRU / RNN
node (an ONNX Runtime-style fusion, at load time).

``torch.onnx.export`` writes ``nn.LSTMCell`` (both exporters) as two Gemms, an Add, a Split into
four gates, Sigmoid / Tanh and the Mul / Add of the cell update, its state coming in as graph
inputs h, c and going out as outputs. Run node by node that is ~14 numpy calls a frame (~75 µs
at H=128, 3x onnxruntime; bench/NOTES.md 139). When the graph feeds h and c back (they are
states the graph computes itself, :attr:`Roles.feedback`), the cell is exactly one step of an
LSTM whose initial state is (h, c): :func:`fuse_lstm_cells` rewrites it so, and the caller
keeps the rewrite only if it gives the original graph's outputs on random frames. ``nn.GRUCell``
likewise (two Gemms, two 3-way Splits; an ONNX GRU with ``linear_before_reset=1``), and
``nn.RNNCell`` (Tanh or Relu of two Gemms added; an ONNX RNN).

Only the pattern is matched; nothing about its numbers is assumed (the caller's check is what
makes the rewrite safe).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .graph import GNode, Graph
from .onnx_roles import Roles, glue_leaves

#: torch's gate blocks (i, f, g, o) in ONNX's LSTM order (i, o, f, c)
_TORCH_TO_ONNX = [0, 3, 1, 2]
#: torch's GRU gate blocks (r, z, n) in ONNX's GRU order (z, r, h)
_TORCH_TO_ONNX_GRU = [1, 0, 2]


def _producer(graph: Graph, name: str, op_type: str) -> GNode | None:
    p = graph.producer.get(name)
    return p[0] if p is not None and p[0].op_type == op_type else None


def _gemm(graph: Graph, n: GNode | None) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(data input, W (4H, K), bias (4H,)) of a Gemm ``a @ W.T + b`` with constant W and b, or of
    a MatMul ``a @ Wt`` by a constant matrix (a cell without bias: bias 0)."""
    if n is not None and n.op_type == "MatMul" and n.inputs[1] in graph.consts:
        wt = np.asarray(graph.consts[n.inputs[1]])
        return (n.inputs[0], wt.T, np.zeros(wt.shape[1], wt.dtype)) if wt.ndim == 2 else None
    if n is None or n.op_type != "Gemm" or n.attrs.get("transA", 0) or float(n.attrs.get("alpha", 1.0)) != 1.0 \
            or float(n.attrs.get("beta", 1.0)) != 1.0 or n.inputs[1] not in graph.consts:
        return None
    w = np.asarray(graph.consts[n.inputs[1]])
    if w.ndim != 2:
        return None
    w = w if n.attrs.get("transB", 0) else w.T
    b = np.zeros(w.shape[0], w.dtype)
    if len(n.inputs) > 2 and n.inputs[2]:
        if n.inputs[2] not in graph.consts:
            return None
        b = np.asarray(graph.consts[n.inputs[2]])
        if b.size != w.shape[0]:
            return None
        b = b.reshape(-1)
    return n.inputs[0], w, b


def _only_consumer(graph: Graph, name: str, op_type: str) -> GNode | None:
    c = graph.consumers(name)
    return c[0][0] if len(c) == 1 and c[0][0].op_type == op_type else None


def _other(n: GNode, name: str) -> str | None:
    """The other input of a two-input node that reads ``name``."""
    a, b = n.inputs[:2]
    return b if a == name else a if b == name else None


def _equal_split(graph: Graph, n: GNode | None, parts: int) -> bool:
    """Whether ``n`` is a Split of the last axis of a (B, parts * H) value into ``parts`` equal parts."""
    if n is None or n.op_type != "Split" or len([o for o in n.outputs if o]) != parts \
            or int(n.attrs.get("axis", 0)) not in (1, -1):
        return False
    if len(n.inputs) > 1 and n.inputs[1]:
        sizes = graph.consts.get(n.inputs[1])
        return sizes is not None and len(set(np.asarray(sizes).reshape(-1).tolist())) == 1
    return "split" not in n.attrs or len(set(n.attrs["split"])) == 1


def _state_and_input(graph: Graph, add: GNode, fb: "_States"):
    """For ``add`` = a product of the state plus a product of the cell's input (either order):
    (h, x, R (G H, H), W (G H, I), bias of R, bias of W), or None."""
    g1, g2 = (_gemm(graph, graph.producer.get(i, (None,))[0]) for i in add.inputs[:2])
    if g1 is None or g2 is None:
        return None
    if fb.is_in(g2[0]) and not fb.is_in(g1[0]):
        g1, g2 = g2, g1
    if not fb.is_in(g1[0]):
        return None
    (h, R, br), (x, W, bw) = g1, g2
    return h, x, R, W, br, bw


def _closed(graph: Graph, nodes: list[GNode], kept: set[str]) -> set[str] | None:
    """The outputs of ``nodes`` (to drop), where none of them but ``kept`` is read outside
    ``nodes`` or is a graph output; else None (a value inside the cell is read elsewhere)."""
    drop = {o for n in nodes for o in n.outputs if o}
    inner = drop - kept
    if inner & {vi.name for vi in graph.outputs} or any(cn not in nodes for v in inner for cn, _ in graph.consumers(v)):
        return None
    return drop


class _States:
    """Which values are states the graph feeds back: a state input itself or data moved out of
    one (a packed state's Gather / Slice), and values that reach a state output through data
    movement only (a Concat / Unsqueeze packing them)."""

    def __init__(self, graph: Graph, fb: dict[str, str]):
        self.graph, self.inputs = graph, set(fb)
        self.outs = set(fb.values()).union(*(glue_leaves(graph, o) for o in fb.values()))

    def is_in(self, v: str | None) -> bool:
        if not v:
            return False
        return v in self.inputs or (bool(leaves := glue_leaves(self.graph, v)) and leaves <= self.inputs)

    def is_out(self, v: str) -> bool:
        return v in self.outs


def _match(graph: Graph, split: GNode, fb: _States) -> dict[str, Any] | None:
    """The LSTM cell around a 4-way Split, or None."""
    if not _equal_split(graph, split, 4):
        return None
    gates = [o for o in split.outputs if o]
    add = _producer(graph, split.inputs[0], "Add")
    si = None if add is None else _state_and_input(graph, add, fb)
    if si is None:
        return None
    h, x, R, W, br, bw = si
    H = R.shape[1]
    if R.shape[0] != 4 * H or W.shape[0] != 4 * H:
        return None
    acts = [_only_consumer(graph, g, t) for g, t in zip(gates, ("Sigmoid", "Sigmoid", "Tanh", "Sigmoid"))]
    if any(a is None for a in acts):
        return None
    i_s, f_s, g_t, o_s = (a.outputs[0] for a in acts)
    mul_f = _only_consumer(graph, f_s, "Mul")  # f * c
    mul_i = _only_consumer(graph, i_s, "Mul")  # i * g
    mul_o = _only_consumer(graph, o_s, "Mul")  # o * tanh(c')
    if mul_f is None or mul_i is None or mul_o is None or _other(mul_i, i_s) != g_t:
        return None
    if len(graph.consumers(g_t)) != 1:
        return None
    c = _other(mul_f, f_s)
    if not fb.is_in(c):
        return None
    add_c = _only_consumer(graph, mul_f.outputs[0], "Add")
    if add_c is None or _other(add_c, mul_f.outputs[0]) != mul_i.outputs[0] or len(graph.consumers(mul_i.outputs[0])) != 1:
        return None
    c_new = add_c.outputs[0]
    tanh_c = _other(mul_o, o_s)
    t = _producer(graph, tanh_c, "Tanh") if tanh_c else None
    if t is None or t.inputs[0] != c_new or len(graph.consumers(tanh_c)) != 1:
        return None
    h_new = mul_o.outputs[0]
    if not (fb.is_out(h_new) and fb.is_out(c_new)):
        return None
    drop = _closed(graph, [graph.producer[add.inputs[0]][0], graph.producer[add.inputs[1]][0], add, split, *acts,
                           mul_f, mul_i, add_c, t, mul_o], {h_new, c_new})
    if drop is None:
        return None
    return dict(kind="LSTM", x=x, h=h, c=c, h_new=h_new, c_new=c_new, W=W, R=R, bw=bw, br=br, H=H, drop=drop)


def _match_gru(graph: Graph, split_h: GNode, fb: _States) -> dict[str, Any] | None:
    """The GRU cell (torch's GRUCell: r, z, n; n = tanh(x_n + r * (h_n))) whose recurrent 3-way
    Split is ``split_h``, or None."""
    if not _equal_split(graph, split_h, 3):
        return None
    gh = _gemm(graph, graph.producer.get(split_h.inputs[0], (None,))[0])
    if gh is None or not fb.is_in(gh[0]):
        return None
    h, R, br = gh
    hr, hz, hn = split_h.outputs[:3]
    adds = [_only_consumer(graph, hr, "Add"), _only_consumer(graph, hz, "Add")]
    if any(a is None for a in adds):
        return None
    xr, xz = _other(adds[0], hr), _other(adds[1], hz)
    px, pz = graph.producer.get(xr), graph.producer.get(xz)
    if px is None or pz is None or px[0] is not pz[0] or (px[1], pz[1]) != (0, 1) or not _equal_split(graph, px[0], 3):
        return None
    split_x = px[0]
    gx = _gemm(graph, graph.producer.get(split_x.inputs[0], (None,))[0])
    if gx is None:
        return None
    x, W, bw = gx
    H = R.shape[1]
    if R.shape[0] != 3 * H or W.shape[0] != 3 * H:
        return None
    sig_r, sig_z = (_only_consumer(graph, a.outputs[0], "Sigmoid") for a in adds)
    if sig_r is None or sig_z is None:
        return None
    r, z = sig_r.outputs[0], sig_z.outputs[0]
    mul_n = _only_consumer(graph, hn, "Mul")  # r * h_n
    if mul_n is None or _other(mul_n, hn) != r or len(graph.consumers(r)) != 1:
        return None
    add_n = _only_consumer(graph, mul_n.outputs[0], "Add")  # x_n + r * h_n
    if add_n is None or _other(add_n, mul_n.outputs[0]) != split_x.outputs[2] \
            or len(graph.consumers(split_x.outputs[2])) != 1:
        return None
    tanh_n = _only_consumer(graph, add_n.outputs[0], "Tanh")
    if tanh_n is None:
        return None
    n_ = tanh_n.outputs[0]
    uses = graph.consumers(n_)
    sub = next((c for c, k in uses if c.op_type == "Sub" and c.inputs[:2] == [h, n_]), None)
    if sub is None or len(uses) != 2:
        return None
    mul_h = _only_consumer(graph, sub.outputs[0], "Mul")  # (h - n) * z
    if mul_h is None or _other(mul_h, sub.outputs[0]) != z or len(graph.consumers(z)) != 1:
        return None
    add_h = _only_consumer(graph, mul_h.outputs[0], "Add")  # + n
    if add_h is None or _other(add_h, mul_h.outputs[0]) != n_ or not any(c is add_h for c, _ in uses):
        return None
    h_new = add_h.outputs[0]
    if not fb.is_out(h_new):
        return None
    drop = _closed(graph, [graph.producer[split_h.inputs[0]][0], split_h, graph.producer[split_x.inputs[0]][0],
                           split_x, *adds, sig_r, sig_z, mul_n, add_n, tanh_n, sub, mul_h, add_h], {h_new})
    if drop is None:
        return None
    return dict(kind="GRU", x=x, h=h, h_new=h_new, W=W, R=R, bw=bw, br=br, H=H, drop=drop)


def _match_rnn(graph: Graph, act: GNode, fb: _States) -> dict[str, Any] | None:
    """An Elman cell (torch's RNNCell): Tanh / Relu of a Gemm of the state plus a Gemm of the
    input, giving the state back; or None."""
    add = _producer(graph, act.inputs[0], "Add")
    si = None if add is None else _state_and_input(graph, add, fb)
    h_new = act.outputs[0]
    if si is None or not fb.is_out(h_new):
        return None
    h, x, R, W, br, bw = si
    H = R.shape[1]
    if R.shape[0] != H or W.shape[0] != H:
        return None
    drop = _closed(graph, [graph.producer[add.inputs[0]][0], graph.producer[add.inputs[1]][0], add, act], {h_new})
    if drop is None:
        return None
    return dict(kind="RNN", act=act.op_type, x=x, h=h, h_new=h_new, W=W, R=R, bw=bw, br=br, H=H, drop=drop)


def _reorder(a: np.ndarray, H: int, order: list[int] | None = None) -> np.ndarray:
    order = _TORCH_TO_ONNX if order is None else order
    return a.reshape((len(order), H) + a.shape[1:])[order].reshape(a.shape)


def fuse_lstm_cells(proto, graph: Graph, roles: Roles):
    """A copy of ``proto`` with each LSTM cell whose h and c the graph feeds back replaced by
    an ONNX LSTM node of one step (X = the cell's input, initial_h / initial_c = h / c), and
    each such GRU cell by a GRU node; None where there is no such cell."""
    if not roles.feedback:
        return None
    st = _States(graph, roles.feedback)
    cells = [m for n in graph.nodes if n.op_type == "Split" for m in [_match(graph, n, st) or _match_gru(graph, n, st)] if m]
    cells += [m for n in graph.nodes if n.op_type in ("Tanh", "Relu") for m in [_match_rnn(graph, n, st)] if m]
    if not cells:
        return None
    from onnx import helper, numpy_helper

    out = type(proto)()
    out.CopyFrom(proto)
    g = out.graph
    new_axes = graph.opset >= 13  # Unsqueeze / Squeeze axes as an input from opset 13
    kept, inits = [], []
    placed = set()
    for pn in g.node:
        cell = next((k for k, m in enumerate(cells) if set(pn.output) & m["drop"]), None)
        if cell is None:
            kept.append(pn)
            continue
        if cell in placed:
            continue
        placed.add(cell)
        m = cells[cell]
        H, p = m["H"], f"{m['h_new']}__lstm_cell"

        def axes_node(op, src, dst, axes):
            if new_axes:
                inits.append(numpy_helper.from_array(np.array(axes, np.int64), f"{dst}__axes"))
                return helper.make_node(op, [src, f"{dst}__axes"], [dst], name=dst)
            return helper.make_node(op, [src], [dst], name=dst, axes=axes)

        order = {"LSTM": _TORCH_TO_ONNX, "GRU": _TORCH_TO_ONNX_GRU, "RNN": [0]}[m["kind"]]
        W = _reorder(m["W"], H, order)[None]  # (1, G * H, I)
        R = _reorder(m["R"], H, order)[None]  # (1, G * H, H)
        B = np.concatenate([_reorder(m["bw"], H, order), _reorder(m["br"], H, order)])[None]  # (1, 2 G H)
        for name, a in ((f"{p}__W", W), (f"{p}__R", R), (f"{p}__B", B)):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(a), name))
        kept += [axes_node("Unsqueeze", m["x"], f"{p}__x", [0]), axes_node("Unsqueeze", m["h"], f"{p}__h0", [0])]
        if m["kind"] == "LSTM":
            kept += [
                axes_node("Unsqueeze", m["c"], f"{p}__c0", [0]),
                helper.make_node("LSTM", [f"{p}__x", f"{p}__W", f"{p}__R", f"{p}__B", "", f"{p}__h0", f"{p}__c0"],
                                 [f"{p}__Y", f"{p}__Yh", f"{p}__Yc"], name=p, hidden_size=H),
                axes_node("Squeeze", f"{p}__Yc", m["c_new"], [0]),
            ]
        elif m["kind"] == "GRU":
            kept.append(helper.make_node("GRU", [f"{p}__x", f"{p}__W", f"{p}__R", f"{p}__B", "", f"{p}__h0"],
                                         [f"{p}__Y", f"{p}__Yh"], name=p, hidden_size=H, linear_before_reset=1))
        else:
            kept.append(helper.make_node("RNN", [f"{p}__x", f"{p}__W", f"{p}__R", f"{p}__B", "", f"{p}__h0"],
                                         [f"{p}__Y", f"{p}__Yh"], name=p, hidden_size=H, activations=[m["act"]]))
        kept.append(axes_node("Squeeze", f"{p}__Y", m["h_new"], [0, 1]))
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(inits)
    return out
