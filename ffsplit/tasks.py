"""Export tasks: which model class each loads, what the graph outputs, how inputs are padded.

``auto`` picks from the model's declared architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ffsplit.errors import UsageError


@dataclass(frozen=True)
class TaskSpec:
    """Everything ffsplit knows about a task, in one place: a new task is one entry of ``TASKS`` (and, when its
    outputs are scored in a new way, one accumulator in ``parity.metrics``)."""

    name: str
    auto_class: str  # transformers auto class that loads the model with its head
    output: str  # the graph's output, and the model output's attribute
    padding_side: str  # decoders pad on the left so the last position is a real token
    position_ids: bool  # decoders take explicit positions so left padding does not shift them
    metrics: tuple[str, ...]  # what parity compares (limits.py: the limits each may be held to)
    scores: str  # the accumulator of parity.metrics that computes them
    use: str  # how an artifact of the task is run: the ffsplit.load(...) method, or what to do instead
    decoder: bool = False
    past: bool = False  # KV cache inputs and outputs: one graph for prefill (past length 0) and decode
    pooled: bool = False  # token states a sentence-transformers pooling turns into sentence embeddings


_ERRORS = ("max_abs", "mean_abs")
_LM = (*_ERRORS, "top1_agreement", "top5_agreement", "perplexity", "perplexity_ratio")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("feature-extraction", "AutoModel", "last_hidden_state", "right", False,
             metrics=(*_ERRORS, "cosine_min", "cosine_mean", "retrieval_at10"), scores="hidden-state",
             use="encode()", pooled=True),
    TaskSpec("text-classification", "AutoModelForSequenceClassification", "logits", "right", False,
             metrics=(*_ERRORS, "label_agreement"), scores="classification", use="predict()"),
    TaskSpec("causal-lm", "AutoModelForCausalLM", "logits", "left", True, metrics=_LM, scores="causal-lm",
             use="the runner directly (no KV cache: export with --task causal-lm-with-past to generate)",
             decoder=True),
    TaskSpec("causal-lm-with-past", "AutoModelForCausalLM", "logits", "left", True,
             metrics=(*_LM, "generation_agreement"), scores="causal-lm", use="generate()", decoder=True, past=True),
)}


def auto_task(config: dict[str, Any]) -> str:
    """The task a model folder was made for, from ``architectures`` in its config.json."""
    archs = config.get("architectures") or []
    if not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise UsageError(f"config.json: 'architectures' must be a list of class names, not {str(archs)[:60]!r}: "
                         "repair the model's config.json, or pass --task")
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text-classification"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm-with-past"  # decoders are exported ready to generate
    return "feature-extraction"


def get_task(name: str, config: dict[str, Any] | None = None) -> TaskSpec:
    if name == "auto":
        name = auto_task(config or {})
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}': use auto or one of {', '.join(TASKS)}")
    return TASKS[name]
