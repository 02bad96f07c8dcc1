"""QuantizeOtherMatMulsPass: untagged weight multiplies go int8, the branches are never touched."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import numpy_helper

from ffsplit.graph_passes.precision import realized_precision
from ffsplit.graph_passes.quantize_other_matmuls_pass import QuantizeOtherMatMulsPass, int8_columns
from tests.graph_passes.ffn_graphs import D_MODEL, check, ffn_model, inputs, run, weights


def _with_projection() -> ir.Model:
    """An untagged projection (as attention's) in front of the FFN."""
    import onnx

    proto = ffn_model(weights())
    w = np.random.default_rng(3).standard_normal((D_MODEL, D_MODEL)).astype(np.float32) * 0.2
    proto.graph.initializer.append(numpy_helper.from_array(w, "w_proj"))
    nodes = list(proto.graph.node)
    for n in nodes:
        n.input[:] = ["x_proj" if i == "x" else i for i in n.input]
    nodes.insert(0, onnx.helper.make_node("MatMul", ["x", "w_proj"], ["x_proj"], name="node_attention_proj"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def test_only_the_untagged_multiply_is_quantised() -> None:
    model = _with_projection()
    before = run(model, inputs())
    qpass = QuantizeOtherMatMulsPass(min_size=16)
    assert qpass(model).modified is True and qpass.quantized == ["node_attention_proj"]
    check(model)
    ops = {n.name: (n.op_type, realized_precision(n)) for n in model.graph if "MatMul" in n.op_type}
    assert ops["node_attention_proj"] == ("DynamicQuantizeMatMul", "int8")
    assert all(v == ("MatMul", "fp32") for k, v in ops.items() if k.startswith("ffsplit/"))
    after = run(model, inputs())
    cos = float((before * after).sum() / np.linalg.norm(before) / np.linalg.norm(after))
    assert 0.99 < cos < 1.0
    assert QuantizeOtherMatMulsPass(min_size=16)(model).modified is False  # nothing left to do


def test_small_weights_are_left_alone() -> None:
    model = _with_projection()
    assert QuantizeOtherMatMulsPass(min_size=D_MODEL * D_MODEL + 1)(model).modified is False


def test_int8_columns_grid() -> None:
    w = np.array([[0.5, -2.0], [-1.0, 1.0]], dtype=np.float32)
    q, scale = int8_columns(w)
    np.testing.assert_allclose(scale, [1.0 / 127, 2.0 / 127], rtol=1e-6)
    assert q.tolist() == [[64, -127], [-127, 64]]
