"""The separation guard: passes on what ORT really runs, fails on merged or lost branches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffsplit.graph_passes import BranchSeparationError, CheckBranchSeparationPass, expected_matmuls


def test_guard_passes_on_the_runtime_graph(tiny_none_artifact: Path) -> None:
    manifest = json.loads((tiny_none_artifact / "manifest.json").read_text())
    graph = ir.load(tiny_none_artifact / "runtime" / "cpu" / "optimized.onnx")
    guard = CheckBranchSeparationPass(expected=expected_matmuls(manifest["layers"]))
    assert guard(graph).modified is False
    assert guard.found == {0: {"heavy": 2, "light": 2}, 1: {"heavy": 2, "light": 2}}


def test_guard_catches_a_fused_node_that_lost_its_tag(tiny_none_artifact: Path) -> None:
    manifest = json.loads((tiny_none_artifact / "manifest.json").read_text())
    graph = ir.load(tiny_none_artifact / "runtime" / "cpu" / "optimized.onnx")
    victim = next(n for n in graph.graph if n.op_type == "MatMul" and (n.name or "").startswith("ffsplit/L1/light/"))
    victim.name = "SomeRuntimeFusion_17"
    with pytest.raises(BranchSeparationError, match="layer 1: 1 light matmul nodes, expected 2"):
        CheckBranchSeparationPass(expected=expected_matmuls(manifest["layers"]))(graph)


def _ffn_graph(merged: bool) -> onnx.ModelProto:
    """One layer's FFN input projections, heavy and light; ``merged`` concatenates their weights."""
    rng = np.random.default_rng(0)
    w_h = rng.standard_normal((8, 3)).astype(np.float32)
    w_l = rng.standard_normal((8, 5)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, None]) for n in ("h", "l")]
    if merged:
        w = numpy_helper.from_array(np.concatenate([w_h, w_l], axis=1), "w_hl")
        split = numpy_helper.from_array(np.array([3, 5], dtype=np.int64), "split")
        nodes = [
            helper.make_node("MatMul", ["x", "w_hl"], ["hl"], name="ffsplit/L0/heavy/fused"),
            helper.make_node("Split", ["hl", "split"], ["h", "l"], axis=1, name="ffsplit/L0/merge/split"),
        ]
        inits = [w, split]
    else:
        nodes = [
            helper.make_node("MatMul", ["x", "w_h"], ["h"], name="ffsplit/L0/heavy/fc_in"),
            helper.make_node("MatMul", ["x", "w_l"], ["l"], name="ffsplit/L0/light/fc_in"),
        ]
        inits = [numpy_helper.from_array(w_h, "w_h"), numpy_helper.from_array(w_l, "w_l")]
    graph = helper.make_graph(nodes, "ffn", [x], outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def test_guard_catches_a_horizontal_fusion() -> None:
    separate, merged = _ffn_graph(False), _ffn_graph(True)
    # The merge is a real rewrite: same numbers out, so only the guard can tell.
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString()).run(None, {"x": x}) for m in (separate, merged)]
    for a, b in zip(*run, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    expected = {0: {"heavy": 1, "light": 1}}
    CheckBranchSeparationPass(expected=expected)(ir.from_proto(separate))
    with pytest.raises(BranchSeparationError) as err:
        CheckBranchSeparationPass(expected=expected)(ir.from_proto(merged))
    assert err.value.findings == ["layer 0: 0 light matmul nodes, expected 1 (branches merged or lost)"]


def test_guard_flags_a_matmul_in_the_merge() -> None:
    model = _ffn_graph(False)
    model.graph.node[1].name = "ffsplit/L0/merge/fc_in"
    with pytest.raises(BranchSeparationError, match="multiplies in the merge"):
        CheckBranchSeparationPass(expected={0: {"heavy": 1, "light": 0}})(ir.from_proto(model))


def test_expected_counts_follow_the_recipe() -> None:
    plans = [{"layer": 0, "light_recipe": "none"}, {"layer": 1, "light_recipe": "lowrank:8"}]
    assert expected_matmuls(plans) == {0: {"heavy": 2, "light": 2}, 1: {"heavy": 2, "light": 4}}
