"""Metrics comparing a reference model's outputs with another's, batch by batch.

Each task has an accumulator fed (reference output, compared output, batch)
one padded batch at a time, so large outputs (LM logits) never sit in memory
whole. Errors count real (non-padding) positions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ffsplit.tasks import TASKS


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mask-weighted mean over tokens (what sentence-transformers does for MiniLM)."""
    m = mask[..., None].astype(np.float64)
    return (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-30)


def neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest rows by cosine, itself excluded."""
    x = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def retrieval_agreement(ref: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each text's k nearest neighbours under ``ref`` and under ``other``."""
    k = min(k, len(ref) - 1)
    if k < 1:
        return 1.0
    a, b = neighbours(ref, k), neighbours(other, k)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


@dataclass
class _AbsError:
    max_abs: float = 0.0
    total: float = 0.0
    count: int = 0

    def add(self, ref: np.ndarray, other: np.ndarray) -> None:
        # the difference at fp32 or wider (exact for two close fp32 values), summed in float64: no float64
        # copies of two (positions, vocabulary) arrays, which made this a large share of a decoder's check
        d = np.abs(np.subtract(ref, other, dtype=np.result_type(ref, other, np.float32)))
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
            self.total += float(d.sum(dtype=np.float64))
            self.count += d.size

    def result(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "mean_abs": self.total / max(self.count, 1)}


@dataclass
class HiddenStateMetrics:
    """feature-extraction: errors of last_hidden_state, cosine of mean-pooled embeddings, retrieval@k."""

    k: int = 10
    err: _AbsError = field(default_factory=_AbsError)
    ref_emb: list[np.ndarray] = field(default_factory=list)
    other_emb: list[np.ndarray] = field(default_factory=list)

    def update(self, ref: np.ndarray, other: np.ndarray, batch: dict[str, np.ndarray]) -> None:
        mask = batch["attention_mask"].astype(bool)
        self.err.add(ref[mask], other[mask])
        self.ref_emb.append(mean_pool(ref, mask))
        self.other_emb.append(mean_pool(other, mask))

    def result(self) -> dict[str, float]:
        a, b = np.concatenate(self.ref_emb), np.concatenate(self.other_emb)
        cos = cosine_rows(a, b)
        return {
            **self.err.result(),
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            f"retrieval_at{self.k}": retrieval_agreement(a, b, self.k),
        }


@dataclass
class ClassificationMetrics:
    """text-classification: logit errors and agreement of the predicted label."""

    err: _AbsError = field(default_factory=_AbsError)
    agree: int = 0
    rows: int = 0

    def update(self, ref: np.ndarray, other: np.ndarray, batch: dict[str, np.ndarray]) -> None:
        self.err.add(ref, other)
        self.agree += int((ref.argmax(-1) == other.argmax(-1)).sum())
        self.rows += len(ref)

    def result(self) -> dict[str, float]:
        return {**self.err.result(), "label_agreement": self.agree / max(self.rows, 1)}


def _nll(logits: np.ndarray, target: np.ndarray) -> float:
    """Summed negative log-likelihood of ``target`` under each row's softmax.

    ``logsumexp(x) - x[target]`` row by row: no (rows, vocab) float64 copy, which made
    this the slowest step of a decoder check.
    """
    top = logits.max(-1)
    lse = top.astype(np.float64) + np.log(np.exp(logits - top[:, None]).sum(-1, dtype=np.float64))
    return float((lse - logits[np.arange(len(target)), target]).sum())


CHUNK = 256  # positions of LM logits compared at once


@dataclass
class CausalLMMetrics:
    """causal-lm: logit errors, next-token agreement (top-1; reference top-1 within top-5), perplexities."""

    err: _AbsError = field(default_factory=_AbsError)
    top1: int = 0
    top5: int = 0
    positions: int = 0
    nll_ref: float = 0.0
    nll_other: float = 0.0

    def update(self, ref: np.ndarray, other: np.ndarray, batch: dict[str, np.ndarray]) -> None:
        # One row and CHUNK positions at a time: a (positions, vocabulary) slice of logits is hundreds of MB
        # at a long sequence, and every step below makes a temporary of that size.
        mask = batch["attention_mask"].astype(bool)
        ids = batch["input_ids"]
        seq = ref.shape[1]
        for b in range(len(ref)):
            for s in range(0, seq, CHUNK):
                e = min(s + CHUNK, seq)
                self.err.add(ref[b, s:e][mask[b, s:e]], other[b, s:e][mask[b, s:e]])
                # Position t predicts token t+1; both must be real tokens.
                pred = mask[b, s:e][: seq - 1 - s] & mask[b, s + 1 : e + 1]
                n = len(pred)
                self._next_token(ref[b, s : s + n][pred], other[b, s : s + n][pred], ids[b, s + 1 : s + 1 + n][pred])

    def _next_token(self, r: np.ndarray, o: np.ndarray, target: np.ndarray) -> None:
        if not len(target):
            return
        best = r.argmax(-1)
        rows = np.arange(len(target))
        # the reference's top-1 is in the other's top 5 when fewer than 5 logits beat it
        beaten_by = (o > o[rows, best][:, None]).sum(-1)
        self.top1 += int((best == o.argmax(-1)).sum())
        self.top5 += int((beaten_by < 5).sum())
        self.positions += len(target)
        self.nll_ref += _nll(r, target)
        self.nll_other += _nll(o, target)

    def result(self) -> dict[str, float]:
        n = max(self.positions, 1)
        ppl_ref, ppl = float(np.exp(self.nll_ref / n)), float(np.exp(self.nll_other / n))
        return {
            **self.err.result(),
            "top1_agreement": self.top1 / n,
            "top5_agreement": self.top5 / n,
            "perplexity_reference": ppl_ref,
            "perplexity": ppl,
            "perplexity_ratio": ppl / ppl_ref,
        }


# TaskSpec.scores -> the accumulator computing that task's metrics
SCORES: dict[str, type[HiddenStateMetrics | ClassificationMetrics | CausalLMMetrics]] = {
    "hidden-state": HiddenStateMetrics,
    "classification": ClassificationMetrics,
    "causal-lm": CausalLMMetrics,
}


# what ``metrics_for`` gives: one accumulator of a task's metrics
Scores = HiddenStateMetrics | ClassificationMetrics | CausalLMMetrics


def metrics_for(task: str) -> Scores:
    """A fresh accumulator of ``task``'s metrics."""
    return SCORES[TASKS[task].scores]()


@dataclass
class Outputs:
    """One model's outputs per padded batch, with the batches (for tests and scripts that keep them)."""

    outputs: list[np.ndarray]
    batches: list[dict[str, np.ndarray]]


def compare(ref: Outputs, other: Outputs, task: str = "feature-extraction") -> dict[str, float]:
    """Every metric of ``other`` against ``ref`` for ``task``."""
    acc = metrics_for(task)
    for r, o, b in zip(ref.outputs, other.outputs, ref.batches, strict=True):
        acc.update(r, o, b)
    return acc.result()
