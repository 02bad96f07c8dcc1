"""StoreWeightsHalfPass: multiply and embedding weights stored 16-bit with a Cast back, everything else
untouched; the outputs are bit for bit the fp32 graph's when the weights came from that type."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffsplit.graph_passes.store_weights_half_pass import StoreWeightsHalfPass
from tests.graph_passes.ffn_graphs import check

HALF = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16}


def _graph(half: type) -> onnx.ModelProto:
    """Gather(table, ids) -> MatMul(W) -> Add(bias) -> MatMul(W2); W2 also feeds an Add (not a weight use)."""
    rng = np.random.default_rng(0)

    def weight(*shape: int) -> np.ndarray:  # values the 16-bit type holds exactly, as a stored model's are
        return rng.standard_normal(shape).astype(half).astype(np.float32)

    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "w"], ["a"], name="proj"),
        helper.make_node("Add", ["a", "bias"], ["b"], name="bias_add"),
        helper.make_node("MatMul", ["b", "w2"], ["c"], name="proj2"),
        helper.make_node("MatMul", ["c", "w3"], ["d"], name="proj3"),
        helper.make_node("Add", ["d", "w3_row"], ["y"], name="out"),
    ]
    inits = {"table": weight(128, 64), "w": weight(64, 96), "bias": weight(96), "w2": weight(96, 64),
             "w3": weight(64, 64), "w3_row": weight(1, 64)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 64])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return model


def _run(model: onnx.ModelProto | ir.Model) -> np.ndarray:
    import onnxruntime as ort

    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    ids = np.arange(10, dtype=np.int64).reshape(2, 5) * 7
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_weights_stored_half_and_cast_back(precision: str) -> None:
    before = _graph(HALF[precision])
    model = ir.from_proto(before)
    spass = StoreWeightsHalfPass(precision=precision, min_elements=6144)
    assert spass(model).modified is True
    check(model)
    # the embedding table and the multiplies' weights of at least 6,144 values: not w3 (64 x 64), the bias
    # or the row added at the end
    assert sorted(spass.stored) == ["table", "w", "w2"]
    dtype = {"bf16": ir.DataType.BFLOAT16, "fp16": ir.DataType.FLOAT16}[precision]
    inits = {name: v.dtype for name, v in model.graph.initializers.items()}
    assert inits == {"table." + precision: dtype, "w." + precision: dtype, "w2." + precision: dtype,
                     "bias": ir.DataType.FLOAT, "w3": ir.DataType.FLOAT, "w3_row": ir.DataType.FLOAT}
    casts = [n for n in model.graph if n.op_type == "Cast"]
    assert len(casts) == 3 and all(n.outputs[0].name in ("table", "w", "w2") for n in casts)
    np.testing.assert_array_equal(_run(model), _run(before))  # exact: the weights came from that type


def test_a_weight_used_otherwise_stays_fp32() -> None:
    """w3 feeds a MatMul and (here) a Transpose too: stored 16-bit it would change the Transpose's type."""
    proto = _graph(ml_dtypes.bfloat16)
    proto.graph.node.extend([helper.make_node("Transpose", ["w3"], ["w3t"], name="t"),
                             helper.make_node("MatMul", ["y", "w3t"], ["z"], name="proj4")])
    proto.graph.output[0].name = "z"
    model = ir.from_proto(proto)
    spass = StoreWeightsHalfPass(precision="bf16", min_elements=64 * 64)
    spass(model)
    assert "w3" not in spass.stored and model.graph.initializers["w3"].dtype == ir.DataType.FLOAT
    check(model)


def test_a_weight_the_half_type_cannot_hold_stays_fp32() -> None:
    """A constant computed in fp32 (here w2 nudged off the bf16 grid) keeps its exact values."""
    proto = _graph(ml_dtypes.bfloat16)
    w2 = next(i for i in proto.graph.initializer if i.name == "w2")
    w2.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w2) * np.float32(1 + 2**-12), "w2"))
    before = _run(proto)
    model = ir.from_proto(proto)
    spass = StoreWeightsHalfPass(precision="bf16")
    spass(model)
    assert spass.inexact == ["w2"] and "w2" not in spass.stored and "w" in spass.stored
    np.testing.assert_array_equal(_run(model), before)


def test_nothing_to_store_is_no_change() -> None:
    model = ir.from_proto(_graph(ml_dtypes.bfloat16))
    assert StoreWeightsHalfPass(precision="bf16", min_elements=1 << 20)(model).modified is False
    with pytest.raises(ValueError, match="precision"):
        StoreWeightsHalfPass(precision="int8")
