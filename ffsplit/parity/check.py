"""The three-way parity check: original torch, split torch and the runtime, on the evaluation text.

* compression: original torch vs split torch (what the recipe costs);
* fidelity: split torch vs runtime (the export and the runtime, always tight);
* shipped: original torch vs runtime (what the user ships).

Running the models and comparing their outputs are separate steps; the report
is plain JSON with every value, its limit and whether it passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ffsplit.parity.metrics import Outputs, compare
from ffsplit.runtimes.targets import Target
from ffsplit.split.calibration import encode_batches

COMPARISONS: dict[str, tuple[str, str, str]] = {
    # name -> (reference, compared, what it says)
    "compression": ("original", "split", "original torch vs split torch"),
    "fidelity": ("split", "runtime", "split torch vs runtime"),
    "shipped": ("original", "runtime", "original torch vs runtime"),
}
# Metrics where smaller is better; every other limit is a floor.
UPPER_BOUNDED = frozenset({"max_abs", "mean_abs"})


@torch.no_grad()
def run_torch(model: torch.nn.Module, tokenizer, texts: list[str], *, batch_size: int, max_length: int) -> Outputs:  # noqa: ANN001
    hidden, masks = [], []
    for batch in encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length):
        hidden.append(model(**batch).last_hidden_state.float().numpy())
        masks.append(batch["attention_mask"].numpy())
    return Outputs(hidden, masks)


def run_runner(runner, tokenizer, texts: list[str], *, batch_size: int, max_length: int) -> Outputs:  # noqa: ANN001
    names = set(runner.input_signature())
    hidden, masks = [], []
    for batch in encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length):
        feed = {k: v.numpy() for k, v in batch.items() if k in names}
        hidden.append(runner.infer(feed)["last_hidden_state"])
        masks.append(batch["attention_mask"].numpy())
    return Outputs(hidden, masks)


def limits_for(target: Target, *, exact: bool, overrides: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Per comparison, metric -> limit. ``exact`` (recipe none) holds the split to fp32 rounding."""
    parity = target.parity
    fidelity = dict(parity.get("fidelity", {"max_abs": 1e-4, "cosine_min": 0.99999}))
    if exact:
        lossy = dict(parity.get("exact", {"max_abs": 1e-4, "cosine_min": 0.99999}))
        shipped = {k: (v * 2 if k in UPPER_BOUNDED else v) for k, v in lossy.items()}
    else:
        lossy = dict(parity.get("compression", {"cosine_mean": 0.95, "cosine_min": 0.85, "retrieval_at10": 0.8}))
        lossy.update({k: v for k, v in (overrides or {}).items() if v is not None})
        shipped = dict(lossy)
    return {"compression": lossy, "fidelity": fidelity, "shipped": shipped}


@dataclass
class ParityReport:
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: int = 0

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.comparisons.values())

    def failures(self) -> list[str]:
        out = []
        for name, comp in self.comparisons.items():
            for metric, lim in comp["limits"].items():
                value = comp["metrics"][metric]
                if metric in UPPER_BOUNDED and value > lim:
                    out.append(f"{name} ({comp['what']}) last_hidden_state {metric} {value:.3g} > {lim:.3g} (over by {value - lim:.3g})")
                elif metric not in UPPER_BOUNDED and value < lim:
                    out.append(f"{name} ({comp['what']}) {metric} {value:.4f} < {lim:.4f} (short by {lim - value:.4f})")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "texts": self.texts, "comparisons": self.comparisons, "failures": self.failures()}


def evaluate(outputs: Mapping[str, Outputs], limits: Mapping[str, Mapping[str, float]]) -> ParityReport:
    report = ParityReport(texts=sum(len(h) for h in next(iter(outputs.values())).hidden))
    for name, (ref, other, what) in COMPARISONS.items():
        metrics = compare(outputs[ref], outputs[other])
        lim = dict(limits[name])
        ok = all(
            (metrics[m] <= v) if m in UPPER_BOUNDED else (metrics[m] >= v) for m, v in lim.items()
        )
        report.comparisons[name] = {"what": what, "metrics": metrics, "limits": lim, "passed": bool(ok)}
    return report


def format_table(report: ParityReport) -> str:
    metrics = ["max_abs", "mean_abs", "cosine_min", "cosine_mean", "retrieval_at10"]
    head = f"{'comparison':<13} {'what':<30} " + " ".join(f"{m:>14}" for m in metrics) + "  result"
    lines = [head, "-" * len(head)]
    for name, comp in report.comparisons.items():
        cells = []
        for m in metrics:
            v = comp["metrics"][m]
            cell = f"{v:.2e}" if m in UPPER_BOUNDED else f"{v:.4f}"
            if m in comp["limits"]:
                cell += "*"
            cells.append(f"{cell:>14}")
        lines.append(f"{name:<13} {comp['what']:<30} " + " ".join(cells) + ("  pass" if comp["passed"] else "  FAIL"))
    lines.append(f"(* checked against a limit; {report.texts} evaluation texts, padded batches)")
    return "\n".join(lines)
