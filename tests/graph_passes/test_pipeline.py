"""run_passes: passes composed by onnx_ir's PassManager, each recorded, and any failure named as a bug."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

from ffsplit.graph_passes.pipeline import PassFailed, generic_passes, run_passes
from ffsplit.manifest import GraphPass


def _graph() -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.node("Relu", [x], name="relu")
    node.outputs[0].name, node.outputs[0].type, node.outputs[0].shape = "y", ir.TensorType(ir.DataType.FLOAT), ir.Shape([2])
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 18})
    return ir.Model(graph, ir_version=10)


class RenamePass(InPlacePass):
    def call(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            node.name = "renamed"
        return PassResult(model, modified=True)


class NothingPass(InPlacePass):
    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, modified=False)


class BrokenPass(InPlacePass):
    def call(self, model: ir.Model) -> PassResult:
        raise ValueError("a bug inside the pass")


class BrokenContractPass(InPlacePass):
    def call(self, model: ir.Model) -> PassResult:
        return PassResult(model, modified=False)

    def ensures(self, model: ir.Model) -> None:
        raise PostconditionError("the promise was not kept")


def test_passes_run_in_order_and_report_honestly() -> None:
    model, done = run_passes(_graph(), [NothingPass(), RenamePass()])
    assert done == [GraphPass(name="NothingPass", modified=False), GraphPass(name="RenamePass", modified=True)]
    assert [n.name for n in model.graph] == ["renamed"]


@pytest.mark.parametrize(("bad", "says"), [
    (BrokenPass(), "BrokenPass failed (after RenamePass): ValueError: a bug inside the pass"),
    (BrokenContractPass(), "BrokenContractPass failed its contract (after RenamePass): PostconditionError"),
])
def test_a_failing_pass_is_named_with_the_passes_before_it(bad: InPlacePass, says: str) -> None:
    with pytest.raises(PassFailed, match=r"^" + says.replace("(", r"\(").replace(")", r"\)")) as err:
        run_passes(_graph(), [RenamePass(), bad, NothingPass()])
    assert err.value.__cause__ is not None  # the pass's own error stays attached for the report


def test_generic_passes_are_one_list() -> None:
    """Export, the bench baseline and the benchmarks all take this list: cleanup and NaN guards, plus fusions."""
    assert [type(p).__name__ for p in generic_passes()] == ["CleanupGraphPass", "RemoveSoftmaxNanGuardPass", "StripTracesPass"]
    assert [type(p).__name__ for p in generic_passes(fusions="ort")][-1] == "FuseGraphPass"


class UntagLightPass(InPlacePass):
    """A stand-in for a buggy rewrite: the light branch's input projection loses its tag (as a fusion that
    rebuilt the node without it would)."""

    def call(self, model: ir.Model) -> PassResult:
        for node in model.graph:
            if node.name == "ffsplit/L0/light/fc_in":
                node.name = "fused_matmul"
        return PassResult(model, modified=True)


def test_an_export_checks_separation_on_its_own_graph() -> None:
    """target_passes ends with CheckBranchSeparationPass: a pass that loses a branch multiply is a bug named
    at export, before any runtime sees the graph."""
    from ffsplit.graph_passes import CheckBranchSeparationPass
    from ffsplit.graph_passes.pipeline import target_passes
    from tests.graph_passes.ffn_graphs import ffn_model, weights

    expected = {0: {"heavy": 2, "light": 2}}
    passes = target_passes(split_modules={"ffn": 0}, prefix="m", grids={}, int8_form="weight-only",
                           int4_form="matmulnbits", heavy_precision="fp32", expected=expected)
    assert isinstance(passes[-1], CheckBranchSeparationPass)
    assert not isinstance(target_passes(split_modules={"ffn": 0}, prefix="m", grids={}, int8_form="weight-only",
                                        int4_form="matmulnbits", heavy_precision="fp32")[-1], CheckBranchSeparationPass)
    check = CheckBranchSeparationPass(expected=expected, precisions={0: {"heavy": "fp32", "light": "fp32"}})
    model, done = run_passes(ir.from_proto(ffn_model(weights())), [check])
    assert done == [GraphPass(name="CheckBranchSeparationPass", modified=False)]
    with pytest.raises(PassFailed, match=r"CheckBranchSeparationPass failed \(after UntagLightPass\).*"
                                         r"1 light matmul nodes, expected 2"):
        run_passes(ir.from_proto(ffn_model(weights())), [UntagLightPass(), CheckBranchSeparationPass(expected=expected)])
