"""What the parity check compares and the limits it holds each comparison to (no torch needed).

Three comparisons, the metrics each task measures, which metrics are ceilings,
and the limits an export decides once (``limits_for``) and records in its manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ffsplit.tasks import TASKS

COMPARISONS: dict[str, tuple[str, str, str]] = {
    # name -> (reference, compared, what it says)
    "compression": ("original", "split", "original torch vs split torch"),
    "fidelity": ("split", "runtime", "split torch vs runtime"),
    "shipped": ("original", "runtime", "original torch vs runtime"),
}
# Metrics where smaller is better; every other limit is a floor.
UPPER_BOUNDED = frozenset({"max_abs", "mean_abs", "perplexity_ratio"})
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
    target: Any, task: str, *, exact: bool, overrides: Mapping[str, float | None] | None = None
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
        shipped = {k: (v * 2 if k in UPPER_BOUNDED else v) for k, v in lossy.items()}
    else:
        lossy = pick("compression")
        lossy.update({k: float(v) for k, v in (overrides or {}).items() if v is not None and k in have})
        shipped = dict(lossy)
    return {"compression": lossy, "fidelity": fidelity, "shipped": shipped}
