"""Runtime layer lists read back as the guard's records (OpenVINO rows, TensorRT's inspector), without either runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffsplit.errors import UsageError
from ffsplit.graph_passes import check_separation
from ffsplit.runtimes.records import (
    inspector_precision,
    records_from_file,
    records_from_inspector,
    records_from_layers,
)


def test_layer_rows_to_records() -> None:
    rows = [
        {"name": "fc1", "type": "FullyConnected", "precision": "i8", "original": "ffsplit/L2/light/a,ffsplit/L2/light/gelu"},
        {"name": "fc2", "type": "FullyConnected", "precision": "f32", "original": "ffsplit/L2/heavy/b"},
        {"name": "add", "type": "Eltwise", "precision": "f32", "original": "ffsplit/L2/merge/add"},
        {"name": "qkv", "type": "FullyConnected", "precision": "f32", "original": "node_q"},
    ]
    records = records_from_layers(rows)
    assert [(r.name, r.tags, r.precision) for r in records] == [
        ("fc1", ((2, "light"),), "int8"), ("fc2", ((2, "heavy"),), "fp32"),
    ]


def _layer(name: str, kind: str, dtype: str) -> dict:
    return {"Name": name, "LayerType": kind, "Inputs": [{"Name": "x", "Format/Datatype": dtype}], "Outputs": []}


INSPECTOR = {
    "Layers": [
        _layer("ffsplit/L0/heavy/node_MatMul_1 + ffsplit/L0/heavy/node_gelu", "MatrixMultiply", "Half"),
        _layer("ffsplit/L0/heavy/node_linear_5", "MatrixMultiply", "Row major linear FP16 format"),
        _layer("ffsplit/L0/light/node_MatMul_2", "MatrixMultiply", "Int8 format"),
        _layer("ffsplit/L0/light/node_linear_7 + ffsplit/L0/merge/node_add", "MatrixMultiply", "Int8"),
        _layer("node_attention", "MatrixMultiply", "Half"),
        _layer("ffsplit/L0/light/quantize_input", "Scale", "Float"),
    ],
    "Bindings": ["input_ids"],
}


@pytest.mark.parametrize(
    ("text", "want"), [("Half", "fp16"), ("Row major linear FP32", "fp32"), ("Int8 NC/32HW32", "int8"),
                       ("BFloat16", "bf16"), ("", "unknown")],
)
def test_inspector_precision(text: str, want: str) -> None:
    assert inspector_precision(text) == want


def test_inspector_layers_feed_the_guard() -> None:
    records = records_from_inspector(json.dumps(INSPECTOR))
    assert [r.precision for r in records] == ["fp16", "fp16", "int8", "int8"]
    counts = {0: {"heavy": 2, "light": 2}}
    found, realized, findings = check_separation(records, counts, {0: {"heavy": "fp16", "light": "int8"}})
    assert findings == [] and realized == {0: {"heavy": ["fp16", "fp16"], "light": ["int8", "int8"]}}
    # TensorRT fusing both branches into one kernel, or lowering the heavy branch, is a failure
    merged = json.loads(json.dumps(INSPECTOR))
    merged["Layers"][1]["Name"] += " + ffsplit/L0/light/node_MatMul_2"
    merged["Layers"][0]["Inputs"][0]["Format/Datatype"] = "Int8"
    _, _, findings = check_separation(records_from_inspector(merged), counts, {0: {"heavy": "fp16", "light": "int8"}})
    assert any("computes L0 heavy, L0 light in one kernel" in f for f in findings)
    assert any("heavy MatrixMultiply" in f and "runs at int8, the target asked for fp16" in f for f in findings)


def test_a_saved_layer_list_is_read_by_its_shape(tmp_path: Path) -> None:
    """``inspect`` reads runtime/<target>/layers.json: a list is OpenVINO's rows, an object TensorRT's inspector."""
    rows = [{"name": "fc", "type": "FullyConnected", "precision": "i8", "original": "ffsplit/L0/light/a"}]
    (tmp_path / "ov.json").write_text(json.dumps(rows))
    (tmp_path / "trt.json").write_text(json.dumps(INSPECTOR))
    assert [(r.tags, r.precision) for r in records_from_file(tmp_path / "ov.json")] == [(((0, "light"),), "int8")]
    assert [r.precision for r in records_from_file(tmp_path / "trt.json")] == ["fp16", "fp16", "int8", "int8"]
    (tmp_path / "bad.json").write_text('{"Layers": [NaN]}')
    with pytest.raises(UsageError):
        records_from_file(tmp_path / "bad.json")
