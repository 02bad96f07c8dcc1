"""FFN adapters: where each architecture family keeps its FFN, in a registry.

An adapter is a small declarative class registered with ``@register``. It
names, relative to the backbone (``model.base_model``), the list of layers and,
relative to one layer, the input projection, the optional gate projection, the
activation and the output projection, plus which module is replaced by the
``SplitFFN`` and which become identities so the layer's own forward still adds
the residual. A model is matched by ``config.model_type`` first and then by
layout, so families that share a layout (RoBERTa and the other BERT
descendants; the many decoders with a Llama-style gated MLP) work without an
adapter of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ffsplit.errors import UsageError

REGISTRY: dict[str, type[FFNAdapter]] = {}


def register(cls: type[FFNAdapter]) -> type[FFNAdapter]:
    if cls.family in REGISTRY:
        raise ValueError(f"adapter family {cls.family!r} registered twice")
    REGISTRY[cls.family] = cls
    return cls


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(get_submodule(root, parent_path), name, module)


def backbone(model: nn.Module) -> nn.Module:
    """The headless model inside a task model (BertForSequenceClassification -> BertModel)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2): a Linear whose weight is stored (in, out).
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def projection(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight as (out, in), bias) of a Linear or Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.weight.detach(), None if module.bias is None else module.bias.detach()
    if _is_conv1d(module):
        return module.weight.detach().T, None if module.bias is None else module.bias.detach()
    return None


@dataclass
class FFNWeights:
    """One layer's FFN in the nn.Linear convention: ``w_in`` is (d_ff, d_model), ``w_out`` (d_model, d_ff)."""

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    act: nn.Module
    w_gate: torch.Tensor | None = None
    b_gate: torch.Tensor | None = None

    def params(self) -> int:
        """Parameters of this FFN, biases included."""
        return sum(t.numel() for t in (self.w_in, self.b_in, self.w_out, self.b_out, self.w_gate, self.b_gate) if t is not None)

    def macs(self) -> int:
        """Weight multiply-adds per token."""
        return sum(t.numel() for t in (self.w_in, self.w_out, self.w_gate) if t is not None)

    @property
    def gate(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        return None if self.w_gate is None else (self.w_gate, self.b_gate)


class FFNAdapter:
    """Where one family keeps its FFN. Subclasses set the class attributes only."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    layers: ClassVar[str]
    fc_in: ClassVar[str]
    fc_gate: ClassVar[str | None] = None
    act: ClassVar[str]
    fc_out: ClassVar[str]
    replace: ClassVar[str]
    identities: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ("feature-extraction",)

    @classmethod
    def gated(cls) -> bool:
        return cls.fc_gate is not None

    @classmethod
    def layer_modules(cls, model: nn.Module) -> list[nn.Module]:
        """The layers of ``model`` (a task model or its backbone)."""
        return list(get_submodule(backbone(model), cls.layers))

    @classmethod
    def matches_layout(cls, model: nn.Module) -> bool:
        try:
            layers = cls.layer_modules(model)
        except (AttributeError, TypeError):
            return False
        if not layers:
            return False
        for layer in layers:
            try:
                p_in = projection(get_submodule(layer, cls.fc_in))
                p_out = projection(get_submodule(layer, cls.fc_out))
                p_gate = projection(get_submodule(layer, cls.fc_gate)) if cls.fc_gate else None
                get_submodule(layer, cls.act)
            except AttributeError:
                return False
            if p_in is None or p_out is None or (cls.fc_gate and p_gate is None):
                return False
            if p_in[0].shape != p_out[0].T.shape or (p_gate is not None and p_gate[0].shape != p_in[0].shape):
                return False
        return True

    @classmethod
    def weights(cls, layer: nn.Module) -> FFNWeights:
        p_in = projection(get_submodule(layer, cls.fc_in))
        p_out = projection(get_submodule(layer, cls.fc_out))
        assert p_in is not None and p_out is not None
        p_gate = projection(get_submodule(layer, cls.fc_gate)) if cls.fc_gate else (None, None)
        assert p_gate is not None
        return FFNWeights(
            w_in=p_in[0], b_in=p_in[1], w_out=p_out[0], b_out=p_out[1], act=get_submodule(layer, cls.act),
            w_gate=p_gate[0], b_gate=p_gate[1],
        )

    @classmethod
    def install(cls, layer: nn.Module, split: nn.Module) -> None:
        set_submodule(layer, cls.replace, split)
        for path in cls.identities:
            set_submodule(layer, path, nn.Identity())


@register
class BertAdapter(FFNAdapter):
    """BERT and its descendants: ``intermediate.dense -> act -> output.dense``, then residual + LayerNorm."""

    family = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet")
    layers = "encoder.layer"
    fc_in = "intermediate.dense"
    act = "intermediate.intermediate_act_fn"
    fc_out = "output.dense"
    replace = "intermediate"
    identities = ("output.dense",)
    tasks = ("feature-extraction", "text-classification")


@register
class DistilBertAdapter(FFNAdapter):
    """DistilBERT: ``ffn.lin1 -> ffn.activation -> ffn.lin2``."""

    family = "distilbert"
    model_types = ("distilbert",)
    layers = "transformer.layer"
    fc_in = "ffn.lin1"
    act = "ffn.activation"
    fc_out = "ffn.lin2"
    replace = "ffn.lin1"
    identities = ("ffn.activation", "ffn.lin2")
    tasks = ("feature-extraction", "text-classification")


@register
class GPT2Adapter(FFNAdapter):
    """GPT-2: Conv1D projections (weights stored transposed) ``mlp.c_fc -> mlp.act -> mlp.c_proj``."""

    family = "gpt2"
    model_types = ("gpt2",)
    layers = "h"
    fc_in = "mlp.c_fc"
    act = "mlp.act"
    fc_out = "mlp.c_proj"
    replace = "mlp.c_fc"
    identities = ("mlp.act", "mlp.c_proj")
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")


@register
class OPTAdapter(FFNAdapter):
    """OPT: ``fc1 -> activation_fn (ReLU) -> fc2`` directly on the decoder layer."""

    family = "opt"
    model_types = ("opt",)
    layers = "decoder.layers"
    fc_in = "fc1"
    act = "activation_fn"
    fc_out = "fc2"
    replace = "fc1"
    identities = ("activation_fn", "fc2")
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")


@register
class LlamaAdapter(FFNAdapter):
    """Decoders with a Llama-style gated MLP: ``down(act(gate(x)) * up(x))``."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    layers = "layers"
    fc_in = "mlp.up_proj"
    fc_gate = "mlp.gate_proj"
    act = "mlp.act_fn"
    fc_out = "mlp.down_proj"
    replace = "mlp"
    tasks = ("feature-extraction", "causal-lm", "causal-lm-with-past")


def support_matrix() -> str:
    """The family x task table of README, generated from the registry (README is checked against it)."""
    from ffsplit.tasks import TASKS

    tasks = list(TASKS)
    lines = [
        "| family | model types (plus any model with the same FFN layout) | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for name, a in sorted(REGISTRY.items()):
        marks = " | ".join("yes" if t in a.tasks else "-" for t in tasks)
        lines.append(f"| {name} | {', '.join(a.model_types)} | {marks} |")
    return "\n".join(lines)


def supported_families() -> str:
    return ", ".join(f"{name} ({', '.join(a.model_types)})" for name, a in sorted(REGISTRY.items()))


def find_adapter(model: nn.Module) -> type[FFNAdapter]:
    """The adapter for ``model``: by model_type when it also fits, else the first whose layout fits."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in REGISTRY.values():
        if model_type in adapter.model_types and adapter.matches_layout(model):
            return adapter
    for adapter in REGISTRY.values():
        if adapter.matches_layout(model):
            return adapter
    raise UsageError(
        f"unsupported architecture: model_type '{model_type}' ({type(model).__name__}) has no FFN layout "
        f"ffsplit knows; supported families: {supported_families()}"
    )
