"""Scalar formulae shared by the CPU (numba njit) and CUDA (numba.cuda device) kernels.

Plain Python functions, compiled once per target: ``layers/cpu_common.py`` wraps them with
``njit`` and ``layers/dense/cuda.py`` with ``cuda.jit(device=True)``, so both engines evaluate
the very same expressions.
"""
from __future__ import annotations

import math


def act(x, k, a, b):
    """Activation ``k`` (ids of ``streamrnn.spec.ACTIVATION_IDS``) with ONNX semantics (libm)."""
    if k == 0:  # Sigmoid, written to never overflow
        if x >= 0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)
    if k == 1:
        return math.tanh(x)
    if k == 2:
        return x if x > 0 else 0.0 * x
    if k == 3:
        return a * x + b
    if k == 4:
        return x if x >= 0 else a * x
    if k == 5:
        return x if x >= a else 0.0 * x
    if k == 6:
        return a * math.tanh(b * x)
    if k == 7:
        return min(max(a * x + b, 0.0), 1.0)
    if k == 8:
        return x if x >= 0 else a * (math.exp(x) - 1.0)
    if k == 9:
        return x / (1.0 + abs(x))
    if k == 10:
        if x > 0:
            return x + math.log1p(math.exp(-x))
        return math.log1p(math.exp(x))
    return x  # -1: identity


def clip(x, c):
    """Clip to [-c, c]; c == 0 means no clipping."""
    if c > 0:
        if x > c:
            return c
        if x < -c:
            return -c
    return x
