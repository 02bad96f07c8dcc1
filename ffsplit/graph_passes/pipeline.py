"""The pass pipeline for a target, in its one documented order.

1. ``TagBranchesPass``: every node of a SplitFFN gets its layer and branch
   (metadata and name), before anything can move or merge nodes.
2. ``CleanupGraphPass``: fold constants, drop dead nodes, shape inference.
   Before precision, so folding sees plain fp32 weights and cannot undo the
   integers written next (it never folds DequantizeLinear either).
   ``RemoveSoftmaxNanGuardPass`` then drops transformers' NaN guards after
   attention softmaxes where the mask is finite (exact, and ~10% of MiniLM's time).
   ``StripTracesPass`` drops the exporter's per-node stack traces (the
   exporting machine's paths) and FX node dumps.
   ``FuseGraphPass`` (targets with ``fusions = "ort"``) applies onnxscript's
   ONNX Runtime fusions (MultiHeadAttention, SkipLayerNormalization, BiasGelu),
   proving afterwards that every tagged MatMul survived.
   These are the generic passes: the bench baseline gets the same ones.
3. ``QuantizeBranchWeightsPass``: int8 / int4 grids stored as integers, in
   the target's compute form. Precision comes before any fusion: a fused
   contrib op (ONNX Runtime's, at session build) hides weights from it.
   ``QuantizeOtherMatMulsPass`` (targets with ``other_matmuls = "int8"``)
   puts the multiplies outside the SplitFFNs in dynamic int8 as well, and
   ``QuantizeOtherMatMulsInt4Pass`` (``other_matmuls = "int4"``) in blockwise
   int4 (MatMulNBits, the int4 decoder recipes' form).
4. ``ConvertBranchPrecisionPass``: the heavy (and, on GPU targets, the
   light) branch in fp16 / bf16 when asked; for TensorRT the engine builder
   does this instead (layer precisions), so the graph stays fp32.
   ``StoreWeightsHalfPass`` (OpenVINO int4 targets, a source stored in bf16 /
   fp16): the weights NNCF compresses after the export stay in the source's
   storage type, cast to fp32 where used, so NNCF reads the stored size, not
   twice it.
5. ``CheckBranchSeparationPass``: the graph as written keeps one multiply per
   projection and branch, at the planned precision where the graph holds it
   (the separation guard checks the runtime's graph again later).
6. ``EmbedManifestPass``: the manifest into the model's metadata, last, so it
   records the passes that ran.

Any further fusion is the runtime's, and the separation guard checks afterwards
that none crossed a branch boundary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes import PassBase, PassError, PassManager, PassResult, PostconditionError, PreconditionError

from ffsplit.graph_passes.check_branch_separation_pass import CheckBranchSeparationPass
from ffsplit.graph_passes.cleanup_graph_pass import CleanupGraphPass
from ffsplit.graph_passes.convert_branch_precision_pass import ConvertBranchPrecisionPass
from ffsplit.graph_passes.fuse_graph_pass import FuseGraphPass
from ffsplit.graph_passes.precision import WeightGrid
from ffsplit.graph_passes.quantize_branch_weights_pass import QuantizeBranchWeightsPass
from ffsplit.graph_passes.quantize_other_matmuls_int4_pass import QuantizeOtherMatMulsInt4Pass
from ffsplit.graph_passes.quantize_other_matmuls_pass import QuantizeOtherMatMulsPass
from ffsplit.graph_passes.remove_softmax_nan_guard_pass import RemoveSoftmaxNanGuardPass
from ffsplit.graph_passes.store_weights_half_pass import StoreWeightsHalfPass
from ffsplit.graph_passes.strip_traces_pass import StripTracesPass
from ffsplit.graph_passes.tag_branches_pass import TagBranchesPass
from ffsplit.manifest import GraphPass
from ffsplit.precisions import HALF_FLOATS


class PassFailed(RuntimeError):
    """A graph pass failed: a bug, reported with the pass's name and the passes that ran before it."""


class _Recorded(PassBase):
    """One pass inside the PassManager: records what it did, and names itself when it fails."""

    def __init__(self, inner: PassBase, done: list[GraphPass]) -> None:
        self.inner = inner
        self.done = done

    @property
    def in_place(self) -> bool:
        return self.inner.in_place

    @property
    def changes_input(self) -> bool:
        return self.inner.changes_input

    def call(self, model: ir.Model) -> PassResult:
        try:
            result = self.inner(model)
        except Exception as exc:  # a contract (requires / ensures) or anything else: the pass's bug
            after = ", ".join(d.name for d in self.done) or "none"
            kind = "failed its contract" if isinstance(exc, (PreconditionError, PostconditionError)) else "failed"
            raise PassFailed(f"{type(self.inner).__name__} {kind} (after {after}): {type(exc).__name__}: {exc}") from exc
        self.done.append(GraphPass(name=type(self.inner).__name__, modified=bool(result.modified)))
        return result


def run_passes(model: ir.Model, passes: Sequence[PassBase]) -> tuple[ir.Model, list[GraphPass]]:
    """Run ``passes`` once, in order, through onnx_ir's PassManager; the model and what each did (for the
    manifest). Any failure inside a pass raises PassFailed naming it: never a reason to try another exporter."""
    done: list[GraphPass] = []
    manager = PassManager([_Recorded(p, done) for p in passes], steps=1)
    try:
        result = manager(model)
    except PassError as exc:  # the manager wraps what a pass raised
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, PassFailed):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from cause.__cause__  # the pass's own error stays attached, for the bug report
    return result.model, done


def generic_passes(*, fusions: str = "none") -> list[PassBase]:
    """Step 2, the passes that do not depend on the split: the original model gets them too when compared."""
    passes: list[PassBase] = [CleanupGraphPass(), RemoveSoftmaxNanGuardPass(), StripTracesPass()]
    if fusions == "ort":
        passes.append(FuseGraphPass())
    return passes


def baseline_passes(*, fusions: str = "none", store_weights: str | None = None) -> list[PassBase]:
    """What the original model's graph gets when compared against a split export: the generic passes, and the
    same weight storage (``store_weights``) the split graph's precision passes end with."""
    passes = generic_passes(fusions=fusions)
    return passes + [StoreWeightsHalfPass(precision=store_weights)] if store_weights else passes


def precision_passes(
    *, grids: Mapping[str, WeightGrid], int8_form: str, int4_form: str, heavy_precision: str,
    light_precision: str = "fp32", act_absmax: Mapping[str, float] | None = None, other_matmuls: str = "fp32",
    int8_qmax: int = 127, fusions: str = "none", matmulnbits_accuracy_level: int = 0,
    store_weights: str | None = None,
) -> list[PassBase]:
    """Steps 2-4: what turns the exported fp32 graph into the target's precisions; ``store_weights`` (bf16 /
    fp16) keeps the fp32 weights a compressor reads after the export in that storage type."""
    passes = generic_passes(fusions=fusions)
    if grids:
        passes.append(
            QuantizeBranchWeightsPass(grids=grids, int8_form=int8_form, int4_form=int4_form, act_absmax=act_absmax,
                                      matmulnbits_accuracy_level=matmulnbits_accuracy_level)
        )
    if other_matmuls == "int8" and int8_form != "nncf":  # NNCF quantises the rest in the OpenVINO IR
        passes.append(QuantizeOtherMatMulsPass(reduce_range=int8_qmax < 127))
    if other_matmuls == "int4" and int4_form != "nncf":  # NNCF compresses the rest in the OpenVINO IR
        passes.append(QuantizeOtherMatMulsInt4Pass(accuracy_level=matmulnbits_accuracy_level))
    if heavy_precision in HALF_FLOATS:
        passes.append(ConvertBranchPrecisionPass(branch="heavy", precision=heavy_precision))
    if light_precision in HALF_FLOATS:
        passes.append(ConvertBranchPrecisionPass(branch="light", precision=light_precision))
    if store_weights is not None:
        passes.append(StoreWeightsHalfPass(precision=store_weights))
    return passes


def target_passes(
    *, split_modules: Mapping[str, int], prefix: str, grids: Mapping[str, WeightGrid], int8_form: str,
    int4_form: str, heavy_precision: str, light_precision: str = "fp32",
    act_absmax: Mapping[str, float] | None = None, other_matmuls: str = "fp32", int8_qmax: int = 127,
    fusions: str = "none", expected: Mapping[int, Mapping[str, int]] | None = None,
    precisions: Mapping[int, Mapping[str, str]] | None = None, matmulnbits_accuracy_level: int = 0,
    store_weights: str | None = None,
) -> list[PassBase]:
    """Steps 1-4 for one export, then (given ``expected``) CheckBranchSeparationPass on the graph as written:
    a pass that merged or lost a branch multiply, or missed a planned precision, is caught here as the bug it
    is, before any runtime. The caller runs EmbedManifestPass once it knows what these did."""
    passes = [
        TagBranchesPass(split_modules=split_modules, prefix=prefix),
        *precision_passes(
            grids=grids, int8_form=int8_form, int4_form=int4_form, heavy_precision=heavy_precision,
            light_precision=light_precision, act_absmax=act_absmax, other_matmuls=other_matmuls,
            int8_qmax=int8_qmax, fusions=fusions, matmulnbits_accuracy_level=matmulnbits_accuracy_level,
            store_weights=store_weights,
        ),
    ]
    if expected is not None:
        passes.append(CheckBranchSeparationPass(expected=expected, precisions=precisions))
    return passes
