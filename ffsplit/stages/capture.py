"""Capture the split model as ONNX with one exporter strategy, then run the target's graph passes and save.

Like torch.onnx's capture strategies, ``capture`` returns what it got and the
exception that stopped it, catching only capture errors: a failure after
capture (a graph pass, the checker, NNCF) is a bug, never a reason to try the
next exporter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.errors import UsageError
from ffsplit.plan import ExportPlan

if TYPE_CHECKING:
    import onnx_ir as ir
    import torch
    from transformers import PreTrainedTokenizerBase

    from ffsplit.graph_passes.precision import WeightGrid
    from ffsplit.manifest import LayerPlan, Manifest


@dataclass
class Captured:
    exporter: str
    model: ir.Model | None  # None when capture failed
    error: BaseException | None = None

    @property
    def failure(self) -> str:
        """The root cause, on one line, for the manifest's exporter attempts."""
        from ffsplit.exporter.export import describe_failure

        return "" if self.error is None else f"export: {describe_failure(self.error)}"


def capture(plan: ExportPlan, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, exporter: str) -> Captured:
    from ffsplit.exporter import export_program

    try:
        return Captured(exporter, export_program(
            model, tokenizer, plan.task, exporter=exporter, pooling=plan.pooling, opset=plan.target.opset))
    except (UsageError, OSError):  # bad input, or the machine (a full disk)
        raise
    except Exception as exc:  # the exporter could not capture this model
        return Captured(exporter, None, exc)


def graph_passes(
    plan: ExportPlan, plans: list[LayerPlan], grids: dict[str, WeightGrid], act_absmax: dict[str, float] | None,
    *, store_weights: str | None = None,
) -> list[ir.passes.PassBase]:
    """Tag, generic and precision passes for the plan's target (EmbedManifestPass runs after, in ``save``);
    ``store_weights`` as ``openvino_ir.weight_storage`` says."""
    from ffsplit.exporter.export import WRAPPER_PREFIX
    from ffsplit.graph_passes import expected_matmuls, expected_precisions
    from ffsplit.graph_passes.pipeline import target_passes

    floats = plan.target.floats_in_graph
    return target_passes(
        split_modules={p.module: p.layer for p in plans}, prefix=WRAPPER_PREFIX, grids=grids,
        int8_form=plan.target.int8_compute, int4_form=plan.target.int4_compute,
        heavy_precision=plan.heavy if floats else "fp32",
        light_precision=plan.light_float if floats else "fp32",
        act_absmax=act_absmax, other_matmuls=plan.target.other_matmuls, int8_qmax=plan.int8_qmax,
        fusions=plan.target.fusions, expected=expected_matmuls(plans),
        matmulnbits_accuracy_level=plan.target.matmulnbits_accuracy_level,
        # the graph holds the planned precisions unless TensorRT's builder or NNCF realises them later
        precisions=expected_precisions(plans) if floats and not plan.nncf else None,
        store_weights=store_weights,
    )


def save(model: ir.Model, passes: list[ir.passes.PassBase], manifest: Manifest, path: Path) -> tuple[Manifest, int | None]:
    """Run ``passes``, embed ``manifest`` with them recorded and save; that manifest and the default-domain opset."""
    from ffsplit.exporter import save_model
    from ffsplit.graph_passes import EmbedManifestPass
    from ffsplit.graph_passes.pipeline import run_passes

    captured = model
    model, done = run_passes(model, passes)
    manifest = manifest.replace(graph_passes=tuple(done))
    # what the run records about itself (when it ran) stays in manifest.json: the graph is the same every run
    EmbedManifestPass(manifest=manifest.embedded())(model)
    save_model(model, path)
    opset = model.opset_imports.get("", None)
    for graph in {id(m.graph): m.graph for m in (captured, model)}.values():
        release_weights(graph)
    return manifest, opset


def release_weights(graph: ir.Graph) -> None:
    """Let go of a saved graph's weights. torch.onnx's initializers wrap the torch parameters themselves,
    and something inside the exporter keeps the captured graph alive after the export returns: without
    this, the whole torch model outlived the export (measured: a 1.3B model's build and check stages held it)."""
    for value in list(graph.initializers.values()):
        value.const_value = None
    graph.initializers.clear()
