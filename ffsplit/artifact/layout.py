"""Every file name of an output folder, once, and which of them a deployment does not need."""

from __future__ import annotations

MANIFEST = "manifest.json"


MODEL_FILE = "model.onnx"


SPLIT_WEIGHTS = "split.safetensors"


RUNTIME_DIR = "runtime"


# Inside runtime/<target>/: what a runtime built or read there
OPTIMIZED_GRAPH = "optimized.onnx"  # the graph an ONNX Runtime session runs (what the guard reads)
LAYERS_FILE = "layers.json"  # the layers OpenVINO or TensorRT executes (what the guard reads)
IR_FILE = "model.xml"  # the OpenVINO IR NNCF built
ENGINE_FILE = "model.plan"  # a serialized TensorRT engine


GOLDEN_FILE = "golden.npz"  # inputs and the runtime's outputs that `check --golden` replays


MANIFEST_MAX_BYTES = 64 << 20


EMBEDDED_KEY = "pkg.ffsplit.manifest"


# Files ffsplit writes into an output folder, which a runtime option may not name.
RESERVED_FILES = frozenset({MODEL_FILE, f"{MODEL_FILE}.data", MANIFEST, SPLIT_WEIGHTS, OPTIMIZED_GRAPH,
                            f"{OPTIMIZED_GRAPH}.data", LAYERS_FILE, IR_FILE, ENGINE_FILE, GOLDEN_FILE})


def not_deployed(rel: str, *, runs_ir: bool = False) -> bool:
    """Files of an artifact a deployment does not run: the split torch weights (``check`` rebuilds the
    split model from them) and the graphs and layer lists the guard read (the runtime rebuilds those). For a
    target that ``runs_ir`` (an OpenVINO IR NNCF built) also model.onnx's external weights: the IR holds what
    runs, and model.onnx stays only for its signature."""
    return rel == SPLIT_WEIGHTS or (runs_ir and rel == f"{MODEL_FILE}.data") or (
        rel.startswith(f"{RUNTIME_DIR}/") and rel.rsplit("/", 1)[-1] in (OPTIMIZED_GRAPH, f"{OPTIMIZED_GRAPH}.data", LAYERS_FILE)
    )
