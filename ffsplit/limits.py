"""What the parity check compares and the limits it holds each comparison to (no torch needed).

Three comparisons, the metrics each task measures, which metrics are ceilings,
and the limits an export decides once (``limits_for``) and records in its manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ffsplit.tasks import TASKS


class HasParity(Protocol):
    """What ``limits_for`` reads of a target (``targets.Target``, a layer above): its parity tables."""

    @property
    def parity(self) -> Mapping[str, Mapping[str, float]]: ...


@dataclass(frozen=True)
class Metric:
    """One metric parity measures: whether a limit on it is a ceiling (smaller is better) or a floor, and the
    range a limit may take (a perplexity ratio below 1 would fail the original itself)."""

    name: str
    ceiling: bool
    lo: float = 0.0
    hi: float = 1.0

    def holds(self, value: float, limit: float) -> bool:
        return value <= limit if self.ceiling else value >= limit

    @property
    def sign(self) -> str:
        return "<=" if self.ceiling else ">="

    def limit_problem(self, value: float) -> str | None:
        """Why ``value`` cannot be a limit on this metric (None when it can)."""
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            return f"{value:g} is outside [{self.lo:g}, {self.hi:g}]"
        return None


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("max_abs", ceiling=True, hi=1e6),
    Metric("mean_abs", ceiling=True, hi=1e6),
    Metric("cosine_min", ceiling=False),
    Metric("cosine_mean", ceiling=False),
    Metric("retrieval_at10", ceiling=False),
    Metric("label_agreement", ceiling=False),
    Metric("top1_agreement", ceiling=False),
    Metric("top5_agreement", ceiling=False),
    Metric("generation_agreement", ceiling=False),
    Metric("perplexity", ceiling=True, lo=1.0, hi=math.inf),  # measured and reported; limits are on the ratio
    Metric("perplexity_ratio", ceiling=True, lo=1.0, hi=1e6),
)}

COMPARISONS: dict[str, tuple[str, str, str]] = {
    # name -> (reference, compared, what it says)
    "compression": ("original", "split", "original torch vs split torch"),
    "fidelity": ("split", "runtime", "split torch vs runtime"),
    "shipped": ("original", "runtime", "original torch vs runtime"),
}
TASK_METRICS: dict[str, tuple[str, ...]] = {name: task.metrics for name, task in TASKS.items()}
DEFAULT_LIMITS = {
    "fidelity": {"max_abs": 1e-4, "cosine_min": 0.99999, "generation_agreement": 1.0},
    "exact": {"max_abs": 1e-4, "cosine_min": 0.99999, "generation_agreement": 1.0},
    # as the cpu target's [parity.compression] (README, CLI reference)
    "compression": {
        "cosine_mean": 0.95, "cosine_min": 0.85, "retrieval_at10": 0.8, "label_agreement": 0.95,
        "top1_agreement": 0.85, "top5_agreement": 0.95, "perplexity_ratio": 1.10,
    },
}
# What a target's [parity.<table>] may set, and the limits a user may set on what a lossy recipe costs.
PARITY_KEYS: dict[str, tuple[str, ...]] = {table: tuple(values) for table, values in DEFAULT_LIMITS.items()}
COMPRESSION_METRICS = PARITY_KEYS["compression"]
# a runtime that rounds what split torch computed (int8 activations, int4 multiplies outside the split) is
# held to the task's own metrics against split torch, not to fp32 rounding
PARITY_KEYS["fidelity"] += tuple(m for m in COMPRESSION_METRICS if m not in PARITY_KEYS["fidelity"])


def limits_for(
    target: HasParity, task: str, *, exact: bool, overrides: Mapping[str, float | None] | None = None
) -> dict[str, dict[str, float]]:
    """Per comparison, metric -> limit, for the metrics ``task`` has.

    ``exact`` (recipe none) holds the split to fp32 rounding; otherwise the
    target's compression limits apply, with ``overrides`` on top. Fidelity is
    never relaxed by overrides.
    """
    have = set(TASK_METRICS[task])

    def pick(group: str) -> dict[str, float]:
        values = target.parity.get(group, DEFAULT_LIMITS[group])
        if group == "compression":  # a partial table adds to the defaults rather than dropping the rest
            values = {**DEFAULT_LIMITS[group], **values}
        return {k: float(v) for k, v in values.items() if k in have}

    fidelity = pick("fidelity")
    if exact:
        lossy = pick("exact")
        shipped = {k: (v * 2 if METRICS[k].ceiling else v) for k, v in lossy.items()}
    else:
        lossy = pick("compression")
        lossy.update({k: float(v) for k, v in (overrides or {}).items() if v is not None and k in have})
        shipped = dict(lossy)
    return {"compression": lossy, "fidelity": fidelity, "shipped": shipped}
