"""Reading ONNX files: bytes / path / ModelProto -> a checked ``ModelProto``; tensors and types.

Only the converter modules import ``onnx``; ``import streamrnn`` never does.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..errors import FormatError, StreamRNNError, UnsupportedError

log = logging.getLogger("streamrnn")

#: Opsets of the default domain that the importer accepts (inclusive lower bound).
MIN_OPSET = 7


def load_proto(model_or_path: Any):
    """Return a checked ``onnx.ModelProto`` from a ModelProto, bytes or a path.

    Raises
    ------
    FileNotFoundError : a path that does not exist.
    FormatError : bytes that are not a readable, well-formed ONNX model.
    """
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        proto = model_or_path
    elif isinstance(model_or_path, (bytes, bytearray, memoryview)):
        proto = _parse(bytes(model_or_path), "model bytes")
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        with open(path, "rb") as f:
            proto = _parse(f.read(), repr(path))
        _read_external(proto, os.path.dirname(os.path.abspath(path)))
    else:
        raise StreamRNNError(
            f"model: expected an onnx.ModelProto, bytes or a path, got {type(model_or_path).__name__}"
        )
    _check(proto)
    return proto


def _tensors(graph):
    """Every TensorProto of a graph: initializers, tensor attributes (Constant's value), and
    those of subgraphs (If / Loop / Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _tensors(a.g)
            for g in a.graphs:
                yield from _tensors(g)


def _read_external(proto, folder: str) -> None:
    """Read the tensors an ONNX file keeps outside itself (``data_location == EXTERNAL``; large
    models, ``onnx.save_model(..., save_as_external_data=True)``) into the protobuf, from files
    in the model's ``folder`` only: a location that is absolute or leads out of the folder
    (``..``, a symbolic link) is refused, as onnxruntime does, and offset / length must lie in
    the file. Nothing else is read; nothing is executed."""
    base = os.path.realpath(folder)
    for t in _tensors(proto.graph):
        if t.data_location != 1:  # EXTERNAL
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"tensor {t.name!r}: external data"
        full = os.path.realpath(os.path.join(base, loc))
        if not loc or os.path.isabs(loc) or os.path.commonpath([full, base]) != base:
            raise FormatError(f"{where}: expected a file inside the model's folder {base}, got location {loc!r}")
        if not os.path.isfile(full):
            raise FormatError(f"{where}: expected the file {full} beside the model, got no such file")
        size = os.path.getsize(full)
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError as e:
            raise FormatError(f"{where}: bad offset / length ({e})") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise FormatError(f"{where}: expected bytes {offset}..{offset + length} within {loc!r} ({size} bytes)")
        with open(full, "rb") as f:
            f.seek(offset)
            t.raw_data = f.read(length)
        del t.external_data[:]
        t.data_location = 0  # DEFAULT: the bytes are in the protobuf now


def _parse(data: bytes, what: str):
    import onnx

    if not data:
        raise FormatError(f"{what}: expected an ONNX model, got an empty file")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # protobuf DecodeError and friends
        raise FormatError(f"{what}: expected an ONNX protobuf, got unparsable bytes ({e})") from None
    return proto


def _check(proto) -> None:
    """Structural checks; the ONNX checker's complaints are only logged, since onnxruntime
    accepts models it rejects (e.g. value_infos without shapes). Graph-level problems (dangling
    inputs, missing producers, unreadable tensors) are caught while compiling the graph."""
    import onnx

    if not proto.HasField("graph") or len(proto.graph.output) == 0:
        raise FormatError("model: expected an ONNX model with a graph and outputs, got none (truncated file?)")
    if not proto.opset_import:
        raise FormatError("model: expected opset_import entries, got none (truncated file?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.info("onnx checker: %s (continuing: onnxruntime accepts more than the checker)", msg)


def default_opset(proto) -> int:
    """The model's opset of the default domain ("" / "ai.onnx")."""
    for oi in proto.opset_import:
        if oi.domain in ("", "ai.onnx"):
            v = int(oi.version)
            if v < MIN_OPSET:
                raise UnsupportedError(
                    f"opset_import: expected an ai.onnx opset >= {MIN_OPSET}, got {v}"
                )
            return v
    raise UnsupportedError("opset_import: expected an import of the default ONNX domain, got none")


def to_array(tensor) -> np.ndarray:
    """A TensorProto as a numpy array (a private, writable copy)."""
    from onnx import numpy_helper

    if tensor.data_location == 1:  # EXTERNAL: only a model loaded from its path has them read
        raise UnsupportedError(
            f"tensor {tensor.name!r}: expected its data in the model, got external data; load the "
            "model by its path (the data file lies beside it) or with onnx.load, not from bytes"
        )
    try:
        return np.array(numpy_helper.to_array(tensor))
    except Exception as e:
        raise FormatError(f"tensor {tensor.name!r}: unreadable data ({e})") from None


def np_dtype(elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX element type; UnsupportedError for those numpy lacks."""
    from onnx import helper

    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        dt = None
    if dt is None or dt.kind not in "biuf":
        raise UnsupportedError(f"element type: expected a numeric or bool ONNX type, got {elem_type}")
    return dt


def type_string(elem_type: int) -> str:
    """onnxruntime's type string, e.g. ``'tensor(float)'``."""
    from onnx import helper

    name = helper.tensor_dtype_to_string(elem_type).split(".")[-1].lower()
    return f"tensor({'float' if name == 'float' else name})"


def value_info_shape(vi) -> list[int | str | None] | None:
    """Declared shape of a ValueInfoProto: ints, symbolic names, or None for unknown dims;
    None when even the rank is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def attributes(node) -> dict[str, Any]:
    """The attributes of a NodeProto as plain Python values (strings decoded)."""
    from onnx import AttributeProto, helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == AttributeProto.TENSOR:
            out[a.name] = to_array(a.t)
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8", "replace") for s in v]
        out[a.name] = v
    return out
