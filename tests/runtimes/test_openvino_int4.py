"""The openvino-int4 target: heavy int8 / light int4 (NNCF) per neuron in a stateful OpenVINO IR, checked and
guarded on this CPU; and the IR builder's stateful rewrite, held to the stateless graph it replaces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ffsplit import api
from ffsplit.errors import UsageError

# random weights have no heavy hitters and int4 moves their flat logits a lot: what is held here is the
# form (precisions, separation, the stateful cache), not the accuracy
OPENED = {"top1_agreement": 0.0, "top5_agreement": 0.0, "perplexity_ratio": 1000.0}


def _opened_target(folder: Path) -> Path:
    path = folder / "ov4-random.toml"
    path.write_text('extends = "openvino-int4"\n[parity.fidelity]\ntop1_agreement = 0.0\ntop5_agreement = 0.0\n'
                    "generation_agreement = 0.0\nperplexity_ratio = 1000.0\ncosine_min = 0.0\nmax_abs = 1000.0\n")
    return path


@pytest.fixture(scope="module")
def ov_int4_artifact(family_root: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    from conftest import save_family_model

    folder = tmp_path_factory.mktemp("ov-int4")
    # stored in bf16, as decoders are downloaded
    api.export(str(save_family_model("llama", family_root, "bfloat16")), folder / "art", target=str(_opened_target(folder)),
               task="causal-lm-with-past", heavy_ratio=0.25, limits=OPENED, calib_size=16, eval_size=16,
               max_length=32, progress=False)
    return folder / "art"


def test_heavy_hitters_run_int8_and_the_rest_int4(ov_int4_artifact: Path) -> None:
    m = json.loads((ov_int4_artifact / "manifest.json").read_text())
    name = m["target"]["name"]
    assert m["recipe"]["light"]["recipe"] == "none" and m["target"]["int4_compute"] == "nncf"
    assert m["target"]["nncf"] == {"mode": "int4_asym", "group_size": 128, "ratio": 1.0, "awq": False,
                                   "scale_estimation": False, "light_group_size": -1}
    assert f"runtime/{name}/model.xml" in m["files"] and f"runtime/{name}/model.bin" in m["files"]
    # the guard read OpenVINO's executed layers: per layer one heavy down-projection at int8, one light at int4
    assert m["separation"]["passed"]
    assert m["separation"]["matmuls"] == {str(i): {"heavy": 1, "light": 1} for i in range(2)}
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["int8"], "light": ["int4"]} for i in range(2)}
    rows = json.loads((ov_int4_artifact / "runtime" / name / "layers.json").read_text())
    fcs = [r for r in rows if r["type"] == "FullyConnected" and "ffsplit/" not in r["original"]]
    # attention projections and the shared gate / up int4; NNCF keeps the LM head int8
    assert [r["precision"] for r in fcs].count("u4") == 2 * (4 + 2) and {r["precision"] for r in fcs} == {"u4", "u8"}
    # model.onnx holds the heavy hitters as int8 per channel and leaves every other multiply to NNCF
    graph = onnx.load(str(ov_int4_artifact / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert "MatMulNBits" not in ops and ops.count("DequantizeLinear") == 2
    # what NNCF compresses is stored as the source was, bf16 (half the fp32 graph), cast to fp32 where used:
    # the light down-projections, the shared gate / up, attention, the embeddings and the LM head
    stored = {i.name for i in graph.graph.initializer if i.data_type == onnx.TensorProto.BFLOAT16}
    assert len(stored) == 2 * (1 + 2 + 4) + 2 and not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                                                        and i.dims[0] * i.dims[1] >= 4096 for i in graph.graph.initializer)
    assert {"name": "StoreWeightsHalfPass", "modified": True} in m["graph_passes"]
    # the light branch a whole number of groups wide where the width allows: 64 neurons, 16 heavy, 48 light
    assert [(row["heavy"], row["light"]) for row in m["layers"]] == [(16, 48), (16, 48)]
    assert all(row["light_bytes"] < row["light_params"] for row in m["layers"])  # counted as int4, not fp32


def _int4_weight_ranks(xml: Path) -> dict[str, int]:
    """Each MatMul of an IR whose weight is 4-bit -> the rank of that weight's constant: 2 with one scale per
    output channel, 3 in groups along the input (out, groups, group)."""
    import openvino as ov

    out = {}
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        stack = [op.input_value(1).get_node()]
        while stack:
            node = stack.pop()
            if node.get_type_name() == "Constant" and node.get_element_type() in (ov.Type.u4, ov.Type.i4):
                out[op.get_friendly_name()] = len(node.get_output_shape(0))
                break
            stack += [i.get_source_output().get_node() for i in node.inputs()]
    return out


def test_the_light_branch_has_one_scale_per_channel_and_the_rest_groups(ov_int4_artifact: Path) -> None:
    """light_group_size = -1: NNCF compresses the light down-projections per output channel in a pass of their
    own; every other int4 multiply keeps groups along its input."""
    name = json.loads((ov_int4_artifact / "manifest.json").read_text())["target"]["name"]
    ranks = _int4_weight_ranks(ov_int4_artifact / "runtime" / name / "model.xml")
    light = {k: v for k, v in ranks.items() if "/light/" in k}
    assert len(light) == 2 and set(light.values()) == {2}
    assert len(ranks) - len(light) == 2 * (4 + 2) and {v for k, v in ranks.items() if k not in light} == {3}


def test_the_kv_cache_stays_inside_openvino(ov_int4_artifact: Path) -> None:
    import openvino as ov

    import ffsplit

    name = json.loads((ov_int4_artifact / "manifest.json").read_text())["target"]["name"]
    model = ov.Core().read_model(str(ov_int4_artifact / "runtime" / name / "model.xml"))
    assert [i.get_any_name() for i in model.inputs] == ["input_ids", "attention_mask", "position_ids", "beam_idx"]
    assert [o.get_any_name() for o in model.outputs] == ["logits"] and len(model.get_variables()) == 4
    # exported at the target's opset 23, attention is one op that OpenVINO fused with its cache: no separate
    # multiplies and softmax over a cache copied at every step
    layers = json.loads((ov_int4_artifact / "runtime" / name / "layers.json").read_text())
    kinds = [row["type"] for row in layers]
    assert kinds.count("ScaledDotProductAttention") == 2 and "Softmax" not in kinds and "MatMul" not in kinds
    with ffsplit.load(ov_int4_artifact) as m:
        assert m.runner.stateful
        texts = m.generate(["the cat sat on", "a"], max_new_tokens=5)
        again = m.generate(["the cat sat on", "a"], max_new_tokens=5)
        single = m.generate(["a"], max_new_tokens=5)
    assert len(texts) == 2 and texts == again  # each call a new sequence: the cache was reset
    assert single[0] == texts[1]


def test_a_stateful_runner_refuses_a_sequence_it_does_not_hold(ov_int4_artifact: Path) -> None:
    from ffsplit.runtimes.base import make_runner

    target = api.open_artifact(ov_int4_artifact).target
    ids = np.array([[101, 2000, 2001]], dtype=np.int64)
    with make_runner(ov_int4_artifact / "model.onnx", target) as runner:
        feed = {"input_ids": ids, "attention_mask": np.ones((1, 3), np.int64), "position_ids": np.arange(3)[None]}
        runner.infer(feed)
        step = {"input_ids": ids[:, :1], "attention_mask": np.ones((1, 9), np.int64), "position_ids": np.array([[8]])}
        with pytest.raises(UsageError, match="holds 3"):
            runner.infer(step)


def test_check_reruns_on_the_shipped_ir(ov_int4_artifact: Path) -> None:
    assert api.check(ov_int4_artifact).passed


@pytest.mark.parametrize("opset", [None, 23])
def test_making_the_cache_stateful_changes_no_number(family_root: Path, tmp_path: Path, opset: int | None) -> None:
    """stateful rewrites the KV-cache graph: the greedy loop through the stateful model (the cache
    inside OpenVINO, reset per sequence, reordered by beam_idx) gives the stateless graph's logits at every
    step, fp32, at batch 1 and 3, one sequence after another; at opset 23 with attention fused."""
    import openvino as ov
    from conftest import save_family_model

    from ffsplit.exporter import export_program, save_model
    from ffsplit.loading import load_model
    from ffsplit.runtimes.openvino_ir import stateful as make_stateful
    from ffsplit.signature import is_past, present_for

    loaded = load_model(str(save_family_model("llama", family_root)), task="causal-lm-with-past")
    save_model(export_program(loaded.model, loaded.tokenizer, loaded.task, opset=opset), tmp_path / "kv.onnx")
    core = ov.Core()
    stateless = core.read_model(str(tmp_path / "kv.onnx"))
    stateful = make_stateful(core.read_model(str(tmp_path / "kv.onnx")))
    assert make_stateful(stateful) is stateful  # no cache left to turn into variables
    assert len(stateful.get_variables()) == 4 and len(stateful.inputs) == 4 and len(stateful.outputs) == 1
    f32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    plain = core.compile_model(stateless, "CPU", f32).create_infer_request()
    compiled = core.compile_model(stateful, "CPU", f32)
    kinds = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    assert kinds.count("ScaledDotProductAttention") == (2 if opset == 23 else 0)  # fused with the cache at 23
    kept = compiled.create_infer_request()
    pasts = [p.get_any_name() for p in stateless.inputs if is_past(p.get_any_name())]
    rng = np.random.default_rng(0)
    for batch in (1, 3, 1):
        ids = rng.integers(1000, 2000, size=(batch, 6)).astype(np.int64)
        mask, pos = np.ones_like(ids), np.tile(np.arange(6), (batch, 1))
        cache = {n: np.zeros((batch, 1, 0, 16), np.float32) for n in pasts}
        kept.reset_state()
        for step in range(4):
            feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
            # beam_idx picks each row's cache: reversed once, the rows continue each other's sequences
            beam = np.arange(batch, dtype=np.int32)[::-1].copy() if step == 2 else np.arange(batch, dtype=np.int32)
            if step == 2:
                cache = {n: c[::-1] for n, c in cache.items()}
            want = plain.infer({**feed, **cache})
            got = kept.infer({**feed, "beam_idx": beam})
            np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5, rtol=0)
            cache = {n: want[present_for(n)] for n in pasts}
            ids = want["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            pos = pos[:, -1:] + 1


def test_a_packed_ir_artifact_keeps_what_runs(ov_int4_artifact: Path, tmp_path: Path) -> None:
    """pack drops what the IR makes redundant (model.onnx's external weights, when it has any) and the
    slim folder still generates; triton refuses it rather than serve model.onnx, which is not what ran."""
    import ffsplit
    from ffsplit.artifact import not_deployed
    from ffsplit.artifact.pack import pack_artifact
    from ffsplit.serve.triton import write_repository

    assert not_deployed("model.onnx.data", runs_ir=True) and not not_deployed("model.onnx.data")
    assert not not_deployed("model.onnx", runs_ir=True)
    slim = pack_artifact(ov_int4_artifact, tmp_path / "slim")
    name = slim.target_name
    assert f"runtime/{name}/model.xml" in slim.files and slim.packed and "split.safetensors" in slim.packed.dropped
    with ffsplit.load(ov_int4_artifact) as full, ffsplit.load(tmp_path / "slim") as packed:
        assert packed.generate(["the cat"], max_new_tokens=4) == full.generate(["the cat"], max_new_tokens=4)
    with pytest.raises(UsageError, match="runs an OpenVINO IR"):
        write_repository(ov_int4_artifact, tmp_path / "repo")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
