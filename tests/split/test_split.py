"""Profiling, heavy selection and SplitFFN: the split is exact under recipe none."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.split.adapters import find_adapter
from ffsplit.split.apply import heavy_count, split_layer, split_model, validate_recipe
from ffsplit.split.calibration import calibration_texts, encode_batches
from ffsplit.split.compress import LightRecipe, onnx_digest, parse_light
from ffsplit.split.ffn_adapter import FFNWeights
from ffsplit.split.modules import GridLinear, SplitFFN
from ffsplit.split.profile import LayerProfile, profile_model
from ffsplit.split.rebuild import rebuild_split, split_state


def _outputs(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:  # noqa: ANN001
    with torch.no_grad():
        batch = next(encode_batches(tokenizer, texts, batch_size=len(texts), max_length=64))
        return model(**batch).last_hidden_state


def _split(path: str, recipe: str, ratio: float = 0.1, n: int = 16, form: str = "both") -> tuple:
    loaded = load_model(path)
    adapter = find_adapter(loaded.model)
    texts = calibration_texts(limit=n)
    profiles = profile_model(loaded.model, adapter, loaded.tokenizer, texts, max_length=64, progress=False)
    split = copy.deepcopy(loaded.model)
    plans, idx, _ = split_model(split, adapter, profiles, heavy_ratio=ratio, recipe=parse_light(recipe), form=form)
    return loaded, adapter, split, plans, idx, profiles


def test_none_is_exact_on_tiny_bert(tiny_bert_dir: Path) -> None:
    loaded, _, split, plans, _, _ = _split(str(tiny_bert_dir), "none")
    texts = calibration_texts(limit=8)
    ref, got = _outputs(loaded.model, loaded.tokenizer, texts), _outputs(split, loaded.tokenizer, texts)
    assert all(isinstance(split.get_submodule(p.module), SplitFFN) for p in plans)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_none_is_exact_on_minilm() -> None:
    loaded, _, split, plans, _, _ = _split("minilm", "none", n=16)
    texts = calibration_texts(limit=8)
    ref, got = _outputs(loaded.model, loaded.tokenizer, texts), _outputs(split, loaded.tokenizer, texts)
    assert [p.heavy for p in plans] == [152] * 6
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


def test_heavy_neurons_are_the_top_scores(tiny_bert_dir: Path) -> None:
    _, _, _, plans, idx, profiles = _split(str(tiny_bert_dir), "none", ratio=0.25)
    for plan, prof in zip(plans, profiles, strict=True):
        chosen = idx[plan.module]
        assert len(chosen) == plan.heavy == 16
        others = torch.ones_like(prof.scores, dtype=torch.bool)
        others[chosen] = False
        assert prof.scores[chosen].min() >= prof.scores[others].max()


def test_profile_ignores_padding(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir))
    adapter = find_adapter(loaded.model)
    text = calibration_texts(limit=1)
    long_text = calibration_texts(limit=2)[1] + " " + "padding forces the first text to be padded " * 4
    alone = profile_model(loaded.model, adapter, loaded.tokenizer, text, batch_size=1, progress=False)
    batched = profile_model(loaded.model, adapter, loaded.tokenizer, [text[0], long_text], batch_size=2, progress=False)
    both_alone = profile_model(loaded.model, adapter, loaded.tokenizer, [text[0], long_text], batch_size=1, progress=False)
    assert batched[0].tokens == both_alone[0].tokens > alone[0].tokens
    torch.testing.assert_close(batched[0].scores, both_alone[0].scores, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("form", "recipe"), [("both", "lowrank:8"), ("down", "lowrank:8+int8"), ("down", "prune:0.5")])
def test_split_state_round_trips(tiny_bert_dir: Path, form: str, recipe: str) -> None:
    loaded, adapter, split, plans, _, _ = _split(str(tiny_bert_dir), recipe, form=form)
    state = split_state(split, plans)
    rebuilt = copy.deepcopy(loaded.model)
    assert rebuild_split(rebuilt, adapter, plans, state) == []  # every claim holds
    texts = calibration_texts(limit=4)
    torch.testing.assert_close(_outputs(rebuilt, loaded.tokenizer, texts), _outputs(split, loaded.tokenizer, texts))


@pytest.mark.parametrize(
    ("ratio", "message"),
    [(0.0, "outside"), (1.0, "outside"), (-0.5, "outside"), (0.99, "leaves no light neurons")],
)
def test_heavy_ratio_is_checked(ratio: float, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        heavy_count(64, ratio)


def test_heavy_count_is_a_multiple_of_eight() -> None:
    assert heavy_count(1536, 0.1) == 152
    assert heavy_count(64, 0.1) == 8


@pytest.mark.parametrize(("d_ff", "ratio", "align", "want", "group"), [
    (4096, 0.1, 128, 384, 128), (4864, 0.1, 128, 512, 128), (1536, 0.1, 128, 128, 128),
    (64, 0.25, 128, 16, 16),  # too narrow for 128: the largest power of two that fits
    (64, 0.1, 128, 8, 8),  # the ratio asks for less than one group of 16: multiples of 8, as without align
    (1000, 0.1, 128, 96, 8),  # no power of two above 8 divides 1000
])
def test_heavy_count_leaves_the_light_branch_whole_groups_wide(d_ff: int, ratio: float, align: int, want: int,
                                                                group: int) -> None:
    k = heavy_count(d_ff, ratio, align=align)
    assert k == want and (d_ff - k) % group == 0 and k % group == 0
    assert heavy_count(3072, 0.25) == 768


def test_rank_must_be_smaller_than_light_width(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir))
    adapter = find_adapter(loaded.model)
    with pytest.raises(UsageError, match="not smaller than the light width 56"):
        validate_recipe(adapter, loaded.model, 0.1, LightRecipe("lowrank", 56))
    with pytest.raises(UsageError, match="larger than the dense one"):
        validate_recipe(adapter, loaded.model, 0.1, LightRecipe("lowrank", 30))
    validate_recipe(adapter, loaded.model, 0.1, LightRecipe("lowrank", 16))


@settings(max_examples=25, deadline=None)
@given(
    d_model=st.integers(4, 24),
    d_ff=st.integers(16, 96),
    ratio=st.floats(0.05, 0.6),
    act=st.sampled_from(["gelu", "relu", "silu", "gated-silu"]),
    seed=st.integers(0, 2**16),
    form=st.sampled_from(["both", "down"]),
)
def test_split_partitions_neurons_and_none_is_exact(d_model: int, d_ff: int, ratio: float, act: str, seed: int,
                                                   form: str) -> None:
    """For random FFN shapes and activations (gated too), in both split forms, heavy and light partition the
    neurons and none is exact."""
    torch.manual_seed(seed)
    try:
        k = heavy_count(d_ff, ratio)
    except UsageError:
        return
    fn = {"gelu": torch.nn.GELU(), "relu": torch.nn.ReLU(), "silu": torch.nn.SiLU(), "gated-silu": torch.nn.SiLU()}[act]
    fc_in, fc_out = torch.nn.Linear(d_model, d_ff), torch.nn.Linear(d_ff, d_model)
    gate = torch.nn.Linear(d_model, d_ff) if act.startswith("gated") else None
    ffn = FFNWeights(
        w_in=fc_in.weight.detach(), b_in=fc_in.bias.detach(), w_out=fc_out.weight.detach(), b_out=fc_out.bias.detach(),
        act=fn, w_gate=None if gate is None else gate.weight.detach(), b_gate=None if gate is None else gate.bias.detach(),
    )
    scores = torch.rand(d_ff, dtype=torch.float64)
    prof = LayerProfile(scores=scores, mean_abs_act=scores, input_moment=None, act_moment=None, tokens=1)
    res = split_layer(ffn, prof, k, LightRecipe(), form=form)
    split, heavy_idx = res.split, res.heavy_idx
    light = sorted(set(range(d_ff)) - set(heavy_idx.tolist()))
    assert len(heavy_idx) == k and len(light) == d_ff - k
    assert set(heavy_idx.tolist()).isdisjoint(light)
    x = torch.randn(5, d_model)
    with torch.no_grad():
        hidden = fn(gate(x)) * fc_in(x) if gate is not None else fn(fc_in(x))
        torch.testing.assert_close(split(x), fc_out(hidden), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recipe", ["int8", "int4:16:asym", "prune:0.5", "prune:0.25+int8", "lowrank:8+int4"])
def test_lossy_recipes_shrink_bytes_and_cost_some_accuracy(tiny_bert_dir: Path, recipe: str) -> None:
    loaded, _, split, plans, _, _ = _split(str(tiny_bert_dir), recipe, ratio=0.25)
    texts = calibration_texts(limit=8)
    ref, got = _outputs(loaded.model, loaded.tokenizer, texts), _outputs(split, loaded.tokenizer, texts)
    assert 0 < float((ref - got).abs().max()) < 1.0
    for p in plans:
        assert p.ffn_bytes_after < p.ffn_bytes_before
        # pruning keeps its rows exact: its cost is on the output side
        assert p.light_out_error is not None and p.light_out_error > 0
        assert p.light_in_error is not None and (p.light_in_error > 0 or recipe.startswith("prune:0.5"))


def test_prune_error_falls_as_fewer_neurons_go(tiny_bert_dir: Path) -> None:
    errors = []
    for p in ("prune:0.75", "prune:0.5", "prune:0.25"):
        loaded, _, split, _, _, _ = _split(str(tiny_bert_dir), p, ratio=0.25)
        texts = calibration_texts(limit=8)
        errors.append(float((_outputs(loaded.model, loaded.tokenizer, texts) - _outputs(split, loaded.tokenizer, texts)).abs().mean()))
    assert errors[0] > errors[1] > errors[2], errors


def test_sampled_errors_equal_full_moments_over_the_same_tokens() -> None:
    """Without full moments (d_ff^2 per layer), a lossy recipe's errors come from sampled FFN inputs, one
    layer at a time; over the same tokens they are the errors the full moments give."""
    import dataclasses

    torch.manual_seed(0)
    d_model, d_ff = 16, 64
    ffn = FFNWeights(torch.randn(d_ff, d_model), torch.randn(d_ff), torch.randn(d_model, d_ff), None,
                     torch.nn.SiLU(), torch.randn(d_ff, d_model), None)
    x = torch.randn(200, d_model)
    a = torch.nn.functional.silu(x @ ffn.w_gate.T) * (x @ ffn.w_in.T + ffn.b_in)
    scores = a.abs().mean(0) * ffn.w_out.norm(dim=0)
    full = LayerProfile(scores=scores.double(), mean_abs_act=a.abs().mean(0).double(),
                        input_moment=(x.T @ x).double() / len(x), act_moment=(a.T @ a).double() / len(x),
                        tokens=len(x))
    sampled = dataclasses.replace(full, input_moment=None, act_moment=None, samples=x)
    recipe = parse_light("int4:16")
    want, got = split_layer(ffn, full, 16, recipe).errors, split_layer(ffn, sampled, 16, recipe).errors
    assert got["light_in_error"] is not None and got["light_out_error"] is not None
    assert got["light_in_error"] == pytest.approx(want["light_in_error"], rel=1e-5)
    assert got["light_out_error"] == pytest.approx(want["light_out_error"], rel=1e-5)
    # and no samples, no moments: no error figures rather than made-up ones
    none = split_layer(ffn, dataclasses.replace(sampled, samples=None), 16, recipe).errors
    assert none == {"light_in_error": None, "light_out_error": None}


def test_a_quantised_weight_is_held_once_as_its_grid(tiny_bert_dir: Path) -> None:
    """torch holds a quantised weight as its int8 codes (1 byte a weight), the plan only the digest the graph
    pass finds it by: no fp32 copy anywhere, and the fp32 weight computed from the codes is the grid's."""
    loaded = load_model(str(tiny_bert_dir))
    adapter = find_adapter(loaded.model)
    profiles = profile_model(loaded.model, adapter, loaded.tokenizer, calibration_texts(limit=8), max_length=32,
                             progress=False, moments=False, samples=64)
    _, _, quantized = split_model(loaded.model, adapter, profiles, heavy_ratio=0.25, recipe=parse_light("int4"),
                                  heavy_precision="int8")
    params = dict(loaded.model.named_parameters())
    assert {p.split(".")[-3] for p in quantized} == {"heavy", "light"}
    for path, qw in quantized.items():
        module = loaded.model.get_submodule(path.removesuffix(".weight"))
        assert isinstance(module, GridLinear) and params[path].dtype == torch.int8, path
        assert qw.weight is None and qw.digest == onnx_digest(module.dequantised()), path
        assert torch.equal(params[path], qw.q), path


@pytest.mark.parametrize("recipe", ["none", "int8", "prune:0.5+int4", "lowrank:8"])
def test_the_down_form_shares_the_up_projection_and_splits_the_down(tiny_bert_dir: Path, recipe: str) -> None:
    """One up-projection over every kept neuron, heavy first; each branch is its down-projection alone, the
    light one compressed by the recipe; none stays exact."""
    loaded, _, split, plans, idx, _ = _split(str(tiny_bert_dir), recipe, ratio=0.25, form="down")
    texts = calibration_texts(limit=8)
    ref, got = _outputs(loaded.model, loaded.tokenizer, texts), _outputs(split, loaded.tokenizer, texts)
    for p in plans:
        ffn = split.get_submodule(p.module)
        assert p.split == "down" and ffn.form == "down" and ffn.heavy.fc_in is None and ffn.light.fc_in is None
        kept = p.light_kept if recipe != "lowrank:8" else p.light
        assert ffn.up.fc_in.weight.shape == (p.heavy + kept, p.d_model)
        assert ffn.heavy.fc_out.weight.shape == (p.d_model, p.heavy)
        assert p.heavy_params == p.d_model * p.heavy and p.light_in_error is None
        assert (p.light_out_error is None) == (recipe == "none")
    if recipe == "none":
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    else:
        assert 0 < float((ref - got).abs().max()) < 1.0
