"""Every file name of an output folder, once, and which of them a deployment does not need."""

from __future__ import annotations

MANIFEST = "manifest.json"


MODEL_FILE = "model.onnx"


SPLIT_WEIGHTS = "split.safetensors"


RUNTIME_DIR = "runtime"


MANIFEST_MAX_BYTES = 64 << 20


EMBEDDED_KEY = "pkg.ffsplit.manifest"


def not_deployed(rel: str, *, runs_ir: bool = False) -> bool:
    """Files of an artifact a deployment does not run: the split torch weights (``check`` rebuilds the
    split model from them) and the graphs and layer lists the guard read (the runtime rebuilds those). For a
    target that ``runs_ir`` (an OpenVINO IR NNCF built) also model.onnx's external weights: the IR holds what
    runs, and model.onnx stays only for its signature."""
    return rel == SPLIT_WEIGHTS or (runs_ir and rel == f"{MODEL_FILE}.data") or (
        rel.startswith(f"{RUNTIME_DIR}/") and rel.rsplit("/", 1)[-1] in ("optimized.onnx", "optimized.onnx.data", "layers.json")
    )
