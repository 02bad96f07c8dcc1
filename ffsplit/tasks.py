"""Export tasks: which model class each loads, what the graph outputs, how inputs are padded.

``auto`` picks from the model's declared architectures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ffsplit.errors import UsageError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    auto_class: str  # transformers auto class that loads the model with its head
    output: str  # the graph's output, and the model output's attribute
    padding_side: str  # decoders pad on the left so the last position is a real token
    position_ids: bool  # decoders take explicit positions so left padding does not shift them
    decoder: bool = False
    past: bool = False  # KV cache inputs and outputs: one graph for prefill (past length 0) and decode


TASKS: dict[str, TaskSpec] = {
    "feature-extraction": TaskSpec("feature-extraction", "AutoModel", "last_hidden_state", "right", False),
    "text-classification": TaskSpec(
        "text-classification", "AutoModelForSequenceClassification", "logits", "right", False
    ),
    "causal-lm": TaskSpec("causal-lm", "AutoModelForCausalLM", "logits", "left", True, decoder=True),
    "causal-lm-with-past": TaskSpec(
        "causal-lm-with-past", "AutoModelForCausalLM", "logits", "left", True, decoder=True, past=True
    ),
}


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
