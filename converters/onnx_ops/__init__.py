"""ONNX op converters, one per op type and opset range (see :mod:`.registry`).

Importing this package registers every converter.
"""
from __future__ import annotations

from . import conv, elementwise, linear, recurrent, reduce, tensor  # noqa: F401  (register converters)
from .recurrent import KINDS as RECURRENT_OPS
from .recurrent import RecurrentOp
from .registry import NodeView, Op, convert, converter, supported_ops

__all__ = ["NodeView", "Op", "RecurrentOp", "RECURRENT_OPS", "convert", "converter", "supported_ops"]
