"""FFN adapters: the registry and model matching (the base class is in ``ffn_adapter``).

An adapter is a small declarative class registered with ``@register``, one
file per family in ``ffsplit/split/families/``. It names, relative to the
backbone (``model.base_model``), the list of layers and, relative to one
layer, the input projection, the optional gate projection (or one fused
gate+up projection), the activation and the output projection, plus which
module is replaced by the ``SplitFFN`` and which become identities so the
layer's own forward still adds the residual. A model is matched by
``config.model_type`` first and then by layout, so families that share a
layout (RoBERTa and the other BERT descendants; the many decoders with a
Llama-style gated MLP) work without an adapter of their own.
"""

from __future__ import annotations

from torch import nn

import ffsplit.split.families  # noqa: F401  (each family module registers its adapter on import)
from ffsplit.errors import UsageError
from ffsplit.split.ffn_adapter import _REGISTRY, FFNAdapter, backbone, projection


def registry() -> dict[str, type[FFNAdapter]]:
    """family -> adapter, with every family module under ``ffsplit/split/families`` imported."""
    return _REGISTRY


def support_matrix() -> str:
    """The family x task table of README, generated from the registry (README is checked against it)."""
    from ffsplit.tasks import TASKS

    tasks = list(TASKS)
    lines = [
        "| family | model types (plus any model with the same FFN layout) | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for name, a in sorted(registry().items()):
        marks = " | ".join("yes" if t in a.tasks else "-" for t in tasks)
        lines.append(f"| {name} | {', '.join(a.model_types)} | {marks} |")
    return "\n".join(lines)


def supported_families() -> str:
    return ", ".join(f"{name} ({', '.join(a.model_types)})" for name, a in sorted(registry().items()))


def describe_layout(model: nn.Module) -> str:
    """What a model's layers hold, for the error naming an unknown layout: the longest list of
    layers in the backbone and the projections of its first layer."""
    lists = [(path, mod) for path, mod in backbone(model).named_modules() if isinstance(mod, nn.ModuleList) and len(mod)]
    if not lists:
        return f"no list of layers in {type(backbone(model)).__name__}"
    path, layers = max(lists, key=lambda pm: (len(pm[1]), -pm[0].count(".")))
    names = [name for name, mod in layers[0].named_modules() if name and projection(mod) is not None]
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return f"{len(layers)} layers at '{path or '.'}' ({type(layers[0]).__name__}) whose projections are {shown or 'none'}"


def find_adapter(model: nn.Module) -> type[FFNAdapter]:
    """The adapter for ``model``: by model_type when it also fits, else the first whose layout fits, else
    one found by structure (``discover``)."""
    adapters = registry()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in adapters.values():
        if model_type in adapter.model_types and adapter.matches_layout(model):
            return adapter
    for adapter in adapters.values():
        if adapter.matches_layout(model):
            return adapter
    from ffsplit.split.discover import discover_adapter

    try:
        discovered, refusal = discover_adapter(model), ""
    except UsageError as exc:  # the shapes are there, but the MLP is not exactly up -> act -> down
        discovered, refusal = None, f"{exc}; "
    if discovered is not None and discovered.matches_layout(model):
        return discovered
    listed = next((a.family for a in adapters.values() if model_type in a.model_types), None)
    why = (
        f"model_type '{model_type}' is listed under the {listed} family, but this model's FFN does not have "
        "that family's layout" if listed else f"model_type '{model_type}' has no FFN layout ffsplit knows"
    )
    raise UsageError(
        f"unsupported architecture: {why} ({type(model).__name__}: {describe_layout(model)}); {refusal}"
        f"supported families: {supported_families()}"
    )
