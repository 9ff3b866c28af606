"""Matrix products: MatMul and Gemm."""
from __future__ import annotations

import numpy as np

from .registry import NodeView, Op, converter


@converter("MatMul", since=1)
def matmul(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda a, b: np.matmul(a, b), nin=2)


@converter("Gemm", since=7)
def gemm(node: NodeView) -> Op:
    node.check_attrs(("alpha", "beta", "transA", "transB"))
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    ta, tb = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))

    def run(a, b, c=None):
        a = np.asarray(a).T if ta else np.asarray(a)
        b = np.asarray(b).T if tb else np.asarray(b)
        y = a @ b
        if alpha != 1.0:
            y = y * np.asarray(alpha, y.dtype)
        if c is not None:
            y = y + (np.asarray(c) if beta == 1.0 else np.asarray(c) * np.asarray(beta, y.dtype))
        return y.astype(np.result_type(a, b), copy=False)

    return Op(run, nin=3)
