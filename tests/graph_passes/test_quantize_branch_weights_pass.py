"""QuantizeBranchWeightsPass: integers stored, the right node found, values kept (or bounded for dynamic)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx_ir.passes import PostconditionError, PreconditionError

from ffsplit.graph_passes import MATMUL_OPS
from ffsplit.graph_passes.precision import realized_precision
from ffsplit.graph_passes.quantize_branch_weights_pass import QuantizeBranchWeightsPass, matmulnbits_block_ok
from tests.graph_passes.ffn_graphs import check, ffn_model, grids, inputs, quantized, run, weights

EXACT = {"session.qdq_matmulnbits_accuracy_level": "0"}


def _ops(model: ir.Model, branch: str) -> list[str]:
    return [n.op_type for n in model.graph if f"/{branch}/" in (n.name or "")]


@pytest.mark.parametrize("how", ["int8", "int4:16", "int4:32:asym"])
def test_weight_grids_are_stored_exactly(how: str) -> None:
    ws = weights()
    qs = quantized(ws, "light", how)
    before = ffn_model(ws)
    model = ir.from_proto(before)
    qpass = QuantizeBranchWeightsPass(grids=grids(qs), int8_form="weight-only")
    assert qpass(model).modified is True
    check(model)
    x = inputs()
    # The runtime multiplies by exactly the values split torch used.
    np.testing.assert_allclose(run(model, x, **EXACT), run(before, x), rtol=1e-5, atol=2e-6)
    light = [n for n in model.graph if n.name.startswith("ffsplit/L0/light/fc") and n.op_type in MATMUL_OPS]
    bits = "int8" if how == "int8" else "int4"
    assert [realized_precision(n) for n in light] == [bits, bits]
    assert all(realized_precision(n) == "fp32" for n in model.graph if n.name.startswith("ffsplit/L0/heavy/fc"))
    assert len(light) == 2
    # No fp32 copy of a quantised weight is left behind.
    assert "w_light_fc_in" not in model.graph.initializers and "w_light_fc_out" not in model.graph.initializers
    assert set(qpass.replaced) == {"light.fc_in", "light.fc_out"}
    if how.startswith("int4"):
        assert _ops(model, "light") == ["MatMulNBits", "Gelu", "MatMulNBits"]
        assert model.opset_imports["com.microsoft"] == 1


def test_int4_storage_is_a_quarter_of_fp32() -> None:
    ws = weights()
    qs = quantized(ws, "light", "int4:32")
    model = ir.from_proto(ffn_model(ws))
    QuantizeBranchWeightsPass(grids=grids(qs))(model)
    packed = sum(v.const_value.nbytes for k, v in model.graph.initializers.items() if "light" in k and k.endswith(".q4"))
    # two values a byte, the input dimension padded up to whole blocks of 32
    assert packed == sum(w.shape[0] * -(-w.shape[1] // 32) * 32 // 2 for k, w in ws.items() if k.startswith("light"))


def _dynamic_u8(a: np.ndarray) -> np.ndarray:
    """What DynamicQuantizeLinear does to an activation: u8 per tensor, the range widened to hold 0."""
    lo, hi = min(float(a.min()), 0.0), max(float(a.max()), 0.0)
    scale = np.float32((hi - lo) / 255.0)
    zp = np.clip(np.round(-lo / scale), 0, 255)
    return ((np.clip(np.round(a / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)


def test_dynamic_int8_computes_exactly_what_it_rounds_to() -> None:
    """With the reduced weight range (|q| <= 64) ONNX Runtime's u8 x s8 kernels cannot saturate on any x86
    CPU, so the runtime's result is the rounded activation times the grid, to fp32 rounding. Full-range
    weights break this on CPUs without VNNI (AVX2's vpmaddubsw adds two products into int16)."""
    ws = weights()
    qs = quantized(ws, "light", "int8", qmax=64)
    assert max(int(q.q.abs().max()) for q in qs.values()) == 64
    before = ffn_model(ws)
    model = ir.from_proto(before)
    QuantizeBranchWeightsPass(grids=grids(qs), int8_form="dynamic")(model)
    check(model)
    assert _ops(model, "light") == ["DynamicQuantizeMatMul", "Gelu", "DynamicQuantizeMatMul"]
    x = inputs()
    got = run(model, x)
    gelu = torch.nn.functional.gelu

    def branch(name: str, quant: bool) -> np.ndarray:
        q = _dynamic_u8 if quant else (lambda a: a)
        h = q(x) @ ws[f"{name}.fc_in"].T
        a = gelu(torch.from_numpy(h)).numpy()
        return q(a) @ ws[f"{name}.fc_out"].T

    expect = branch("heavy", False) + branch("light", True)
    np.testing.assert_allclose(got, expect, rtol=0, atol=2e-5 * float(np.abs(expect).max()))
    assert not np.array_equal(run(before, x), got)  # activations were rounded: not the fp32 result


def test_heavy_branch_int8_too() -> None:
    ws = weights()
    qs = {**quantized(ws, "heavy", "int8"), **quantized(ws, "light", "int4:16")}
    model = ir.from_proto(ffn_model(ws))
    QuantizeBranchWeightsPass(grids=grids(qs))(model)
    got = {n.name: realized_precision(n) for n in model.graph if n.op_type in MATMUL_OPS}
    assert got == {
        "ffsplit/L0/heavy/fc_in": "int8", "ffsplit/L0/heavy/fc_out": "int8",
        "ffsplit/L0/light/fc_in": "int4", "ffsplit/L0/light/fc_out": "int4",
    }


def test_no_grids_is_not_a_modification() -> None:
    model = ir.from_proto(ffn_model(weights()))
    assert QuantizeBranchWeightsPass(grids={})(model).modified is False


def test_a_grid_that_is_not_in_the_graph_fails_loudly() -> None:
    ws = weights()
    qs = quantized(dict(ws), "light", "int8")  # the graph keeps the unquantised weights
    with pytest.raises(PostconditionError, match=r"light\.fc_in, light\.fc_out"):
        QuantizeBranchWeightsPass(grids=grids(qs))(ir.from_proto(ffn_model(ws)))


def test_untagged_graph_and_bad_block_are_refused() -> None:
    ws = weights()
    qs = quantized(ws, "light", "int4:8")
    with pytest.raises(PreconditionError, match="not a power of two"):
        QuantizeBranchWeightsPass(grids=grids(qs))(ir.from_proto(ffn_model(ws)))
    qs = quantized(ws, "light", "int8")
    proto = ffn_model(ws)
    for node in proto.graph.node:
        node.name = node.op_type
    with pytest.raises(PreconditionError, match="TagBranchesPass"):
        QuantizeBranchWeightsPass(grids=grids(qs))(ir.from_proto(proto))


@pytest.mark.parametrize(("block", "ok"), [(8, False), (16, True), (24, False), (32, True), (128, True), (None, False)])
def test_matmulnbits_blocks(block: int | None, ok: bool) -> None:
    assert matmulnbits_block_ok(block) is ok


def test_qdq_form_quantises_input_and_weight() -> None:
    ws = weights()
    qs = quantized(ws, "light", "int8")
    before = ffn_model(ws)
    x = inputs()
    # the inputs' |max| as calibration would see it: fc_in reads x, fc_out the light activations
    light_act = run(before, x)  # only for a scale; any positive bound works for the structure checks
    absmax = {"light.fc_in": float(np.abs(x).max()), "light.fc_out": float(np.abs(light_act).max()) + 1.0}
    model = ir.from_proto(before)
    QuantizeBranchWeightsPass(grids=grids(qs), int8_form="qdq", act_absmax=absmax)(model)
    check(model)
    light = [n.op_type for n in model.graph if "/light/" in (n.name or "")]
    assert light.count("QuantizeLinear") == 2 and light.count("DequantizeLinear") == 4
    assert all(realized_precision(n) == "int8" for n in model.graph if n.op_type == "MatMul" and "/light/" in n.name)
    got, ref = run(model, x, **EXACT), run(before, x)
    cos = float((ref * got).sum() / np.linalg.norm(ref) / np.linalg.norm(got))
    assert 0.99 < cos < 1.0  # the activations are on an 8-bit grid now


def test_qdq_form_needs_calibrated_ranges() -> None:
    ws = weights()
    qs = quantized(ws, "light", "int8")
    with pytest.raises(PreconditionError, match="act_absmax"):
        QuantizeBranchWeightsPass(grids=grids(qs), int8_form="qdq")(ir.from_proto(ffn_model(ws)))


def test_smoothed_grid_gets_its_input_scaled() -> None:
    import torch

    from ffsplit.split.compress import smooth_int8

    ws = weights()
    absmax = torch.linspace(0.1, 8.0, ws["light.fc_in"].shape[1])  # one channel with large activations
    qw = smooth_int8(torch.from_numpy(ws["light.fc_in"]), absmax)
    ws["light.fc_in"] = qw.weight.numpy()
    before = ffn_model(ws)
    model = ir.from_proto(before)
    QuantizeBranchWeightsPass(grids=grids({"light.fc_in": qw}), int8_form="weight-only")(model)
    check(model)
    mul = next(n for n in model.graph if n.op_type == "Mul")
    assert mul.name.endswith("/smooth_input") and mul.name.startswith("ffsplit/L0/light/")
    x = inputs()
    np.testing.assert_allclose(run(model, x, **EXACT), run(before, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("level", [0, 4])
def test_int8_as_matmulnbits_holds_the_per_channel_grid(level: int) -> None:
    """cpu-int4's heavy hitters: the per-channel int8 grid in an 8-bit MatMulNBits (blocks of 32 sharing
    their row's scale, padded to whole blocks), exactly the grid at accuracy level 0; per neuron beside the
    int4 light branch."""
    ws = weights()
    qs = {**quantized(ws, "heavy", "int8"), **quantized(ws, "light", "int4:16")}
    before = ffn_model(ws)
    model = ir.from_proto(before)
    QuantizeBranchWeightsPass(grids=grids(qs), int8_form="matmulnbits", matmulnbits_accuracy_level=level)(model)
    check(model)
    nbits = {n.name: n for n in model.graph if n.op_type == "MatMulNBits"}
    assert {name: realized_precision(n) for name, n in nbits.items()} == {
        "ffsplit/L0/heavy/fc_in": "int8", "ffsplit/L0/heavy/fc_out": "int8",
        "ffsplit/L0/light/fc_in": "int4", "ffsplit/L0/light/fc_out": "int4",
    }
    assert {n.attributes.get_int("accuracy_level", 0) for n in nbits.values()} == {level}
    x = inputs()
    got, want = run(model, x, **EXACT), run(before, x)
    if level == 0:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
    else:  # int8 activations: close, not equal
        assert float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)) > 0.99
