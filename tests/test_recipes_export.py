"""Quantised and pruned recipes end to end: the grids are stored as integers and the runtime runs them."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import load_file

from ffsplit import api
from ffsplit.errors import UsageError

LENIENT = {"cosine_mean": 0.5, "cosine_min": 0.3, "retrieval_at10": 0.2}


def test_quantised_light_and_int8_heavy_export_and_check(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "q"
    res = api.export(str(tiny_bert_dir), out, light="prune:0.25+int4:16:asym", heavy="int8", limits=LENIENT,
                     calib_size=16, eval_size=24, max_length=32, progress=False)
    m = res.manifest.to_json()
    assert m["recipe"]["light"]["recipe"] == "prune:0.25+int4:16:asym" and m["recipe"]["heavy_precision"] == "int8"
    assert m["params"]["ffn_bytes_reduction"] > 0.6
    fid = m["parity"]["comparisons"]["fidelity"]["metrics"]
    assert fid["max_abs"] < 1e-4  # ORT runs exactly the grid the torch model runs
    assert m["parity"]["comparisons"]["compression"]["metrics"]["max_abs"] > 1e-4  # and it is lossy
    state = load_file(str(out / "split.safetensors"))
    # each quantised weight is held as its grid: int8 codes, scales (and the int4 zero points), no fp32 copy
    scales = [k for k in state if k.endswith(".scale")]
    assert len(scales) == 2 * 4  # per layer: heavy fc_in, fc_out (int8), light fc_in, fc_out (int4)
    assert all(state[k.removesuffix(".scale") + ".weight"].dtype == torch.int8 for k in scales)
    assert any(k.endswith("light.fc_in.zero_point") for k in state) and not any(k.startswith("quant.") for k in state)
    assert api.check(out).passed
    # The grids are in the graph as integers, and the runtime ran them as such.
    assert m["recipe"]["graph_storage"] == {"int8": "weight-only", "int4": "matmulnbits"}
    assert m["separation"]["precisions"] == {
        "0": {"heavy": ["int8"], "light": ["int4"]}, "1": {"heavy": ["int8"], "light": ["int4"]}
    }
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("MatMulNBits") == 4 and ops.count("DequantizeLinear") == 4
    assert [p["name"] for p in m["graph_passes"]] == [
        "TagBranchesPass", "CleanupGraphPass", "RemoveSoftmaxNanGuardPass", "StripTracesPass", "QuantizeBranchWeightsPass",
        "CheckBranchSeparationPass",
    ]


def test_cpu_int8_target_runs_the_light_branch_in_dynamic_int8(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "i8"
    res = api.export(str(tiny_bert_dir), out, target="cpu-int8", limits=LENIENT, calib_size=16, eval_size=24,
                     max_length=32, progress=False)
    m = res.manifest.to_json()
    assert m["recipe"]["light"]["recipe"] == "int8"  # the target's default light recipe
    assert m["separation"]["precisions"]["0"] == {"heavy": ["fp32"], "light": ["int8"]}
    optimized = onnx.load(str(out / "runtime" / "cpu-int8" / "optimized.onnx"))
    light_ops = [n.op_type for n in optimized.graph.node if "/light/" in n.name and "MatMul" in n.op_type]
    assert light_ops == ["DynamicQuantizeMatMul"] * 4
    fid = m["parity"]["comparisons"]["fidelity"]["metrics"]
    assert 0 < fid["max_abs"] < 1.0  # the runtime also rounds activations: close, not exact
    assert api.check(out).passed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heavy": "fp16"}, "runs on the CPU, which has no fp16 MatMul"),
        ({"light": "int4:8"}, "int4 block 8 cannot be stored as MatMulNBits"),
    ],
)
def test_precisions_the_cpu_cannot_realise_are_refused(tiny_bert_dir: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        api.export(str(tiny_bert_dir), tmp_path / "x", progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_qdq_target_calibrates_static_activation_scales(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """A user target asking for QDQ (TensorRT's explicit int8) gets calibrated input scales."""
    target = tmp_path / "qdq.toml"
    target.write_text(
        'runtime = "onnxruntime"\nproviders = ["CPUExecutionProvider"]\nheavy_precision = "fp32"\n'
        'light_precision = "int8"\nint8_compute = "qdq"\n[parity.fidelity]\nmax_abs = 1.0\ncosine_min = 0.99\n',
        encoding="utf-8",
    )
    out = tmp_path / "q"
    res = api.export(str(tiny_bert_dir), out, target=str(target), limits=LENIENT, calib_size=16, eval_size=24,
                     max_length=32, progress=False)
    model = onnx.load(str(out / "model.onnx"))
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("input_scale")}
    assert len(scales) == 4 and all(float(v) > 0 for v in scales.values())
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 4
    assert res.manifest.to_json()["separation"]["precisions"]["1"] == {"heavy": ["fp32"], "light": ["int8"]}


@pytest.mark.parametrize("form", ["both", "down"])
def test_cpu_int4_target_puts_a_decoder_in_int4_except_the_heavy_hitters(form: str, family_root: Path, tmp_path: Path,
                                                                          cache_dir: Path) -> None:
    """cpu-int4: the heavy hitters int8, the light branch and every multiply outside the split (attention, the
    LM head) int4, all MatMulNBits with int8 activations, on the KV-cache graph a decoder ships with. Random weights
    have no heavy hitters and int4 moves their flat logits a lot, so the limits are opened (a target file
    extending cpu-int4 for fidelity, --limit for the rest): what is held here is the form, not the accuracy."""
    from conftest import save_family_model

    model = save_family_model("llama", family_root)
    target = tmp_path / "int4-random.toml"
    target.write_text(f'extends = "cpu-int4"\nsplit = "{form}"\n[parity.fidelity]\ntop1_agreement = 0.0\n'
                      "generation_agreement = 0.0\nperplexity_ratio = 1000.0\n")
    opened = {"top1_agreement": 0.0, "top5_agreement": 0.0, "perplexity_ratio": 1000.0}
    out = tmp_path / "i4"
    m = api.export(str(model), out, target=str(target), task="causal-lm-with-past", heavy_ratio=0.25, limits=opened,
                   calib_size=16, eval_size=16, max_length=32, progress=False).manifest.to_json()
    assert m["recipe"]["light"]["recipe"] == "int4" and m["target"]["matmulnbits_accuracy_level"] == 4
    # per neuron: the heavy hitters int8, the rest int4, in what ONNX Runtime runs
    assert m["separation"]["passed"] and m["separation"]["precisions"]["0"] == {"heavy": ["int8"], "light": ["int4"]}
    graph = onnx.load(str(out / "model.onnx"))
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    other = [n for n in nbits if not n.name.startswith("ffsplit/")]
    bits = {n.name.split("/")[2]: {a.i for a in n.attribute if a.name == "bits"} for n in nbits if n not in other}
    assert bits == {"heavy": {8}, "light": {4}}
    if form == "both":
        assert len(nbits) - len(other) == 2 * 3 * 2  # per layer and branch: gate, up, down
        assert len(other) == 2 * 4 + 1  # per layer q, k, v, o; and the LM head
    else:  # per layer one down-projection per branch; the shared gate and up are int4 like q, k, v, o
        assert len(nbits) - len(other) == 2 * 1 * 2
        assert len(other) == 2 * (4 + 2) + 1
        assert m["separation"]["matmuls"] == {str(i): {"heavy": 1, "light": 1} for i in range(2)}
        # the shared up-projection counts as the int4 it is stored as, not as fp32
        assert all(p["ffn_bytes_after"] < 0.3 * p["ffn_bytes_before"] for p in m["layers"])
    assert {a.i for n in nbits for a in n.attribute if a.name == "accuracy_level"} == {4}
    # opset 23: each layer's attention one ONNX Attention op over the KV cache (ONNX Runtime's own kernel)
    assert m["exporter"]["opset"] == 23 and sum(n.op_type == "Attention" for n in graph.graph.node) == 2
    assert "QuantizeOtherMatMulsInt4Pass" in [p["name"] for p in m["graph_passes"]]
    assert m["parity"]["comparisons"]["fidelity"]["metrics"]["max_abs"] > 1e-4  # the runtime rounds: not fp32-exact


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_the_down_split_form_is_exact_and_guarded(family: str, family_root: Path, tmp_path: Path,
                                                  cache_dir: Path) -> None:
    """split = "down": one up-projection over all neurons (heavy first) and the down-projection split. With
    --light none it equals the original to fp32 rounding (the three-way check); with an int8 light branch
    the guard finds, per layer, one heavy multiply at fp32 and one light at int8 in what ONNX Runtime runs."""
    from conftest import save_family_model

    model = save_family_model(family, family_root)
    target = tmp_path / "down.toml"
    target.write_text('extends = "cpu"\nsplit = "down"\n')
    task = "causal-lm" if family == "llama" else "feature-extraction"
    opts = {"calib_size": 16, "eval_size": 16, "max_length": 32, "progress": False, "task": task}
    m = api.export(str(model), tmp_path / "none", target=str(target), light="none", **opts).manifest.to_json()
    assert m["checks"]["exact"] and m["parity"]["passed"] and {p["split"] for p in m["layers"]} == {"down"}
    assert m["separation"]["matmuls"] == {str(p["layer"]): {"heavy": 1, "light": 1} for p in m["layers"]}
    out = tmp_path / "int8"
    m = api.export(str(model), out, target=str(target), light="int8", limits=LENIENT if family == "bert" else
                   {"top1_agreement": 0.0, "top5_agreement": 0.0, "perplexity_ratio": 1000.0}, **opts).manifest.to_json()
    assert m["separation"]["precisions"] == {str(p["layer"]): {"heavy": ["fp32"], "light": ["int8"]} for p in m["layers"]}
    graph = onnx.load(str(out / "model.onnx")).graph
    tagged = [n.name.split("/")[2] for n in graph.node if n.name.startswith("ffsplit/") and "MatMul" in n.op_type]
    assert sorted(tagged) == sorted(["heavy", "light"] * len(m["layers"]))
    assert api.check(out).passed
