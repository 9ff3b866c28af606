"""Elementwise ONNX ops: arithmetic, comparisons, activations, Softmax, Clip, Cast, Where."""
from __future__ import annotations

import numpy as np

from ...errors import StreamRNNError
from .registry import NodeView, Op, converter

# -- binary arithmetic (numpy broadcasting = ONNX multidirectional broadcasting, opset >= 7) -----


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (C semantics, as onnxruntime)."""
    if np.any(b == 0):
        raise StreamRNNError("Div: expected a non-zero integer divisor, got 0")
    q = np.floor_divide(a, b)
    fix = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return (q + fix).astype(np.result_type(a, b))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        return _int_div(a, b)
    return np.divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" and b.ndim == 0 and b == 2:  # x ** 2 (e.g. an STFT's magnitude): exact as pow,
        return np.square(a)  # 1 µs where pow by a float exponent takes 8 on small arrays
    return np.power(a, b.astype(a.dtype) if a.dtype.kind == "f" else b).astype(a.dtype)


_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _div,
    "Pow": _pow,
    "Equal": np.equal,
    "Less": np.less,
    "Greater": np.greater,
    "LessOrEqual": np.less_equal,
    "GreaterOrEqual": np.greater_equal,
    "And": np.logical_and,
    "Or": np.logical_or,
    "Xor": np.logical_xor,
}


def _binary(fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(())
        return Op(lambda a, b: np.asarray(fn(a, b)), nin=2)

    return conv


for _name, _fn in _BINARY.items():
    converter(_name, since=7)(_binary(_fn))


def _variadic(fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(())

        def run(*xs):
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return np.asarray(out)

        return Op(run)

    return conv


converter("Sum", since=8)(_variadic(np.add))
converter("Max", since=8)(_variadic(np.maximum))
converter("Min", since=8)(_variadic(np.minimum))

# -- unary math ----------------------------------------------------------------------------------


#: below these, exp(-x) overflows; sigmoid there is under 1e-38 (float32) / 1e-307 (float64)
_SIGMOID_LOW = {np.dtype(np.float32): np.float32(-88.0), np.dtype(np.float64): -708.0}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    lo = _SIGMOID_LOW.get(x.dtype)
    if lo is None:
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)
    # x clamped from below rather than np.errstate around exp (2-3 µs a call on small arrays):
    # the same values but where sigmoid is below the type's normal range
    e = np.exp(np.negative(np.maximum(x, lo)))
    e += 1
    return np.reciprocal(e, out=e)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.zeros((), x.dtype), x).astype(x.dtype)


_UNARY = {
    "Neg": np.negative,
    "Abs": np.abs,
    "Exp": np.exp,
    "Log": np.log,
    "Sqrt": np.sqrt,
    "Reciprocal": np.reciprocal,
    "Floor": np.floor,
    "Ceil": np.ceil,
    "Not": np.logical_not,
    "Relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
    "Softsign": lambda x: x / (1 + np.abs(x)),
    "Softplus": _softplus,
}


def _unary(fn):
    def conv(node: NodeView) -> Op:
        node.check_attrs(())
        return Op(lambda x: np.asarray(fn(np.asarray(x))), nin=1)

    return conv


for _name, _fn in _UNARY.items():
    converter(_name, since=6)(_unary(_fn))


@converter("LeakyRelu", since=6)
def leaky_relu(node: NodeView) -> Op:
    node.check_attrs(("alpha",))
    alpha = float(node.attr("alpha", 0.01))
    return Op(lambda x: np.where(x >= 0, x, (alpha * x).astype(x.dtype)), nin=1)


@converter("Elu", since=6)
def elu(node: NodeView) -> Op:
    node.check_attrs(("alpha",))
    alpha = float(node.attr("alpha", 1.0))
    return Op(lambda x: np.where(x >= 0, x, (alpha * np.expm1(np.minimum(x, 0))).astype(x.dtype)), nin=1)


@converter("Selu", since=6)
def selu(node: NodeView) -> Op:
    node.check_attrs(("alpha", "gamma"))
    alpha = float(node.attr("alpha", 1.67326319217681884765625))
    gamma = float(node.attr("gamma", 1.05070102214813232421875))
    return Op(
        lambda x: (gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))).astype(x.dtype), nin=1
    )


@converter("HardSigmoid", since=6)
def hard_sigmoid(node: NodeView) -> Op:
    node.check_attrs(("alpha", "beta"))
    a, b = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return Op(lambda x: np.clip(a * x + b, 0, 1).astype(x.dtype), nin=1)


@converter("ThresholdedRelu", since=10)
def thresholded_relu(node: NodeView) -> Op:
    node.check_attrs(("alpha",))
    a = float(node.attr("alpha", 1.0))
    return Op(lambda x: np.where(x > a, x, np.zeros((), x.dtype)), nin=1)


@converter("PRelu", since=7)
def prelu(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda x, s: np.where(x >= 0, x, x * s).astype(x.dtype), nin=2)


# -- softmax ---------------------------------------------------------------------------------------


def _softmax(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    z = x - m
    if log:
        return (z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))).astype(x.dtype)
    e = np.exp(z)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype)


def _softmax_conv(log: bool, legacy: bool):
    def conv(node: NodeView) -> Op:
        node.check_attrs(("axis",))
        axis = int(node.attr("axis", 1 if legacy else -1))

        def run(x):
            x = np.asarray(x)
            if not legacy:
                return _softmax(x, axis, log)
            ax = axis + x.ndim if axis < 0 else axis  # opset < 13: coerce to 2-D at axis
            n = int(np.prod(x.shape[:ax], dtype=np.int64))
            return _softmax(x.reshape(n, -1), 1, log).reshape(x.shape)

        return Op(run, nin=1)

    return conv


converter("Softmax", since=1, until=12)(_softmax_conv(False, True))
converter("Softmax", since=13)(_softmax_conv(False, False))
converter("LogSoftmax", since=1, until=12)(_softmax_conv(True, True))
converter("LogSoftmax", since=13)(_softmax_conv(True, False))

# -- clip, where, cast, identity, dropout -----------------------------------------------------------


@converter("Clip", since=6, until=10)
def clip_6(node: NodeView) -> Op:
    node.check_attrs(("min", "max"))
    lo = float(node.attr("min", -np.finfo(np.float32).max))
    hi = float(node.attr("max", np.finfo(np.float32).max))
    return Op(lambda x: np.clip(x, lo, hi).astype(x.dtype), nin=1)


@converter("Clip", since=11)
def clip_11(node: NodeView) -> Op:
    node.check_attrs(())

    def run(x, lo=None, hi=None):
        out = x
        if lo is not None:
            out = np.maximum(out, np.asarray(lo, x.dtype))
        if hi is not None:
            out = np.minimum(out, np.asarray(hi, x.dtype))
        return np.asarray(out, x.dtype)

    return Op(run, nin=3)


@converter("Where", since=9)
def where(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda c, a, b: np.where(np.asarray(c, bool), a, b), nin=3)


@converter("Cast", since=6)
def cast(node: NodeView) -> Op:
    from ..onnx_io import np_dtype

    node.check_attrs(("to", "saturate", "round_mode"))
    if "to" not in node.attrs:
        raise node.unsupported("attribute 'to' is required")
    dt = np_dtype(int(node.attrs["to"]))
    return Op(lambda x: np.asarray(x).astype(dt, copy=False), nin=1)  # to its own type: x itself, as Identity


@converter("Identity", since=1)
def identity(node: NodeView) -> Op:
    node.check_attrs(())
    return Op(lambda x: x, nin=1)


@converter("Dropout", since=7, until=11)
def dropout_7(node: NodeView) -> Op:
    """Inference: identity. The mask is onnxruntime's: zeros of x's type (opset 7-9), False (10-11)."""
    node.check_attrs(("ratio",))
    if node.opset < 10:
        return Op(lambda x: (x, np.zeros_like(x)), nin=1)
    return Op(lambda x: (x, np.zeros(np.shape(x), bool)), nin=1)


@converter("Dropout", since=12)
def dropout_12(node: NodeView) -> Op:
    node.check_attrs(("seed",))
    tm = node.const(2)
    if tm is not None and bool(np.asarray(tm)):
        raise node.unsupported("training_mode=True is not supported (inference only)")

    def run(x, ratio=None, training_mode=None):
        if training_mode is not None and bool(np.asarray(training_mode)):
            raise StreamRNNError(f"{node.label}: training_mode: expected False (inference), got True")
        return x, np.ones(np.shape(x), bool)

    return Op(run, nin=3)
