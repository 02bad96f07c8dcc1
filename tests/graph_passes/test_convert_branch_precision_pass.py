"""ConvertBranchPrecisionPass: only the chosen branch changes type, Casts only at its edges, values close."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from ffsplit.graph_passes import MATMUL_OPS
from ffsplit.graph_passes.convert_branch_precision_pass import ConvertBranchPrecisionPass
from ffsplit.graph_passes.precision import realized_precision
from tests.graph_passes.ffn_graphs import check, ffn_model, inputs, weights


def _reference(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(ir.to_proto(model)).run(None, {"x": x})[0]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_heavy_branch_converted(precision: str) -> None:
    before = ir.from_proto(ffn_model(weights()))
    model = ir.from_proto(ffn_model(weights()))
    cpass = ConvertBranchPrecisionPass(branch="heavy", precision=precision)
    assert cpass(model).modified is True
    check(model)
    dtype = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}[precision]
    assert model.graph.initializers["w_heavy_fc_in"].dtype == dtype
    assert model.graph.initializers["w_light_fc_in"].dtype == ir.DataType.FLOAT
    casts = [n for n in model.graph if n.op_type == "Cast"]
    # one down at the branch's input, one up at its output: nothing in between
    assert sorted(n.attributes["to"].as_int() for n in casts) == sorted([dtype, ir.DataType.FLOAT])
    assert all(n.name.startswith("ffsplit/L0/heavy/") for n in casts)
    realized = {n.name: realized_precision(n) for n in model.graph if n.op_type in MATMUL_OPS}
    assert realized == {
        "ffsplit/L0/heavy/fc_in": precision, "ffsplit/L0/heavy/fc_out": precision,
        "ffsplit/L0/light/fc_in": "fp32", "ffsplit/L0/light/fc_out": "fp32",
    }
    x = inputs()
    ref, got = _reference(before, x), _reference(model, x)
    assert got.dtype == np.float32
    tol = {"fp16": 5e-3, "bf16": 5e-2}[precision]
    assert np.abs(ref - got).max() < tol * np.abs(ref).max()
    assert not np.array_equal(ref, got)


def test_block_listed_ops_stay_fp32() -> None:
    """A LayerNormalization inside the branch keeps fp32, with Casts around it."""
    proto = ffn_model(weights())
    nodes = list(proto.graph.node)
    ln_scale = helper.make_tensor("ln_scale", TensorProto.FLOAT, [16], [1.0] * 16)
    proto.graph.initializer.append(ln_scale)
    # heavy_h -> LayerNormalization -> Gelu
    nodes.insert(1, helper.make_node("LayerNormalization", ["heavy_h", "ln_scale"], ["heavy_n"], name="ffsplit/L0/heavy/ln"))
    nodes[2].input[0] = "heavy_n"
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto)
    model = ir.from_proto(proto)
    ConvertBranchPrecisionPass(branch="heavy", precision="fp16")(model)
    check(model)
    ln = next(n for n in model.graph if n.op_type == "LayerNormalization")
    assert ln.inputs[0].dtype == ir.DataType.FLOAT and ln.inputs[1].dtype == ir.DataType.FLOAT
    assert ln.outputs[0].dtype == ir.DataType.FLOAT
    assert sum(n.op_type == "Cast" for n in model.graph) == 4  # down, up (into LN), down (out of LN), up
    x = inputs()
    ref = ReferenceEvaluator(proto).run(None, {"x": x})[0]
    got = _reference(model, x)
    assert np.abs(ref - got).max() < 5e-3 * np.abs(ref).max()


def test_other_layers_untouched_and_nothing_to_do() -> None:
    model = ir.from_proto(ffn_model(weights(), layer=3))
    assert ConvertBranchPrecisionPass(branch="heavy", precision="fp16", layers=[0])(model).modified is False
    assert all(v.dtype == ir.DataType.FLOAT for v in model.graph.initializers.values())


def test_unknown_precision_refused() -> None:
    with pytest.raises(ValueError, match="fp8"):
        ConvertBranchPrecisionPass(branch="heavy", precision="fp8")


def test_both_branches_converted_in_one_graph() -> None:
    """GPU targets convert the heavy and the light branch, which read the same FFN input: each pass's casts
    get names of their own (the graph stays SSA) and the result still computes the FFN."""
    before = ir.from_proto(ffn_model(weights()))
    model = ir.from_proto(ffn_model(weights()))
    for branch in ("heavy", "light"):
        assert ConvertBranchPrecisionPass(branch=branch, precision="fp16")(model).modified is True
    check(model)
    names = [v.name for n in model.graph for v in n.outputs]
    assert len(names) == len(set(names))
    realized = {n.name: realized_precision(n) for n in model.graph if n.op_type in MATMUL_OPS}
    assert set(realized.values()) == {"fp16"}
    x = inputs()
    ref, got = _reference(before, x), _reference(model, x)
    assert np.abs(ref - got).max() < 5e-3 * np.abs(ref).max()
