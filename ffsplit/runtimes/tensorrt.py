"""Native TensorRT: a serialized engine (``model.plan``) per artifact and target, and its runner.

The build: Polygraphy's loaders parse the ONNX file, one optimisation profile
per phase from the target's shape ranges (encoder; or prefill and decode
apart for KV-cache graphs, no zero-size dimension in either), fp16 / int8 /
bf16 flags from the target, every heavy-branch layer pinned to the heavy
precision with obey-precision-constraints (so TensorRT cannot lower the
heavy hitters to int8), and a timing cache kept beside the engine.

An engine is only valid for the GPU, TensorRT version, profiles and
precisions it was built with. ``engine_key`` hashes all of them (and the
ONNX file); ``engine.json`` beside ``model.plan`` records the key, and a
mismatch means rebuild, never reuse.

The guard reads the engine inspector's layer list (``layers.json``): each
layer names the ONNX nodes it was built from and its precision.

Everything here but ``build_engine`` (what ``EngineFromOnnx`` calls) and
``TrtRunner`` is pure logic, unit-tested without a GPU; those two need one
(tests marked ``gpu``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ffsplit.artifact import ENGINE_FILE, LAYERS_FILE, RUNTIME_DIR, sha256_file
from ffsplit.errors import UsageError
from ffsplit.jsonio import dumps
from ffsplit.runtimes.base import Loader, Runner, onnx_inputs, register_runtime
from ffsplit.runtimes.records import records_from_inspector
from ffsplit.runtimes.shapes import Range, input_ranges, phases
from ffsplit.signature import Dim, has_past, is_past
from ffsplit.targets import Target

if TYPE_CHECKING:
    from ffsplit.graph_passes import LayerRecord

ENGINE_INFO = "engine.json"
TIMING_CACHE = "timing.cache"
def profiles(target: Target, inputs: Mapping[str, list[Dim]]) -> list[dict[str, Range]]:
    """One optimisation profile per phase: input -> (min, opt, max) shapes."""
    out = []
    for phase in phases(inputs):
        ranges = input_ranges(inputs, target.shapes, phase)
        zero = [name for name, r in ranges.items() if 0 in r[0]]
        if zero:
            raise UsageError(f"target '{target.name}': profile for {phase} has a zero-size dimension in {zero}")
        out.append(ranges)
    return out


def layer_precisions(layer_names: list[str], heavy_precision: str) -> dict[str, str]:
    """The network layers to pin: every layer built from a heavy-branch node, at the heavy precision.

    Names come from the ONNX parser (the ONNX node names, tagged
    ``ffsplit/L<n>/heavy/...``). Light layers are left to the builder (int8
    where Q/DQ says so), merge and untagged layers too.
    """
    from ffsplit.graph_passes.tag_branches_pass import tags_in

    if heavy_precision not in ("fp32", "fp16", "bf16"):
        return {}
    return {name: heavy_precision for name in layer_names if any(b == "heavy" for _, b in tags_in(name))}


def builder_flags(target: Target) -> dict[str, Any]:
    """What the builder config gets from the target."""
    trt = target.tensorrt
    return {
        "fp16": bool(trt.get("fp16", "fp16" in (target.heavy_precision, target.light_precision))),
        "int8": bool(trt.get("int8", target.light_precision == "int8")),
        "bf16": bool(trt.get("bf16", "bf16" in (target.heavy_precision, target.light_precision))),
        "obey_precision_constraints": bool(trt.get("obey_precision_constraints", True)),
        "workspace_mb": int(trt.get("workspace_mb", 4096)),
        "builder_optimization_level": int(trt.get("builder_optimization_level", 3)),
        "timing_cache": bool(trt.get("timing_cache", True)),
    }


def engine_key(
    *, onnx_sha256: str, compute_capability: str, trt_version: str, profiles: list[dict[str, Range]],
    flags: Mapping[str, Any], pinned: Mapping[str, str],
) -> str:
    """Everything an engine depends on, hashed: change any of it and the engine is rebuilt."""
    payload = {
        "onnx": onnx_sha256, "gpu": compute_capability, "tensorrt": trt_version,
        "profiles": [{k: [list(s) for s in v] for k, v in sorted(p.items())} for p in profiles],
        "flags": dict(sorted(flags.items())), "pinned": dict(sorted(pinned.items())),
    }
    return hashlib.sha256(dumps(payload, sort_keys=True).encode()).hexdigest()


def engine_is_current(folder: Path, key: str) -> bool:
    """True only when ``folder`` holds an engine built for exactly ``key``."""
    info = folder / ENGINE_INFO
    if not (folder / ENGINE_FILE).is_file() or not info.is_file():
        return False
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError):
        return False


def _onnx_inputs(model_path: Path) -> dict[str, list[Dim]]:
    return {name: dims for name, (_t, dims) in onnx_inputs(model_path).items()}


def build_engine(model_path: Path, target: Target, folder: Path) -> Path:  # pragma: no cover - needs a GPU
    """Build (or reuse, when its key matches) the engine for ``model_path`` in ``folder``."""
    import tensorrt as trt
    import torch
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        SetLayerPrecisions,
        save_engine,
    )

    inputs = _onnx_inputs(model_path)
    profs = profiles(target, inputs)
    flags = builder_flags(target)
    network_loader = NetworkFromOnnxPath(str(model_path))
    builder, network, parser = network_loader()
    names = [network.get_layer(i).name for i in range(network.num_layers)]
    pinned = layer_precisions(names, target.heavy_precision)
    major, minor = torch.cuda.get_device_capability()
    key = engine_key(
        onnx_sha256=sha256_file(model_path), compute_capability=f"{major}.{minor}", trt_version=trt.__version__,
        profiles=profs, flags=flags, pinned=pinned,
    )
    folder.mkdir(parents=True, exist_ok=True)
    if engine_is_current(folder, key):
        return folder / ENGINE_FILE
    dtypes = {"fp32": trt.float32, "fp16": trt.float16, "bf16": trt.bfloat16}
    network_loader = SetLayerPrecisions(
        NetworkFromOnnxPath(str(model_path)), {n: dtypes[p] for n, p in pinned.items()}
    )
    config = CreateConfig(
        fp16=flags["fp16"], int8=flags["int8"], bf16=flags["bf16"],
        precision_constraints="obey" if flags["obey_precision_constraints"] else None,
        profiles=[_profile(Profile, p) for p in profs],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: flags["workspace_mb"] << 20},
        builder_optimization_level=flags["builder_optimization_level"],
        load_timing_cache=str(folder / TIMING_CACHE) if flags["timing_cache"] else None,
        profiling_verbosity=trt.ProfilingVerbosity.DETAILED,
    )
    engine = EngineFromNetwork(
        network_loader, config=config, save_timing_cache=str(folder / TIMING_CACHE) if flags["timing_cache"] else None
    )()
    save_engine(engine, str(folder / ENGINE_FILE))
    inspector = engine.create_engine_inspector()
    (folder / LAYERS_FILE).write_text(
        inspector.get_engine_information(trt.LayerInformationFormat.JSON), encoding="utf-8"
    )
    (folder / ENGINE_INFO).write_text(dumps({"key": key, "pinned": len(pinned)}, indent=1), encoding="utf-8")
    return folder / ENGINE_FILE


def _profile(profile_cls: Any, ranges: dict[str, Range]) -> Any:  # pragma: no cover - needs TensorRT
    profile = profile_cls()
    for name, (lo, opt, hi) in ranges.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    return profile


@dataclass(frozen=True)
class EngineFromOnnx(Loader[Path]):
    """The build step: the engine file for the target, built (or reused when its key matches) in
    ``runtime_dir``, by default the artifact's ``runtime/<target>/``."""

    @property
    def folder(self) -> Path:
        return self.runtime_dir or self.model_path.parent / RUNTIME_DIR / self.target.name

    def __call__(self) -> Path:  # pragma: no cover - needs a GPU
        return build_engine(self.model_path, self.target, self.folder)


@register_runtime("tensorrt")
class TrtRunner(Runner[Path]):  # pragma: no cover - needs a GPU
    """Runs an artifact's TensorRT engine (built or rebuilt on activate) through Polygraphy's runner."""

    loader_class = EngineFromOnnx
    loader: EngineFromOnnx

    def __init__(self, loader: EngineFromOnnx) -> None:
        super().__init__(loader)
        self._runner: Any = None  # polygraphy's TrtRunner

    @property
    def runtime_graph(self) -> str:
        return LAYERS_FILE

    def _activate(self, built: Path) -> None:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.backend.trt import TrtRunner as PolyTrtRunner

        self._runner = PolyTrtRunner(EngineFromBytes(BytesFromPath(str(built))))
        self._runner.activate()

    def _deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
        self._runner = None

    def feed_from(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prefill gets one masked past slot: the engine's profiles have no zero-size dimension."""
        feed = super().feed_from(batch)
        if has_past(feed):
            for k in [k for k in feed if is_past(k)]:
                b, h, _, d = feed[k].shape
                feed[k] = np.zeros((b, h, 1, d), dtype=feed[k].dtype)
            feed["attention_mask"] = np.concatenate(
                [np.zeros((len(feed["attention_mask"]), 1), dtype=feed["attention_mask"].dtype), feed["attention_mask"]],
                axis=1,
            )
        return feed

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._runner.infer(feed).items()}

    def _layer_records(self) -> list[LayerRecord]:
        return records_from_inspector((self.loader.folder / LAYERS_FILE).read_text(encoding="utf-8"))
