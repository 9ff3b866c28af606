"""Lowering an ONNX graph to a chain of layers (a :class:`~streamrnn.spec.ModelSpec`).

The walk goes back from the output Y to the frame input X along the data path. Recurrent
nodes become recurrent layers, ``MatMul`` / ``Gemm`` with constant weights (and a following
constant ``Add``) dense layers, activations and (Log)Softmax their layers; data-movement glue
(``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Reshape``, ``Flatten``, ``Identity``, ``Cast``,
``Dropout``) is skipped. Anything else means "not a chain". The caller checks the result
numerically against the graph itself before using it, so the walk may be permissive.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import StreamRNNError
from ..spec import Activation, ActivationLayer, DenseLayer, ModelSpec, SoftmaxLayer
from .graph import GNode, Graph
from .graph_plan import IOPlan

CHAIN_GLUE = frozenset({"Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Cast", "Dropout"})


def _activation(n: GNode) -> Activation | None:
    a = n.attrs
    table = {
        "Relu": lambda: Activation("Relu"),
        "Tanh": lambda: Activation("Tanh"),
        "Sigmoid": lambda: Activation("Sigmoid"),
        "Softsign": lambda: Activation("Softsign"),
        "Softplus": lambda: Activation("Softplus"),
        "LeakyRelu": lambda: Activation("LeakyRelu", a.get("alpha", 0.01)),
        "Elu": lambda: Activation("Elu", a.get("alpha", 1.0)),
        "HardSigmoid": lambda: Activation("HardSigmoid", a.get("alpha", 0.2), a.get("beta", 0.5)),
        "ThresholdedRelu": lambda: Activation("ThresholdedRelu", a.get("alpha", 1.0)),
    }
    f = table.get(n.op_type)
    return None if f is None else f()


def _step(graph: Graph, n: GNode, out_index: int) -> tuple[str, tuple[str, Any]]:
    """(data input name, item) for one node on the path; StreamRNNError when not a chain node."""
    c = graph.consts
    if n.op_type in CHAIN_GLUE:
        return n.inputs[0], ("glue", None)
    if n.recurrent:
        if out_index != 0:
            raise StreamRNNError(f"node {n.name!r}: the path uses Y_h / Y_c, not Y")
        if len(n.inputs) > 4 and n.inputs[4] and n.inputs[4] in c:
            raise StreamRNNError(f"node {n.name!r}: constant sequence_lens")
        return n.inputs[0], ("layer", n.op.static)
    act = _activation(n)
    if act is not None:
        return n.inputs[0], ("act", act)
    if n.op_type in ("Softmax", "LogSoftmax"):
        return n.inputs[0], ("softmax", n.op_type == "LogSoftmax")
    if n.op_type == "MatMul" and n.inputs[1] in c and n.inputs[0] not in c:
        w = np.asarray(c[n.inputs[1]])
        if w.ndim == 2:
            return n.inputs[0], ("dense", (w.T, None))
    if n.op_type == "Gemm" and n.inputs[1] in c and n.inputs[0] not in c and not n.attrs.get("transA", 0):
        w = np.asarray(c[n.inputs[1]], dtype=np.float64) * float(n.attrs.get("alpha", 1.0))
        w = w if n.attrs.get("transB", 0) else w.T
        b = None
        if len(n.inputs) > 2 and n.inputs[2]:
            if n.inputs[2] not in c:
                raise StreamRNNError(f"node {n.name!r}: dynamic Gemm bias")
            b = np.broadcast_to(np.asarray(c[n.inputs[2]]).reshape(-1), (w.shape[0],)) * float(n.attrs.get("beta", 1.0))
        return n.inputs[0], ("dense", (w, b))
    if n.op_type == "Add":
        k = [i for i in (0, 1) if n.inputs[i] in c]
        if len(k) == 1:
            return n.inputs[1 - k[0]], ("bias", np.asarray(c[n.inputs[k[0]]]).reshape(-1))
    raise StreamRNNError(f"node {n.name!r} ({n.op_type}) is not a layer of a chain")


def extract_chain(graph: Graph, plan: IOPlan) -> ModelSpec:
    """The chain of layers from X to Y; StreamRNNError (with the reason) when there is none."""
    items = []
    t = plan.y.name
    while t != plan.x.name:
        p = graph.producer.get(t)
        if p is None:
            raise StreamRNNError(f"the path from the output reaches {t!r}, not the input {plan.x.name!r}")
        t, item = _step(graph, p[0], p[1])
        items.append(item)
    layers: list[Any] = []
    size = plan.input_size
    for kind, v in reversed(items):
        last = layers[-1] if layers else None
        if kind == "layer":
            layers.append(v)
        elif kind == "dense":
            layers.append(DenseLayer(v[0], v[1]))
        elif kind == "bias":
            if not isinstance(last, DenseLayer) or last.activation is not None or v.size not in (1, last.output_size):
                raise StreamRNNError("a bias Add that does not follow a dense layer")
            b = np.broadcast_to(v, (last.output_size,)).astype(np.float64)
            layers[-1] = DenseLayer(last.weight, b if last.bias is None else last.bias + b)
        elif kind == "act":
            if isinstance(last, DenseLayer) and last.activation is None:
                layers[-1] = DenseLayer(last.weight, last.bias, v)
            else:
                layers.append(ActivationLayer(size, v))
        elif kind == "softmax":
            layers.append(SoftmaxLayer(size, v))
        if layers:
            size = layers[-1].output_size
    if not layers:
        raise StreamRNNError("no layers between the input and the output")
    return ModelSpec(tuple(layers), name=graph.name, metadata={"source": "onnx"})
