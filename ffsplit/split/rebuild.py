"""The split model an artifact holds, saved and rebuilt: split.safetensors' state, and the SplitFFNs shaped by
the manifest's per-layer plans with that state loaded, checked against every claim the plans make."""

from __future__ import annotations

import torch
from torch import nn

from ffsplit.manifest import LayerPlan
from ffsplit.resources import forget_file_pages
from ffsplit.split.apply import module_path, split_layer
from ffsplit.split.compress import parse_light
from ffsplit.split.ffn_adapter import FFNAdapter
from ffsplit.split.modules import GridLinear, SplitFFN, count_params
from ffsplit.split.profile import LayerProfile


def split_state(model: nn.Module, plans: list[LayerPlan]) -> dict[str, torch.Tensor]:
    """The weights of every SplitFFN, keyed by full parameter path (what split.safetensors holds)."""
    state: dict[str, torch.Tensor] = {}
    for plan in plans:
        for name, p in model.get_submodule(plan.module).state_dict().items():
            state[f"{plan.module}.{name}"] = p.detach().contiguous()
    return state


@torch.no_grad()
def rebuild_split(
    model: nn.Module, adapter: type[FFNAdapter], plans: list[LayerPlan], state: dict[str, torch.Tensor]
) -> list[str]:
    """Install SplitFFNs shaped by ``plans`` into ``model`` and load ``state`` into them; return every
    claim of ``plans`` about the model that the model contradicts (``layer 0: d_ff 16777216, the model
    has 64``), empty when all hold.

    The skeleton comes from ``split_layer`` on a placeholder profile (no moments, no samples: no error
    figures and zero low-rank factors, nothing of size d_ff^2): only its shapes matter, every weight is
    then loaded from ``state``.
    """
    wrong: list[str] = []
    for i, (plan, layer) in enumerate(zip(plans, adapter.layer_modules(model), strict=True)):
        ffn = adapter.weights(layer)
        d_ff, d_model = ffn.w_in.shape
        before = ffn.params()
        gated = ffn.w_gate is not None
        placeholder = LayerProfile(
            scores=torch.arange(d_ff, 0, -1, dtype=torch.float64), mean_abs_act=torch.ones(d_ff),
            input_moment=None, act_moment=None, tokens=1,
        )
        recipe = parse_light(plan.light_recipe)
        split = split_layer(ffn, placeholder, plan.heavy, recipe, form=plan.split).split
        prefix = f"{plan.module}."
        mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        _grid_shells(split, mine, recipe.block)
        split.load_state_dict(mine, strict=True)
        adapter.install(layer, split)
        forget_file_pages(ffn.tensors())
        wrong.extend(_contradicted(plan, _layer_facts(i, model, split, d_model, d_ff, before, gated,
                                                           recipe.structure == "lowrank")))
    return wrong


def _grid_shells(split: SplitFFN, state: dict[str, torch.Tensor], block: int) -> None:
    """Make each Linear of ``split`` whose saved state is a grid (``<path>.scale``) a GridLinear of that
    grid's form: the skeleton may have made it a plain one (a heavy branch quantised for the runtime) or a
    grid of another form."""
    for name, module in list(split.named_modules()):
        if not isinstance(module, nn.Linear) or f"{name}.scale" not in state:
            continue
        scale = state[f"{name}.scale"]
        bits = 8 if scale.dim() == 1 else 4
        # the skeleton's own grid may lack what the export applied (SmoothQuant's factors): the state decides
        split.set_submodule(name, GridLinear(
            state[f"{name}.weight"], scale, state.get(f"{name}.zero_point"), state.get(f"{name}.smooth"),
            module.bias, bits=bits, block=block if bits == 4 else None,
        ))


def _layer_facts(
    i: int, model: nn.Module, split: SplitFFN, d_model: int, d_ff: int, before: int, gated: bool, lowrank: bool
) -> dict[str, object]:
    """What a manifest row may claim about a layer, as the model shows it."""
    heavy, light = count_params(split.heavy), count_params(split.light)
    facts: dict[str, object] = {
        "layer": i, "module": module_path(model, split), "d_model": d_model, "d_ff": d_ff,
        "light": d_ff - split.heavy.fc_out.in_features, "gated": gated, "split": split.form,
        "ffn_params_before": before, "ffn_bytes_before": 4 * before,
        "heavy_params": heavy, "light_params": light, "ffn_params_after": count_params(split),
    }
    if not lowrank:  # a low-rank light branch keeps every light neuron, in factors
        facts["light_kept"] = split.light.fc_out.in_features
    return facts


def _contradicted(plan: LayerPlan, facts: dict[str, object]) -> list[str]:
    """Every fact the row states (a field it does not record is None) that the model contradicts."""
    where = f"layer {facts['layer']}"
    claims = {key: getattr(plan, key) for key in facts}
    wrong = [f"{where}: {key} {claims[key]!r}, the model has {value!r}"
             for key, value in facts.items() if claims[key] is not None and claims[key] != value]
    if plan.heavy + plan.light != facts["d_ff"]:
        wrong.append(f"{where}: heavy {plan.heavy} + light {plan.light} is not d_ff {facts['d_ff']}")
    return wrong
