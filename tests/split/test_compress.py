"""Compressors: low-rank error falls with rank; activation-aware SVD beats plain SVD on real activations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.split.adapters import find_adapter
from ffsplit.split.calibration import calibration_texts, evaluation_texts
from ffsplit.split.compress import (
    LightRecipe,
    Quantized,
    activation_error,
    heavy_weight,
    lowrank_factors,
    parse_light,
    quantize_int4,
    quantize_int8,
)
from ffsplit.split.profile import profile_model


@pytest.mark.parametrize(
    ("spec", "want"),
    [("none", LightRecipe()), ("lowrank:128", LightRecipe("lowrank", 128)), (" LowRank:4 ", LightRecipe("lowrank", 4)),
     ("int8", LightRecipe(quant="int8")), ("int4", LightRecipe(quant="int4")),
     ("int4:64:asym", LightRecipe(quant="int4", block=64, symmetric=False)),
     ("prune:0.5+int8", LightRecipe("prune", prune=0.5, quant="int8")),
     ("lowrank:64+int4:16", LightRecipe("lowrank", 64, quant="int4", block=16))],
)
def test_parse_light(spec: str, want: LightRecipe) -> None:
    assert parse_light(spec) == want
    assert parse_light(str(want)) == want  # the canonical name parses back


@pytest.mark.parametrize(
    "spec",
    ["lowrank", "lowrank:0", "lowrank:-3", "lowrank:x", "svd:4", "", "prune:1.5", "prune:0", "int8+int4",
     "lowrank:8+prune:0.5", "int4:7", "int4:32:odd", "int8:3", "none+int8"],
)
def test_parse_light_rejects(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_light(spec)


@pytest.fixture(scope="module")
def minilm_moments() -> dict:
    """Layer-2 light input weights of MiniLM with second moments from calibration and from held-out text."""
    loaded = load_model("minilm")
    adapter = find_adapter(loaded.model)
    calib = profile_model(loaded.model, adapter, loaded.tokenizer, calibration_texts(limit=64), progress=False)
    held_out = profile_model(
        loaded.model, adapter, loaded.tokenizer, [t.text for t in evaluation_texts(64)], progress=False
    )
    layer = adapter.layer_modules(loaded.model)[2]
    w = adapter.weights(layer)
    light = torch.argsort(calib[2].scores, descending=True)[152:]
    return {
        "w_in": w.w_in[light].double(),
        "w_out": w.w_out[:, light].double(),
        "calib_x": calib[2].input_moment,
        "held_x": held_out[2].input_moment,
        "calib_a": calib[2].act_moment[light][:, light],
        "held_a": held_out[2].act_moment[light][:, light],
    }


def _err(w: torch.Tensor, rank: int, fit: torch.Tensor | None, judge: torch.Tensor) -> float:
    down, up = lowrank_factors(w, rank, fit)
    return activation_error(w, up @ down, judge)


@pytest.mark.parametrize("which", ["in", "out"])
def test_activation_aware_beats_plain_svd_on_held_out_activations(minilm_moments: dict, which: str) -> None:
    m = minilm_moments
    w = m[f"w_{which}"]
    fit, judge = m[f"calib_{'x' if which == 'in' else 'a'}"], m[f"held_{'x' if which == 'in' else 'a'}"]
    for rank in (64, 128):
        aware, plain = _err(w, rank, fit, judge), _err(w, rank, None, judge)
        assert aware < 0.9 * plain, (rank, aware, plain)


def test_lowrank_error_falls_as_rank_grows(minilm_moments: dict) -> None:
    m = minilm_moments
    errors = [_err(m["w_in"], r, m["calib_x"], m["held_x"]) for r in (16, 32, 64, 128, 256)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    full = _err(m["w_in"], 384, m["calib_x"], m["calib_x"])
    assert full < 1e-6 * errors[0]


@settings(max_examples=20, deadline=None)
@given(out=st.integers(4, 20), inp=st.integers(4, 20), rank=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_activation_aware_never_loses_on_its_own_weighting(out: int, inp: int, rank: int, seed: int) -> None:
    """On the moment it is fitted to, the whitened SVD is optimal: never worse than plain truncation."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g, dtype=torch.float64)
    x = torch.randn(200, inp, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, inp, dtype=torch.float64)
    moment = x.T @ x / 200
    assert _err(w, rank, moment, moment) <= _err(w, rank, None, moment) * (1 + 1e-6) + 1e-9


def _w(seed: int, out: int = 48, n_in: int = 80) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, n_in, generator=g) * torch.linspace(0.1, 2.0, n_in)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_is_within_half_a_step_and_on_its_grid(seed: int) -> None:
    w = _w(seed)
    qw = quantize_int8(w)
    assert qw.q.dtype == torch.int8 and int(qw.q.abs().max()) <= 127
    assert (w - qw.weight).abs().max(dim=1).values.le(qw.scale / 2 * (1 + 1e-6)).all()
    torch.testing.assert_close(qw.weight, qw.q.float() * qw.scale[:, None], rtol=0, atol=0)
    assert qw.nbytes() == 48 * 80 + 4 * 48


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block", [16, 32])
def test_int4_blocks_are_within_half_a_step(symmetric: bool, block: int) -> None:
    w = _w(3)
    qw = quantize_int4(w, block, symmetric)
    lo, hi = (-8, 7) if symmetric else (0, 15)
    assert int(qw.q.min()) >= lo and int(qw.q.max()) <= hi
    blocks = -(-80 // block)
    assert qw.scale.shape == (48, blocks)
    step = qw.scale.repeat_interleave(block, dim=1)[:, :80]
    assert ((w - qw.weight).abs() <= step / 2 * (1 + 1e-5) + 1e-7).all()
    zp = 0 if qw.zero_point is None else qw.zero_point.float().repeat_interleave(block, dim=1)[:, :80]
    torch.testing.assert_close(qw.weight, (qw.q.float() - zp) * step, rtol=0, atol=0)


def test_quantisation_error_falls_with_bits_and_smaller_blocks() -> None:
    w = _w(4)

    def err(qw: Quantized) -> float:
        return float((w - qw.weight).norm())

    e8, e4_16, e4_64 = err(quantize_int8(w)), err(quantize_int4(w, 16)), err(quantize_int4(w, 64))
    assert e8 < e4_16 < e4_64


def test_quantisers_on_minilm_weights(minilm_moments: dict) -> None:
    """Measured relative errors on a real light weight; the bounds are these measurements rounded up."""
    w = minilm_moments["w_in"].float()
    rel = {name: float((w - q.weight).norm() / w.norm()) for name, q in (
        ("int8", quantize_int8(w)), ("int4", quantize_int4(w, 32)), ("int4-asym", quantize_int4(w, 32, False)))}
    assert rel["int8"] < 0.01 and rel["int4"] < 0.15 and rel["int4-asym"] < 0.15, rel
    assert rel["int8"] < rel["int4"]


def test_heavy_precisions() -> None:
    w = _w(5)
    assert heavy_weight(w, "fp32")[0] is w
    fp16, none = heavy_weight(w, "fp16")
    assert none is None and torch.equal(fp16, w.half().float())
    i8, qw = heavy_weight(w, "int8")
    assert qw is not None and torch.equal(i8, qw.weight)


def test_smoothing_keeps_the_product_and_helps_per_tensor_activation_rounding() -> None:
    """SmoothQuant-style smoothing: same product; less error when the activation is rounded per tensor."""
    from ffsplit.split.compress import quantize_int8, smooth_int8

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g) * 0.1
    x = torch.randn(256, 32, generator=g)
    x[:, 3] *= 40.0  # an outlier channel, as BERT's LayerNorm outputs have
    absmax = x.abs().amax(0)

    def per_tensor_int8(a: torch.Tensor) -> torch.Tensor:
        scale = a.abs().max() / 127
        return torch.round(a / scale).clamp(-127, 127) * scale

    plain = quantize_int8(w)
    smooth = smooth_int8(w, absmax)
    assert smooth.smooth is not None and smooth.q.dtype == torch.int8
    torch.testing.assert_close(smooth.weight * smooth.smooth, smooth.q.float() * smooth.scale[:, None])
    exact = x @ w.T
    err_plain = (per_tensor_int8(x) @ plain.weight.T - exact).norm()
    err_smooth = (per_tensor_int8(x / smooth.smooth) @ (smooth.weight * smooth.smooth).T - exact).norm()
    assert err_smooth < 0.5 * err_plain


@pytest.mark.parametrize("form", ["int4", "int4-ragged", "int4-asym", "int8", "int8-smooth"])
def test_a_grid_linear_computes_with_exactly_the_quantisers_weight(form: str) -> None:
    """GridLinear holds the codes and dequantises at each call: bit for bit the fp32 weight the quantiser gave
    (the graph pass finds the weight by those bytes)."""
    from ffsplit.split.compress import onnx_digest, quantize_int4, quantize_int8, smooth_int8
    from ffsplit.split.modules import GridLinear

    w = torch.randn(24, 100 if form == "int4-ragged" else 96, generator=torch.Generator().manual_seed(0))
    qw = {"int4": lambda: quantize_int4(w, 32), "int4-ragged": lambda: quantize_int4(w, 32),
          "int4-asym": lambda: quantize_int4(w, 32, symmetric=False), "int8": lambda: quantize_int8(w),
          "int8-smooth": lambda: smooth_int8(w, w.abs().amax(0) * 3, 0.5)}[form]()
    grid = GridLinear.from_quantized(qw, torch.ones(24))
    assert grid.weight.dtype == torch.int8
    assert onnx_digest(grid.dequantised()) == onnx_digest(qw.weight) == qw.held().digest
    x = torch.randn(3, w.shape[1])
    assert torch.equal(grid(x), torch.nn.functional.linear(x, qw.weight, torch.ones(24)))
