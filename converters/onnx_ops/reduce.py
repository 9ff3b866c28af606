"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL2 (axes as an
attribute up to opset 17, ReduceSum's from opset 13 and the others' from 18 as an input)."""
from __future__ import annotations

import numpy as np

from ...errors import StreamRNNError
from .registry import NodeView, Op, converter


def _l2(x, axis, keepdims):
    return np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keepdims))


_REDUCE = {"ReduceMean": np.mean, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min,
           "ReduceProd": np.prod, "ReduceL2": _l2}
#: the first opset whose axes are an input
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduce(fn, x, axes, keepdims: bool, noop_empty: bool, label: str) -> np.ndarray:
    x = np.asarray(x)
    ax = None if axes is None else np.asarray(axes, np.int64).reshape(-1).tolist()
    if ax is not None and not ax:
        ax = None
    if ax is None and noop_empty:
        return x
    if ax is not None:
        if any(not -x.ndim <= a < x.ndim for a in ax):
            raise StreamRNNError(f"{label}: axes: expected values in [{-x.ndim}, {x.ndim - 1}], got {ax}")
        ax = tuple(sorted({a % x.ndim for a in ax}))
    if x.size == 0 and fn in (np.max, np.min):
        raise StreamRNNError(f"{label}: data: expected a non-empty input, got shape {x.shape}")
    return np.asarray(fn(x, axis=ax, keepdims=keepdims)).astype(x.dtype, copy=False)


def _attr_axes(name: str, fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(("axes", "keepdims"))
        axes, keep = node.attr("axes"), bool(node.attr("keepdims", 1))
        return Op(lambda x: _reduce(fn, x, axes, keep, False, node.label), nin=1)

    return conv


def _input_axes(name: str, fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(("keepdims", "noop_with_empty_axes"))
        keep, noop = bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0))
        return Op(lambda x, axes=None: _reduce(fn, x, axes, keep, noop, node.label), nin=2)

    return conv


for _name, _fn in _REDUCE.items():
    _since = _AXES_INPUT_SINCE.get(_name, 18)
    converter(_name, since=1, until=_since - 1)(_attr_axes(_name, _fn))
    converter(_name, since=_since)(_input_axes(_name, _fn))
