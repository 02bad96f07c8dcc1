"""Budget mode: the knapsack never exceeds a budget and finds the best plan; every budget kind is respected."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ffsplit import api
from ffsplit.artifact import read_manifest
from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.split.adapters import find_adapter
from ffsplit.split.budget import GRID, Candidate, choose, parse_budget, plan_budget
from ffsplit.split.calibration import calibration_texts
from ffsplit.split.modules import count_params
from ffsplit.split.profile import profile_model


def _cand(params: int, error: float) -> Candidate:
    return Candidate(heavy_ratio=0.1, heavy=8, recipe="x", params=params, flops=params, nbytes=params, error=error)


@settings(max_examples=40, deadline=None)
@given(
    layers=st.lists(
        st.lists(st.tuples(st.integers(1, 100), st.floats(0, 1)), min_size=1, max_size=4), min_size=1, max_size=4
    ),
    frac=st.floats(0.2, 1.0),
)
@example(layers=[[(1, 0.0)]], frac=0.9999999999999999)  # one parameter over a limit just under it: refused
def test_knapsack_is_feasible_and_optimal(layers: list[list[tuple[int, float]]], frac: float) -> None:
    cands = [[_cand(p, e) for p, e in layer] for layer in layers]
    limit = frac * sum(max(c.params for c in layer) for layer in cands)
    plans = list(itertools.product(*[range(len(layer)) for layer in cands]))

    def cost(plan: tuple[int, ...]) -> int:
        return sum(cands[i][j].params for i, j in enumerate(plan))

    def err(plan: tuple[int, ...]) -> float:
        return sum(cands[i][j].error for i, j in enumerate(plan))

    if not any(cost(p) <= limit for p in plans):
        with pytest.raises(UsageError, match="no plan fits"):
            choose(cands, "ffn-params", limit)
        return
    try:
        chosen = tuple(choose(cands, "ffn-params", limit))
    except UsageError:
        # Rounding costs up may only lose plans that sit within the grid's slack of the limit.
        assert all(cost(p) > limit - len(cands) * limit / GRID for p in plans)
        return
    assert cost(chosen) <= limit
    slack = len(cands) * limit / GRID
    best_safe = min((err(p) for p in plans if cost(p) <= limit - slack), default=math.inf)
    assert err(chosen) <= best_safe + 1e-9


@pytest.mark.parametrize(
    ("spec", "message"),
    [("ffn-params", "KIND=VALUE"), ("params=0.5", "KIND=VALUE"), ("ffn-params=1.5", "fraction"),
     ("flops=0", "fraction"), ("size-mb=-2", "finite size above 0"), ("size-mb=x", "KIND=VALUE")],
)
def test_parse_budget_rejects(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_budget(spec)


@pytest.fixture(scope="module")
def tiny_profiled(tiny_bert_dir: Path) -> tuple:
    loaded = load_model(str(tiny_bert_dir))
    adapter = find_adapter(loaded.model)
    profiles = profile_model(loaded.model, adapter, loaded.tokenizer, calibration_texts(limit=16), max_length=32,
                             progress=False, samples=256)
    ffns = [adapter.weights(layer) for layer in adapter.layer_modules(loaded.model)]
    return loaded, ffns, profiles


@pytest.mark.parametrize(("kind", "value"), [("ffn-params", 0.5), ("flops", 0.4), ("size-mb", None)])
def test_every_budget_kind_is_respected(tiny_profiled: tuple, kind: str, value: float | None) -> None:
    loaded, ffns, profiles = tiny_profiled
    ffn_params = sum(f.w_in.numel() + f.b_in.numel() + f.w_out.numel() + f.b_out.numel() for f in ffns)
    other = 4 * (count_params(loaded.model) - ffn_params)
    if value is None:  # the model outside the FFNs, plus 30% of the FFNs' fp32 bytes
        value = (other + 0.3 * 4 * ffn_params) / 1e6
    chosen, summary = plan_budget(ffns, profiles, kind, value, other_bytes=other)
    assert summary.used <= summary.limit
    if kind == "ffn-params":
        assert sum(c.params for c in chosen) <= value * ffn_params
    elif kind == "flops":
        assert sum(c.flops for c in chosen) <= value * sum(f.w_in.numel() + f.w_out.numel() for f in ffns)
    else:
        assert other + sum(c.nbytes for c in chosen) <= value * 1e6
    # A looser budget never leaves more error.
    looser = plan_budget(ffns, profiles, kind, value * 1.5 if kind == "size-mb" else min(1.0, value * 1.5),
                         other_bytes=other)[1]
    assert looser.total_error is not None and summary.total_error is not None
    assert looser.total_error <= summary.total_error + 1e-12


def test_budget_too_small_is_a_usage_error(tiny_profiled: tuple) -> None:
    _, ffns, profiles = tiny_profiled
    with pytest.raises(UsageError, match="no plan fits the ffn-params budget"):
        plan_budget(ffns, profiles, "ffn-params", 0.01, other_bytes=0)


def test_budget_export_end_to_end(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    api.export(str(tiny_bert_dir), tmp_path / "b", budget="ffn-params=0.5", calib_size=16, eval_size=24,
                     max_length=32, progress=False, limits={"cosine_mean": 0.5, "cosine_min": 0.3, "retrieval_at10": 0.2})
    m = read_manifest(tmp_path / "b")
    assert m.params.ffn_after <= 0.5 * m.params.ffn_before
    assert m.budget is not None and m.budget.kind == "ffn-params" and len(m.budget.plan) == 2
    assert [row.recipe for row in m.budget.plan] == [p.light_recipe for p in m.layers]
    assert all(p.calib_error is not None for p in m.layers)
    assert api.check(tmp_path / "b").passed


def test_budget_refuses_explicit_recipe(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="drop --light and --heavy-ratio"):
        api.export(str(tiny_bert_dir), tmp_path / "b", budget="ffn-params=0.5", light="int8", progress=False)


def test_the_manifest_reads_back_what_the_budget_chose_and_the_cli_prints_it(tiny_profiled: tuple) -> None:
    """The Budget ``plan_budget`` chose is written into the manifest and read back the same, within its bounds;
    ``export`` prints its total and ``inspect`` each layer's choice."""
    from ffsplit.cli.output import budget_lines
    from ffsplit.manifest import Budget

    _, ffns, profiles = tiny_profiled
    chosen, summary = plan_budget(ffns, profiles, "ffn-params", 0.5, other_bytes=0)
    written = json.loads(json.dumps(summary.to_json()))  # as manifest.json holds it
    errors: list[str] = []
    Budget.check()(written, "budget", errors)
    assert errors == []
    b = Budget.from_json(written)
    assert b == summary and (b.kind, b.value) == ("ffn-params", 0.5)
    assert [(r.layer, r.heavy, r.recipe) for r in b.plan] == [(i, c.heavy, c.recipe) for i, c in enumerate(chosen)]
    head, *rows = budget_lines(b, per_layer=True)
    assert head.startswith("budget ffn-params=0.5: used ") and "summed calibration error" in head
    assert len(rows) == len(chosen) and rows[0].startswith("  layer 0: heavy ")
    assert budget_lines(b, per_layer=False) == [head] and budget_lines(None, per_layer=True) == []
