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


def pooled_output(runner: Any, tokenizer: Any, texts: list[str], pooling: Any, *, output: str, max_length: int,
                  limit: float = 1e-4) -> dict[str, Any]:
    """The graph's ``sentence_embedding`` against sentence-transformers' pooling of the graph's own
    token output, on the evaluation texts: the pooling in the graph is the one the source declares."""
    import numpy as np

    from ffsplit.exporter.export import SENTENCE_OUTPUT
    from ffsplit.split.calibration import encode_batches

    worst = 0.0
    for batch in encode_batches(tokenizer, texts, batch_size=16, max_length=max_length):
        np_batch = {k: v.numpy() for k, v in batch.items()}
        out = runner.infer(runner.feed_from(np_batch))
        want = pooling(out[output], np_batch["attention_mask"])
        worst = max(worst, float(np.abs(out[SENTENCE_OUTPUT] - want).max()))
    return {"max_abs": worst, "limit": limit, "passed": worst <= limit,
            "pooling": list(pooling.modes), "normalize": pooling.normalize}

