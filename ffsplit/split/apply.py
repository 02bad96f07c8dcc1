"""Turn a profiled model into a split one, and rebuild a split model from saved weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ffsplit.errors import UsageError
from ffsplit.split.adapters import FFNAdapter, FFNWeights
from ffsplit.split.compress import LightRecipe, activation_error, lowrank_factors, parse_light
from ffsplit.split.modules import SplitFFN, count_params, dense_branch, lowrank_branch
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
        d_ff, d_model = adapter.weights(layer).w_in.shape
        light = d_ff - heavy_count(d_ff, ratio)
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
    gated: bool = False
    light_in_error: float | None = None
    light_out_error: float | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx]


def split_layer(
    ffn: FFNWeights, profile: LayerProfile, k: int, recipe: LightRecipe
) -> tuple[SplitFFN, torch.Tensor, dict[str, float | None]]:
    """Build the SplitFFN for one layer's FFN; return it, the heavy index set and the light errors."""
    order = torch.argsort(profile.scores, descending=True)
    heavy_idx = torch.sort(order[:k]).values
    light_idx = torch.sort(order[k:]).values

    def gate(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        return None if ffn.w_gate is None else (ffn.w_gate[idx], _rows(ffn.b_gate, idx))

    heavy = dense_branch(ffn.w_in[heavy_idx], _rows(ffn.b_in, heavy_idx), ffn.w_out[:, heavy_idx], ffn.act, gate(heavy_idx))
    w_in_l, w_out_l = ffn.w_in[light_idx], ffn.w_out[:, light_idx]
    errors: dict[str, float | None] = {"light_in_error": None, "light_out_error": None}
    if recipe.kind == "none":
        light = dense_branch(w_in_l, _rows(ffn.b_in, light_idx), w_out_l, ffn.act, gate(light_idx))
    elif recipe.kind == "lowrank":
        assert recipe.rank is not None and profile.input_moment is not None and profile.act_moment is not None
        mom_a = profile.act_moment[light_idx][:, light_idx]
        f_in = lowrank_factors(w_in_l, recipe.rank, profile.input_moment)
        f_out = lowrank_factors(w_out_l, recipe.rank, mom_a)
        g = gate(light_idx)
        f_gate = None if g is None else (lowrank_factors(g[0], recipe.rank, profile.input_moment), g[1])
        light = lowrank_branch(f_in, _rows(ffn.b_in, light_idx), f_out, ffn.act, f_gate)
        errors = {
            "light_in_error": activation_error(w_in_l, f_in[1] @ f_in[0], profile.input_moment),
            "light_out_error": activation_error(w_out_l, f_out[1] @ f_out[0], mom_a),
        }
    else:  # parse_light admits nothing else
        raise AssertionError(recipe)
    return SplitFFN(heavy, light, ffn.b_out), heavy_idx, errors


def _module_path(model: nn.Module, module: nn.Module) -> str:
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
) -> tuple[list[LayerPlan], dict[str, torch.Tensor]]:
    """Replace every FFN of ``model`` in place; return the per-layer plan and the heavy index sets.

    Module paths in the plan are relative to ``model`` (a task model or a backbone).
    """
    plans: list[LayerPlan] = []
    indices: dict[str, torch.Tensor] = {}
    for i, (layer, prof) in enumerate(zip(adapter.layer_modules(model), profiles, strict=True)):
        ffn = adapter.weights(layer)
        d_ff, d_model = ffn.w_in.shape
        before = sum(
            t.numel() for t in (ffn.w_in, ffn.b_in, ffn.w_out, ffn.b_out, ffn.w_gate, ffn.b_gate) if t is not None
        )
        k = heavy_count(d_ff, heavy_ratio)
        split, heavy_idx, errors = split_layer(ffn, prof, k, recipe)
        adapter.install(layer, split)
        module = _module_path(model, split)
        indices[module] = heavy_idx
        plans.append(
            LayerPlan(
                layer=i, module=module, d_model=d_model, d_ff=d_ff, heavy=k, light=d_ff - k,
                light_recipe=str(recipe), heavy_precision=heavy_precision, light_precision=light_precision,
                ffn_params_before=before, heavy_params=count_params(split.heavy),
                light_params=count_params(split.light), ffn_params_after=count_params(split),
                heavy_score_share=float(prof.scores[heavy_idx].sum() / prof.scores.sum()),
                gated=ffn.w_gate is not None, **errors,
            )
        )
    return plans, indices


def split_state(model: nn.Module, plans: list[LayerPlan]) -> dict[str, torch.Tensor]:
    """The weights of every SplitFFN, keyed by full parameter path (what split.safetensors holds)."""
    state: dict[str, torch.Tensor] = {}
    for plan in plans:
        for name, p in model.get_submodule(plan.module).state_dict().items():
            state[f"{plan.module}.{name}"] = p.detach().contiguous()
    return state


@torch.no_grad()
def rebuild_split(
    model: nn.Module, adapter: type[FFNAdapter], plans: list[dict], state: dict[str, torch.Tensor]
) -> None:
    """Install SplitFFNs shaped by ``plans`` into ``model`` and load ``state`` into them.

    The skeleton comes from ``split_layer`` on a placeholder profile (identity
    moments): only its shapes matter, every weight is then loaded from ``state``.
    """
    for plan, layer in zip(plans, adapter.layer_modules(model), strict=True):
        ffn = adapter.weights(layer)
        d_ff, d_model = ffn.w_in.shape
        placeholder = LayerProfile(
            scores=torch.arange(d_ff, 0, -1, dtype=torch.float64), mean_abs_act=torch.ones(d_ff),
            input_moment=torch.eye(d_model, dtype=torch.float64), act_moment=torch.eye(d_ff, dtype=torch.float64),
            tokens=1,
        )
        split, _, _ = split_layer(ffn, placeholder, plan["heavy"], parse_light(plan["light_recipe"]))
        prefix = f"{plan['module']}."
        split.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
        adapter.install(layer, split)
