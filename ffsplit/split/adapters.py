"""FFN adapters: where each architecture family keeps its FFN, in a registry.

An adapter is a small declarative class registered with ``@register``. It
names, relative to the base (headless) model, the list of layers and, relative
to one layer, the input projection, the activation and the output projection,
plus which module is replaced by the ``SplitFFN`` and which become identities.
A model is matched by ``config.model_type`` first and then by layout, so
families that share a layout (RoBERTa and the other BERT descendants) work
without an adapter of their own.
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


@dataclass
class FFNWeights:
    """One layer's FFN in the nn.Linear convention: ``w_in`` is (d_ff, d_model), ``w_out`` (d_model, d_ff)."""

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    act: nn.Module


class FFNAdapter:
    """Where one family keeps its FFN. Subclasses set the class attributes only."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    layers: ClassVar[str]
    fc_in: ClassVar[str]
    act: ClassVar[str]
    fc_out: ClassVar[str]
    # The module replaced by SplitFFN, and the modules that become identities so
    # the layer's own forward still adds the residual and normalises.
    replace: ClassVar[str]
    identities: ClassVar[tuple[str, ...]]
    tasks: ClassVar[tuple[str, ...]] = ("feature-extraction",)

    @classmethod
    def layer_modules(cls, model: nn.Module) -> list[nn.Module]:
        return list(get_submodule(model, cls.layers))

    @classmethod
    def layer_path(cls, index: int) -> str:
        return f"{cls.layers}.{index}"

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
                fc_in = get_submodule(layer, cls.fc_in)
                fc_out = get_submodule(layer, cls.fc_out)
                get_submodule(layer, cls.act)
            except AttributeError:
                return False
            if not (isinstance(fc_in, nn.Linear) and isinstance(fc_out, nn.Linear)):
                return False
            if fc_in.out_features != fc_out.in_features or fc_in.in_features != fc_out.out_features:
                return False
        return True

    @classmethod
    def weights(cls, layer: nn.Module) -> FFNWeights:
        fc_in = get_submodule(layer, cls.fc_in)
        fc_out = get_submodule(layer, cls.fc_out)
        assert isinstance(fc_in, nn.Linear) and isinstance(fc_out, nn.Linear)
        return FFNWeights(
            w_in=fc_in.weight.detach(),
            b_in=None if fc_in.bias is None else fc_in.bias.detach(),
            w_out=fc_out.weight.detach(),
            b_out=None if fc_out.bias is None else fc_out.bias.detach(),
            act=get_submodule(layer, cls.act),
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
