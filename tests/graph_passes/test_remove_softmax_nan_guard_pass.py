"""RemoveSoftmaxNanGuardPass: the guard goes when the mask is finite, stays when it is -inf; values unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from ffsplit.graph_passes.remove_softmax_nan_guard_pass import RemoveSoftmaxNanGuardPass
from tests.graph_passes.ffn_graphs import check


def _attention_probs(mask_value: float) -> onnx.ModelProto:
    """scores + Where(keep, 0, mask_value) -> Softmax -> Where(IsNaN(p), 0, p), as transformers exports it."""
    nodes = [
        helper.make_node("Where", ["keep", "zero", "masked"], ["bias"], name="mask"),
        helper.make_node("Add", ["scores", "bias"], ["logits"], name="add_mask"),
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1, name="softmax"),
        helper.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
        helper.make_node("Where", ["nan", "zero", "p"], ["probs"], name="guard"),
    ]
    graph = helper.make_graph(
        nodes, "attn",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 4, 4]),
         helper.make_tensor_value_info("keep", TensorProto.BOOL, [2, 1, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [2, 4, 4])],
        initializer=[numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                     numpy_helper.from_array(np.array(mask_value, np.float32), "masked")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    return onnx.shape_inference.infer_shapes(model)


def _run(model: onnx.ModelProto | ir.Model) -> np.ndarray:
    import onnxruntime as ort

    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    rng = np.random.default_rng(0)
    keep = np.array([[[True, True, True, False]], [[True, False, False, False]]])
    feed = {"scores": rng.standard_normal((2, 4, 4)).astype(np.float32), "keep": keep}
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_guard_removed_when_the_mask_is_finite() -> None:
    before = _attention_probs(float(np.finfo(np.float32).min))
    model = ir.from_proto(before)
    rpass = RemoveSoftmaxNanGuardPass()
    assert rpass(model).modified is True and rpass.removed == 1
    check(model)
    assert [n.op_type for n in model.graph] == ["Where", "Add", "Softmax"]
    np.testing.assert_array_equal(_run(model), _run(before))


@pytest.mark.parametrize("mask_value", [-np.inf, np.nan])
def test_guard_kept_when_the_mask_can_make_nan(mask_value: float) -> None:
    model = ir.from_proto(_attention_probs(mask_value))
    assert RemoveSoftmaxNanGuardPass()(model).modified is False
    assert [n.op_type for n in model.graph].count("IsNaN") == 1
