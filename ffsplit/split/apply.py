"""Turn a profiled model into a split one, layer by layer in place, with what the manifest records of each
layer (``split/rebuild.py`` rebuilds a split model from the saved weights)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from ffsplit.errors import UsageError
from ffsplit.manifest import LayerPlan
from ffsplit.residency import fp32_value
from ffsplit.resources import forget_file_pages
from ffsplit.split.compress import (
    LightRecipe,
    Quantized,
    activation_error,
    heavy_weight,
    lowrank_factors,
    quantize,
    smooth_int8,
)
from ffsplit.split.ffn_adapter import FFNAdapter, FFNWeights
from ffsplit.split.modules import (
    Branch,
    GridLinear,
    SplitFFN,
    count_params,
    dense_branch,
    down_branch,
    lowrank_branch,
    shared_up,
)
from ffsplit.split.profile import LayerProfile


def heavy_count(d_ff: int, ratio: float, *, align: int = 8) -> int:
    """The top ``ratio`` of neurons rounded to a multiple of 8 (at least 8), leaving a light branch.

    ``align`` > 8 (a runtime's int4 group along the light branch's input) rounds to a multiple of it where
    the FFN's width is one too and the ratio asks for at least one, so the light branch's width is a whole
    number of groups; otherwise to the largest power of two below it that does, down to 8.
    """
    if not 0.0 < ratio < 1.0:
        raise UsageError(f"heavy ratio {ratio} is outside (0, 1): pass e.g. --heavy-ratio 0.1")
    while align > 8:
        k = int(round(ratio * d_ff / align)) * align
        if d_ff % align == 0 and 0 < k < d_ff:
            return k
        align //= 2
    k = max(8, int(round(ratio * d_ff / 8.0)) * 8)
    if k >= d_ff:
        raise UsageError(
            f"heavy ratio {ratio} leaves no light neurons in an FFN of width {d_ff}: pass a smaller --heavy-ratio"
        )
    return k


def validate_recipe(adapter: type[FFNAdapter], model: nn.Module, ratio: float, recipe: LightRecipe) -> None:
    """Fail before any work if the recipe cannot apply to some layer."""
    for i, layer in enumerate(adapter.layer_modules(model)):
        d_ff, d_model = adapter.weights(layer).w_in.shape
        light = d_ff - heavy_count(d_ff, ratio)
        if recipe.structure == "prune" and light - math.ceil(recipe.prune * light) < 1:  # type: ignore[operator]
            raise UsageError(f"prune:{recipe.prune:g} removes every light neuron of layer {i}: choose a smaller P")
        if recipe.rank is None:
            continue
        if recipe.rank >= light:
            raise UsageError(
                f"rank {recipe.rank} is not smaller than the light width {light} of layer {i}: choose R < {light}"
            )
        useful = (d_model * light) // (d_model + light)
        if recipe.rank > useful:
            raise UsageError(
                f"rank {recipe.rank} would make layer {i}'s light branch larger than the dense one "
                f"({d_model}x{light}): choose R <= {useful}, or --light none"
            )


@dataclass(frozen=True)
class Storage:
    """Bytes per weight as the runtime stores each part of a split FFN, for the plan's byte counts. None: as
    ``split_model`` made the branch (fp32, or the int8 / int4 grid it quantised). ``shared_up``: the down form's
    one up-projection (and gate), stored as the runtime stores the model's other multiplies."""

    heavy: float | None = None
    light: float | None = None
    shared_up: float = 4.0


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx]


@dataclass
class SplitResult:
    split: SplitFFN
    heavy_idx: torch.Tensor
    errors: dict[str, float | None]
    # parameter path inside the SplitFFN -> quantisation (for bytes, and the precision pass)
    quantized: dict[str, Quantized] = field(default_factory=dict)

    def nbytes(self, branch: str) -> int:
        total = 0
        for name, p in getattr(self.split, branch).named_parameters():
            qw = self.quantized.get(f"{branch}.{name}")
            total += qw.nbytes() if qw is not None else p.numel() * 4
        return total


def _weights(branch: Branch) -> dict[str, nn.Linear]:
    """The Linear layers of a branch by path (fc_in, fc_gate, fc_out, or their down/up factors)."""
    return {name: m for name, m in branch.named_modules() if isinstance(m, nn.Linear)}


def split_layer(
    ffn: FFNWeights, profile: LayerProfile, k: int, recipe: LightRecipe, heavy_precision: str = "fp32",
    smooth_alpha: float | None = None, int8_qmax: int = 127, form: str = "both",
) -> SplitResult:
    """Build the SplitFFN for one layer's FFN: structure, then quantiser, then heavy precision.

    ``smooth_alpha`` smooths the activation of the light branch's dense int8
    input projections (fc_in, fc_gate), for runtimes that quantise activations;
    ``int8_qmax`` is the int8 grid's largest magnitude (64 where a CPU kernel could saturate).
    ``form`` ``down`` keeps one up-projection over all neurons (heavy first, at the precision the
    runtime gives the model's other projections) and splits only the down-projection.
    """
    order = torch.argsort(profile.scores, descending=True)
    heavy_idx = torch.sort(order[:k]).values
    light_idx = torch.sort(order[k:]).values
    b_out = ffn.b_out
    dropped = order[:0]
    if recipe.structure == "prune":
        # The light neurons by score, best first; the lowest fraction P goes, and its
        # average contribution is folded into the output bias.
        ranked = order[k:]
        keep = len(ranked) - math.ceil(recipe.prune * len(ranked))  # type: ignore[operator]
        light_idx, dropped = torch.sort(ranked[:keep]).values, ranked[keep:]
        if profile.act_mean is not None:  # in fp32 whatever the checkpoint's dtype: a computed value
            shift = (ffn.w_out[:, dropped].double() @ profile.act_mean[dropped]).float()
            b_out = shift if b_out is None else b_out.float() + shift

    def gate(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        return None if ffn.w_gate is None else (ffn.w_gate[idx], _rows(ffn.b_gate, idx))

    w_in_l, w_out_l = ffn.w_in[light_idx], ffn.w_out[:, light_idx]
    errors: dict[str, float | None] = {"light_in_error": None, "light_out_error": None}
    mom_a = None if profile.act_moment is None else profile.act_moment[light_idx][:, light_idx]
    factors = _factorizer(recipe.rank, profile) if recipe.structure == "lowrank" else None
    wide = torch.float32  # factors are computed values: fp32, whatever the checkpoint's dtype
    up = None
    if form == "down":
        both = torch.cat([heavy_idx, light_idx])
        up = shared_up(ffn.w_in[both], _rows(ffn.b_in, both), ffn.act, gate(both))
        heavy = down_branch(ffn.w_out[:, heavy_idx])
        light = down_branch(w_out_l, None if factors is None else factors(w_out_l.to(wide), moment=mom_a))
    else:
        heavy = dense_branch(ffn.w_in[heavy_idx], _rows(ffn.b_in, heavy_idx), ffn.w_out[:, heavy_idx], ffn.act,
                             gate(heavy_idx))
        if factors is None:
            light = dense_branch(w_in_l, _rows(ffn.b_in, light_idx), w_out_l, ffn.act, gate(light_idx))
        else:
            f_in = factors(w_in_l.to(wide), moment=profile.input_moment)
            f_out = factors(w_out_l.to(wide), moment=mom_a)
            g = gate(light_idx)
            f_gate = None if g is None else (factors(g[0].to(wide), moment=profile.input_moment), g[1])
            light = lowrank_branch(f_in, _rows(ffn.b_in, light_idx), f_out, ffn.act, f_gate)
    quantized = _quantize_branches(heavy, light, profile, recipe, heavy_precision, smooth_alpha, int8_qmax)
    if not recipe.exact:
        errors = _light_errors(ffn, profile, light, light_idx, dropped, w_in_l, w_out_l)
    return SplitResult(SplitFFN(heavy, light, b_out, up), heavy_idx, errors, quantized)


@torch.no_grad()
def _quantize_branches(heavy: Branch, light: Branch, profile: LayerProfile, recipe: LightRecipe, heavy_precision: str,
                       smooth_alpha: float | None, int8_qmax: int) -> dict[str, Quantized]:
    """Put each branch's weights on its grid, in place (a quantised Linear becomes a GridLinear holding 1 byte a
    weight; an fp32 heavy weight stays, or is rounded to fp16 / bf16 values); each grid's digest by weight path."""
    quantized: dict[str, Quantized] = {}
    for name, lin in _weights(light).items():
        if smooth_alpha is not None and recipe.quant == "int8" and name in ("fc_in", "fc_gate") \
                and profile.input_absmax is not None:
            qw = smooth_int8(lin.weight.detach(), profile.input_absmax, smooth_alpha, int8_qmax)
        else:
            qw = quantize(lin.weight.detach(), recipe, int8_qmax)
        if qw is not None:  # the branch holds the grid (1 byte a weight), the plan its digest
            light.set_submodule(name, GridLinear.from_quantized(qw, lin.bias))
            quantized[f"light.{name}.weight"] = qw.held()
    for name, lin in _weights(heavy).items():
        w, qw = heavy_weight(lin.weight.detach(), heavy_precision, int8_qmax)
        if qw is not None:
            heavy.set_submodule(name, GridLinear.from_quantized(qw, lin.bias))
            quantized[f"heavy.{name}.weight"] = qw.held()
        else:  # fp32 as it is, or rounded to fp16 / bf16 values
            lin.weight = nn.Parameter(w, requires_grad=False)
    return quantized


def _factorizer(rank: int | None, profile: LayerProfile) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """``(w, moment) -> (down, up)`` at ``rank``: activation-aware factors, or zeros for a skeleton profile
    (``rebuild_split``: no moments, only shapes matter)."""
    assert rank is not None
    if profile.input_moment is None or profile.act_moment is None:
        return lambda w, moment=None: (torch.zeros(rank, w.shape[1]), torch.zeros(w.shape[0], rank))
    return partial(lowrank_factors, rank=rank)


def _activations(ffn: FFNWeights, x: torch.Tensor) -> torch.Tensor:
    """The FFN's activations (n, d_ff) on inputs ``x`` (n, d_model), in fp32."""
    x = x.float()
    h = torch.nn.functional.linear(x, ffn.w_in.float(), None if ffn.b_in is None else ffn.b_in.float())
    if ffn.w_gate is None:
        return ffn.act(h)
    g = torch.nn.functional.linear(x, ffn.w_gate.float(), None if ffn.b_gate is None else ffn.b_gate.float())
    return ffn.act(g) * h


def _light_errors(
    ffn: FFNWeights, profile: LayerProfile, light: Branch, light_idx: torch.Tensor, dropped: torch.Tensor,
    w_in_l: torch.Tensor, w_out_l: torch.Tensor,
) -> dict[str, float | None]:
    """What the light projections cost on real activations, after every step of the recipe:
    ``sqrt(E||(W - W') x||^2)``, from the full second moments when the profile has them, else from its
    sampled FFN inputs (``||X (W - W')^T|| / sqrt(n)``, the same figure over those tokens, and n / d times
    cheaper than forming a d x d moment); None without either."""
    lights = _weights(light)

    def effective(prefix: str) -> torch.Tensor:
        if prefix in lights:
            return fp32_value(lights[prefix], "weight")
        return fp32_value(lights[f"{prefix}.up"], "weight") @ fp32_value(lights[f"{prefix}.down"], "weight")

    mu = profile.act_mean[dropped] if profile.act_mean is not None else torch.zeros(len(dropped), dtype=torch.float64)
    has_in = light.fc_in is not None  # the down form's light branch has only its down-projection
    if profile.input_moment is not None and profile.act_moment is not None:
        mom_a = profile.act_moment[light_idx][:, light_idx]
        err_in = activation_error(w_in_l, effective("fc_in"), profile.input_moment) if has_in else None
        err_out = activation_error(w_out_l, effective("fc_out"), mom_a)
        if len(dropped):  # dropped neurons cost their centred contribution (their mean went into the bias)
            cov = profile.act_moment[dropped][:, dropped] - torch.outer(mu, mu)
            w_d = ffn.w_out[:, dropped]
            err_out = float(err_out**2 + activation_error(w_d, torch.zeros_like(w_d), cov) ** 2) ** 0.5
    elif profile.samples is not None and len(profile.samples):
        x = profile.samples.double()
        a = _activations(ffn, profile.samples).double()
        root = math.sqrt(len(x))

        def on_samples(inputs: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
            return float(torch.linalg.norm(inputs @ (w.double() - w_hat.double()).T)) / root

        err_in = on_samples(x, w_in_l, effective("fc_in")) if has_in else None
        err_out = on_samples(a[:, light_idx], w_out_l, effective("fc_out"))
        if len(dropped):
            w_d = ffn.w_out[:, dropped]
            err_out = float(err_out**2 + on_samples(a[:, dropped] - mu, w_d, torch.zeros_like(w_d)) ** 2) ** 0.5
    else:
        return {"light_in_error": None, "light_out_error": None}
    return {"light_in_error": err_in, "light_out_error": err_out}


def module_path(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise AssertionError("installed SplitFFN not found in the model")


@torch.no_grad()
def split_model(
    model: nn.Module,
    adapter: type[FFNAdapter],
    profiles: list[LayerProfile],
    *,
    heavy_ratio: float,
    recipe: LightRecipe,
    heavy_precision: str = "fp32",
    light_precision: str = "fp32",
    planned_heavy: str | None = None,
    per_layer: list[tuple[int, LightRecipe]] | None = None,
    smooth_alpha: float | None = None,
    int8_qmax: int = 127,
    form: str = "both",
    align: int = 8,
    storage: Storage = Storage(),
) -> tuple[list[LayerPlan], dict[str, torch.Tensor], dict[str, Quantized]]:
    """Replace every FFN of ``model`` in place; return the per-layer plan, the heavy index sets and
    every quantised weight (by full parameter path). ``per_layer`` (budget mode) gives each layer
    its own heavy count and recipe instead of ``heavy_ratio`` and ``recipe``.
    ``light_precision`` and ``planned_heavy`` are what the runtime realises
    when it quantises a branch itself (NNCF): recorded in the plan, not applied
    to the weights here.

    Module paths in the plan are relative to ``model`` (a task model or a backbone). ``form``: the
    split form (``split_layer``); ``align``: the heavy count's rounding (``heavy_count``); ``storage``: how
    the runtime stores the branches, for the plan's byte counts.
    """
    plans: list[LayerPlan] = []
    indices: dict[str, torch.Tensor] = {}
    quantized: dict[str, Quantized] = {}
    for i, (layer, prof) in enumerate(zip(adapter.layer_modules(model), profiles, strict=True)):
        ffn = adapter.weights(layer)
        d_ff, d_model = ffn.w_in.shape
        before = ffn.params()
        if per_layer is not None:
            k, recipe = per_layer[i]
        else:
            k = heavy_count(d_ff, heavy_ratio, align=align)
        res = split_layer(ffn, prof, k, recipe, heavy_precision, smooth_alpha, int8_qmax, form)
        split = res.split
        adapter.install(layer, split)
        forget_file_pages(ffn.tensors())  # the replaced FFN's pages of a mapped checkpoint
        module = module_path(model, split)
        indices[module] = res.heavy_idx
        quantized.update({f"{module}.{name}": q for name, q in res.quantized.items()})
        plans.append(_layer_plan(i, module, ffn, before, prof, res, recipe, planned_heavy or heavy_precision,
                                 recipe.quant or light_precision, form, storage))
    return plans, indices, quantized


def _layer_plan(i: int, module: str, ffn: FFNWeights, before: int, prof: LayerProfile, res: SplitResult,
                recipe: LightRecipe, heavy_precision: str, light_precision: str, form: str,
                storage: Storage) -> LayerPlan:
    """What the manifest records of one layer's split: sizes, parameters and bytes per branch (as ``storage``
    says the runtime stores them), precisions."""
    split = res.split
    d_ff, d_model = ffn.w_in.shape
    k = res.heavy_idx.numel()
    heavy_bytes, light_bytes = (
        res.nbytes(branch) if per is None else round(count_params(getattr(split, branch)) * per)
        for branch, per in (("heavy", storage.heavy), ("light", storage.light)))
    # the bias, and the down form's shared up-projection, belong to neither branch
    bias_bytes = 4 * (count_params(split) - count_params(split.heavy) - count_params(split.light))
    up = getattr(split, "up", None)
    if up is not None:
        n = sum(t.numel() for name, t in up.named_parameters() if name.endswith("weight"))
        bias_bytes -= round(n * (4.0 - storage.shared_up))
    return LayerPlan(
        layer=i, module=module, d_model=d_model, d_ff=d_ff, heavy=k, light=d_ff - k,
        light_recipe=str(recipe), heavy_precision=heavy_precision, light_precision=light_precision,
        ffn_params_before=before, heavy_params=count_params(split.heavy),
        light_params=count_params(split.light), ffn_params_after=count_params(split),
        heavy_score_share=float(prof.scores[res.heavy_idx].sum() / prof.scores.sum()),
        gated=ffn.w_gate is not None,
        light_kept=split.light.fc_out.in_features if recipe.structure != "lowrank" else d_ff - k,
        ffn_bytes_before=4 * before, heavy_bytes=heavy_bytes, light_bytes=light_bytes,
        ffn_bytes_after=heavy_bytes + light_bytes + bias_bytes, **res.errors, split=form,
    )
