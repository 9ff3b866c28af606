"""Matrix products: MatMul and Gemm."""
from __future__ import annotations

import numpy as np

from .registry import NodeView, Op, converter


@converter("MatMul", since=1)
def matmul(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(_matmul, nin=2)


def _matmul(a, b) -> np.ndarray:
    """numpy matmul; a stack (..., M, K) times a matrix (K, N) as one 2-D product, which numpy
    would run as one small product per stacked matrix (3-4x slower: (64, 1, 128) @ (128, 16)
    15 vs 5 µs, bench/NOTES.md 127)."""
    a, b = np.asarray(a), np.asarray(b)
    # (more than one stacked matrix: for one, matmul itself is cheaper than two reshapes)
    if a.ndim > 2 and b.ndim == 2 and a.shape[-1] == b.shape[0] and a.size > a.shape[-2] * a.shape[-1]:
        return (a.reshape(-1, a.shape[-1]) @ b).reshape(a.shape[:-1] + (b.shape[1],))
    return np.matmul(a, b)


@converter("Gemm", since=7)
def gemm(node: NodeView) -> Op:
    node.check_attrs(("alpha", "beta", "transA", "transB"))
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    ta, tb = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))
    # a constant B (the weights) in the layout of the product, made once: a @ B.T of a strided
    # view ran at ~3x the cost of the contiguous product for one row (an LSTMCell's gates)
    b_const = node.const(1)
    b_ready = None if b_const is None else np.ascontiguousarray(np.asarray(b_const).T if tb else b_const)

    def run(a, b, c=None):
        a = np.asarray(a).T if ta else np.asarray(a)
        b = b_ready if b is b_const and b_ready is not None else (np.asarray(b).T if tb else np.asarray(b))
        y = a @ b
        if alpha != 1.0:
            y = y * np.asarray(alpha, y.dtype)
        if c is not None:
            y = y + (np.asarray(c) if beta == 1.0 else np.asarray(c) * np.asarray(beta, y.dtype))
        return y.astype(np.result_type(a, b), copy=False)

    return Op(run, nin=3)
