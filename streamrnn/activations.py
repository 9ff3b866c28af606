"""Reference (numpy) activations with ONNX semantics, for the reference cells and tests."""
from __future__ import annotations

import numpy as np

from .spec import Activation


def apply(act: Activation, x: np.ndarray) -> np.ndarray:
    """``act(x)`` elementwise, straight from the ONNX formulae (no tricks)."""
    a, b = act.alpha, act.beta
    n = act.name
    if n == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if n == "Tanh":
        return np.tanh(x)
    if n == "Relu":
        return np.maximum(x, 0.0)
    if n == "Affine":
        return a * x + b
    if n == "LeakyRelu":
        return np.where(x >= 0, x, a * x)
    if n == "ThresholdedRelu":
        return np.where(x >= a, x, 0.0)
    if n == "ScaledTanh":
        return a * np.tanh(b * x)
    if n == "HardSigmoid":
        return np.minimum(np.maximum(a * x + b, 0.0), 1.0)
    if n == "Elu":
        return np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0.0)) - 1.0))
    if n == "Softsign":
        return x / (1.0 + np.abs(x))
    if n == "Softplus":
        return np.logaddexp(0.0, x)
    raise AssertionError(n)


def softmax(x: np.ndarray, log: bool = False) -> np.ndarray:
    """(Log)softmax over the last axis."""
    m = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - m)
    s = np.sum(e, axis=-1, keepdims=True)
    return (x - m - np.log(s)) if log else e / s
