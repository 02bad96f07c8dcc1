"""OpenVINO: compile the ONNX model for a device (CPU here) and run it behind the runner interface.

OpenVINO reads the ONNX file directly, including the ``com.microsoft`` ops
the precision pass writes (DynamicQuantizeMatMul, MatMulNBits). The guard
reads the compiled model's runtime graph: each executed layer lists the
original ONNX node names it was built from (``originalLayersNames``) and the
precision it runs at (``runtimePrecision``). The layer list is also written to
``layers.json`` beside the artifact, for ``ffsplit inspect``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ffsplit.runtimes.base import Runner
from ffsplit.runtimes.targets import Target

LAYERS_FILE = "layers.json"
# OpenVINO CPU layer types that multiply by a weight matrix.
MATMUL_LAYERS = frozenset({"FullyConnected", "MatMul", "Gemm", "FullyConnectedCompressed"})
_PRECISIONS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8", "i4": "int4", "u4": "int4"}


def runtime_layers(compiled: Any) -> list[dict[str, str]]:
    """Every layer of a compiled model's runtime graph: name, type, precision and original ONNX nodes."""
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()

        def get(key: str, info: Any = info) -> str:
            return info[key].astype(str) if key in info else ""

        rows.append({
            "name": op.get_friendly_name(), "type": get("layerType"), "precision": get("runtimePrecision"),
            "original": get("originalLayersNames"),
        })
    return rows


def records_from_layers(rows: list[dict[str, str]]) -> list[Any]:
    """The guard's records from an OpenVINO runtime layer list."""
    from ffsplit.graph_passes import LayerRecord
    from ffsplit.graph_passes.tag_branches_pass import tags_in

    out = []
    for row in rows:
        if row["type"] not in MATMUL_LAYERS:
            continue
        tags = tuple(sorted(set(tags_in(row["original"]))))
        if tags:
            precision = _PRECISIONS.get(row["precision"].lower(), row["precision"] or "unknown")
            out.append(LayerRecord(row["name"], row["type"], tags, precision))
    return out


class OpenVinoRunner(Runner):
    """Runs one ONNX model with OpenVINO on the target's device."""

    def __init__(
        self, model_path: Path, target: Target, *, runtime_dir: Path | None = None, timing: bool = False
    ) -> None:
        super().__init__(model_path, target, runtime_dir=runtime_dir, timing=timing)
        self.compiled: Any = None

    @property
    def runtime_graph(self) -> str:
        return LAYERS_FILE

    def _activate(self) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", **self.target.openvino.get("config", {})}
        self.compiled = core.compile_model(core.read_model(str(self.model_path)), self.target.openvino.get("device", "CPU"), config)
        if self.runtime_dir is not None:
            (self.runtime_dir / LAYERS_FILE).write_text(json.dumps(runtime_layers(self.compiled), indent=1), encoding="utf-8")

    def _deactivate(self) -> None:
        self.compiled = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self.compiled.create_infer_request()
        results = request.infer(feed)
        return {port.get_any_name(): np.array(results[port]) for port in self.compiled.outputs}

    def _layer_records(self) -> list[Any]:
        return records_from_layers(runtime_layers(self.compiled))
