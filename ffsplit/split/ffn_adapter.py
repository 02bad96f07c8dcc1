"""The FFN adapter base class and ``@register``: what a family module under ``ffsplit/split/families/``
declares (the layer list, the projections, the activation, what the ``SplitFFN`` replaces), and the
module helpers adapters use. ``adapters`` holds the registry lookups built on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type[FFNAdapter]] = {}


def register(cls: type[FFNAdapter]) -> type[FFNAdapter]:
    if cls.family in _REGISTRY:
        raise ValueError(f"adapter family {cls.family!r} registered twice")
    _REGISTRY[cls.family] = cls
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

    def tensors(self) -> list[torch.Tensor]:
        """Every weight and bias of this FFN."""
        return [t for t in (self.w_in, self.b_in, self.w_out, self.b_out, self.w_gate, self.b_gate) if t is not None]

    def macs(self) -> int:
        """Weight multiply-adds per token."""
        return sum(t.numel() for t in (self.w_in, self.w_out, self.w_gate) if t is not None)

    @property
    def gate(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        return None if self.w_gate is None else (self.w_gate, self.b_gate)


class FFNAdapter:
    """Where one family keeps its FFN. Subclasses set the class attributes only.

    A gated MLP computes ``fc_out(act(gate) * up)``: either from two projections
    (``fc_gate`` and ``fc_in``), or from one fused projection ``fc_gate_up`` whose
    output rows hold the half that goes through ``act`` first and the other half
    second (Phi-3's ``gate_up_proj``, ModernBERT's ``Wi``). A fused projection is
    split into the same two halves, so the heavy neurons are the same rows of both.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    layers: ClassVar[str]
    fc_in: ClassVar[str | None] = None
    fc_gate: ClassVar[str | None] = None
    fc_gate_up: ClassVar[str | None] = None
    act: ClassVar[str]
    fc_out: ClassVar[str]
    replace: ClassVar[str]
    identities: ClassVar[tuple[str, ...]] = ()
    tasks: ClassVar[tuple[str, ...]] = ("feature-extraction",)

    @classmethod
    def gated(cls) -> bool:
        return cls.fc_gate is not None or cls.fc_gate_up is not None

    @classmethod
    def layer_modules(cls, model: nn.Module) -> list[nn.Module]:
        """The layers of ``model`` (a task model or its backbone)."""
        return list(get_submodule(backbone(model), cls.layers))

    @classmethod
    def hooked(cls, layer: nn.Module) -> nn.Module:
        """The projection whose input and output the profiler reads (the FFN's first multiply)."""
        path = cls.fc_gate_up or cls.fc_in
        assert path is not None
        return get_submodule(layer, path)

    @classmethod
    def activation(cls, layer: nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The input of ``fc_out`` from the hooked projection's input ``x`` and output ``z``."""
        act = get_submodule(layer, cls.act)
        if cls.fc_gate_up is not None:
            first, second = z.chunk(2, dim=-1)
            return act(first) * second
        if cls.fc_gate is not None:
            return act(get_submodule(layer, cls.fc_gate)(x)) * z
        return act(z)

    @classmethod
    def _projections(cls, layer: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None] | None]:
        """in / gate / out as (weight (out, in), bias); raises AttributeError when a path is missing."""
        get_submodule(layer, cls.act)
        out: dict[str, tuple[torch.Tensor, torch.Tensor | None] | None] = {
            "out": projection(get_submodule(layer, cls.fc_out)),
        }
        if cls.fc_gate_up is not None:
            fused = projection(get_submodule(layer, cls.fc_gate_up))
            if fused is None or fused[0].shape[0] % 2:
                return {"out": None}
            w_gate, w_up = fused[0].chunk(2, dim=0)
            b_gate, b_up = fused[1].chunk(2, dim=0) if fused[1] is not None else (None, None)
            out["gate"], out["in"] = (w_gate, b_gate), (w_up, b_up)
        else:
            assert cls.fc_in is not None
            out["in"] = projection(get_submodule(layer, cls.fc_in))
            out["gate"] = projection(get_submodule(layer, cls.fc_gate)) if cls.fc_gate else None
        return out

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
                p = cls._projections(layer)
            except AttributeError:
                return False
            p_in, p_out, p_gate = p.get("in"), p["out"], p.get("gate")
            if p_in is None or p_out is None or (cls.gated() and p_gate is None):
                return False
            if p_in[0].shape != p_out[0].T.shape or (p_gate is not None and p_gate[0].shape != p_in[0].shape):
                return False
        return True

    @classmethod
    def weights(cls, layer: nn.Module) -> FFNWeights:
        p = cls._projections(layer)
        p_in, p_out, p_gate = p["in"], p["out"], p["gate"] or (None, None)
        assert p_in is not None and p_out is not None
        return FFNWeights(
            w_in=p_in[0], b_in=p_in[1], w_out=p_out[0], b_out=p_out[1], act=get_submodule(layer, cls.act),
            w_gate=p_gate[0], b_gate=p_gate[1],
        )

    @classmethod
    def install(cls, layer: nn.Module, split: nn.Module) -> None:
        set_submodule(layer, cls.replace, split)
        for path in cls.identities:
            set_submodule(layer, path, nn.Identity())
