"""Exception types of streamrnn."""
from __future__ import annotations


class StreamRNNError(ValueError):
    """Every error streamrnn raises for bad input, bad state or bad files.

    Messages name the offending argument, the expected and the actual value.
    """


class ShapeError(StreamRNNError):
    """An array argument has the wrong rank, shape or dtype."""


class StreamIdError(StreamRNNError):
    """A stream id is unknown, closed, negative or repeated."""


class CapacityError(StreamRNNError):
    """A pool cannot open more streams."""


class NonFiniteError(StreamRNNError):
    """An input frame holds NaN or Inf (refused; no state changed)."""


class FormatError(StreamRNNError):
    """A model or state file is malformed, truncated, hostile or from a newer format."""


class UnsupportedError(StreamRNNError):
    """A model uses an operator, attribute or layer streamrnn does not support."""


def describe_buffer(out) -> str:
    """How an ``out=`` argument that was refused looks, for the error message: dtype, shape and
    whether it is C-contiguous (``float32 (5, 2), not C-contiguous``), or its type."""
    if not hasattr(out, "dtype") or not hasattr(out, "shape"):
        return type(out).__name__
    flags = getattr(out, "flags", None)
    layout = "" if flags is None or flags.c_contiguous else ", not C-contiguous"
    return f"{out.dtype} {tuple(out.shape)}{layout}"
