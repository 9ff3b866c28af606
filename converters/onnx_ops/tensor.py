"""Shape and indexing ONNX ops: Transpose, (Un)Squeeze, Reshape, Flatten, Concat, Split, Slice,
Gather, Shape, Constant, ConstantOfShape, Expand."""
from __future__ import annotations

import numpy as np

from ...errors import StreamRNNError
from .registry import NodeView, Op, ShapePlans, converter


def _axes(axes, rank: int, what: str) -> list[int]:
    out = []
    for a in np.asarray(axes, dtype=np.int64).reshape(-1).tolist():
        if not -rank <= a < rank:
            raise StreamRNNError(f"{what}: expected axes in [{-rank}, {rank - 1}], got {a}")
        out.append(a + rank if a < 0 else a)
    return out


@converter("Transpose", since=1)
def transpose(node: NodeView) -> Op:
    node.check_attrs(("perm",))
    perm = node.attr("perm")
    return Op(lambda x: np.transpose(x, perm), nin=1)


def _squeeze(x: np.ndarray, axes, label: str) -> np.ndarray:
    x = np.asarray(x)
    if axes is None:
        return np.squeeze(x)
    ax = _axes(axes, x.ndim, f"{label} axes")
    bad = [a for a in ax if x.shape[a] != 1]
    if bad:
        raise StreamRNNError(f"{label}: expected size-1 axes {bad} to squeeze, got shape {x.shape}")
    return np.squeeze(x, axis=tuple(ax))


def _unsqueeze(x: np.ndarray, axes, label: str) -> np.ndarray:
    x = np.asarray(x)
    ax = sorted(_axes(axes, x.ndim + len(np.asarray(axes).reshape(-1)), f"{label} axes"))
    for a in ax:
        x = np.expand_dims(x, a)
    return x


@converter("Squeeze", since=1, until=12)
def squeeze_1(node: NodeView) -> Op:
    node.check_attrs(("axes",))
    axes = node.attr("axes")
    return Op(lambda x: _squeeze(x, axes, node.label), nin=1)


@converter("Squeeze", since=13)
def squeeze_13(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda x, axes=None: _squeeze(x, axes, node.label), nin=2)


@converter("Unsqueeze", since=1, until=12)
def unsqueeze_1(node: NodeView) -> Op:
    node.check_attrs(("axes",))
    axes = node.attr("axes")
    if axes is None:
        raise node.unsupported("attribute 'axes' is required")
    return Op(lambda x: _unsqueeze(x, axes, node.label), nin=1)


@converter("Unsqueeze", since=13)
def unsqueeze_13(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda x, axes: _unsqueeze(x, axes, node.label), nin=2)


def reshape_target(shape_in: tuple[int, ...], shape, allowzero: bool, label: str) -> tuple[int, ...]:
    """ONNX Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    tgt = [int(s) for s in np.asarray(shape, dtype=np.int64).reshape(-1)]
    for i, s in enumerate(tgt):
        if s == 0 and not allowzero:
            if i >= len(shape_in):
                raise StreamRNNError(f"{label}: shape[{i}] = 0 copies a dim the input (shape {shape_in}) lacks")
            tgt[i] = shape_in[i]
    if tgt.count(-1) > 1:
        raise StreamRNNError(f"{label}: shape: expected at most one -1, got {tgt}")
    return tuple(tgt)


@converter("Reshape", since=5)
def reshape(node: NodeView) -> Op:
    node.check_attrs(("allowzero",))
    allowzero = bool(node.attr("allowzero", 0))

    def run(x, shape):
        x = np.asarray(x)
        tgt = reshape_target(x.shape, shape, allowzero, node.label)
        try:
            return x.reshape(tgt)
        except ValueError:
            raise StreamRNNError(f"{node.label}: cannot reshape shape {x.shape} to {tgt}") from None

    return Op(run, nin=2)


@converter("Flatten", since=1)
def flatten(node: NodeView) -> Op:
    node.check_attrs(("axis",))
    axis = int(node.attr("axis", 1))

    def run(x):
        x = np.asarray(x)
        a = axis + x.ndim if axis < 0 else axis
        return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1)

    return Op(run, nin=1)


@converter("Concat", since=4)
def concat(node: NodeView) -> Op:
    node.check_attrs(("axis",))
    if "axis" not in node.attrs:
        raise node.unsupported("attribute 'axis' is required")
    axis = int(node.attrs["axis"])
    return Op(lambda *xs: np.concatenate([np.asarray(x) for x in xs if x is not None], axis=axis))


def _split_index(shape: tuple[int, ...], axis: int, split, n_out: int, label: str,
                 ceil_last: bool) -> list[tuple[slice, ...]]:
    """The numpy index of each output of ONNX Split on an input of ``shape``."""
    ax = axis + len(shape) if axis < 0 else axis
    if not 0 <= ax < len(shape):
        raise StreamRNNError(f"{label}: axis: expected a value in [{-len(shape)}, {len(shape) - 1}], got {axis}")
    dim = shape[ax]
    if split is None:
        if ceil_last:
            size = -(-dim // n_out)
            split = [size] * (n_out - 1) + [dim - size * (n_out - 1)]
        else:
            if dim % n_out:
                raise StreamRNNError(f"{label}: expected axis {axis} (size {dim}) to split into {n_out} equal parts")
            split = [dim // n_out] * n_out
    split = [int(s) for s in np.asarray(split).reshape(-1)]
    if sum(split) != dim or len(split) != n_out:
        raise StreamRNNError(f"{label}: split: expected {n_out} sizes summing to {dim}, got {split}")
    bounds = np.concatenate([[0], np.cumsum(split)]).tolist()
    lead = (slice(None),) * ax
    return [lead + (slice(a, b),) for a, b in zip(bounds[:-1], bounds[1:])]


class _Split:
    """ONNX Split: the outputs' indices made once per input shape where the sizes are an
    attribute, a constant or absent (np.split took ~5 µs a call for an LSTMCell's gates)."""

    def __init__(self, axis: int, split_const, n_out: int, label: str, ceil_last: bool):
        self.axis, self.split_const, self.n, self.label, self.ceil_last = axis, split_const, n_out, label, ceil_last
        self._plans = ShapePlans()

    def __call__(self, x, split=None) -> list[np.ndarray]:
        x = np.asarray(x)
        if split is None or split is self.split_const:
            idx = self._plans.plan(x.shape, lambda: _split_index(x.shape, self.axis, self.split_const, self.n,
                                                                 self.label, self.ceil_last))
        else:
            idx = _split_index(x.shape, self.axis, split, self.n, self.label, self.ceil_last)
        return [x[i] for i in idx]


@converter("Split", since=2, until=12)
def split_2(node: NodeView) -> Op:
    node.check_attrs(("axis", "split"))
    return Op(_Split(int(node.attr("axis", 0)), node.attr("split"), len(node.outputs), node.label, False), nin=1)


@converter("Split", since=13)
def split_13(node: NodeView) -> Op:
    node.check_attrs(("axis", "num_outputs"))
    return Op(_Split(int(node.attr("axis", 0)), node.const(1), len(node.outputs), node.label,
                     "num_outputs" in node.attrs), nin=2)


def _slice_index(shape: tuple[int, ...], starts, ends, axes, steps) -> tuple[slice, ...]:
    """The numpy index of ONNX Slice on an input of ``shape``."""
    rank = len(shape)
    starts = np.asarray(starts, np.int64).reshape(-1)
    ends = np.asarray(ends, np.int64).reshape(-1)
    axes = list(range(len(starts))) if axes is None else _axes(axes, rank, "Slice axes")
    steps = np.ones(len(starts), np.int64) if steps is None else np.asarray(steps, np.int64).reshape(-1)
    idx = [slice(None)] * rank
    for a, s, e, st in zip(axes, starts.tolist(), ends.tolist(), steps.tolist()):
        if st == 0:
            raise StreamRNNError("Slice: steps: expected non-zero steps, got 0")
        dim = shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        idx[a] = slice(s, e if e >= 0 else None, st)
    return tuple(idx)


def _slice(x: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    x = np.asarray(x)
    return x[_slice_index(x.shape, starts, ends, axes, steps)]


@converter("Slice", since=1, until=9)
def slice_1(node: NodeView) -> Op:
    node.check_attrs(("starts", "ends", "axes"))
    s, e, a = node.attr("starts"), node.attr("ends"), node.attr("axes")
    return Op(lambda x: _slice(x, s, e, a, None), nin=1)


@converter("Slice", since=10)
def slice_10(node: NodeView) -> Op:
    node.check_attrs(())
    consts = [node.const(i) for i in (1, 2, 3, 4)]
    if consts[0] is None or consts[1] is None or (node.has_input(3) and consts[2] is None) or (
            node.has_input(4) and consts[3] is None):
        return Op(lambda x, s, e, a=None, st=None: _slice(x, s, e, a, st), nin=5)
    plans = ShapePlans()  # constant starts / ends / axes / steps: an index per input shape

    def run(x, s, e, a=None, st=None):
        x = np.asarray(x)
        if not (s is consts[0] and e is consts[1] and a is consts[2] and st is consts[3]):
            return _slice(x, s, e, a, st)
        return x[plans.plan(x.shape, lambda: _slice_index(x.shape, s, e, a, st))]

    return Op(run, nin=5)


@converter("Gather", since=1)
def gather(node: NodeView) -> Op:
    node.check_attrs(("axis",))
    axis = int(node.attr("axis", 0))

    def run(x, idx):
        x, idx = np.asarray(x), np.asarray(idx)
        ax = axis + x.ndim if axis < 0 else axis
        dim = x.shape[ax]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise StreamRNNError(
                f"{node.label}: indices: expected values in [{-dim}, {dim - 1}], got {idx.min()}..{idx.max()}"
            )
        return np.take(x, idx.astype(np.int64), axis=ax)

    return Op(run, nin=2)


def shape_range(rank: int, start: int, end: int | None) -> tuple[int, int]:
    """The dims [start, end) that ONNX Shape (opset 15 start/end) selects, clamped."""
    s = start + rank if start < 0 else start
    e = rank if end is None else (end + rank if end < 0 else end)
    return min(max(s, 0), rank), min(max(e, 0), rank)


@converter("Shape", since=1)
def shape(node: NodeView) -> Op:
    node.check_attrs(("start", "end"))
    start, end = int(node.attr("start", 0)), node.attr("end")

    def run(x):
        shp = np.shape(x)
        s, e = shape_range(len(shp), start, end)
        return np.array(shp[s:e], dtype=np.int64)

    return Op(run, nin=1)


@converter("Size", since=1)
def size(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda x: np.array(np.size(x), dtype=np.int64), nin=1)


@converter("Constant", since=1)
def constant(node: NodeView) -> Op:
    node.check_attrs(("value", "value_float", "value_floats", "value_int", "value_ints"))
    if len(node.attrs) != 1:
        raise node.unsupported(f"expected exactly one value attribute, got {sorted(node.attrs)}")
    (k, v), = node.attrs.items()
    if k == "value":
        val = np.asarray(v)
    elif k.startswith("value_float"):
        val = np.asarray(v, dtype=np.float32)
    else:
        val = np.asarray(v, dtype=np.int64)
    return Op(lambda: val, nin=0)


@converter("ConstantOfShape", since=9)
def constant_of_shape(node: NodeView) -> Op:
    node.check_attrs(("value",))
    v = node.attr("value")
    fill = np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)
    if fill.size != 1:
        raise node.unsupported(f"attribute 'value' must hold one element, got {fill.size}")
    return Op(lambda shp: np.full(tuple(int(s) for s in np.asarray(shp).reshape(-1)), fill[0], fill.dtype), nin=1)


@converter("Expand", since=8)
def expand(node: NodeView) -> Op:
    node.check_attrs(())

    def run(x, shp):
        x = np.asarray(x)
        try:
            tgt = np.broadcast_shapes(x.shape, tuple(int(s) for s in np.asarray(shp).reshape(-1)))
        except ValueError:
            raise StreamRNNError(
                f"{node.label}: shape: cannot broadcast {x.shape} to {np.asarray(shp).tolist()}"
            ) from None
        return np.array(np.broadcast_to(x, tgt))

    return Op(run, nin=2)


@converter("Range", since=11)
def range_op(node: NodeView) -> Op:
    node.check_attrs(())

    def run(start, limit, delta):
        s = np.asarray(start)
        return np.arange(s[()], np.asarray(limit)[()], np.asarray(delta)[()]).astype(s.dtype)

    return Op(run, nin=3)
