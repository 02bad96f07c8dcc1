"""Shape ranges from a target: the min / opt / max each model input takes, per phase.

The exported graphs name their dynamic dimensions ``batch``, ``sequence`` and
``past_sequence`` (a KV-cache attention mask spans ``past_sequence +
sequence``). A TensorRT optimisation profile, ONNX Runtime's TensorRT
provider and the Triton config all want concrete ranges per input; they all
come from here.

Phases: ``encoder`` (no cache), and for KV-cache graphs ``prefill`` (the
prompt; one masked past slot, since TensorRT profiles take no zero-size
dimension) and ``decode`` (one new token over a past of ``shapes.past``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ffsplit.errors import UsageError
from ffsplit.signature import Dim, has_past

DEFAULT_SHAPES = {"batch": [1, 8, 32], "sequence": [1, 128, 512], "past": [1, 128, 512]}
_TERM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Range = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def axis_ranges(shapes: Mapping[str, list[int]], phase: str) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of each named dimension in ``phase``."""
    get = {k: tuple(shapes.get(k, v)) for k, v in DEFAULT_SHAPES.items()}
    if phase == "encoder":
        return {"batch": get["batch"], "sequence": get["sequence"], "past_sequence": (0, 0, 0)}  # type: ignore[dict-item]
    if phase == "prefill":
        return {"batch": get["batch"], "sequence": get["sequence"], "past_sequence": (1, 1, 1)}  # type: ignore[dict-item]
    if phase == "decode":
        return {"batch": get["batch"], "sequence": (1, 1, 1), "past_sequence": get["past"]}  # type: ignore[dict-item]
    raise ValueError(f"unknown phase {phase!r}")


def _dim(dim: Dim, axes: Mapping[str, tuple[int, int, int]], which: int, name: str) -> int:
    if isinstance(dim, int):
        return dim
    if not isinstance(dim, str) or not dim:
        raise UsageError(f"input '{name}' has an unnamed dynamic dimension; re-export the model with ffsplit")
    total = 0
    for term in (t.strip() for t in dim.split("+")):
        if not _TERM.match(term) or term not in axes:
            raise UsageError(
                f"input '{name}': dimension '{dim}' is not batch, sequence, past_sequence or a sum of them"
            )
        total += axes[term][which]
    return total


def input_ranges(inputs: Mapping[str, list[Dim]], shapes: Mapping[str, list[int]], phase: str) -> dict[str, Range]:
    """input name -> (min shape, opt shape, max shape) for ``phase``."""
    axes = axis_ranges(shapes, phase)
    out: dict[str, Range] = {}
    for name, dims in inputs.items():
        mins, opts, maxs = (tuple(_dim(d, axes, i, name) for d in dims) for i in range(3))
        out[name] = (mins, opts, maxs)
    return out


def phases(inputs: Mapping[str, list[Dim]]) -> tuple[str, ...]:
    """The phases a graph needs a profile for: KV-cache graphs get prefill and decode apart."""
    return ("prefill", "decode") if has_past(inputs) else ("encoder",)


def trt_shape_string(ranges: Mapping[str, Range], which: int) -> str:
    """ONNX Runtime TensorRT provider format: ``input_ids:1x1,attention_mask:1x1``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in r[which])}" for name, r in ranges.items())


def clamp_shapes(shapes: Mapping[str, list[int]], max_positions: int | None, *, past: bool) -> dict[str, list[int]]:
    """``shapes`` with sequence and past ranges cut to what the model computes (see ``usable_positions``).

    A KV-cache graph's attention mask spans past + new tokens, so there the prompt
    keeps one position for the masked past slot and the past one for the new token.
    Unchanged (and returned as given) when every range already fits.
    """
    if not max_positions:
        return dict(shapes)
    room = {"sequence": max_positions - 1, "past": max_positions - 1} if past else {"sequence": max_positions}
    out = dict(shapes)
    for axis, top in room.items():
        lo, opt, hi = shapes.get(axis, DEFAULT_SHAPES[axis])
        if hi > top:
            top = max(top, 1)
            out[axis] = [min(lo, top), min(opt, top), top]
    return out
