"""Verify what a runtime runs: the separation guard on its executed graph, and the three-way parity."""

from __future__ import annotations

from typing import Any

from ffsplit import bounds
from ffsplit.errors import CheckFailed, UsageError


def guard(runner: Any, plans: list[dict[str, Any]], *, raising: bool = True) -> dict[str, Any]:
    """Run the separation guard on what the runtime executes. A failure names the layers: CheckFailed,
    or with ``raising=False`` the record with ``passed`` false, its ``findings`` and the one-line ``failure``."""
    from ffsplit.graph_passes import check_separation, expected_matmuls, expected_precisions

    found, realized, findings = check_separation(
        runner.layer_records(), expected_matmuls(plans), expected_precisions(plans)
    )
    record: dict[str, Any] = {
        "passed": not findings, "graph": runner.runtime_graph, "matmuls": {str(k): v for k, v in found.items()},
        "precisions": {str(k): {b: sorted(set(v)) for b, v in br.items()} for k, br in realized.items()},
    }
    if findings:
        record["findings"] = list(findings)
        record["failure"] = f"branch separation failed in what {runner.target.runtime} runs: " + "; ".join(findings)
        if raising:
            raise CheckFailed(record["failure"])
    return record


def parity(
    original: Any, split: Any, runner: Any, tokenizer: Any, task: Any, *,
    limits: dict[str, dict[str, float]], texts: list[str], max_length: int, batch_size: int = 16,
    max_positions: int | None = None, progress: bool = False,
) -> Any:
    """The three-way ParityReport on ``texts`` (the evaluation texts)."""
    from ffsplit.parity.check import compare_three, evaluate

    if len(texts) < bounds.MIN_EVAL_TEXTS:
        raise UsageError(f"only {len(texts)} evaluation texts: retrieval@10 needs 11")
    metrics = compare_three(
        original, split, runner, tokenizer, texts, task, batch_size=batch_size, max_length=max_length,
        max_positions=max_positions, progress=progress,
    )
    return evaluate(metrics, limits, task=task, texts=len(texts))
