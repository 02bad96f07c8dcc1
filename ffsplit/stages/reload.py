"""The torch side of an existing artifact, for ``check``, ``debug`` and ``bench``: its source model (refused
if it changed since the export) and its split model rebuilt from ``split.safetensors``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.artifact import SPLIT_WEIGHTS
from ffsplit.artifact.opened import Artifact
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.manifest import LayerPlan, Params, layer_totals

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from ffsplit.loading import LoadedModel


def load_source(art: Artifact, source: str | Path | None = None, trust_remote_code: bool = False) -> LoadedModel:
    """The source model of an artifact (the recorded one, or ``source``), refused if it changed since the export."""
    from ffsplit.loading import load_model

    src = art.manifest.source
    if source is not None:
        spec = str(source)
    elif Path(src.path).is_dir():
        spec = src.path
    else:
        from ffsplit.loading import ALIASES

        if src.spec not in ALIASES:
            raise UsageError(
                f"the source model this folder was exported from is no longer at '{src.path}': "
                "pass --source PATH to where it is now"
            )
        spec = src.spec
    loaded = load_model(spec, task=art.manifest.task, trust_remote_code=trust_remote_code)
    from ffsplit.loading import source_record

    if source_record(loaded).sha256 != src.sha256:
        raise UsageError(
            f"source model at '{loaded.path}' is not the one exported (its hash differs): pass --source with the "
            "exact model the export used, or re-run ffsplit export"
        )
    return loaded


def rebuild(art: Artifact, source: str | Path | None = None, log: Callable[[str], None] | None = None,
            ) -> tuple[LoadedModel, torch.nn.Module]:
    """The artifact's source model (hash-checked) and its split torch model, rebuilt from split.safetensors
    (two models: ``debug`` compares modules inside the split; ``check`` uses ``split_in_place``)."""
    if log:
        log("loading the source model and rebuilding the split ...")
    loaded = load_source(art, source)
    split = copy.deepcopy(loaded.model)
    _rebuild_into(art, split)
    return loaded, split


def split_in_place(art: Artifact, loaded: LoadedModel) -> None:
    """Turn the loaded source model into the artifact's split model, layer by layer (one copy of the weights)."""
    _rebuild_into(art, loaded.model)


def _rebuild_into(art: Artifact, model: torch.nn.Module) -> None:
    from ffsplit.residency import hold_as_stored
    from ffsplit.split.adapters import find_adapter
    from ffsplit.split.modules import count_params
    from ffsplit.split.rebuild import rebuild_split

    adapter = find_adapter(model)
    state = read_split_weights(art.folder / SPLIT_WEIGHTS)
    total_before = count_params(model)
    layers = art.manifest.layers
    try:
        wrong = rebuild_split(model, adapter, layers, state)
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{art.folder / SPLIT_WEIGHTS} does not fit the manifest's layers ({type(exc).__name__}: {first}): "
            "re-run ffsplit export"
        ) from None
    hold_as_stored(model)
    wrong += _contradicted_totals(art.manifest.params, layers, total_before, count_params(model))
    if wrong:  # hashes and the embedded copy agree, so the export itself wrote (or a forger re-signed) these
        raise CheckFailed(f"the manifest describes another model than the one it holds: {'; '.join(wrong[:3])}"
                          + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""))


def _contradicted_totals(params: Params, layers: list[LayerPlan], before: int, after: int) -> list[str]:
    """The manifest's parameter totals against the model's (``before``/``after`` the split) and its own rows."""
    facts = {"total_before": before, "total_after": after, **layer_totals(layers)}
    return [f"params.{key} {getattr(params, key)!r}, the model has {value!r}" for key, value in facts.items()
            if getattr(params, key) != value]


def read_split_weights(path: Path) -> dict[str, torch.Tensor]:
    """The SplitFFN weights in split.safetensors, refused in one line if the file is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("heavy_index.")}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path} is damaged ({type(exc).__name__}: {first}): re-run ffsplit export") from None
    return _held_grids(state)


def _held_grids(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Artifacts written before the split held its grids stored each quantised weight dequantised (``<path>.weight``, fp32) with its grid
    beside it (``quant.<path>.weight.q`` / ``.scale`` / ``.zero_point`` / ``.smooth``); the split now holds
    the grid itself (``GridLinear``: ``<path>.weight`` the codes, ``<path>.scale`` ...)."""
    for key in [k for k in state if k.startswith("quant.") and k.endswith(".weight.q")]:
        path = key[len("quant."):-len(".weight.q")]
        state[f"{path}.weight"] = state.pop(key)
        for part in ("scale", "zero_point", "smooth"):
            old = state.pop(f"quant.{path}.weight.{part}", None)
            if old is not None:
                state[f"{path}.{part}"] = old
    return state
