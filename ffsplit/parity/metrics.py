"""Metrics comparing a reference model's outputs with another's on the same padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
class Outputs:
    """last_hidden_state per batch (padded), with the masks, for one model over the evaluation text."""

    hidden: list[np.ndarray]
    masks: list[np.ndarray]

    def tokens(self) -> np.ndarray:
        """All non-padding token vectors, concatenated."""
        return np.concatenate([h[m.astype(bool)] for h, m in zip(self.hidden, self.masks, strict=True)])

    def embeddings(self) -> np.ndarray:
        return np.concatenate([mean_pool(h, m) for h, m in zip(self.hidden, self.masks, strict=True)])


def compare(ref: Outputs, other: Outputs, *, k: int = 10) -> dict[str, float]:
    """Every metric of ``other`` against ``ref``; errors over non-padding tokens only."""
    diff = np.abs(ref.tokens().astype(np.float64) - other.tokens().astype(np.float64))
    cos = cosine_rows(ref.embeddings(), other.embeddings())
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        f"retrieval_at{k}": retrieval_agreement(ref.embeddings(), other.embeddings(), k),
    }
