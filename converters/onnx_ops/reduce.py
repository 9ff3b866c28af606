"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL2 (axes as an
attribute up to opset 17, ReduceSum's from opset 13 and the others' from 18 as an input)."""
from __future__ import annotations

import math

import numpy as np

from ...errors import StreamRNNError
from .registry import NodeView, Op, converter


def _l2(x, axis, keepdims):
    return np.sqrt(np.add.reduce(np.square(x), axis=axis, keepdims=keepdims))


def _mean(x, axis, keepdims):
    """np.mean's sum and division without its Python wrapper (~5 of its ~6 µs on small arrays)."""
    n = x.size if axis is None else math.prod(x.shape[a] for a in axis)
    return np.true_divide(np.add.reduce(x, axis=axis, keepdims=keepdims), n)


_REDUCE = {"ReduceMean": _mean, "ReduceSum": np.add.reduce, "ReduceMax": np.maximum.reduce,
           "ReduceMin": np.minimum.reduce, "ReduceProd": np.multiply.reduce, "ReduceL2": _l2}
#: the first opset whose axes are an input
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def _norm_axes(axes, ndim: int, label: str) -> tuple[int, ...] | None:
    """ONNX axes (None or empty: all) as a sorted tuple of non-negative axes (None: all)."""
    ax = None if axes is None else np.asarray(axes, np.int64).reshape(-1).tolist()
    if not ax:
        return None
    if any(not -ndim <= a < ndim for a in ax):
        raise StreamRNNError(f"{label}: axes: expected values in [{-ndim}, {ndim - 1}], got {ax}")
    return tuple(sorted({a % ndim for a in ax}))


class _Reduce:
    """A reduction node; axes that are an attribute or a constant are normalised once per rank."""

    def __init__(self, fn, axes_const, keepdims: bool, noop_empty: bool, label: str):
        self.fn, self.axes_const, self.keepdims, self.noop, self.label = fn, axes_const, keepdims, noop_empty, label
        self._axes: dict[int, tuple[int, ...] | None] = {}

    def __call__(self, x, axes=None) -> np.ndarray:
        x = np.asarray(x)
        if axes is None or axes is self.axes_const:
            axes = self.axes_const
            ax = self._axes.get(x.ndim, False)
            if ax is False:
                ax = self._axes[x.ndim] = _norm_axes(axes, x.ndim, self.label)
        else:
            ax = _norm_axes(axes, x.ndim, self.label)
        if ax is None and self.noop and (axes is None or np.size(axes) == 0):
            return x
        if x.size == 0 and self.fn in (np.maximum.reduce, np.minimum.reduce):
            raise StreamRNNError(f"{self.label}: data: expected a non-empty input, got shape {x.shape}")
        return np.asarray(self.fn(x, axis=ax, keepdims=self.keepdims)).astype(x.dtype, copy=False)


def _attr_axes(name: str, fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(("axes", "keepdims"))
        return Op(_Reduce(fn, node.attr("axes"), bool(node.attr("keepdims", 1)), False, node.label), nin=1)

    return conv


def _input_axes(name: str, fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(("keepdims", "noop_with_empty_axes"))
        keep, noop = bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0))
        return Op(_Reduce(fn, node.const(1), keep, noop, node.label), nin=2)

    return conv


for _name, _fn in _REDUCE.items():
    _since = _AXES_INPUT_SINCE.get(_name, 18)
    converter(_name, since=1, until=_since - 1)(_attr_axes(_name, _fn))
    converter(_name, since=_since)(_input_axes(_name, _fn))
