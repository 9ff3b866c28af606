"""Dense (Linear) layer, activation and softmax layers in numpy."""
from __future__ import annotations

import numpy as np

from ...activations import apply, softmax
from ...spec import ActivationLayer, DenseLayer, SoftmaxLayer


def dense(layer: DenseLayer | ActivationLayer | SoftmaxLayer, X: np.ndarray) -> np.ndarray:
    """X (..., I) -> (..., O)."""
    if isinstance(layer, SoftmaxLayer):
        return softmax(X, layer.log)
    if isinstance(layer, ActivationLayer):
        return apply(layer.activation, X)
    Y = X @ layer.weight.T.astype(np.float64)
    if layer.bias is not None:
        Y = Y + layer.bias
    return Y if layer.activation is None else apply(layer.activation, Y)
