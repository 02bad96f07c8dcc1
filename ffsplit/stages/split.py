"""Split every FFN of the source model, in place, into heavy and light branches, per the plan.

In place, layer by layer: each original FFN is freed as its split replaces it, so a large model is never
held twice (parity compares with the original's outputs, recorded before the split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ffsplit.plan import ExportPlan
from ffsplit.precisions import HALF_FLOATS

if TYPE_CHECKING:
    import torch

    from ffsplit.graph_passes.precision import WeightGrid
    from ffsplit.loading import LoadedModel
    from ffsplit.manifest import Budget, LayerPlan
    from ffsplit.split.apply import Storage
    from ffsplit.split.compress import LightRecipe
    from ffsplit.split.ffn_adapter import FFNAdapter
    from ffsplit.split.profile import LayerProfile
    from ffsplit.targets import Target


@dataclass
class Split:
    model: torch.nn.Module  # the loaded source model itself, split in place
    plans: list[LayerPlan]  # per layer, as the manifest records them
    grids: dict[str, WeightGrid]  # weight path -> its grid, for the graph's integer storage
    act_absmax: dict[str, float] | None  # static activation ranges (QDQ targets)
    state: dict[str, torch.Tensor]  # what split.safetensors holds
    budget: Budget | None


def _per_layer(plan: ExportPlan, loaded: LoadedModel, adapter: type[FFNAdapter], profiles: list[LayerProfile],
               ) -> tuple[list[tuple[int, LightRecipe]] | None, Budget | None]:
    """Per layer (heavy ratio, recipe) chosen by --budget, with its summary; (None, None) without one."""
    if plan.budget is None:
        return None, None
    from ffsplit.split.budget import plan_budget
    from ffsplit.split.compress import parse_light
    from ffsplit.split.modules import count_params

    kind, value = plan.budget
    ffns = [adapter.weights(layer) for layer in adapter.layer_modules(loaded.model)]
    other_bytes = 4 * (count_params(loaded.model) - sum(f.params() for f in ffns))
    chosen, summary = plan_budget(ffns, profiles, kind, value, other_bytes=other_bytes)
    return [(c.heavy, parse_light(c.recipe)) for c in chosen], summary


def _ir_bytes_per_param(target: Target, *, light: bool = False) -> float:
    """Bytes per weight NNCF stores in the IR: int8 (scales aside), or int4 with an fp16 scale (and a 4-bit
    zero point when asymmetric) per group: the light branch's own group (``light``), or per output channel
    (whose one scale a row is left out: under 0.1% of a row's thousands of weights)."""
    if target.ir_compression == "int8":
        return 1.0
    group = target.light_group_size if light else target.nncf["group_size"]
    per_group = 2.0 + (0.5 if target.nncf["mode"] == "int4_asym" else 0.0)
    return 0.5 + (per_group / group if group and group > 0 else 0.0)


def _storage(plan: ExportPlan) -> Storage:
    """How the runtime stores each branch (``split_model`` counts fp32 and the int8 / int4 grids it makes):
    NNCF's IR for the light branch (and NNCF's int8 heavy branch), 2 bytes for a branch held in fp16 / bf16
    (in the graph, or in TensorRT's engine), the down form's shared up-projection as the model's other
    multiplies (NNCF's, or the target's other_matmuls; int4: 4 bits and an fp32 scale per block of 32)."""
    from ffsplit.split.apply import Storage

    ir = _ir_bytes_per_param(plan.target) if plan.nncf else None
    light = _ir_bytes_per_param(plan.target, light=True) if plan.nncf else None
    heavy = 1.0 if plan.heavy == "int8" and plan.nncf == "int8" else None
    halved = {b for b, precision in (("heavy", plan.heavy), ("light", plan.light_float)) if precision in HALF_FLOATS}
    shared_up = ir if ir is not None else {"int8": 1.0, "int4": 0.5 + 4 / 32}.get(plan.target.other_matmuls, 4.0)
    return Storage(heavy=2.0 if "heavy" in halved else heavy, light=2.0 if "light" in halved else light,
                   shared_up=shared_up)


def split(plan: ExportPlan, loaded: LoadedModel, adapter: type[FFNAdapter], profiles: list[LayerProfile]) -> Split:
    import torch

    from ffsplit.graph_passes.precision import WeightGrid
    from ffsplit.residency import hold_as_stored
    from ffsplit.split.apply import split_model
    from ffsplit.split.profile import input_absmax
    from ffsplit.split.rebuild import split_state

    per_layer, budget = _per_layer(plan, loaded, adapter, profiles)
    model = loaded.model
    plan_objs, indices, quantized = split_model(
        model, adapter, profiles, heavy_ratio=plan.heavy_ratio, recipe=plan.recipe,
        # NNCF's static int8 quantises the heavy branch itself (activation scales of its own)
        heavy_precision="fp32" if plan.nncf == "int8" else plan.heavy, planned_heavy=plan.heavy,
        light_precision=plan.planned_light, per_layer=per_layer, smooth_alpha=plan.smooth_alpha,
        int8_qmax=plan.int8_qmax, form=plan.target.split,
        # NNCF's int4 groups: a light branch a whole number of groups wide
        align=plan.target.nncf["group_size"] if plan.nncf == "int4" else 8, storage=_storage(plan),
    )
    if budget is not None:
        for plan_obj, row in zip(plan_objs, budget.plan, strict=True):
            plan_obj.calib_error = row.error
    grids = {path: WeightGrid.from_quantized(path, qw) for path, qw in quantized.items()}
    act_absmax = None
    if plan.target.int8_compute == "qdq" and any(g.bits == 8 for g in grids.values()):
        # static activation scales: each int8 multiply's input range over the calibration text
        absmax = input_absmax(
            model, [p.removesuffix(".weight") for p, g in grids.items() if g.bits == 8], loaded.tokenizer,
            plan.texts, max_length=plan.options.max_length, position_ids=loaded.task.position_ids,
        )
        act_absmax = {f"{k}.weight": v for k, v in absmax.items()}
    hold_as_stored(model)  # the split's rows of a bf16 checkpoint stay bf16, computed in fp32
    # every SplitFFN's weights as held: rows in the checkpoint's dtype, quantised weights as their grids
    state = split_state(model, plan_objs)
    state.update({f"heavy_index.{k}": v.to(torch.int64) for k, v in indices.items()})
    return Split(model, plan_objs, grids, act_absmax, state, budget)
