"""Heavy-hitter profiling over calibration tokens.

The score of FFN neuron j is ``mean_t |a_tj| * ||W_out[:, j]||_2`` over the
non-padding calibration tokens t, ``a`` being the activation
(``act(gate_j) * up_j`` for a gated MLP). The same pass
gathers the second moments of each FFN's input and activations, which the
activation-aware low-rank compressor whitens with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ffsplit.split.adapters import FFNAdapter
from ffsplit.split.calibration import encode_batches, model_inputs


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


@torch.no_grad()
def profile_model(
    model: torch.nn.Module,
    adapter: type[FFNAdapter],
    tokenizer,  # noqa: ANN001
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
    n = len(layers)
    sum_abs: list[torch.Tensor | None] = [None] * n
    sum_a: list[torch.Tensor | None] = [None] * n
    kept: list[list[torch.Tensor]] = [[] for _ in range(n)]
    mom_x: list[torch.Tensor | None] = [None] * n
    mom_a: list[torch.Tensor | None] = [None] * n
    amax: list[torch.Tensor | None] = [None] * n
    state: dict[str, torch.Tensor] = {}
    tokens = 0

    def make_hook(i: int, layer: torch.nn.Module):  # noqa: ANN202
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            keep = state["mask"]
            x_all = inputs[0].reshape(-1, inputs[0].shape[-1])
            # OPT flattens its tokens before fc1; others keep (batch, seq, d).
            if x_all.shape[0] != keep.shape[0]:
                raise AssertionError(f"FFN input has {x_all.shape[0]} tokens, the mask {keep.shape[0]}")
            x = x_all[keep].float()
            if len(x):
                m = x.abs().amax(0)
                amax[i] = m if amax[i] is None else torch.maximum(amax[i], m)
            z = output.reshape(-1, output.shape[-1])[keep]
            a = adapter.activation(layer, x_all[keep], z).float()
            s = a.abs().sum(0).double()
            sum_abs[i] = s if sum_abs[i] is None else sum_abs[i] + s
            have = sum(len(t) for t in kept[i])
            if have < samples:  # the first real tokens, in calibration order: deterministic
                kept[i].append(x[: samples - have].detach().clone())
            sa = a.sum(0).double()
            sum_a[i] = sa if sum_a[i] is None else sum_a[i] + sa
            if moments:
                # fp32 within a batch (fast), fp64 across batches (no drift over many tokens).
                mx, ma = (x.T @ x).double(), (a.T @ a).double()
                mom_x[i] = mx if mom_x[i] is None else mom_x[i] + mx
                mom_a[i] = ma if mom_a[i] is None else mom_a[i] + ma

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(adapter.hooked(layer).register_forward_hook(make_hook(i, layer)))
    try:
        batches = list(encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length))
        for batch in tqdm(batches, desc="profiling", unit="batch", disable=not progress, leave=False):
            state["mask"] = batch["attention_mask"].reshape(-1).bool()
            tokens += int(state["mask"].sum())
            model(**model_inputs(model, batch, position_ids=position_ids))
    finally:
        for h in handles:
            h.remove()

    out = []
    for i, layer in enumerate(layers):
        w_out = adapter.weights(layer).w_out.double()
        mean_abs = sum_abs[i] / tokens
        out.append(
            LayerProfile(
                scores=mean_abs * w_out.norm(dim=0),
                mean_abs_act=mean_abs,
                input_moment=None if mom_x[i] is None else mom_x[i] / tokens,
                act_moment=None if mom_a[i] is None else mom_a[i] / tokens,
                tokens=tokens,
                act_mean=sum_a[i] / tokens,
                samples=torch.cat(kept[i]) if kept[i] else None,
                input_absmax=amax[i],
            )
        )
    return out


@torch.no_grad()
def input_absmax(
    model: torch.nn.Module, modules: list[str], tokenizer, texts: list[str], *,  # noqa: ANN001
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
