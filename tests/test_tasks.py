"""The task registry: each task is one TaskSpec, and everything that depends on a task reads it from there."""

from __future__ import annotations

import numpy as np
import pytest

from ffsplit.cli import build_parser
from ffsplit.limits import DEFAULT_LIMITS, METRICS, TASK_METRICS
from ffsplit.parity.metrics import SCORES, metrics_for
from ffsplit.serve.triton import TEXT_TASKS
from ffsplit.split.adapters import registry
from ffsplit.split.discover import ALL_TASKS
from ffsplit.tasks import TASKS

FROM_GENERATION = {"generation_agreement"}  # measured by the greedy loop, not by the output accumulator
REPORTED_ONLY = {"perplexity_reference"}  # printed beside perplexity, never a limit


def _outputs(task: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    if TASKS[task].scores == "classification":
        return rng.normal(size=(12, 3)).astype(np.float32), {"attention_mask": np.ones((12, 5), np.int64)}
    width = 16 if TASKS[task].decoder else 4  # logits over a vocabulary of 16, or hidden states
    ids = rng.integers(0, 16, (12, 5))
    return rng.normal(size=(12, 5, width)).astype(np.float32), {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_scores_exactly_the_metrics_it_declares(task: str) -> None:
    spec = TASKS[task]
    assert spec.name == task and spec.scores in SCORES and spec.use
    out, batch = _outputs(task)
    acc = metrics_for(task)
    acc.update(out, out * 1.01, batch)
    assert set(acc.result()) - REPORTED_ONLY == set(spec.metrics) - FROM_GENERATION
    assert TASK_METRICS[task] == spec.metrics
    assert FROM_GENERATION.isdisjoint(spec.metrics) or spec.past  # only a KV-cache graph generates


def test_every_reader_of_tasks_lists_the_registry() -> None:
    assert set(ALL_TASKS) == set(TASKS)  # what structural discovery offers
    assert set(TEXT_TASKS) == {name for name, spec in TASKS.items() if not spec.decoder}
    task_help = next(a.help for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions
                     if "--task" in a.option_strings)
    assert all(name in task_help for name in TASKS)


@pytest.mark.parametrize("family", sorted(registry()))
def test_every_family_lists_only_registered_tasks(family: str) -> None:
    tasks = registry()[family].tasks
    assert tasks and set(tasks) <= set(TASKS), f"{family} lists a task the registry does not have"


def test_every_metric_a_task_measures_or_a_limit_names_has_one_record() -> None:
    """One Metric per metric (ceiling or floor, and the range of its limits): a metric a task declares, or a
    default limit names, without one fails here, and so does a Metric no task measures."""
    declared = {m for spec in TASKS.values() for m in spec.metrics}
    limited = {m for limits in DEFAULT_LIMITS.values() for m in limits}
    assert declared | limited == set(METRICS)
    assert all(name == m.name for name, m in METRICS.items())
    assert METRICS["perplexity_ratio"].holds(1.05, 1.10) and not METRICS["cosine_min"].holds(0.5, 0.9)
    assert METRICS["perplexity_ratio"].limit_problem(0.9) and METRICS["top1_agreement"].limit_problem(0.9) is None
