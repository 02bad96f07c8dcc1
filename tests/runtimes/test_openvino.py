"""OpenVINO on this CPU: the runner interface, its layer list for the guard, export and check like cpu."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.runtimes.base import make_runner
from ffsplit.runtimes.openvino import OpenVinoRunner
from ffsplit.targets import load_target

LENIENT = {"cosine_mean": 0.5, "cosine_min": 0.3, "retrieval_at10": 0.2}


def test_runner_interface_matches_onnxruntime(tiny_none_artifact: Path, tmp_path: Path) -> None:
    target = load_target("openvino")
    runner = make_runner(tiny_none_artifact / "model.onnx", target, runtime_dir=tmp_path)
    assert isinstance(runner, OpenVinoRunner)
    ids = np.array([[101, 2023, 2003, 102]], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    with runner as r, make_runner(tiny_none_artifact / "model.onnx", load_target("cpu")) as ort_runner:
        got, want = r.infer(feed)["last_hidden_state"], ort_runner.infer(feed)["last_hidden_state"]
        np.testing.assert_allclose(got, want, atol=1e-4)
        with pytest.raises(UsageError, match="missing \\['token_type_ids'\\]"):
            r.infer({"input_ids": ids, "attention_mask": ids})
        records = r.layer_records()
    assert {(rec.tags, rec.precision) for rec in records} == {
        (((layer, branch),), "fp32") for layer in (0, 1) for branch in ("heavy", "light")
    }
    assert json.loads((tmp_path / "layers.json").read_text())  # kept for inspect
    assert not runner.active


def test_export_and_check_on_openvino(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "ov"
    res = api.export(str(tiny_bert_dir), out, target="openvino", limits=LENIENT, calib_size=16, eval_size=24,
                     max_length=32, progress=False)
    m = res.manifest.to_json()
    assert m["target"]["runtime"] == "openvino" and m["recipe"]["light"]["recipe"] == "int8"
    assert m["separation"]["graph"] == "layers.json"
    assert m["separation"]["precisions"] == {str(i): {"heavy": ["fp32"], "light": ["int8"]} for i in (0, 1)}
    assert (out / "runtime" / "openvino" / "layers.json").is_file()
    assert api.check(out).passed
    info = api.inspect_artifact(out)
    assert info.graphs["runtime/openvino/layers.json"]["0"]["light"] == {"ops": {"FullyConnected": 2}, "precisions": ["int8"]}
