"""The bench baseline: the original model exported the way the split one was, cached on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.artifact import MODEL_FILE

if TYPE_CHECKING:
    from collections.abc import Callable

    from ffsplit.loading import LoadedModel
    from ffsplit.manifest import Manifest
    from ffsplit.targets import Target


def lossy_baseline(target: Target) -> str | None:
    """What the baseline of an artifact for ``target`` is when it is not the original at full precision."""
    if target.ir_compression == "int8":
        return "the original model with NNCF static int8 (nothing ignored), on OpenVINO"
    if target.ir_compression == "int4":
        settings = target.nncf
        return (f"the original model with NNCF int4 weights ({settings['mode']}, groups of {settings['group_size']}, "
                "every multiply but the embeddings and the LM head), on OpenVINO")
    return None


def baseline_onnx(
    manifest: Manifest, target: Target, loaded: LoadedModel, log: Callable[[str], None] | None = None
) -> Path:
    """The original model of the artifact ``manifest`` describes, exported the same way as its split one for
    ``target`` (the artifact's), cached by source hash and versions.

    For an NNCF target the original also gets NNCF's static int8 (nothing ignored, calibrated on as
    many bundled calibration texts as the export used), or its int4 weight compression with the target's
    settings: the strongest recipe on that runtime.
    """
    from ffsplit.exporter import export_program, save_model
    from ffsplit.graph_passes.pipeline import baseline_passes, run_passes
    from ffsplit.runtimes.openvino_ir import build_ir, weight_storage
    from ffsplit.split.calibration import calibration_texts
    from ffsplit.version import versions

    v = versions()
    # the graph gets the same target-independent passes as the split one (cleanup, NaN guards, fusions)
    fusions = target.fusions
    nncf = lossy_baseline(target) is not None
    calib = manifest.calibration
    key = (f"{manifest.source.sha256[:16]}-torch{v['torch']}-tf{v['transformers']}-ffsplit{v['ffsplit']}"
           f"-g4-{fusions}" + (f"-opset{target.opset}" if target.opset else "") + (f"-nncf-{target.int8_weight_range}-{calib.texts}x{calib.max_length}" if nncf else "")
           + "".join(f"-{setting}{value}" for setting, value in sorted(target.nncf.items())))
    root = Path(os.environ.get("FFSPLIT_CACHE", Path.home() / ".cache" / "ffsplit")) / "baseline" / key
    path = root / MODEL_FILE
    if path.is_file():
        return path
    if log:
        log("exporting the original model once for comparison (cached) ...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
    try:
        program = export_program(loaded.model, loaded.tokenizer, loaded.task, opset=target.opset)
        # stored as the artifact's graph stores the weights NNCF compresses (a bf16 source's stay bf16)
        program, _ = run_passes(program, baseline_passes(
            fusions=fusions, store_weights=weight_storage(target, loaded.model)))
        save_model(program, tmp / MODEL_FILE)
        if nncf:
            if log:
                log(f"NNCF {target.ir_compression} of the original for comparison (cached) ...")
            texts = calibration_texts(limit=calib.texts, max_length=calib.max_length)
            build_ir(tmp / MODEL_FILE, target, loaded.tokenizer, texts, calib.max_length)
        with contextlib.suppress(OSError):  # another process cached it first
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
