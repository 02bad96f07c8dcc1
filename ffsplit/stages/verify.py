"""Verify what a runtime runs: the separation guard on its executed graph, and the three-way parity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ffsplit import bounds
from ffsplit.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    import torch
    from transformers import PreTrainedTokenizerBase

    from ffsplit.loading import LoadedModel
    from ffsplit.manifest import LayerPlan, Separation
    from ffsplit.parity.check import ParityReport, RecordedOutputs
    from ffsplit.pooling import Pooling
    from ffsplit.runtimes.base import Runner
    from ffsplit.tasks import TaskSpec


PARITY_BATCH = 16  # texts per padded parity batch


def guard(runner: Runner, plans: Sequence[LayerPlan]) -> Separation:
    """Run the separation guard on what the runtime executes: its record, with ``passed`` false, the
    ``findings`` and the one-line ``failure`` naming the layers when it failed."""
    from ffsplit.graph_passes import check_separation, expected_matmuls, expected_precisions
    from ffsplit.manifest import Separation

    found, realized, findings = check_separation(
        runner.layer_records(), expected_matmuls(plans), expected_precisions(plans)
    )
    failure = f"branch separation failed in what {runner.target.runtime} runs: " + "; ".join(findings)
    return Separation(
        passed=not findings, graph=runner.runtime_graph, matmuls={str(k): v for k, v in found.items()},
        precisions={str(k): {b: sorted(set(v)) for b, v in br.items()} for k, br in realized.items()},
        findings=tuple(findings), failure=failure if findings else None,
    )


def parity(
    original: torch.nn.Module | RecordedOutputs, split: torch.nn.Module | RecordedOutputs, runner: Runner,
    tokenizer: PreTrainedTokenizerBase, task: TaskSpec, *,
    limits: dict[str, dict[str, float]], texts: list[str], max_length: int, batch_size: int = PARITY_BATCH,
    max_positions: int | None = None, progress: bool = False, pooling: Pooling | None = None,
    pooled_limit: float = 1e-4,
) -> ParityReport:
    """The three-way ParityReport on ``texts`` (the evaluation texts); ``original`` and ``split`` are torch
    models or their outputs recorded by ``record`` on the same texts.

    Given the ``pooling`` behind a graph's ``sentence_embedding`` output, the same runtime pass also
    holds that output to sentence-transformers' pooling of the graph's own token output.
    """
    import numpy as np

    from ffsplit.manifest import PooledCheck
    from ffsplit.parity.check import compare_three, evaluate
    from ffsplit.signature import SENTENCE_OUTPUT

    if len(texts) < bounds.MIN_EVAL_TEXTS:
        raise UsageError(f"only {len(texts)} evaluation texts: retrieval@10 needs 11")
    worst = [0.0]

    def pooled(batch: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> None:
        want = pooling(out[task.output], batch["attention_mask"])
        worst[0] = max(worst[0], float(np.abs(out[SENTENCE_OUTPUT] - want).max()))

    metrics = compare_three(
        original, split, runner, tokenizer, texts, task, batch_size=batch_size, max_length=max_length,
        max_positions=max_positions, progress=progress, on_runtime=pooled if pooling is not None else None,
    )
    report = evaluate(metrics, limits, task=task, texts=len(texts))
    if pooling is not None:
        report.sentence_embedding = PooledCheck(max_abs=worst[0], limit=pooled_limit, passed=worst[0] <= pooled_limit,
                                                pooling=tuple(pooling.modes), normalize=pooling.normalize)
    return report


def record(
    model: torch.nn.Module, loaded: LoadedModel, folder: Path, *, texts: list[str], max_length: int,
    max_positions: int | None,
    progress: bool, desc: str,
) -> RecordedOutputs:
    """``model``'s outputs on the parity batches of the evaluation ``texts``, recorded under ``folder``
    (``RecordedOutputs``): what parity later compares the runtime with, after the model is freed."""
    from ffsplit.exporter.export import graph_input_names
    from ffsplit.parity.check import RecordedOutputs, generation_prompts, parity_batches

    tok, task = loaded.tokenizer, loaded.task
    batches = parity_batches(tok, texts, task, batch_size=PARITY_BATCH, max_length=max_length,
                             max_positions=max_positions)
    inputs = set(graph_input_names(tok, model, task))
    return RecordedOutputs.record(model, batches, task, inputs, folder, prompts=generation_prompts(tok, texts),
                                  progress=progress, desc=desc)


def free_model(loaded: LoadedModel, log: Callable[[str], None] | None = None) -> None:
    """Let the loaded torch model go (its outputs are recorded, its graph saved) before a runtime is built
    beside what is left: one model in memory at a time."""
    from ffsplit import resources

    resources.drop_weights(loaded.model)
    loaded.model = None  # type: ignore[assignment]  # a freed LoadedModel is not run again
    resources.release_memory()
    if log:
        log(f"torch model freed: {resources.current_bytes() / 1e6:,.0f} MB resident")
