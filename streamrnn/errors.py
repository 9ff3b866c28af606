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
