"""StripTracesPass: the exporter's stack traces and FX dumps go, module paths stay; values unchanged."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import torch

from ffsplit.graph_passes.strip_traces_pass import DROPPED_KEYS, StripTracesPass
from tests.graph_passes.ffn_graphs import check, exported_mlp, run


def test_traces_go_module_paths_stay_and_values_do_not_change() -> None:
    model = exported_mlp(torch.randn(2, 8))
    assert any(key in n.metadata_props for n in model.graph for key in DROPPED_KEYS)  # what there is to strip
    scopes = {n.name: n.metadata_props.get("pkg.torch.onnx.name_scopes") for n in model.graph}
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    before = run(model, x)
    result = StripTracesPass()(model)
    assert result.modified and not StripTracesPass()(result.model).modified  # an honest flag, both ways
    assert not any(key in n.metadata_props for n in result.model.graph for key in DROPPED_KEYS)
    assert {n.name: n.metadata_props.get("pkg.torch.onnx.name_scopes") for n in result.model.graph} == scopes
    check(result.model)
    np.testing.assert_array_equal(run(result.model, x), before)


def test_an_artifact_holds_no_path_of_the_exporting_machine(tiny_none_artifact: Path) -> None:
    raw = (tiny_none_artifact / "model.onnx").read_bytes()
    for here in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], str(Path(torch.__file__).parent)}:
        assert here.encode() not in raw, here
