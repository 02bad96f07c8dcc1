"""QuantizeOtherMatMulsPass: untagged weight multiplies go int8 through ONNX Runtime's quantiser, the branches never."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from ffsplit.graph_passes.precision import realized_precision
from ffsplit.graph_passes.quantize_other_matmuls_pass import QuantizeOtherMatMulsPass
from tests.graph_passes.ffn_graphs import D_MODEL, check, ffn_model, inputs, run, weights


def _with_projections() -> ir.Model:
    """Two untagged projections of the same input (as attention's Q and K) in front of the FFN."""
    proto = ffn_model(weights())
    rng = np.random.default_rng(3)
    for name in ("w_q", "w_k"):
        w = rng.standard_normal((D_MODEL, D_MODEL)).astype(np.float32) * 0.2
        proto.graph.initializer.append(numpy_helper.from_array(w, name))
    nodes = list(proto.graph.node)
    for n in nodes:
        n.input[:] = ["x_proj" if i == "x" else i for i in n.input]
    nodes[:0] = [
        onnx.helper.make_node("MatMul", ["x", "w_q"], ["q"], name="node_q_proj"),
        onnx.helper.make_node("MatMul", ["x", "w_k"], ["k"], name="node_k_proj"),
        onnx.helper.make_node("Add", ["q", "k"], ["x_proj"], name="node_qk"),
    ]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return ir.from_proto(onnx.shape_inference.infer_shapes(proto))


def test_only_the_untagged_multiplies_are_quantised() -> None:
    model = _with_projections()
    before = run(model, inputs())
    qpass = QuantizeOtherMatMulsPass(reduce_range=True)
    result = qpass(model)
    assert result.modified is True and qpass.quantized == ["node_k_proj", "node_q_proj"]
    out = result.model
    check(out)
    ops = [(n.name, n.op_type, realized_precision(n)) for n in out.graph if "MatMul" in n.op_type]
    assert sorted(op for name, op, _ in ops if not name.startswith("ffsplit/")) == ["MatMulInteger", "MatMulInteger"]
    assert all(p == "int8" for name, _, p in ops if not name.startswith("ffsplit/"))
    assert sorted((op, p) for name, op, p in ops if name.startswith("ffsplit/")) == [("MatMul", "fp32")] * 4
    # one quantisation of the shared input feeds both multiplies
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in out.graph) == 1
    # reduce_range: weights within +-64, which no x86 kernel can saturate
    ints = [v.const_value.numpy() for v in out.graph.initializers.values() if v.dtype == ir.DataType.INT8]
    assert ints and max(int(np.abs(a).max()) for a in ints) <= 64
    after = run(out, inputs())
    cos = float((before * after).sum() / np.linalg.norm(before) / np.linalg.norm(after))
    assert 0.99 < cos < 1.0
    assert QuantizeOtherMatMulsPass()(out).modified is False  # nothing left to do


def test_a_model_without_untagged_multiplies_is_unchanged() -> None:
    model = ir.from_proto(ffn_model(weights()))
    assert QuantizeOtherMatMulsPass()(model).modified is False
