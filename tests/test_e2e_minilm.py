"""End to end on the real all-MiniLM-L6-v2, on the cpu and cpu-int8 targets: export, debug, plain ORT use (bench is tested on tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow
SHORT = ("--calib-size", "64", "--max-length", "64")


@pytest.fixture(scope="module")
def minilm_artifact(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "minilm-lowrank"
    # int8 factors on the cpu target: stored as int8, dequantised exactly in the kernel
    # 64 calibration texts of up to 64 tokens (4k tokens, ten times d_model) keep this at a fraction of the default run
    r = run_cli("export", "minilm", "--out", str(out), "--light", "lowrank:128+int8", "--eval-size", "64", *SHORT,
                "--limit", "cosine_mean=0.8", "--limit", "cosine_min=0.6", "--limit", "retrieval_at10=0.4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == f"wrote {out}" and (out / "manifest.json").is_file()
    return out


def test_manifest_records_the_split(minilm_artifact: Path) -> None:
    m = json.loads((minilm_artifact / "manifest.json").read_text())
    assert m["source"]["architecture"] == "BertModel" and m["task"] == "feature-extraction"
    assert [(x["d_ff"], x["heavy"], x["light"]) for x in m["layers"]] == [(1536, 152, 1384)] * 6
    assert m["params"]["ffn_reduction"] > 0.45
    assert m["separation"]["matmuls"] == {str(i): {"heavy": 2, "light": 4} for i in range(6)}
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["fp32"], "light": ["int8"]} for i in range(6)}
    fid = m["parity"]["comparisons"]["fidelity"]["metrics"]
    assert fid["max_abs"] < 1e-4 and fid["cosine_min"] > 0.99999
    comp = m["parity"]["comparisons"]["compression"]["metrics"]
    assert 0.6 < comp["cosine_mean"] < 0.999  # lossy, and measured
    for key in ("torch", "transformers", "onnx", "onnxruntime"):
        assert m["versions"][key]


def test_artifact_loads_in_plain_onnxruntime(minilm_artifact: Path) -> None:
    """What a user does with the folder: tokenizer from it, model.onnx in ORT, no ffsplit involved."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_artifact, local_files_only=True)
    enc = tok(["a cat sat on the mat", "a longer sentence about something else"], padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(minilm_artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    hidden, pooled = sess.run(["last_hidden_state", "sentence_embedding"], {k: v for k, v in enc.items() if k in names})
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)  # MiniLM's Normalize, in the graph
    assert hidden.shape[:2] == enc["input_ids"].shape and hidden.shape[2] == 384
    assert np.isfinite(hidden).all()


def test_cpu_int8_target(tmp_path: Path) -> None:
    """The fast CPU path: light branch in dynamic int8, guard and per-layer debug on the real model."""
    import onnx

    out = tmp_path / "minilm-int8"
    r = run_cli("export", "minilm", "--out", str(out), "--target", "cpu-int8", "--eval-size", "48", *SHORT)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["fp32"], "light": ["int8"]} for i in range(6)}
    optimized = onnx.load(str(out / "runtime" / "cpu-int8" / "optimized.onnx"), load_external_data=False)
    ops = [n.op_type for n in optimized.graph.node if n.name.startswith("ffsplit/")]
    assert ops.count("DynamicQuantizeMatMul") == 12
    assert (out / "model.onnx").stat().st_size < 0.8 * 90e6  # light FFN weights stored as int8
    # the report leads with bytes: an int8 light branch keeps its parameter count, not its size
    import re

    line = next(x for x in r.stdout.splitlines() if x.startswith("FFN weights"))
    smaller = float(re.search(r"MB \((\d+\.\d)% smaller", line).group(1))
    assert 50 < smaller < 75 and "(0.0% fewer)" in line  # 4 bytes -> 1 per light weight; no weight removed
    assert re.search(r"^on disk: model\.onnx \d+\.\d MB \(source weights 90\.9 MB\)", r.stdout, re.M)
    r = run_cli("debug", str(out), "--batch", "4")
    assert r.returncode == 0, r.stderr
    assert "within tolerance" in r.stdout


def test_encode_is_sentence_transformers_within_the_checked_accuracy(minilm_artifact: Path) -> None:
    """ffsplit.load(folder).encode against SentenceTransformer(source).encode on held-out text: the pooled,
    normalised embeddings agree as closely as the export's limits on what ships say they must."""
    from sentence_transformers import SentenceTransformer

    import ffsplit
    from ffsplit.loading import resolve_model
    from ffsplit.split.calibration import evaluation_texts

    texts = [t.text for t in evaluation_texts(300)][256:300]  # beyond the 64 the export checked
    want = SentenceTransformer(str(resolve_model("minilm")), device="cpu", local_files_only=True).encode(texts)
    with ffsplit.load(minilm_artifact) as model:
        got = model.encode(texts, batch_size=16)
        assert model.pooling.normalize and model.pooling.modes == ("mean",)
    m = json.loads((minilm_artifact / "manifest.json").read_text())
    limits = m["checks"]["limits"]["shipped"]
    cos = (got * want).sum(1)  # both unit length
    assert got.shape == want.shape == (44, 384)
    assert cos.min() >= limits["cosine_min"] and cos.mean() >= limits["cosine_mean"], (cos.min(), cos.mean())
