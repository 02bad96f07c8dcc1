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
from ffsplit.split.compress import LightRecipe, activation_error, lowrank_factors, parse_light
from ffsplit.split.profile import profile_model


@pytest.mark.parametrize(
    ("spec", "want"),
    [("none", LightRecipe("none")), ("lowrank:128", LightRecipe("lowrank", 128)), (" LowRank:4 ", LightRecipe("lowrank", 4))],
)
def test_parse_light(spec: str, want: LightRecipe) -> None:
    assert parse_light(spec) == want


@pytest.mark.parametrize("spec", ["lowrank", "lowrank:0", "lowrank:-3", "lowrank:x", "svd:4", ""])
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
