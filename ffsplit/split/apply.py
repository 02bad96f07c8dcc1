"""Turn a profiled model into a split one, and rebuild a split model from saved weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ffsplit.errors import UsageError
from ffsplit.split.adapters import FFNAdapter, get_submodule
from ffsplit.split.compress import LightRecipe, activation_error, lowrank_factors
from ffsplit.split.modules import LowRankLinear, SplitFFN, count_params, dense_branch, lowrank_branch
from ffsplit.split.profile import LayerProfile


def heavy_count(d_ff: int, ratio: float) -> int:
    """The top ``ratio`` of neurons rounded to a multiple of 8 (at least 8), leaving a light branch."""
    if not 0.0 < ratio < 1.0:
        raise UsageError(f"heavy ratio {ratio} is outside (0, 1): pass e.g. --heavy-ratio 0.1")
    k = max(8, int(round(ratio * d_ff / 8.0)) * 8)
    if k >= d_ff:
        raise UsageError(
            f"heavy ratio {ratio} leaves no light neurons in an FFN of width {d_ff}: pass a smaller --heavy-ratio"
        )
    return k


def validate_recipe(adapter: type[FFNAdapter], model: nn.Module, ratio: float, recipe: LightRecipe) -> None:
    """Fail before any work if the recipe cannot apply to some layer."""
    for i, layer in enumerate(adapter.layer_modules(model)):
        d_ff = get_submodule(layer, adapter.fc_in).out_features
        light = d_ff - heavy_count(d_ff, ratio)
        if recipe.rank is None:
            continue
        if recipe.rank >= light:
            raise UsageError(
                f"rank {recipe.rank} is not smaller than the light width {light} of layer {i}: choose R < {light}"
            )
        d_model = get_submodule(layer, adapter.fc_in).in_features
        useful = (d_model * light) // (d_model + light)
        if recipe.rank > useful:
            raise UsageError(
                f"rank {recipe.rank} would make layer {i}'s light branch larger than the dense one "
                f"({d_model}x{light}): choose R <= {useful}, or --light none"
            )


@dataclass
class LayerPlan:
    """One row of the manifest's per-layer table."""

    layer: int
    module: str
    d_model: int
    d_ff: int
    heavy: int
    light: int
    light_recipe: str
    heavy_precision: str
    light_precision: str
    ffn_params_before: int
    heavy_params: int
    light_params: int
    ffn_params_after: int
    heavy_score_share: float
    light_in_error: float | None = None
    light_out_error: float | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def split_layer(
    layer: nn.Module, adapter: type[FFNAdapter], profile: LayerProfile, k: int, recipe: LightRecipe
) -> tuple[SplitFFN, torch.Tensor, dict[str, float | None]]:
    """Build the SplitFFN for one layer; return it, the heavy index set and the light errors."""
    ffn = adapter.weights(layer)
    order = torch.argsort(profile.scores, descending=True)
    heavy_idx = torch.sort(order[:k]).values
    light_idx = torch.sort(order[k:]).values
    act_h, act_l = ffn.act, ffn.act

    def rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
        return None if t is None else t[idx]

    heavy = dense_branch(ffn.w_in[heavy_idx], rows(ffn.b_in, heavy_idx), ffn.w_out[:, heavy_idx], act_h)
    w_in_l, w_out_l = ffn.w_in[light_idx], ffn.w_out[:, light_idx]
    errors: dict[str, float | None] = {"light_in_error": None, "light_out_error": None}
    if recipe.kind == "none":
        light = dense_branch(w_in_l, rows(ffn.b_in, light_idx), w_out_l, act_l)
    elif recipe.kind == "lowrank":
        assert recipe.rank is not None and profile.input_moment is not None and profile.act_moment is not None
        mom_a = profile.act_moment[light_idx][:, light_idx]
        f_in = lowrank_factors(w_in_l, recipe.rank, profile.input_moment)
        f_out = lowrank_factors(w_out_l, recipe.rank, mom_a)
        light = lowrank_branch(f_in, rows(ffn.b_in, light_idx), f_out, act_l)
        errors = {
            "light_in_error": activation_error(w_in_l, f_in[1] @ f_in[0], profile.input_moment),
            "light_out_error": activation_error(w_out_l, f_out[1] @ f_out[0], mom_a),
        }
    else:  # parse_light admits nothing else
        raise AssertionError(recipe)
    return SplitFFN(heavy, light, ffn.b_out), heavy_idx, errors


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
) -> tuple[list[LayerPlan], dict[str, torch.Tensor]]:
    """Replace every FFN of ``model`` in place; return the per-layer plan and the heavy index sets."""
    plans: list[LayerPlan] = []
    indices: dict[str, torch.Tensor] = {}
    for i, (layer, prof) in enumerate(zip(adapter.layer_modules(model), profiles, strict=True)):
        ffn = adapter.weights(layer)
        d_ff, d_model = ffn.w_in.shape
        before = ffn.w_in.numel() + ffn.w_out.numel() + sum(
            t.numel() for t in (ffn.b_in, ffn.b_out) if t is not None
        )
        k = heavy_count(d_ff, heavy_ratio)
        split, heavy_idx, errors = split_layer(layer, adapter, prof, k, recipe)
        module = f"{adapter.layer_path(i)}.{adapter.replace}"
        adapter.install(layer, split)
        indices[module] = heavy_idx
        plans.append(
            LayerPlan(
                layer=i,
                module=module,
                d_model=d_model,
                d_ff=d_ff,
                heavy=k,
                light=d_ff - k,
                light_recipe=str(recipe),
                heavy_precision=heavy_precision,
                light_precision=light_precision,
                ffn_params_before=before,
                heavy_params=count_params(split.heavy),
                light_params=count_params(split.light),
                ffn_params_after=count_params(split),
                heavy_score_share=float(prof.scores[heavy_idx].sum() / prof.scores.sum()),
                **errors,
            )
        )
    return plans, indices


def split_state(model: nn.Module, plans: list[LayerPlan]) -> dict[str, torch.Tensor]:
    """The weights of every SplitFFN, keyed by full parameter path (what split.safetensors holds)."""
    state: dict[str, torch.Tensor] = {}
    for plan in plans:
        for name, p in get_submodule(model, plan.module).state_dict().items():
            state[f"{plan.module}.{name}"] = p.detach().contiguous()
    return state


@torch.no_grad()
def rebuild_split(
    model: nn.Module, adapter: type[FFNAdapter], plans: list[dict], state: dict[str, torch.Tensor]
) -> None:
    """Install SplitFFN skeletons shaped by ``plans`` into ``model`` and load ``state`` into them."""
    for plan, layer in zip(plans, adapter.layer_modules(model), strict=True):
        ffn = adapter.weights(layer)
        mod = plan["module"]
        zeros_h = torch.zeros(plan["heavy"], plan["d_model"])
        b_in = None if ffn.b_in is None else torch.zeros(plan["heavy"])
        heavy = dense_branch(zeros_h, b_in, zeros_h.T, ffn.act)
        recipe = plan["light_recipe"]
        light_b = None if ffn.b_in is None else torch.zeros(plan["light"])
        if recipe == "none":
            zl = torch.zeros(plan["light"], plan["d_model"])
            light = dense_branch(zl, light_b, zl.T, ffn.act)
        else:
            rank = state[f"{mod}.light.fc_in.down.weight"].shape[0]
            fin = LowRankLinear(plan["d_model"], plan["light"], rank, bias=light_b is not None)
            fout = LowRankLinear(plan["light"], plan["d_model"], rank, bias=False)
            light = lowrank_branch(
                (fin.down.weight, fin.up.weight), light_b, (fout.down.weight, fout.up.weight), ffn.act
            )
        split = SplitFFN(heavy, light, ffn.b_out)
        prefix = f"{mod}."
        split.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        adapter.install(layer, split)
