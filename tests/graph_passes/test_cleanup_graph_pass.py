"""CleanupGraphPass: folds and removes what it should, keeps values and tags, never folds a DequantizeLinear."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import helper, numpy_helper

from ffsplit.graph_passes.cleanup_graph_pass import CleanupGraphPass
from ffsplit.graph_passes.quantize_branch_weights_pass import QuantizeBranchWeightsPass
from tests.graph_passes.ffn_graphs import check, ffn_model, grids, inputs, quantized, run, weights


def _with_foldable_and_dead_nodes() -> ir.Model:
    """The FFN, with its light fc_in weight behind a constant Transpose and an unused node."""
    proto = ffn_model(weights())
    init = next(i for i in proto.graph.initializer if i.name == "w_light_fc_in")
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w.T), "w_light_fc_in_t"))
    nodes = list(proto.graph.node)
    nodes.insert(0, helper.make_node("Transpose", ["w_light_fc_in_t"], ["w_light_fc_in"], perm=[1, 0], name="fold_me"))
    nodes.insert(0, helper.make_node("Neg", ["x"], ["unused"], name="dead"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return ir.from_proto(proto)


def test_folds_and_removes_and_keeps_values() -> None:
    model = _with_foldable_and_dead_nodes()
    before = run(model, inputs())
    assert CleanupGraphPass()(model).modified is True
    check(model)
    names = [n.name for n in model.graph]
    assert "fold_me" not in names and "dead" not in names
    assert [n for n in names if n.startswith("ffsplit/")] == [
        "ffsplit/L0/heavy/fc_in", "ffsplit/L0/heavy/act", "ffsplit/L0/heavy/fc_out",
        "ffsplit/L0/light/fc_in", "ffsplit/L0/light/act", "ffsplit/L0/light/fc_out", "ffsplit/L0/merge/add",
    ]
    np.testing.assert_array_equal(run(model, inputs()), before)


def test_clean_graph_is_not_modified() -> None:
    model = ir.from_proto(ffn_model(weights()))
    assert CleanupGraphPass()(model).modified is False


def test_dequantize_linear_is_never_folded() -> None:
    ws = weights()
    qs = quantized(ws, "light", "int8")
    model = ir.from_proto(ffn_model(ws))
    QuantizeBranchWeightsPass(grids=grids(qs), int8_form="weight-only")(model)
    CleanupGraphPass()(model)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph) == 2
    assert all(
        v.dtype == ir.DataType.INT8 for k, v in model.graph.initializers.items() if k.endswith(".q")
    )
