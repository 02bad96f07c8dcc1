"""The modules a graph is captured from: the task's output (with sentence-transformers' pooling in the graph when
the source has it), and a causal LM with its KV cache as flat tensors."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ffsplit.errors import UsageError
from ffsplit.pooling import Pooling
from ffsplit.tasks import TaskSpec


def pooled(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...], normalize: bool) -> torch.Tensor:
    """sentence-transformers' Pooling (then Normalize) in torch, so the graph carries the embedding users want."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(torch.where(m > 0, hidden, torch.full_like(hidden, -1e9)).amax(1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = m.sum(1).clamp(min=1e-9)
            parts.append((hidden * m).sum(1) / (count if mode == "mean" else count.sqrt()))
        elif mode == "lasttoken":
            last = (mask.sum(1) - 1).clamp(min=0)
            parts.append(hidden[torch.arange(hidden.shape[0]), last])
        else:
            raise UsageError(f"pooling '{mode}' cannot be put in the graph")
    out = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out


class TaskWrapper(nn.Module):
    """Model -> the task's output (and, given ``pooling``, the pooled ``sentence_embedding`` after it),
    taking exactly ``names`` as positional tensor inputs.

    The forward signature is set per instance so torch.export binds each input by name.
    """

    def __init__(self, model: nn.Module, task: TaskSpec, names: list[str], pooling: Pooling | None = None) -> None:
        super().__init__()
        self.model = model
        self.output = task.output
        self.names = list(names)

        def forward(*args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            kwargs = dict(zip(self.names, args, strict=True))
            if task.decoder:
                kwargs["use_cache"] = False  # this graph has no KV cache outputs
            out = getattr(self.model(**kwargs), self.output)
            if pooling is None:
                return out
            return out, pooled(out, kwargs["attention_mask"], pooling.modes, pooling.normalize)

        forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in self.names]
        )
        self.forward = forward  # type: ignore[method-assign]


class PastWrapper(nn.Module):
    """Causal LM with a KV cache as flat tensors, for one graph that serves prefill and decode.

    Inputs: input_ids, attention_mask (past + new tokens), position_ids, then
    ``past_key_values.<i>.key`` / ``.value`` of shape (batch, kv_heads, past, head_dim),
    empty (past 0) for the prefill. Outputs: logits, then ``present.<i>.key`` / ``.value``
    holding past + new positions.
    """

    def __init__(self, model: nn.Module, layers: int) -> None:
        super().__init__()
        self.model = model
        self.layers = layers

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(
            ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)], config=self.model.config
        )
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=cache, use_cache=True,
        )
        flat: list[torch.Tensor] = []
        for layer in out.past_key_values.layers:
            flat += [layer.keys, layer.values]
        return (out.logits, *flat)


def kv_shape(model: nn.Module) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a causal LM's cache, read off one tiny forward."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[1, 2]]), use_cache=True)
    layers = out.past_key_values.layers
    return len(layers), int(layers[0].keys.shape[1]), int(layers[0].keys.shape[3])
