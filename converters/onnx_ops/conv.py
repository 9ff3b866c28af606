"""Convolution and padding: Conv (N-D, groups, strides, dilations, pads / auto_pad) and Pad.

Feature extractors in front of a recurrent core use these: e.g. Silero VAD's STFT (a reflect
Pad, then a Conv with a fixed basis) and its Conv1d encoder, applied within each frame.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...errors import StreamRNNError
from .registry import NodeView, Op, converter

_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


def _conv_pads(in_sp, win, strides, auto_pad: str, pads) -> list[tuple[int, int]]:
    """(begin, end) zero padding per spatial axis, from ``pads`` or ``auto_pad``."""
    n = len(in_sp)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(n):
            total = max((-(-in_sp[i] // strides[i]) - 1) * strides[i] + win[i] - in_sp[i], 0)
            small = total // 2
            out.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
        return out
    if auto_pad == "VALID" or pads is None:
        return [(0, 0)] * n
    return [(int(pads[i]), int(pads[i + n])) for i in range(n)]


def _conv(x, w, b, strides, dilations, auto_pad, pads, group, label) -> np.ndarray:
    """ONNX Conv: x (N, C, *S), w (M, C / group, *K), b (M,) or None -> (N, M, *S_out)."""
    x, w = np.asarray(x), np.asarray(w)
    sp = x.ndim - 2
    if sp < 1 or w.ndim != x.ndim:
        raise StreamRNNError(f"{label}: X and W: expected ranks equal and >= 3, got X {x.shape}, W {w.shape}")
    N, C = x.shape[:2]
    M, k = w.shape[0], w.shape[2:]
    if C != w.shape[1] * group or M % group:
        raise StreamRNNError(f"{label}: W: expected shape ({M}, {C // group if C % group == 0 else C}/group, ...) "
                             f"for X of {C} channels and group {group}, got {w.shape}")
    strides = strides or (1,) * sp
    dilations = dilations or (1,) * sp
    win = [d * (kk - 1) + 1 for d, kk in zip(dilations, k)]
    pw = _conv_pads(x.shape[2:], win, strides, auto_pad, pads)
    xp = np.pad(x, [(0, 0), (0, 0)] + pw) if any(p != (0, 0) for p in pw) else x
    if any(xp.shape[2 + i] < win[i] for i in range(sp)):
        raise StreamRNNError(f"{label}: X: expected spatial dims of at least {win} after padding, got {xp.shape[2:]}")
    v = sliding_window_view(xp, win, axis=tuple(range(2, 2 + sp)))  # (N, C, *S_full, *win): a view
    v = v[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
          + tuple(slice(None, None, d) for d in dilations)]  # (N, C, *S_out, *K)
    out = v.shape[2 : 2 + sp]
    P, K, G = int(np.prod(out)), int(np.prod(k)), group
    # patches (G, N * P, C / G * K) @ weights (G, C / G * K, M / G) -> (G, N * P, M / G)
    v = v.reshape((N, G, C // G) + out + tuple(k))
    v = np.moveaxis(v, 1, 0)  # (G, N, C/G, *S_out, *K)
    v = np.moveaxis(v.reshape((G, N, C // G, P, K)), 3, 2)  # (G, N, P, C/G, K)
    pat = v.reshape(G, N * P, (C // G) * K)
    wm = w.reshape(G, M // G, (C // G) * K).transpose(0, 2, 1)  # (G, C/G * K, M/G)
    y = np.matmul(pat, wm)  # (G, N * P, M / G)
    y = y.reshape(G, N, P, M // G).transpose(1, 0, 3, 2).reshape((N, M) + out)  # (N, M, *S_out)
    if b is not None:
        y = y + np.asarray(b).reshape((M,) + (1,) * sp)
    return y.astype(x.dtype, copy=False)


@converter("Conv", since=1)
def conv(node: NodeView) -> Op:
    node.check_attrs(("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
    auto_pad = node.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in _AUTO_PADS:
        raise node.unsupported(f"auto_pad: expected one of {list(_AUTO_PADS)}, got {auto_pad!r}")
    group = int(node.attr("group", 1))
    strides, dil, pads = node.attr("strides"), node.attr("dilations"), node.attr("pads")
    kshape = node.attr("kernel_shape")
    w = node.const(1)
    if kshape is not None and w is not None and tuple(kshape) != tuple(w.shape[2:]):
        raise node.unsupported(f"kernel_shape {list(kshape)} differs from W's {list(w.shape[2:])}")
    label = node.label
    return Op(lambda x, w, b=None: _conv(x, w, b, strides, dil, auto_pad, pads, group, label), nin=3)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(x, pads, value, axes, mode: str, label: str) -> np.ndarray:
    x = np.asarray(x)
    pads = np.asarray(pads, dtype=np.int64).reshape(-1).tolist()
    ax = list(range(x.ndim)) if axes is None else [
        a + x.ndim if a < 0 else a for a in np.asarray(axes, np.int64).reshape(-1).tolist()]
    if len(pads) != 2 * len(ax) or any(not 0 <= a < x.ndim for a in ax):
        raise StreamRNNError(f"{label}: pads: expected {2 * len(ax)} values for axes {ax} of a rank-{x.ndim} "
                             f"input, got {len(pads)}")
    width = [(0, 0)] * x.ndim
    for i, a in enumerate(ax):
        width[a] = (pads[i], pads[i + len(ax)])
    if any(p < 0 for w in width for p in w):  # negative pads crop
        if mode != "constant":
            raise StreamRNNError(f"{label}: pads: expected non-negative pads in mode {mode!r}, got {pads}")
        x = x[tuple(slice(-min(b, 0), x.shape[i] + min(e, 0)) for i, (b, e) in enumerate(width))]
        width = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        v = 0 if value is None else np.asarray(value).reshape(-1)
        v = v if np.isscalar(v) else (v[0] if v.size else 0)
        return np.pad(x, width, mode="constant", constant_values=v)
    for i, (b, e) in enumerate(width):
        if (b or e) and (x.shape[i] == 0 or (mode == "reflect" and max(b, e) >= x.shape[i])):
            raise StreamRNNError(f"{label}: pads: expected pads below the axis size {x.shape[i]} in mode "
                                 f"{mode!r}, got {(b, e)} on axis {i}")
    return np.pad(x, width, mode=_PAD_MODES[mode])


def _pad_mode(node: NodeView, since: int) -> str:
    m = node.attr("mode", b"constant")
    m = m.decode() if isinstance(m, bytes) else str(m)
    modes = ("constant", "reflect", "edge") + (("wrap",) if since >= 19 else ())
    if m not in modes:
        raise node.unsupported(f"mode: expected one of {list(modes)}, got {m!r}")
    return m


@converter("Pad", since=2, until=10)
def pad_2(node: NodeView) -> Op:
    node.check_attrs(("mode", "pads", "value"))
    mode, pads, value = _pad_mode(node, 2), node.attr("pads"), node.attr("value", 0.0)
    if pads is None:
        raise node.unsupported("attribute 'pads' is required")
    return Op(lambda x: _pad(x, pads, np.asarray(value, np.asarray(x).dtype), None, mode, node.label), nin=1)


@converter("Pad", since=11)
def pad_11(node: NodeView) -> Op:
    node.check_attrs(("mode",))
    mode = _pad_mode(node, node.opset)
    return Op(lambda x, pads, value=None, axes=None: _pad(x, pads, value, axes, mode, node.label), nin=4)
