"""The pass pipeline for a target, in its one documented order.

1. ``TagBranchesPass``: every node of a SplitFFN gets its layer and branch
   (metadata and name), before anything can move or merge nodes.
2. ``CleanupGraphPass``: fold constants, drop dead nodes, shape inference.
   Before precision, so folding sees plain fp32 weights and cannot undo the
   integers written next (it never folds DequantizeLinear either).
   ``RemoveSoftmaxNanGuardPass`` then drops transformers' NaN guards after
   attention softmaxes where the mask is finite (exact, and ~10% of MiniLM's time).
   ``FuseGraphPass`` (targets with ``fusions = "ort"``) applies onnxscript's
   ONNX Runtime fusions (MultiHeadAttention, SkipLayerNormalization, BiasGelu),
   proving afterwards that every tagged MatMul survived.
   These are the generic passes: the bench baseline gets the same ones.
3. ``QuantizeBranchWeightsPass``: int8 / int4 grids stored as integers, in
   the target's compute form. Precision comes before any fusion: a fused
   contrib op (ONNX Runtime's, at session build) hides weights from it.
   ``QuantizeOtherMatMulsPass`` (targets with ``other_matmuls = "int8"``)
   puts the multiplies outside the SplitFFNs in dynamic int8 as well.
4. ``ConvertBranchPrecisionPass``: the heavy (and, on GPU targets, the
   light) branch in fp16 / bf16 when asked; for TensorRT the engine builder
   does this instead (layer precisions), so the graph stays fp32.
5. ``EmbedManifestPass``: the manifest into the model's metadata, last, so it
   records the passes that ran.

Any further fusion is the runtime's, and the separation guard checks afterwards
that none crossed a branch boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes import PassBase, PostconditionError, PreconditionError

from ffsplit.graph_passes.cleanup_graph_pass import CleanupGraphPass
from ffsplit.graph_passes.convert_branch_precision_pass import ConvertBranchPrecisionPass
from ffsplit.graph_passes.fuse_graph_pass import FuseGraphPass
from ffsplit.graph_passes.precision import WeightGrid
from ffsplit.graph_passes.quantize_branch_weights_pass import QuantizeBranchWeightsPass
from ffsplit.graph_passes.quantize_other_matmuls_pass import QuantizeOtherMatMulsPass
from ffsplit.graph_passes.remove_softmax_nan_guard_pass import RemoveSoftmaxNanGuardPass
from ffsplit.graph_passes.tag_branches_pass import TagBranchesPass


class PassFailed(RuntimeError):
    """A graph pass broke its own contract: a bug, reported with the pass's name and the passes before it."""


def run_passes(model: ir.Model, passes: Sequence[PassBase]) -> tuple[ir.Model, list[dict[str, object]]]:
    """Run ``passes`` in order (in-place or functional alike); the model and what each did, for the manifest."""
    done: list[dict[str, object]] = []
    for graph_pass in passes:
        try:
            result = graph_pass(model)
        except (PreconditionError, PostconditionError) as exc:
            after = ", ".join(str(d["pass"]) for d in done) or "none"
            raise PassFailed(f"{type(graph_pass).__name__} failed its contract (after {after}): {exc}") from exc
        model = result.model
        done.append({"pass": type(graph_pass).__name__, "modified": bool(result.modified)})
    return model, done


def generic_passes(*, fusions: str = "none") -> list[PassBase]:
    """Step 2, the passes that do not depend on the split: the original model gets them too when compared."""
    passes: list[PassBase] = [CleanupGraphPass(), RemoveSoftmaxNanGuardPass()]
    if fusions == "ort":
        passes.append(FuseGraphPass())
    return passes


def precision_passes(
    *, grids: Mapping[str, WeightGrid], int8_form: str, int4_form: str, heavy_precision: str,
    light_precision: str = "fp32", act_absmax: Mapping[str, float] | None = None, other_matmuls: str = "fp32",
    int8_qmax: int = 127, fusions: str = "none",
) -> list[PassBase]:
    """Steps 2-4: what turns the exported fp32 graph into the target's precisions."""
    passes = generic_passes(fusions=fusions)
    if grids:
        passes.append(
            QuantizeBranchWeightsPass(grids=grids, int8_form=int8_form, int4_form=int4_form, act_absmax=act_absmax)
        )
    if other_matmuls == "int8" and int8_form != "nncf":  # NNCF quantises the rest in the OpenVINO IR
        passes.append(QuantizeOtherMatMulsPass(reduce_range=int8_qmax < 127))
    if heavy_precision in ("fp16", "bf16"):
        passes.append(ConvertBranchPrecisionPass(branch="heavy", precision=heavy_precision))
    if light_precision in ("fp16", "bf16"):
        passes.append(ConvertBranchPrecisionPass(branch="light", precision=light_precision))
    return passes


def target_passes(
    *, split_modules: Mapping[str, int], prefix: str, grids: Mapping[str, WeightGrid], int8_form: str,
    int4_form: str, heavy_precision: str, light_precision: str = "fp32",
    act_absmax: Mapping[str, float] | None = None, other_matmuls: str = "fp32", int8_qmax: int = 127,
    fusions: str = "none",
) -> list[PassBase]:
    """Steps 1-4 for one export; the caller runs EmbedManifestPass once it knows what these did."""
    return [
        TagBranchesPass(split_modules=split_modules, prefix=prefix),
        *precision_passes(
            grids=grids, int8_form=int8_form, int4_form=int4_form, heavy_precision=heavy_precision,
            light_precision=light_precision, act_absmax=act_absmax, other_matmuls=other_matmuls,
            int8_qmax=int8_qmax, fusions=fusions,
        ),
    ]
