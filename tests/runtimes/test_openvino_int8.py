"""The openvino-int8 target: NNCF static int8 in an OpenVINO IR, heavy branch fp32, checked and guarded on this CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, run_cli

from ffsplit import api
from ffsplit.errors import UsageError


@pytest.fixture(scope="module")
def ov_int8_artifact(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ov-int8") / "art"
    api.export(str(tiny_bert_dir), out, target="openvino-int8", progress=False, **FAST)
    return out


def test_heavy_stays_fp32_and_the_rest_runs_int8(ov_int8_artifact: Path) -> None:
    m = json.loads((ov_int8_artifact / "manifest.json").read_text())
    assert m["recipe"]["light"]["recipe"] == "none" and m["checks"]["exact"] is False
    assert "runtime/openvino-int8/model.xml" in m["files"] and "runtime/openvino-int8/model.bin" in m["files"]
    # the guard read OpenVINO's executed layers: each branch's multiplies apart, at the planned precision
    assert m["separation"]["matmuls"] == {str(i): {"heavy": 2, "light": 2} for i in range(2)}
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["fp32"], "light": ["int8"]} for i in range(2)}
    rows = json.loads((ov_int8_artifact / "runtime" / "openvino-int8" / "layers.json").read_text())
    untagged = [r for r in rows if r["type"] == "FullyConnected" and "ffsplit/" not in r["original"]]
    assert untagged and all(r["precision"] in ("u8", "i8") for r in untagged)  # attention projections too
    assert m["parity"]["passed"] and m["parity"]["comparisons"]["compression"]["metrics"]["max_abs"] < 1e-4


def test_a_plain_openvino_compile_with_the_targets_config_runs_what_was_checked(ov_int8_artifact: Path) -> None:
    """What a user's own OpenVINO code gets when it passes the target's config (README: on a CPU with bf16,
    OpenVINO's default precision is bf16 and it does not take the hint stored in the IR)."""
    import openvino as ov

    from ffsplit.runtimes.base import make_runner

    ids = np.random.default_rng(0).integers(1000, 2000, size=(2, 9)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    target = api.open_artifact(ov_int8_artifact).target
    with make_runner(ov_int8_artifact / "model.onnx", target) as runner:
        checked = runner.infer(feed)["last_hidden_state"]
    ir = ov_int8_artifact / "runtime" / "openvino-int8" / "model.xml"
    compiled = ov.Core().compile_model(str(ir), "CPU", target.openvino["config"])
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    plain = compiled.create_infer_request().infer(feed)[compiled.outputs[0]]
    np.testing.assert_array_equal(np.asarray(plain), checked)
    # the hint also travels in the IR, for OpenVINO builds that read it from there
    assert "INFERENCE_PRECISION_HINT value=\"f32\"" in ir.read_text()


def test_check_reruns_on_the_shipped_ir(ov_int8_artifact: Path) -> None:
    report = api.check(ov_int8_artifact)
    assert report.passed


def test_heavy_int8_gets_activation_scales_of_its_own(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """--heavy int8: NNCF quantises the heavy multiplies too (no ignored scope), each with its own input
    quantiser, and the guard holds OpenVINO to int8 on both branches, still apart."""
    out = tmp_path / "h8"
    api.export(str(tiny_bert_dir), out, target="openvino-int8", heavy="int8", progress=False, **FAST)
    m = json.loads((out / "manifest.json").read_text())
    assert m["separation"]["matmuls"] == {str(i): {"heavy": 2, "light": 2} for i in range(2)}
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["int8"], "light": ["int8"]} for i in range(2)}
    assert all(row["heavy_precision"] == "int8" and row["heavy_bytes"] == row["heavy_params"] for row in m["layers"])
    ir = (out / "runtime" / "openvino-int8" / "model.xml").read_text()
    assert "<ignored_scope>" not in ir or "heavy" not in ir.split("<ignored_scope>")[1].split("</ignored_scope>")[0]
    # split torch stays exact (NNCF rounds at run time): what compression costs is measured on the runtime
    assert m["parity"]["comparisons"]["compression"]["metrics"]["max_abs"] < 1e-4
    with pytest.raises(UsageError, match="--heavy fp32 or --heavy int8"):
        api.export(str(tiny_bert_dir), tmp_path / "o", target="openvino-int8", heavy="fp16", progress=False, **FAST)
    assert not (tmp_path / "o").exists()


def test_a_quantiser_in_the_light_recipe_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="makes the light branch int8 with NNCF"):
        api.export(str(tiny_bert_dir), tmp_path / "o", target="openvino-int8", light="int8", progress=False, **FAST)
    assert not (tmp_path / "o").exists()


def test_static_int8_does_not_depend_on_the_batch(ov_int8_artifact: Path) -> None:
    """One text embedded alone and inside a padded batch of 32 gives the same output: the activation
    scales were fixed at export (dynamic int8 takes them from the whole batch, padding included)."""
    import transformers

    from ffsplit.runtimes.base import make_runner
    from ffsplit.split.calibration import evaluation_texts

    tok = transformers.AutoTokenizer.from_pretrained(ov_int8_artifact, local_files_only=True)
    texts = [t.text for t in evaluation_texts(32)]
    with make_runner(ov_int8_artifact / "model.onnx", api.open_artifact(ov_int8_artifact).target) as runner:
        alone = runner.infer(dict(tok([texts[3]], return_tensors="np")))["last_hidden_state"][0]
        batch = runner.infer(dict(tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")))
    inside = batch["last_hidden_state"][3][: len(alone)]
    assert len(texts) == 32 and batch["last_hidden_state"].shape[1] > len(alone)  # padded around it
    np.testing.assert_allclose(inside, alone, rtol=0, atol=1e-5)


def test_bench_measures_the_lossy_baseline_and_ffsplit_alike(ov_int8_artifact: Path, tmp_path: Path) -> None:
    """Against NNCF int8 of the original, a speed ratio alone would hide what each costs: bench names the
    baseline and measures both models' accuracy on the export's evaluation texts, in its output and report."""
    report = tmp_path / "bench.md"
    r = run_cli("bench", str(ov_int8_artifact), "--batch", "1", "--runs", "2", "--warmup", "0", "--min-seconds", "0",
                "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert "original = the original model with NNCF static int8" in r.stdout
    table = r.stdout.split("accuracy vs the original torch model on ")[1].splitlines()
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in table[2:4]}
    names = table[1].split()[1:]
    assert sorted(rows) == ["ffsplit", "original"] and "retrieval_at10" in names
    assert rows["original"][names.index("max_abs")] > 1e-3  # the baseline is int8, not the fp32 original
    assert all(0.0 <= values[names.index(k)] <= 1.0 for values in rows.values() for k in ("cosine_min", "retrieval_at10"))
    text = report.read_text()
    assert "original = the original model with NNCF static int8" in text and "| ffsplit | " in text


def test_the_down_split_form_on_openvino(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """split = "down" on OpenVINO + NNCF: the shared up-projection is quantised with the model's other
    multiplies, and OpenVINO still runs one fp32 heavy and one int8 light down-projection per layer."""
    target = tmp_path / "ov-down.toml"
    target.write_text('extends = "openvino-int8"\nsplit = "down"\n')
    m = api.export(str(tiny_bert_dir), tmp_path / "art", target=str(target), progress=False, **FAST).manifest.to_json()
    assert m["separation"]["matmuls"] == {str(i): {"heavy": 1, "light": 1} for i in range(2)}
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["fp32"], "light": ["int8"]} for i in range(2)}
    assert m["parity"]["passed"] and {p["split"] for p in m["layers"]} == {"down"}
