"""Heavy-hitter profiling over calibration tokens.

The score of FFN neuron j is ``mean_t |a_tj| * ||W_out[:, j]||_2`` over the
non-padding calibration tokens t, ``a`` being the activation
(``act(gate_j) * up_j`` for a gated MLP). The same pass
gathers the second moments of each FFN's input and activations, which the
activation-aware low-rank compressor whitens with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ffsplit.split.calibration import encode_batches, model_inputs
from ffsplit.split.ffn_adapter import FFNAdapter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class LayerProfile:
    """What calibration saw in one layer's FFN (float64 accumulators, already divided by ``tokens``)."""

    scores: torch.Tensor  # (d_ff,)
    mean_abs_act: torch.Tensor  # (d_ff,)
    input_moment: torch.Tensor | None  # E[x x^T], (d_model, d_model)
    act_moment: torch.Tensor | None  # E[a a^T], (d_ff, d_ff)
    tokens: int
    act_mean: torch.Tensor | None = None  # E[a], (d_ff,): what a pruned neuron contributed on average
    samples: torch.Tensor | None = None  # (n, d_model) real FFN inputs, for measuring a candidate's output error
    input_absmax: torch.Tensor | None = None  # (d_model,) max |x_j| per input channel: activation smoothing


def _plus(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value


@dataclass
class _Sums:
    """What the profiling hook adds up for one layer over the calibration tokens (padding masked out)."""

    samples: int  # how many FFN inputs to keep
    moments: bool
    abs_act: torch.Tensor | None = None
    act: torch.Tensor | None = None
    moment_x: torch.Tensor | None = None
    moment_a: torch.Tensor | None = None
    absmax: torch.Tensor | None = None
    kept: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, a: torch.Tensor) -> None:
        """``x``: the real tokens' FFN inputs (n, d_model); ``a``: their activations (n, d_ff), fp32."""
        if len(x):
            m = x.abs().amax(0)
            self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
        self.abs_act = _plus(self.abs_act, a.abs().sum(0).double())
        self.act = _plus(self.act, a.sum(0).double())
        have = sum(len(t) for t in self.kept)
        if have < self.samples:  # the first real tokens, in calibration order: deterministic
            self.kept.append(x[: self.samples - have].detach().clone())
        if self.moments:
            # fp32 within a batch (fast), fp64 across batches (no drift over many tokens).
            self.moment_x = _plus(self.moment_x, (x.T @ x).double())
            self.moment_a = _plus(self.moment_a, (a.T @ a).double())

    def profile(self, w_out: torch.Tensor, tokens: int) -> LayerProfile:
        assert self.abs_act is not None and self.act is not None, "no calibration token reached this layer"
        mean_abs = self.abs_act / tokens
        return LayerProfile(
            scores=mean_abs * w_out.double().norm(dim=0), mean_abs_act=mean_abs,
            input_moment=None if self.moment_x is None else self.moment_x / tokens,
            act_moment=None if self.moment_a is None else self.moment_a / tokens,
            tokens=tokens, act_mean=self.act / tokens,
            samples=torch.cat(self.kept) if self.kept else None, input_absmax=self.absmax,
        )


@torch.no_grad()
def profile_model(
    model: torch.nn.Module,
    adapter: type[FFNAdapter],
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    moments: bool = True,
    progress: bool = True,
    position_ids: bool = False,
    samples: int = 0,
) -> list[LayerProfile]:
    layers = adapter.layer_modules(model)
    sums = [_Sums(samples, moments) for _ in layers]
    state: dict[str, torch.Tensor] = {}
    tokens = 0

    def make_hook(i: int, layer: torch.nn.Module):  # noqa: ANN202
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            keep = state["mask"]
            x_all = inputs[0].reshape(-1, inputs[0].shape[-1])
            # OPT flattens its tokens before fc1; others keep (batch, seq, d).
            if x_all.shape[0] != keep.shape[0]:
                raise AssertionError(f"FFN input has {x_all.shape[0]} tokens, the mask {keep.shape[0]}")
            z = output.reshape(-1, output.shape[-1])[keep]
            sums[i].add(x_all[keep].float(), adapter.activation(layer, x_all[keep], z).float())

        return hook

    handles = [adapter.hooked(layer).register_forward_hook(make_hook(i, layer)) for i, layer in enumerate(layers)]
    try:
        batches = list(encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length))
        for batch in tqdm(batches, desc="profiling", unit="batch", disable=not progress, leave=False):
            state["mask"] = batch["attention_mask"].reshape(-1).bool()
            tokens += int(state["mask"].sum())
            model(**model_inputs(model, batch, position_ids=position_ids))
    finally:
        for h in handles:
            h.remove()
    return [total.profile(adapter.weights(layer).w_out, tokens) for total, layer in zip(sums, layers, strict=True)]


@torch.no_grad()
def input_absmax(
    model: torch.nn.Module, modules: list[str], tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
    batch_size: int = 16, max_length: int = 128, position_ids: bool = False,
) -> dict[str, float]:
    """The largest |input| each module sees over the calibration tokens (padding excluded).

    Static activation scales (QDQ for TensorRT int8) come from these.
    """
    seen = dict.fromkeys(modules, 0.0)
    state: dict[str, torch.Tensor] = {}
    handles = []
    for path in modules:
        def hook(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: str = path) -> None:
            x = inputs[0]
            keep = state["mask"]
            if x.dim() >= 2 and x.shape[:2] == keep.shape:
                x = x[keep]
            if x.numel():
                seen[path] = max(seen[path], float(x.abs().max()))

        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        for batch in encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length):
            state["mask"] = batch["attention_mask"].bool()
            model(**model_inputs(model, batch, position_ids=position_ids))
    finally:
        for h in handles:
            h.remove()
    return seen
