"""Load the source model, find its FFN adapter and profile its neurons on the calibration text."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ffsplit.errors import UsageError
from ffsplit.loading import source_record
from ffsplit.plan import ExportPlan

if TYPE_CHECKING:
    from ffsplit.loading import LoadedModel
    from ffsplit.manifest import Source
    from ffsplit.split.ffn_adapter import FFNAdapter
    from ffsplit.split.profile import LayerProfile


def load(plan: ExportPlan) -> tuple[LoadedModel, type[FFNAdapter], Source]:
    """The source model, its adapter and its record; UsageError when the family or length does not fit."""
    from ffsplit.loading import load_model
    from ffsplit.split.adapters import find_adapter
    from ffsplit.split.apply import validate_recipe

    o = plan.options
    loaded = load_model(o.model, task=o.task, trust_remote_code=o.trust_remote_code)
    adapter = find_adapter(loaded.model)
    if loaded.task.name not in adapter.tasks:
        raise UsageError(
            f"task {loaded.task.name} is not supported for the {adapter.family} family: use --task "
            f"{' or '.join(adapter.tasks)}"
        )
    if plan.budget is None:
        validate_recipe(adapter, loaded.model, plan.heavy_ratio, plan.recipe)
    source = source_record(loaded)
    if source.max_positions and o.max_length > source.max_positions:
        raise UsageError(
            f"--max-length {o.max_length} is longer than the {source.max_positions} positions the model "
            f"computes: pass --max-length <= {source.max_positions}"
        )
    return loaded, adapter, source


def fit(plan: ExportPlan, source: Source) -> ExportPlan:
    """The plan for the loaded model: its target's runtime shape ranges (TensorRT profiles, Triton) clamped to
    the positions the model computes."""
    from ffsplit.runtimes.shapes import clamp_shapes

    shapes = clamp_shapes(plan.target.shapes, source.max_positions, past=plan.task.past)
    if shapes == plan.target.shapes:
        return plan
    return dataclasses.replace(plan, target=dataclasses.replace(plan.target, shapes=shapes))


def profile(plan: ExportPlan, loaded: LoadedModel, adapter: type[FFNAdapter], *, progress: bool,
            ) -> list[LayerProfile]:
    from ffsplit.split.profile import profile_model

    # Full second moments (d_ff^2 per layer: gigabytes at decoder sizes) only where a recipe computes with
    # them (activation-aware low rank, and the budget's candidates); otherwise the light branch's errors
    # are measured on sampled FFN inputs, one layer at a time.
    moments = not plan.exact and (plan.budget is not None or plan.recipe.structure == "lowrank")
    return profile_model(
        loaded.model, adapter, loaded.tokenizer, plan.texts, max_length=plan.options.max_length,
        moments=moments, progress=progress, position_ids=loaded.task.position_ids,
        samples=512 if plan.budget or not plan.exact else 0,
    )
