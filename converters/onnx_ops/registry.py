"""The converter registry: one converter per ONNX op type and opset range (onnx2torch style).

A converter is a function ``fn(node: NodeView) -> Op`` registered with::

    @converter("Squeeze", since=13)
    def squeeze_13(node): ...

It checks the node's attributes (``UnsupportedError`` at load time for anything it does not
support) and returns an :class:`Op`, a callable from input arrays to output arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ...errors import UnsupportedError


class Op:
    """A compiled node: ``op(inputs) -> list of outputs`` on numpy arrays.

    ``inputs`` has one entry per node input, ``None`` for an omitted optional input.
    """

    #: May the graph evaluate this op at load time when all its inputs are constant?
    foldable = True

    def __init__(self, fn: Callable[..., Any], nin: int | None = None):
        self.fn = fn
        self.nin = nin

    def __call__(self, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        args = list(inputs) if self.nin is None else list(inputs[: self.nin])
        if self.nin is not None and len(args) < self.nin:
            args += [None] * (self.nin - len(args))
        out = self.fn(*args)
        return list(out) if isinstance(out, (tuple, list)) else [out]


class ShapePlans(dict):
    """What an op computes once per input shape (indices, paddings, slices), kept for the calls
    after; bounded: past ``LIMIT`` shapes (a pool stepping ever new numbers of ids) all go."""

    LIMIT = 64

    def remember(self, shape: tuple[int, ...], plan: Any) -> Any:
        if len(self) >= self.LIMIT:
            self.clear()
        self[shape] = plan
        return plan

    def plan(self, shape: tuple[int, ...], make: Callable[[], Any]) -> Any:
        """The plan for ``shape``, made by ``make()`` the first time."""
        p = self.get(shape)
        return self.remember(shape, make()) if p is None else p


@dataclass
class NodeView:
    """What a converter sees of a node: its names, attributes and the constants known at load."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    consts: Mapping[str, np.ndarray]

    @property
    def label(self) -> str:
        return f"node {self.name!r} ({self.op_type}, opset {self.opset})"

    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] != ""

    def const(self, i: int) -> np.ndarray | None:
        """Input ``i`` if it is known at load time (initializer or folded), else None."""
        if not self.has_input(i):
            return None
        return self.consts.get(self.inputs[i])

    def is_const(self, i: int) -> bool:
        return self.has_input(i) and self.inputs[i] in self.consts

    def check_attrs(self, supported: Iterable[str]) -> None:
        """UnsupportedError naming the node if it carries an attribute outside ``supported``."""
        sup = set(supported)
        bad = sorted(set(self.attrs) - sup)
        if bad:
            raise UnsupportedError(
                f"{self.label}: attribute(s) {bad} not supported; supported attributes: "
                f"{sorted(sup) or 'none'}"
            )

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.label}: {what}")

    def require_const(self, i: int, what: str) -> np.ndarray:
        """Input ``i`` as a load-time constant, or UnsupportedError saying it must be one."""
        v = self.const(i)
        if v is None:
            raise self.unsupported(f"input {i} ({what}) must be a constant (initializer or Constant)")
        return v


@dataclass(frozen=True)
class _Entry:
    since: int
    until: int | None
    fn: Callable[[NodeView], Op]


_REGISTRY: dict[str, list[_Entry]] = {}


def converter(op_type: str, since: int = 1, until: int | None = None):
    """Register ``fn`` as the converter of ``op_type`` for opsets ``since..until`` (inclusive)."""

    def deco(fn: Callable[[NodeView], Op]) -> Callable[[NodeView], Op]:
        _REGISTRY.setdefault(op_type, []).append(_Entry(since, until, fn))
        return fn

    return deco


def supported_ops() -> list[str]:
    """Sorted op types that have a converter for some opset."""
    return sorted(_REGISTRY)


#: ops of a recurrence written out over frames (sequences, loops)
_UNROLLED_RECURRENCE_OPS = frozenset({"SplitToSequence", "SequenceAt", "SequenceConstruct", "SequenceInsert",
                                      "ConcatFromSequence", "Loop", "Scan"})


def convert(node: NodeView, domain: str = "") -> Op:
    """The Op of ``node``; UnsupportedError naming the node, the op and what is supported."""
    if domain not in ("", "ai.onnx"):
        raise UnsupportedError(
            f"{node.label}: domain {domain!r} not supported; supported: the default ONNX domain"
        )
    entries = _REGISTRY.get(node.op_type)
    if not entries:
        hint = ""
        if node.op_type in _UNROLLED_RECURRENCE_OPS:
            hint = (" (an exporter may have written a recurrence as a loop over frames instead of an "
                    "LSTM / GRU / RNN node: torch.onnx.export(dynamo=True) does so for nn.RNN; export with "
                    "dynamo=False)")
        elif node.op_type == "If":
            hint = (" (control flow: export with the branch you use taken, as a Python `if` on a value "
                    "fixed at export time does; e.g. Silero VAD's package ships silero_vad_16k_sequence.onnx "
                    "and silero_vad_openvino_16k.onnx without If nodes, and both load)")
        raise UnsupportedError(
            f"{node.label}: op {node.op_type!r} not supported{hint}; supported ops: {', '.join(supported_ops())}"
        )
    for e in entries:
        if e.since <= node.opset and (e.until is None or node.opset <= e.until):
            return e.fn(node)
    ranges = ", ".join(f"{e.since}..{e.until or 'newest'}" for e in entries)
    raise UnsupportedError(f"{node.label}: {node.op_type} supported for opsets {ranges}, got {node.opset}")
