"""The layer lists runtimes leave in ``runtime/<target>/layers.json``, read back as the separation guard's
records: OpenVINO's executed layers and TensorRT's engine inspector. Pure functions, no runtime package
needed, so the guard (through the runners) and ``ffsplit inspect`` read a layer list the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffsplit.artifact import parse_json, read_utf8
from ffsplit.errors import UsageError

if TYPE_CHECKING:
    from ffsplit.graph_passes import LayerRecord

# OpenVINO CPU layer types that multiply by a weight matrix.
OPENVINO_MATMULS = frozenset({"FullyConnected", "MatMul", "Gemm", "FullyConnectedCompressed"})
_OPENVINO_PRECISIONS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4"}
# TensorRT layer types that multiply by a weight matrix.
TENSORRT_MATMULS = frozenset({"MatrixMultiply", "FullyConnected", "Convolution", "Gemm", "Myelin", "gemm"})
# Words in the inspector's "Format/Datatype", most specific first.
_DATATYPES = (
    ("int8", "int8"), ("int4", "int4"), ("fp8", "fp8"), ("bfloat16", "bf16"), ("bf16", "bf16"), ("half", "fp16"),
    ("fp16", "fp16"), ("float", "fp32"), ("fp32", "fp32"),
)


def inspector_precision(datatype: str) -> str:
    """``"Row major linear FP32"`` -> fp32, ``"Half"`` -> fp16, ``"Int8 ..."`` -> int8."""
    text = datatype.lower()
    return next((name for word, name in _DATATYPES if word in text), "unknown")


def records_from_layers(rows: list[dict[str, str]]) -> list[LayerRecord]:
    """The guard's records from an OpenVINO runtime layer list."""
    from ffsplit.graph_passes import LayerRecord
    from ffsplit.graph_passes.tag_branches_pass import tags_in

    out = []
    for row in rows:
        if row["type"] not in OPENVINO_MATMULS:
            continue
        tags = tuple(sorted(set(tags_in(row["original"]))))
        if tags:
            precision = _OPENVINO_PRECISIONS.get(row["precision"].lower(), row["precision"] or "unknown")
            out.append(LayerRecord(row["name"], row["type"], tags, precision))
    return out


def records_from_inspector(info: str | Mapping[str, Any]) -> list[LayerRecord]:
    """The guard's records from the engine inspector's JSON (``LayerInformationFormat.JSON``, detailed).

    A layer's name joins the ONNX nodes TensorRT fused into it (``a + b``);
    its precision is the data type of its first input.
    """
    from ffsplit.graph_passes import LayerRecord
    from ffsplit.graph_passes.tag_branches_pass import tags_in

    data = json.loads(info) if isinstance(info, str) else info
    out = []
    for layer in data.get("Layers", []):
        if isinstance(layer, str):  # ONE-line verbosity: names only
            continue
        name = str(layer.get("Name", ""))
        kind = str(layer.get("LayerType", ""))
        tags = tuple(sorted(set(tags_in(" " + name + " " + str(layer.get("Metadata", ""))))))
        if not tags or kind not in TENSORRT_MATMULS:
            continue
        inputs = layer.get("Inputs") or [{}]
        out.append(LayerRecord(name, kind, tags, inspector_precision(str(inputs[0].get("Format/Datatype", "")))))
    return out


def records_from_file(path: Path) -> list[LayerRecord]:
    """Guard records from a runtime's saved layer list: OpenVINO's rows or TensorRT's inspector JSON."""
    if path.stat().st_size > 256 << 20:
        raise UsageError(f"{path} is larger than any layer list ffsplit writes")

    data = parse_json(read_utf8(path, "rebuild the artifact with ffsplit build"), str(path))
    if isinstance(data, dict):
        return records_from_inspector(data)
    return records_from_layers(data)
