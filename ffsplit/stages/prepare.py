"""Load the source model, find its FFN adapter and profile its neurons on the calibration text."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

from ffsplit import __version__
from ffsplit.errors import UsageError
from ffsplit.plan import ExportPlan


def versions() -> dict[str, str]:
    """The versions an artifact records (and the bench baseline cache is keyed on)."""
    import onnx
    import onnx_ir
    import onnxruntime
    import torch
    import transformers

    return {
        "ffsplit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def source_record(loaded: Any) -> dict[str, Any]:
    """What the manifest records of the source model: where, what, its hash and usable positions."""
    from ffsplit.artifact import sha256_files
    from ffsplit.loading import model_files, usable_positions

    cfg = loaded.model.config
    return {
        "spec": loaded.spec,
        "path": str(loaded.path),
        "model_type": cfg.model_type,
        "architecture": type(loaded.model).__name__,
        "sha256": sha256_files(model_files(loaded.path), loaded.path),
        "max_positions": usable_positions(loaded.model, past=loaded.task.past),
    }


@dataclass
class Prepared:
    loaded: Any  # LoadedModel
    adapter: Any  # type[FFNAdapter]
    source: dict[str, Any]
    profiles: list[Any]  # LayerProfile per layer


def load(plan: ExportPlan) -> tuple[Any, Any, dict[str, Any]]:
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
    if source["max_positions"] and o.max_length > source["max_positions"]:
        raise UsageError(
            f"--max-length {o.max_length} is longer than the {source['max_positions']} positions the model "
            f"computes: pass --max-length <= {source['max_positions']}"
        )
    return loaded, adapter, source


def profile(plan: ExportPlan, loaded: Any, adapter: Any, *, progress: bool) -> list[Any]:
    from ffsplit.split.profile import profile_model

    return profile_model(
        loaded.model, adapter, loaded.tokenizer, plan.texts, max_length=plan.options.max_length,
        moments=not plan.exact, progress=progress, position_ids=loaded.task.position_ids,
        samples=512 if plan.budget else 0,
    )
