"""run_passes: passes composed by onnx_ir's PassManager, each recorded, and any failure named as a bug."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

from ffsplit.graph_passes.pipeline import PassFailed, generic_passes, run_passes


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
    assert done == [{"pass": "NothingPass", "modified": False}, {"pass": "RenamePass", "modified": True}]
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
    assert [type(p).__name__ for p in generic_passes()] == ["CleanupGraphPass", "RemoveSoftmaxNanGuardPass"]
    assert [type(p).__name__ for p in generic_passes(fusions="ort")][-1] == "FuseGraphPass"
