"""The separation guard: passes on what ORT really runs, fails on merged or lost branches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffsplit.graph_passes import BranchSeparationError, CheckBranchSeparationPass, expected_matmuls
from ffsplit.manifest import Manifest


def test_guard_passes_on_the_runtime_graph(tiny_none_artifact: Path) -> None:
    manifest = json.loads((tiny_none_artifact / "manifest.json").read_text())
    graph = ir.load(tiny_none_artifact / "runtime" / "cpu" / "optimized.onnx")
    guard = CheckBranchSeparationPass(expected=expected_matmuls(Manifest.from_json(manifest).layers))
    assert guard(graph).modified is False
    assert guard.found == {0: {"heavy": 2, "light": 2}, 1: {"heavy": 2, "light": 2}}


def test_guard_catches_a_fused_node_that_lost_its_tag(tiny_none_artifact: Path) -> None:
    manifest = json.loads((tiny_none_artifact / "manifest.json").read_text())
    graph = ir.load(tiny_none_artifact / "runtime" / "cpu" / "optimized.onnx")
    victim = next(n for n in graph.graph if n.op_type == "MatMul" and (n.name or "").startswith("ffsplit/L1/light/"))
    victim.name = "SomeRuntimeFusion_17"
    with pytest.raises(BranchSeparationError, match="layer 1: 1 light matmul nodes, expected 2"):
        CheckBranchSeparationPass(expected=expected_matmuls(Manifest.from_json(manifest).layers))(graph)


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


def test_expected_counts_follow_the_recipe_and_form(tiny_none_artifact: Path) -> None:
    row = Manifest.from_json(json.loads((tiny_none_artifact / "manifest.json").read_text())).layers[0]
    plans = [replace(row, layer=0, light_recipe="none", gated=False),
             replace(row, layer=1, light_recipe="lowrank:8", gated=False),
             replace(row, layer=2, light_recipe="prune:0.1+int8", gated=True),
             replace(row, layer=3, light_recipe="lowrank:8+int4", split="down")]
    assert expected_matmuls(plans) == {0: {"heavy": 2, "light": 2}, 1: {"heavy": 2, "light": 4},
                                       2: {"heavy": 3, "light": 3}, 3: {"heavy": 1, "light": 2}}


def _ort_optimized(model: ir.Model, tmp_path: Path) -> ir.Model:
    """The graph ONNX Runtime runs for ``model`` (all optimisations, saved by the session)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return ir.load(tmp_path / "optimized.onnx")


@pytest.mark.parametrize(("form", "how"), [("weight-only", "int8"), ("dynamic", "int8"), ("weight-only", "int4:16")])
def test_guard_reads_the_precision_the_runtime_realised(form: str, how: str, tmp_path: Path) -> None:
    from ffsplit.graph_passes.quantize_branch_weights_pass import QuantizeBranchWeightsPass
    from tests.graph_passes.ffn_graphs import ffn_model, grids, quantized, weights

    ws = weights()
    qs = quantized(ws, "light", how)
    model = ir.from_proto(ffn_model(ws))
    QuantizeBranchWeightsPass(grids=grids(qs), int8_form=form)(model)
    optimized = _ort_optimized(model, tmp_path)
    bits = how.split(":")[0]
    counts = {0: {"heavy": 2, "light": 2}}
    guard = CheckBranchSeparationPass(expected=counts, precisions={0: {"heavy": "fp32", "light": bits}})
    guard(optimized)
    assert guard.realized == {0: {"heavy": ["fp32", "fp32"], "light": [bits, bits]}}
    # Asking for another precision than the graph holds is a failure naming layer and node.
    with pytest.raises(BranchSeparationError, match=f"layer 0: light .* runs at {bits}, the target asked for fp16"):
        CheckBranchSeparationPass(expected=counts, precisions={0: {"heavy": "fp32", "light": "fp16"}})(optimized)


def test_guard_catches_a_light_branch_dequantised_back_to_fp32(tmp_path: Path) -> None:
    """What a runtime that folds DequantizeLinear into an fp32 weight would run."""
    from ffsplit.graph_passes.quantize_branch_weights_pass import QuantizeBranchWeightsPass
    from tests.graph_passes.ffn_graphs import ffn_model, grids, quantized, weights

    ws = weights()
    qs = quantized(ws, "light", "int8")
    model = ir.from_proto(ffn_model(ws))
    QuantizeBranchWeightsPass(grids=grids(qs))(model)
    for dq in [n for n in model.graph if n.op_type == "DequantizeLinear"]:
        q, scale = (v.const_value.numpy() for v in dq.inputs[:2])
        folded = ir.Value(name=dq.outputs[0].name + "_folded", const_value=ir.tensor((q * scale).astype(np.float32)))
        model.graph.register_initializer(folded)
        ir.convenience.replace_all_uses_with(dq.outputs[0], folded)
        model.graph.remove(dq, safe=True)
    with pytest.raises(BranchSeparationError) as err:
        CheckBranchSeparationPass(
            expected={0: {"heavy": 2, "light": 2}}, precisions={0: {"heavy": "fp32", "light": "int8"}}
        )(_ort_optimized(model, tmp_path))
    assert len(err.value.findings) == 2
    assert all("runs at fp32, the target asked for int8" in f for f in err.value.findings)
