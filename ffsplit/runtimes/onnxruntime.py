"""ONNX Runtime: session options and providers from a target, and its runner.

CPU, CUDA and TensorRT execution providers take their options from the
target (``provider_options``). For the TensorRT provider, fp16 / int8 flags
come from the branch precisions, the engine and timing caches sit in the
artifact's runtime folder, and the optimisation profile is the target's shape
ranges (one profile; KV-cache graphs use the prefill range).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from ffsplit.artifact import OPTIMIZED_GRAPH
from ffsplit.resources import runtime_writes
from ffsplit.runtimes.base import Loader, Runner, onnx_inputs, register_runtime
from ffsplit.runtimes.shapes import input_ranges, phases, trt_shape_string
from ffsplit.signature import Dim
from ffsplit.targets import Target

if TYPE_CHECKING:
    from ffsplit.graph_passes import LayerRecord

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


# Worker threads that busy-wait after a run (ONNX Runtime's default) steal the cores from the next
# model timed in the same process; side-by-side benchmarks turn that off for every session alike.
TIMING_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def session_options(
    target: Target, *, optimized_model_path: Path | None = None, timing: bool = False
) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[target.graph_optimization]
    so.log_severity_level = 3
    for key, value in {**target.session_config, **(TIMING_CONFIG if timing else {})}.items():
        so.add_session_config_entry(key, value)
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    if not timing:
        # Checks run batches of very different shapes (one at the model's longest length): an arena sized
        # for each, kept for the session's life, made the check the largest stage of a decoder's export.
        # Timing sessions keep ONNX Runtime's defaults, which are what a deployment runs.
        so.enable_cpu_mem_arena = False
        so.enable_mem_pattern = False
    return so


def provider_options(
    target: Target, inputs: dict[str, list[Dim]], cache_dir: Path | None
) -> list[tuple[str, dict[str, Any]]]:
    """(provider, options) for each of the target's providers, in order."""
    out = []
    for provider in target.providers:
        opts: dict[str, Any] = {}
        if provider == "TensorrtExecutionProvider":
            precisions = {target.heavy_precision, target.light_precision}
            opts["trt_fp16_enable"] = bool(precisions & {"fp16"})
            opts["trt_int8_enable"] = bool(precisions & {"int8"}) and target.int8_compute == "qdq"
            opts["trt_bf16_enable"] = bool(precisions & {"bf16"})
            if cache_dir is not None:
                opts["trt_engine_cache_enable"] = True
                opts["trt_engine_cache_path"] = str(cache_dir / "trt-engines")
                opts["trt_timing_cache_enable"] = True
                opts["trt_timing_cache_path"] = str(cache_dir / "trt-timing")
            ranges = input_ranges(inputs, target.shapes, phases(inputs)[0])
            for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                opts[key] = trt_shape_string(ranges, i)
        opts.update(target.provider_options.get(provider, {}))  # the target's own word wins
        out.append((provider, opts))
    return out


@dataclass(frozen=True)
class SessionFromOnnx(Loader[ort.InferenceSession]):
    """The build step (Polygraphy's ``SessionFromOnnx``): a session for the target, its optimised graph saved in
    ``runtime_dir`` for the guard beside the TensorRT provider's caches."""

    @property
    def optimized_model_path(self) -> Path | None:
        return None if self.runtime_dir is None else self.runtime_dir / OPTIMIZED_GRAPH

    def __call__(self) -> ort.InferenceSession:
        model_path, target, optimized = self.model_path, self.target, self.optimized_model_path
        opts = session_options(target, optimized_model_path=optimized, timing=self.timing)
        if optimized is not None and (model_path.parent / f"{model_path.name}.data").exists():
            # a model with external data keeps its weights beside the optimised graph too, where the guard
            # reads them lazily (inline, a graph past 2 GB cannot be written, nor read without loading them all)
            opts.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                          OPTIMIZED_GRAPH + ".data")
            opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        dims = {name: shape for name, (_t, shape) in onnx_inputs(model_path).items()}
        providers = provider_options(target, dims, self.runtime_dir)
        if optimized is None:
            return ort.InferenceSession(str(model_path), opts, providers=providers)
        with runtime_writes(optimized.parent):
            return ort.InferenceSession(str(model_path), opts, providers=providers)


@register_runtime("onnxruntime")
class OrtRunner(Runner[ort.InferenceSession]):
    """Runs one ONNX model in ONNX Runtime; the optimised graph the session runs is saved for the guard."""

    loader_class = SessionFromOnnx
    loader: SessionFromOnnx

    def __init__(self, loader: SessionFromOnnx) -> None:
        super().__init__(loader)
        self.session: ort.InferenceSession | None = None

    @property
    def name(self) -> str:
        return f"onnxruntime[{','.join(self.target.providers)}]:{self.model_path.name}"

    @property
    def runtime_graph(self) -> str:
        optimized = self.loader.optimized_model_path
        return optimized.name if optimized else "session graph"

    def _activate(self, built: ort.InferenceSession) -> None:
        self.session = built

    def _deactivate(self) -> None:
        self.session = None

    def _input_shapes(self) -> dict[str, tuple[str, list[Dim]]]:
        assert self.session is not None
        return {i.name: (i.type, list(i.shape)) for i in self.session.get_inputs()}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.session is not None
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed), strict=True))

    def _layer_records(self) -> list[LayerRecord]:
        import onnx_ir as ir

        from ffsplit.graph_passes import records_from_onnx

        optimized = self.loader.optimized_model_path
        if optimized is None or not optimized.is_file():
            raise RuntimeError("the guard needs the session's optimised graph: give the runner a runtime_dir")
        return records_from_onnx(ir.load(optimized))
