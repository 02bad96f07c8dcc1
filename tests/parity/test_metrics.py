"""Parity metrics on hand-made outputs, and the limits/report logic."""

from __future__ import annotations

import numpy as np
import pytest

from ffsplit.parity.check import evaluate, limits_for
from ffsplit.parity.metrics import Outputs, compare, mean_pool, retrieval_agreement
from ffsplit.runtimes.targets import load_target


def _outputs(seed: int, noise: float = 0.0, base: Outputs | None = None) -> Outputs:
    rng = np.random.default_rng(seed)
    if base is None:
        hidden = [rng.standard_normal((4, 6, 8)).astype(np.float32) for _ in range(6)]
        masks = [np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 2 + [0] * 4])] * 6
        return Outputs(hidden, masks)
    return Outputs([h + noise * rng.standard_normal(h.shape).astype(np.float32) for h in base.hidden], base.masks)


def test_mean_pool_ignores_padding() -> None:
    h = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert np.allclose(mean_pool(h, np.array([[1, 1, 0]])), [[2.0, 2.0]])


def test_identical_outputs_compare_perfectly() -> None:
    a = _outputs(0)
    m = compare(a, a)
    assert m["max_abs"] == 0 and m["cosine_min"] == pytest.approx(1.0) and m["retrieval_at10"] == 1.0


def test_padding_positions_do_not_count() -> None:
    a = _outputs(0)
    b = Outputs([h.copy() for h in a.hidden], a.masks)
    for h, mask in zip(b.hidden, b.masks, strict=True):
        h[mask == 0] += 1000.0
    assert compare(a, b)["max_abs"] == 0


def test_retrieval_agreement_drops_with_noise() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16))
    assert retrieval_agreement(emb, emb) == 1.0
    small = retrieval_agreement(emb, emb + 0.05 * rng.standard_normal(emb.shape))
    large = retrieval_agreement(emb, emb + 2.0 * rng.standard_normal(emb.shape))
    assert 1.0 >= small > large


def test_report_names_the_metric_and_the_miss() -> None:
    a = _outputs(0)
    b = _outputs(1, noise=0.5, base=a)
    limits = limits_for(load_target("cpu"), exact=True)
    report = evaluate({"original": a, "split": a, "runtime": b}, limits)
    assert report.comparisons["compression"]["passed"]
    assert not report.comparisons["fidelity"]["passed"] and not report.passed
    failures = report.failures()
    assert any(f.startswith("fidelity (split torch vs runtime) last_hidden_state max_abs") and "over by" in f for f in failures)
    assert report.to_json()["passed"] is False


def test_lossy_limits_take_overrides_and_exact_ones_do_not() -> None:
    cpu = load_target("cpu")
    lossy = limits_for(cpu, exact=False, overrides={"cosine_mean": 0.5, "retrieval_at10": None})
    assert lossy["compression"]["cosine_mean"] == 0.5
    assert lossy["compression"]["retrieval_at10"] == cpu.parity["compression"]["retrieval_at10"]
    exact = limits_for(cpu, exact=True, overrides={"cosine_mean": 0.5})
    assert "cosine_mean" not in exact["compression"] and exact["compression"]["max_abs"] == 1e-4
