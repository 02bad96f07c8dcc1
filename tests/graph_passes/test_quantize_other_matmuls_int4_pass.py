"""QuantizeOtherMatMulsInt4Pass: untagged weight multiplies become MatMulNBits on the light branch's int4 grid,
computing exactly what that grid dequantises to; the branches are never touched."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from ffsplit.graph_passes.precision import realized_precision
from ffsplit.graph_passes.quantize_other_matmuls_int4_pass import QuantizeOtherMatMulsInt4Pass
from ffsplit.split.compress import quantize_int4
from tests.graph_passes.ffn_graphs import check, inputs, run
from tests.graph_passes.test_quantize_other_matmuls_pass import _with_projections


def _dequantised(model: ir.Model, name: str) -> np.ndarray:
    w = model.graph.initializers[name].const_value.numpy()
    return quantize_int4(torch.from_numpy(w).T, 32, True).weight.T.numpy()


@pytest.mark.parametrize("level", [0, 4])
def test_untagged_multiplies_become_int4_on_the_grid(level: int) -> None:
    model = _with_projections()
    reference = _with_projections()  # the same graph with each projection's weight replaced by its int4 grid
    for name in ("w_q", "w_k"):
        reference.graph.initializers[name].const_value = ir.tensor(_dequantised(reference, name), name=name)
    qpass = QuantizeOtherMatMulsInt4Pass(block=32, accuracy_level=level)
    result = qpass(model)
    assert result.modified is True and sorted(qpass.quantized) == ["node_k_proj", "node_q_proj"]
    out = result.model
    check(out)
    ops = {n.name: (n.op_type, realized_precision(n)) for n in out.graph if "MatMul" in n.op_type}
    assert ops["node_q_proj"] == ops["node_k_proj"] == ("MatMulNBits", "int4")
    assert sorted(v for k, v in ops.items() if k.startswith("ffsplit/")) == [("MatMul", "fp32")] * 4
    levels = {n.attributes.get_int("accuracy_level", 0) for n in out.graph if n.op_type == "MatMulNBits"}
    assert levels == {level}
    assert not {"w_q", "w_k"} & set(out.graph.initializers)  # the fp32 weights are gone, not kept beside
    got, want = run(out, inputs()), run(reference, inputs())
    if level == 0:  # fp32 arithmetic: the grid's own values
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    else:  # int8 activations: close to the grid, not equal
        cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        assert cos > 0.99 and not np.allclose(got, want, atol=1e-6)
    assert QuantizeOtherMatMulsInt4Pass()(out).modified is False  # nothing left to do


def test_a_weight_shared_by_two_multiplies_stays_fp32() -> None:
    model = _with_projections()
    k = next(n for n in model.graph if n.name == "node_k_proj")
    k.replace_input_with(1, model.graph.initializers["w_q"])
    qpass = QuantizeOtherMatMulsInt4Pass()
    assert qpass(model).modified is False and qpass.quantized == []


def test_the_block_must_suit_matmulnbits() -> None:
    with pytest.raises(ValueError, match="power of two"):
        QuantizeOtherMatMulsInt4Pass(block=24)
