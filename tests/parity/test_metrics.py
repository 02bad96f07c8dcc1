"""Parity metrics on hand-made outputs, and the limits/report logic."""

from __future__ import annotations

import numpy as np
import pytest

from ffsplit.parity.check import evaluate, limits_for
from ffsplit.parity.metrics import (
    CausalLMMetrics,
    ClassificationMetrics,
    Outputs,
    compare,
    mean_pool,
    retrieval_agreement,
)
from ffsplit.targets import load_target
from ffsplit.tasks import TASKS

MASK = np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] * 2 + [0] * 4])


def _outputs(seed: int, noise: float = 0.0, base: Outputs | None = None) -> Outputs:
    rng = np.random.default_rng(seed)
    if base is None:
        hidden = [rng.standard_normal((4, 6, 8)).astype(np.float32) for _ in range(6)]
        return Outputs(hidden, [{"attention_mask": MASK}] * 6)
    return Outputs([h + noise * rng.standard_normal(h.shape).astype(np.float32) for h in base.outputs], base.batches)


def test_mean_pool_ignores_padding() -> None:
    h = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert np.allclose(mean_pool(h, np.array([[1, 1, 0]])), [[2.0, 2.0]])


def test_identical_outputs_compare_perfectly() -> None:
    a = _outputs(0)
    m = compare(a, a)
    assert m["max_abs"] == 0 and m["cosine_min"] == pytest.approx(1.0) and m["retrieval_at10"] == 1.0


def test_padding_positions_do_not_count() -> None:
    a = _outputs(0)
    b = Outputs([h.copy() for h in a.outputs], a.batches)
    for h in b.outputs:
        h[MASK == 0] += 1000.0
    assert compare(a, b)["max_abs"] == 0


def test_retrieval_agreement_drops_with_noise() -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((40, 16))
    assert retrieval_agreement(emb, emb) == 1.0
    small = retrieval_agreement(emb, emb + 0.05 * rng.standard_normal(emb.shape))
    large = retrieval_agreement(emb, emb + 2.0 * rng.standard_normal(emb.shape))
    assert 1.0 >= small > large


def test_classification_metrics() -> None:
    acc = ClassificationMetrics()
    ref = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    other = np.array([[2.5, 1.0], [1.0, 0.5], [1.0, 0.2]])
    acc.update(ref, other, {})
    r = acc.result()
    assert r["label_agreement"] == pytest.approx(2 / 3) and r["max_abs"] == pytest.approx(2.5)


def test_causal_lm_metrics_on_known_logits() -> None:
    # vocab 6; two rows, the second left-padded by one.
    ids = np.array([[1, 2, 3, 4], [0, 2, 3, 5]])
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1]])
    ref = np.full((2, 4, 6), -5.0)
    for b in range(2):
        for t in range(3):
            ref[b, t, ids[b, t + 1]] = 5.0  # the reference predicts every next token
    same = CausalLMMetrics()
    same.update(ref, ref, {"input_ids": ids, "attention_mask": mask})
    r = same.result()
    assert r["top1_agreement"] == 1.0 and r["top5_agreement"] == 1.0 and r["perplexity_ratio"] == pytest.approx(1.0)
    assert same.positions == 5  # 3 + 2 predictable positions; the padded one is skipped
    worse = ref.copy()
    worse[0, 0] = -5.0
    worse[0, 0, 0] = 5.0  # one position now predicts another token
    acc = CausalLMMetrics()
    acc.update(ref, worse, {"input_ids": ids, "attention_mask": mask})
    r = acc.result()
    assert r["top1_agreement"] == pytest.approx(4 / 5) and r["perplexity_ratio"] > 1.0


def test_report_names_the_metric_and_the_miss() -> None:
    a = _outputs(0)
    b = _outputs(1, noise=0.5, base=a)
    limits = limits_for(load_target("cpu"), "feature-extraction", exact=True)
    metrics = {"compression": compare(a, a), "fidelity": compare(a, b), "shipped": compare(a, b)}
    report = evaluate(metrics, limits, task=TASKS["feature-extraction"], texts=24)
    assert report.comparisons["compression"].passed
    assert not report.comparisons["fidelity"].passed and not report.passed
    failures = report.failures()
    assert any(f.startswith("fidelity (split torch vs runtime) last_hidden_state max_abs") and "over by" in f for f in failures)
    assert report.to_json()["passed"] is False


def test_limits_follow_the_task_and_overrides() -> None:
    cpu = load_target("cpu")
    lossy = limits_for(cpu, "feature-extraction", exact=False, overrides={"cosine_mean": 0.5, "retrieval_at10": None})
    assert lossy["compression"]["cosine_mean"] == 0.5
    assert lossy["compression"]["retrieval_at10"] == cpu.parity["compression"]["retrieval_at10"]
    assert "top1_agreement" not in lossy["compression"]
    exact = limits_for(cpu, "feature-extraction", exact=True, overrides={"cosine_mean": 0.5})
    assert "cosine_mean" not in exact["compression"] and exact["compression"]["max_abs"] == 1e-4
    lm = limits_for(cpu, "causal-lm", exact=False, overrides={"perplexity_ratio": 1.5})
    assert lm["compression"] == {"top1_agreement": 0.85, "top5_agreement": 0.95, "perplexity_ratio": 1.5}
    assert lm["fidelity"] == {"max_abs": 1e-4}


def test_causal_lm_metrics_in_chunks_equal_the_whole_batch_at_once() -> None:
    """Long sequences are compared CHUNK positions at a time (bounded temporaries); the figures are those
    of the whole padded batch computed in one go."""
    from ffsplit.parity.metrics import CHUNK, CausalLMMetrics

    rng = np.random.default_rng(0)
    batch_size, seq, vocab = 3, 2 * CHUNK + 37, 50
    ref = rng.standard_normal((batch_size, seq, vocab)).astype(np.float32)
    other = ref + 0.7 * rng.standard_normal(ref.shape).astype(np.float32)
    mask = np.ones((batch_size, seq), np.int64)
    mask[1, :100] = 0  # left padding
    mask[2, -CHUNK - 5:] = 0  # right padding across a chunk boundary
    ids = rng.integers(0, vocab, (batch_size, seq))
    acc = CausalLMMetrics()
    acc.update(ref, other, {"attention_mask": mask, "input_ids": ids})
    got = acc.result()

    m = mask.astype(bool)
    pred = m[:, :-1] & m[:, 1:]
    r, o, target = ref[:, :-1][pred], other[:, :-1][pred], ids[:, 1:][pred]
    best = r.argmax(-1)
    beaten = (o > o[np.arange(len(target)), best][:, None]).sum(-1)

    def nll(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
        return float((lse - x[np.arange(len(target)), target]).mean())

    d = np.abs(ref[m].astype(np.float64) - other[m])
    assert got["max_abs"] == pytest.approx(d.max()) and got["mean_abs"] == pytest.approx(d.mean())
    assert got["top1_agreement"] == pytest.approx(float((best == o.argmax(-1)).mean()))
    assert got["top5_agreement"] == pytest.approx(float((beaten < 5).mean()))
    assert got["perplexity_reference"] == pytest.approx(np.exp(nll(r)), rel=1e-6)
    assert got["perplexity"] == pytest.approx(np.exp(nll(o)), rel=1e-6)
