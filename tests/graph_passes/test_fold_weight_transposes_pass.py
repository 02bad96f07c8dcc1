"""FoldWeightTransposesPass: each Transpose of a weight becomes a lazily computed transposed initializer."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx_ir.passes import PostconditionError

from ffsplit.graph_passes.fold_weight_transposes_pass import FoldWeightTransposesPass
from tests.graph_passes.ffn_graphs import check, exported_mlp, run


def test_transposes_fold_lazily_and_values_do_not_change() -> None:
    model = exported_mlp(torch.randn(2, 3, 8), optimize=False)
    transposes = sum(n.op_type == "Transpose" for n in model.graph)
    assert transposes == 2  # what there is to fold
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    before = run(model, x)
    result = FoldWeightTransposesPass()(model)
    assert result.modified and not FoldWeightTransposesPass()(result.model).modified  # an honest flag, both ways
    assert not any(n.op_type == "Transpose" for n in result.model.graph)
    lazy = [v for v in result.model.graph.initializers.values() if isinstance(v.const_value, ir.LazyTensor)]
    assert len(lazy) == transposes  # computed only when read
    np.testing.assert_array_equal(run(result.model, x), before)
    check(result.model)


def test_a_weight_used_elsewhere_stays_and_a_transpose_of_an_input_is_left() -> None:
    w = ir.Value(name="w", shape=ir.Shape([3, 4]), type=ir.TensorType(ir.DataType.FLOAT),
                 const_value=ir.tensor(np.arange(12, dtype=np.float32).reshape(3, 4)))
    x = ir.Value(name="x", shape=ir.Shape([4, 3]), type=ir.TensorType(ir.DataType.FLOAT))
    t = ir.node("Transpose", [w], attributes={"perm": [1, 0]})  # (4, 3)
    t.outputs[0].type, t.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([4, 3])
    uses_t = ir.node("Add", [x, t.outputs[0]])
    uses_w = ir.node("MatMul", [x, w])  # (4, 4)
    xt = ir.node("Transpose", [x], attributes={"perm": [1, 0]})
    graph = ir.Graph([x], [uses_t.outputs[0], uses_w.outputs[0], xt.outputs[0]], nodes=[t, uses_t, uses_w, xt],
                     initializers=[w], opset_imports={"": 18}, name="g")
    for i, (out, shape) in enumerate(zip(graph.outputs, ([4, 3], [4, 4], [3, 4]), strict=True)):
        out.name, out.type, out.shape = f"out{i}", ir.TensorType(ir.DataType.FLOAT), ir.Shape(shape)
    model = ir.Model(graph, ir_version=10)
    feed = np.ones((4, 3), dtype=np.float32)
    before = run(model, feed)
    assert FoldWeightTransposesPass()(model).modified
    assert "w" in model.graph.initializers  # the MatMul still reads it
    assert [n.op_type for n in model.graph] == ["Add", "MatMul", "Transpose"]  # the input's Transpose stays
    np.testing.assert_array_equal(run(model, feed), before)
    check(model)


def test_ensures_catches_a_transpose_left() -> None:
    model = exported_mlp(torch.randn(2, 3, 8), optimize=False)
    with pytest.raises(PostconditionError, match="left unfolded"):
        FoldWeightTransposesPass().ensures(model)
