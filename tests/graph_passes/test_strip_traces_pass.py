"""StripTracesPass: the exporter's stack traces and FX dumps go, module paths stay; values unchanged."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from ffsplit.graph_passes.strip_traces_pass import DROPPED_KEYS, StripTracesPass
from tests.graph_passes.ffn_graphs import check


def _exported() -> ir.Model:
    """A small module through the dynamo exporter, which records a stack trace on every node."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).eval()
    program = torch.onnx.export(module, (torch.randn(2, 8),), dynamo=True, verbose=False)
    return ir.from_proto(ir.to_proto(program.model))


def _run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_traces_go_module_paths_stay_and_values_do_not_change() -> None:
    model = _exported()
    assert any(key in n.metadata_props for n in model.graph for key in DROPPED_KEYS)  # what there is to strip
    scopes = {n.name: n.metadata_props.get("pkg.torch.onnx.name_scopes") for n in model.graph}
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    before = _run(model, x)
    result = StripTracesPass()(model)
    assert result.modified and not StripTracesPass()(result.model).modified  # an honest flag, both ways
    assert not any(key in n.metadata_props for n in result.model.graph for key in DROPPED_KEYS)
    assert {n.name: n.metadata_props.get("pkg.torch.onnx.name_scopes") for n in result.model.graph} == scopes
    check(result.model)
    np.testing.assert_array_equal(_run(result.model, x), before)


def test_an_artifact_holds_no_path_of_the_exporting_machine(tiny_none_artifact: Path) -> None:
    raw = (tiny_none_artifact / "model.onnx").read_bytes()
    for here in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], str(Path(torch.__file__).parent)}:
        assert here.encode() not in raw, here
