"""Convolution and padding: Conv (N-D, groups, strides, dilations, pads / auto_pad) and Pad.

Feature extractors in front of a recurrent core use these: e.g. Silero VAD's STFT (a reflect
Pad, then a Conv with a fixed basis) and its Conv1d encoder, applied within each frame.
"""
from __future__ import annotations

import numpy as np

from ...errors import StreamRNNError
from .registry import NodeView, Op, ShapePlans, converter

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


class _Conv:
    """ONNX Conv: x (N, C, *S), w (M, C / group, *K), b (M,) or None -> (N, M, *S_out).

    A gather of the input's patches by a flat index (made once per input shape), then one
    matrix product: W (G, M / G, C / G * K) @ patches (N, G, C / G * K, P), or, for several
    items of one group, patches (N * P, C * K) @ W (C * K, M). The weights' matrices are made
    once where W is a constant (bench/NOTES.md 132)."""

    def __init__(self, strides, dilations, auto_pad: str, pads, group: int, w_const, b_const, label: str):
        self.strides, self.dilations, self.auto_pad, self.pads = strides, dilations, auto_pad, pads
        self.group, self.label = group, label
        self._wc, self._bc = w_const, b_const
        self._wm = None if w_const is None else self._wmats(np.asarray(w_const))
        self._bm = None if b_const is None else np.asarray(b_const).reshape(-1)
        #: per input shape, where W and B are the constants: everything a call needs but the data
        self._fast = ShapePlans()
        self._idx = ShapePlans()  # (padding, patch index, output dims) per (input shape, kernel), any W

    def _wmats(self, w: np.ndarray):
        G, M = self.group, w.shape[0]
        wg = np.ascontiguousarray(w.reshape(G, M // G, -1))  # (G, M / G, C / G * K)
        return wg, np.ascontiguousarray(wg[0].T) if G == 1 else None  # (C * K, M)

    def _plan(self, xs: tuple[int, ...], k: tuple[int, ...]):
        """For an input of shape xs: (the padded input's shape and the input's place in it, or
        None without padding; the flat patch index (K, P) into the padded spatial dims; the
        output's spatial dims)."""
        sp = len(xs) - 2
        strides = tuple(self.strides or (1,) * sp)
        dil = tuple(self.dilations or (1,) * sp)
        win = [d * (kk - 1) + 1 for d, kk in zip(dil, k)]
        pw = _conv_pads(xs[2:], win, strides, self.auto_pad, self.pads)
        padded = tuple(n + b + e for n, (b, e) in zip(xs[2:], pw))
        if any(padded[i] < win[i] for i in range(sp)):
            raise StreamRNNError(f"{self.label}: X: expected spatial dims of at least {win} after padding, "
                                 f"got {padded}")
        out = tuple((padded[i] - win[i]) // strides[i] + 1 for i in range(sp))
        # flat index of each kernel offset (K) at each output position (P) in the padded grid
        pos = np.indices(out).reshape(sp, -1) * np.array(strides)[:, None]  # (sp, P)
        off = np.indices(k).reshape(sp, -1) * np.array(dil)[:, None]  # (sp, K)
        grid = off[:, :, None] + pos[:, None, :]  # (sp, K, P)
        idx = np.ravel_multi_index(tuple(grid), padded)  # (K, P)
        pad = None
        if any(p != (0, 0) for p in pw):
            place = (slice(None), slice(None)) + tuple(slice(b, b + n) for (b, _), n in zip(pw, xs[2:]))
            pad = (xs[:2] + padded, place)
        return pad, idx, out

    def __call__(self, x, w, b=None) -> np.ndarray:
        fast = self._fast.get(x.shape) if w is self._wc and b is self._bc and isinstance(x, np.ndarray) else None
        if fast is None:
            return self._checked(x, w, b)
        return self._run(x, *fast)

    def _checked(self, x, w, b) -> np.ndarray:
        """A call with its checks; where W and B are the constants, its plan is kept for the
        calls of this input shape after it."""
        x = np.asarray(x)
        const = w is self._wc and b is self._bc and self._wm is not None
        w = np.asarray(w)
        if w.ndim < 3 or w.shape[0] % self.group:
            raise StreamRNNError(f"{self.label}: W: expected shape (M, C / group, *K) with M a multiple "
                                 f"of group {self.group}, got {w.shape}")
        if x.ndim < 3 or w.ndim != x.ndim:
            raise StreamRNNError(f"{self.label}: X and W: expected ranks equal and >= 3, got X {x.shape}, W {w.shape}")
        C, G, M = x.shape[1], self.group, w.shape[0]
        if C != w.shape[1] * G:
            raise StreamRNNError(f"{self.label}: W: expected shape ({M}, {C // G if C % G == 0 else C}/group, ...) "
                                 f"for X of {C} channels and group {G}, got {w.shape}")
        if b is not None and np.size(b) != M:
            raise StreamRNNError(f"{self.label}: B: expected {M} values, got shape {np.shape(b)}")
        wg, w2 = self._wm if const else self._wmats(w)
        bm = None if b is None else (self._bm if const else np.asarray(b).reshape(-1))
        k = w.shape[2:]
        plan = self._idx.plan((x.shape, k), lambda: self._plan(x.shape, k)) + (wg, w2, bm)
        if const:
            self._fast.remember(x.shape, plan)
        return self._run(x, *plan)

    def _run(self, x: np.ndarray, pad, idx, out, wg, w2, bm) -> np.ndarray:
        N, C = x.shape[:2]
        if pad is not None:
            xp = np.zeros(pad[0], x.dtype)
            xp[pad[1]] = x
        else:
            xp = x
        xf = xp.reshape(N, C, -1)  # (N, C, L)
        P = idx.shape[1]
        M = wg.shape[0] * wg.shape[1]
        if w2 is not None and N == 1:  # one item, one group: W (M, C * K) @ patches (C * K, P), 2-D
            y = wg[0] @ xf[0][:, idx].reshape(-1, P)  # (M, P)
            if bm is not None:
                y += bm[:, None]
        elif w2 is not None:  # one product over every item: (N * P, C * K) @ (C * K, M)
            y = xf[:, :, idx.T].transpose(0, 2, 1, 3).reshape(N * P, -1) @ w2  # (N * P, M)
            if bm is not None:
                y += bm
            y = y.reshape(N, P, M).transpose(0, 2, 1)  # (N, M, P)
        else:
            G = wg.shape[0]
            y = np.matmul(wg, xf[:, :, idx].reshape(N, G, -1, P)).reshape(N, M, P)  # (N, G, M / G, P)
            if bm is not None:
                y += bm[:, None]
        return y.reshape((N, M) + out).astype(x.dtype, copy=False)


@converter("Conv", since=1)
def conv(node: NodeView) -> Op:
    node.check_attrs(("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
    auto_pad = node.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in _AUTO_PADS:
        raise node.unsupported(f"auto_pad: expected one of {list(_AUTO_PADS)}, got {auto_pad!r}")
    group = int(node.attr("group", 1))
    w = node.const(1)
    kshape = node.attr("kernel_shape")
    if kshape is not None and w is not None and tuple(kshape) != tuple(w.shape[2:]):
        raise node.unsupported(f"kernel_shape {list(kshape)} differs from W's {list(w.shape[2:])}")
    if w is not None and (w.ndim < 3 or w.shape[0] % group):
        raise node.unsupported(f"W: expected shape (M, C / group, *K) with M a multiple of group {group}, got {w.shape}")
    return Op(_Conv(node.attr("strides"), node.attr("dilations"), auto_pad, node.attr("pads"), group, w,
                    node.const(2), node.label), nin=3)


def _pad_width(shape: tuple[int, ...], pads, axes, mode: str, label: str) -> list[tuple[int, int]]:
    """ONNX pads (and axes) as numpy's (begin, end) per axis of an input of ``shape``; checked."""
    rank = len(shape)
    pads = np.asarray(pads, dtype=np.int64).reshape(-1).tolist()
    ax = list(range(rank)) if axes is None else [
        a + rank if a < 0 else a for a in np.asarray(axes, np.int64).reshape(-1).tolist()]
    if len(pads) != 2 * len(ax) or any(not 0 <= a < rank for a in ax):
        raise StreamRNNError(f"{label}: pads: expected {2 * len(ax)} values for axes {ax} of a rank-{rank} "
                             f"input, got {len(pads)}")
    width = [(0, 0)] * rank
    for i, a in enumerate(ax):
        width[a] = (pads[i], pads[i + len(ax)])
    if mode != "constant":
        for i, (b, e) in enumerate(width):
            if b < 0 or e < 0:
                raise StreamRNNError(f"{label}: pads: expected non-negative pads in mode {mode!r}, got {pads}")
            if (b or e) and (shape[i] == 0 or (mode == "reflect" and max(b, e) >= shape[i])):
                raise StreamRNNError(f"{label}: pads: expected pads below the axis size {shape[i]} in mode "
                                     f"{mode!r}, got {(b, e)} on axis {i}")
    return width


def _gather_index(n: int, b: int, e: int, mode: str) -> np.ndarray:
    """Indices into an axis of size n giving it b values before and e after, by ``mode``."""
    i = np.arange(-b, n + e)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return i % n
    i = np.abs(i)  # reflect (the edge value not repeated)
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


class _Pad:
    """ONNX Pad: constant (negative pads crop), reflect, edge, wrap. For a given input shape the
    padding is planned once (a slice and a fill, or an index per padded axis) where pads and
    axes are constants."""

    def __init__(self, mode: str, pads_const, axes_const, label: str):
        self.mode, self.label = mode, label
        self._consts = (pads_const, axes_const)
        self._plans = ShapePlans()

    def _plan(self, shape, pads, axes):
        width = _pad_width(shape, pads, axes, self.mode, self.label)
        if self.mode == "constant":
            crop = tuple(slice(-min(b, 0), n + min(e, 0)) for n, (b, e) in zip(shape, width))
            width = [(max(b, 0), max(e, 0)) for b, e in width]
            out = tuple(c.stop - c.start + b + e for c, (b, e) in zip(crop, width))
            place = tuple(slice(b, b + c.stop - c.start) for c, (b, _) in zip(crop, width))
            return crop, out, place
        return [(a, _gather_index(shape[a], b, e, self.mode)) for a, (b, e) in enumerate(width) if b or e]

    def __call__(self, x, pads, value=None, axes=None) -> np.ndarray:
        x = np.asarray(x)
        if pads is self._consts[0] and axes is self._consts[1]:
            plan = self._plans.plan(x.shape, lambda: self._plan(x.shape, pads, axes))
        else:
            plan = self._plan(x.shape, pads, axes)
        if self.mode == "constant":
            crop, out, place = plan
            v = 0 if value is None else np.asarray(value).reshape(-1)
            y = np.full(out, v if np.isscalar(v) else (v[0] if v.size else 0), dtype=x.dtype)
            y[place] = x[crop]
            return y
        for a, idx in plan:
            x = np.take(x, idx, axis=a)
        return x


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
    pads = np.asarray(pads, np.int64)
    pad = _Pad(mode, pads, None, node.label)
    return Op(lambda x: pad(x, pads, np.asarray(value, np.asarray(x).dtype)), nin=1)


@converter("Pad", since=11)
def pad_11(node: NodeView) -> Op:
    node.check_attrs(("mode",))
    return Op(_Pad(_pad_mode(node, node.opset), node.const(1), node.const(3), node.label), nin=4)
