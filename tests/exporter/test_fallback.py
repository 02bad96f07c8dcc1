"""The TorchScript exporter: tagged from its node names, and used only as a parity-checked fallback."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import ffsplit.exporter
from ffsplit import api
from ffsplit.exporter.export import WRAPPER_PREFIX
from ffsplit.graph_passes import TagBranchesPass, node_tags
from ffsplit.loading import load_model
from ffsplit.split.adapters import find_adapter
from ffsplit.split.apply import split_model
from ffsplit.split.calibration import calibration_texts
from ffsplit.split.compress import parse_light
from ffsplit.split.profile import profile_model

FAST = {"calib_size": 16, "eval_size": 24, "max_length": 32, "progress": False}


def test_torchscript_graph_is_tagged_from_node_names(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir))
    adapter = find_adapter(loaded.model)
    profiles = profile_model(loaded.model, adapter, loaded.tokenizer, calibration_texts(limit=4), progress=False)
    split = copy.deepcopy(loaded.model)
    plans, _, _ = split_model(split, adapter, profiles, heavy_ratio=0.25, recipe=parse_light("none"))
    program = ffsplit.exporter.export_program(split, loaded.tokenizer, loaded.task, exporter="torchscript")
    assert not any("pkg.torch.onnx.name_scopes" in n.metadata_props for n in program.graph)
    tag = TagBranchesPass(split_modules={p.module: p.layer for p in plans}, prefix=WRAPPER_PREFIX)
    assert tag(program).modified
    matmuls = sorted(node_tags(n) for n in program.graph if n.op_type == "MatMul" and node_tags(n))
    assert matmuls == [(0, "heavy")] * 2 + [(0, "light")] * 2 + [(1, "heavy")] * 2 + [(1, "light")] * 2
    assert any(node_tags(n) == (0, "merge") for n in program.graph)
    assert not tag(program).modified


def test_torchscript_exporter_by_request(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    res = api.export(str(tiny_bert_dir), tmp_path / "o", light="none", exporter="torchscript", **FAST)
    assert res.manifest.to_json()["exporter"]["name"] == "torchscript" and res.report.passed


def _patched(monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    real = ffsplit.exporter.export_program

    def fake(model, tokenizer, task, *, exporter="dynamo", **options):  # noqa: ANN001, ANN003, ANN202
        if exporter != "dynamo":
            return real(model, tokenizer, task, exporter=exporter, **options)
        if broken == "export":  # torch's wrapper says little; the cause is in the chain
            raise RuntimeError("Failed to export the model with torch.export. Next steps:") from ValueError(
                "dynamo could not trace this model\n  because of line 3"
            )
        program = real(model, tokenizer, task, exporter=exporter, **options)
        # A wrong graph that still runs: one heavy weight doubled.
        import onnx_ir as ir

        matmul = next(
            n for n in program.graph
            if n.op_type == "MatMul" and "heavy.fc_in" in n.metadata_props.get("pkg.torch.onnx.name_scopes", "")
        )
        weight = matmul.inputs[1]
        weight.const_value = ir.tensor(np.asarray(weight.const_value.numpy()) * 2.0)
        return program

    monkeypatch.setattr(ffsplit.exporter, "export_program", fake)


@pytest.mark.parametrize(("broken", "reason"), [("export", "export: ValueError: dynamo could not trace this model because of line 3"), ("fidelity", "parity: fidelity")])
def test_falls_back_to_torchscript(
    broken: str, reason: str, tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    _patched(monkeypatch, broken)
    res = api.export(str(tiny_bert_dir), tmp_path / "o", light="none", **FAST)
    exp = res.manifest.to_json()["exporter"]
    assert exp["name"] == "torchscript" and res.report.passed
    assert [a["exporter"] for a in exp["attempts"]] == ["dynamo"] and exp["attempts"][0]["failed"].startswith(reason)


def test_no_fallback_when_dynamo_is_forced(tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ffsplit.errors import CheckFailed

    _patched(monkeypatch, "fidelity")
    with pytest.raises(CheckFailed, match="fidelity"):
        api.export(str(tiny_bert_dir), tmp_path / "o", light="none", exporter="dynamo", **FAST)
    assert not (tmp_path / "o").exists()


def test_a_failing_graph_pass_is_a_bug_not_a_reason_to_fall_back(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    """Capture succeeded, then a pass broke: PassFailed (exit 3) naming it; TorchScript is never tried."""
    from onnx_ir.passes import InPlacePass

    from ffsplit.graph_passes.pipeline import PassFailed
    from ffsplit.stages import capture

    class ExplodingPass(InPlacePass):
        def call(self, model):  # noqa: ANN001, ANN202
            raise RuntimeError("boom")

    real, captured = capture.graph_passes, []
    monkeypatch.setattr(capture, "graph_passes", lambda *a, **kw: [*real(*a, **kw)[:1], ExplodingPass()])
    real_capture = capture.capture
    monkeypatch.setattr(capture, "capture", lambda plan, m, t, name: captured.append(name) or real_capture(plan, m, t, name))
    with pytest.raises(PassFailed, match=r"ExplodingPass failed \(after TagBranchesPass\): RuntimeError: boom"):
        api.export(str(tiny_bert_dir), tmp_path / "o", light="none", **FAST)
    assert captured == ["dynamo"] and not (tmp_path / "o").exists()
