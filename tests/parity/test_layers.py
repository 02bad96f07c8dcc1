"""Layer-by-layer parity: every FFN module found in the graph, and the first divergence named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from ffsplit.artifact.opened import Artifact
from ffsplit.exporter.export import WRAPPER_PREFIX
from ffsplit.parity.check import torch_output
from ffsplit.parity.layers import compare_layers, find_probes, first_failure
from ffsplit.runtimes.onnxruntime import OrtRunner, SessionFromOnnx
from ffsplit.split.calibration import encode_batches, evaluation_texts
from ffsplit.stages.reload import rebuild


def _inputs(art_dir: Path) -> tuple:  # noqa: ANN001
    art = Artifact.open(art_dir)
    loaded, split = rebuild(art)
    texts = [t.text for t in evaluation_texts(4)]
    batch = next(encode_batches(loaded.tokenizer, texts, batch_size=4, max_length=32))
    modules = {p.module: p.layer for p in art.manifest.layers}
    return art, loaded, split, batch, modules


def _compare(art, loaded, split, batch, modules, model: ir.Model):  # noqa: ANN001, ANN202
    inputs = {v.name for v in model.graph.inputs}
    return compare_layers(
        split, model, lambda path: OrtRunner(SessionFromOnnx(path, art.target)).activate(), batch,
        lambda mod, b: torch_output(mod, b, loaded.task, inputs),
        split_modules=modules, prefix=WRAPPER_PREFIX, tolerance=1e-4,
    )


def test_every_ffn_module_is_probed(tiny_lowrank_artifact: Path) -> None:
    art, *_rest, modules = _inputs(tiny_lowrank_artifact)
    probes = find_probes(ir.load(tiny_lowrank_artifact / "model.onnx"), modules, WRAPPER_PREFIX)
    found = {p.module.removeprefix("encoder.layer.0.intermediate") for p in probes if p.layer == 0}
    assert found == {
        "", ".heavy", ".heavy.fc_in", ".heavy.act", ".heavy.fc_out", ".light", ".light.fc_in", ".light.fc_in.down",
        ".light.fc_in.up", ".light.act", ".light.fc_out", ".light.fc_out.down", ".light.fc_out.up",
    }
    assert [p.order for p in probes] == sorted(p.order for p in probes)


def test_clean_artifact_has_no_divergence(tiny_lowrank_artifact: Path) -> None:
    results = _compare(*_inputs(tiny_lowrank_artifact), ir.load(tiny_lowrank_artifact / "model.onnx"))
    assert len(results) == 26 and first_failure(results) is None
    assert all(r.max_abs < 1e-5 for r in results)


def test_first_divergence_names_the_layer_module_and_op(tiny_none_artifact: Path) -> None:
    """Nudge one weight of layer 1's light fc_out in the graph: that module is the first to diverge."""
    parts = _inputs(tiny_none_artifact)
    model = ir.load(tiny_none_artifact / "model.onnx")
    node = next(n for n in model.graph if n.name.startswith("ffsplit/L1/light/") and n.op_type == "MatMul"
                and "fc_out" in n.metadata_props.get("pkg.torch.onnx.name_scopes", ""))
    w = node.inputs[1]
    w.const_value = ir.tensor(w.const_value.numpy() * np.float32(1.05), name=w.name)
    results = _compare(*parts, model)
    bad = first_failure(results)
    assert bad is not None
    assert (bad.layer, bad.module, bad.op_type, bad.node) == (1, "encoder.layer.1.intermediate.light.fc_out", "MatMul", node.name)
    # everything before it is still within tolerance: layer 0 whole, layer 1's heavy branch
    assert all(r.passed for r in results if r.layer == 0 or ".heavy" in r.module)


def test_debug_verb_and_check_per_layer(tiny_none_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_cli import run_main

    r = run_main(capsys, "debug", str(tiny_none_artifact), "--batch", "4", "--json", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stderr
    assert "all 18 FFN module outputs within tolerance" in r.stdout
    rows = json.loads((tmp_path / "d.json").read_text())
    assert len(rows) == 18 and {row["layer"] for row in rows} == {0, 1}
    r = run_main(capsys, "debug", str(tiny_none_artifact), "--tolerance", "1e-12")
    assert r.returncode == 1 and "first divergence at layer 0" in r.stderr and "Traceback" not in r.stderr
    r = run_main(capsys, "check", str(tiny_none_artifact), "--per-layer", "--eval-size", "24")
    assert r.returncode == 0, r.stderr
    assert "FFN module outputs within tolerance" in r.stdout
