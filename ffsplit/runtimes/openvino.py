"""OpenVINO: compile the ONNX model, or the target's IR, for a device (CPU here) and run it behind the runner
interface.

OpenVINO reads the ONNX file directly, including the ``com.microsoft`` ops
the precision pass writes (DynamicQuantizeMatMul, MatMulNBits). Targets whose
IR NNCF builds (``openvino_ir``: static int8, int4 weights) run
``runtime/<target>/model.xml`` instead, exactly that file. The guard reads the
compiled model's runtime graph: each executed layer lists the original ONNX
node names it was built from (``originalLayersNames``) and the precision it
runs at (``runtimePrecision``: a weight-compressed FullyConnected reports its
weights', u4 / i8). The layer list is also written to ``layers.json`` beside
the artifact, for ``ffsplit inspect``.

A stateful IR (a KV-cache decoder) takes no ``past_key_values`` inputs and
gives no ``present`` outputs: the cache stays in the infer request (each
sequence continues its own: ``beam_idx`` is ``0..batch-1``). A feed
whose attention mask is as long as its ``input_ids`` starts a new sequence
(the state is reset); a longer one continues the cached one. So the greedy
loop every runtime shares runs unchanged, without copying the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ffsplit.artifact import LAYERS_FILE
from ffsplit.errors import UsageError
from ffsplit.jsonio import dumps
from ffsplit.runtimes.base import Loader, Runner, register_runtime
from ffsplit.runtimes.openvino_ir import BEAM_INPUT, ir_path
from ffsplit.runtimes.records import records_from_layers
from ffsplit.signature import Dim, is_past

if TYPE_CHECKING:
    import openvino as ov

    from ffsplit.graph_passes import LayerRecord


def runtime_layers(compiled: ov.CompiledModel) -> list[dict[str, str]]:
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


@dataclass(frozen=True)
class Compiled:
    """What OpenVINO built: the compiled model, and whether it keeps a KV cache of its own (a stateful IR)."""

    model: ov.CompiledModel
    stateful: bool


@dataclass(frozen=True)
class CompiledFromFile(Loader[Compiled]):
    """The build step: the target's IR beside the ONNX file (NNCF targets), or the ONNX file, compiled for the
    target's device with the target's config alone, its executed layers saved in ``runtime_dir`` for the
    guard."""

    @property
    def model_file(self) -> Path:
        """What OpenVINO compiles."""
        return ir_path(self.model_path, self.target) if self.target.ir_compression else self.model_path

    def __call__(self) -> Compiled:
        import openvino as ov

        model_file, target = self.model_file, self.target
        if not model_file.is_file():
            raise UsageError(
                f"there is no {model_file.name} for target {target.name} ({model_file}): re-run ffsplit export")
        core = ov.Core()
        model = core.read_model(str(model_file))
        # a target without INFERENCE_PRECISION_HINT runs at OpenVINO's default
        config = dict(target.openvino.get("config", {}))
        compiled = core.compile_model(model, target.openvino.get("device", "CPU"), config)
        if self.runtime_dir is not None:
            (self.runtime_dir / LAYERS_FILE).write_text(dumps(runtime_layers(compiled), indent=1), encoding="utf-8")
        return Compiled(compiled, bool(model.get_variables()))


@register_runtime("openvino")
class OpenVinoRunner(Runner[Compiled]):
    """Runs one ONNX model with OpenVINO on the target's device."""

    loader_class = CompiledFromFile
    loader: CompiledFromFile

    def __init__(self, loader: CompiledFromFile) -> None:
        super().__init__(loader)
        self.compiled: ov.CompiledModel | None = None
        self.stateful = False
        self.cached = 0  # tokens in a stateful request's cache

    @property
    def runtime_graph(self) -> str:
        return LAYERS_FILE

    def _activate(self, built: Compiled) -> None:
        self.compiled, self.stateful = built.model, built.stateful
        self.cached = 0
        self.request = self.compiled.create_infer_request()

    def _deactivate(self) -> None:
        self.compiled = self.request = None

    def _input_shapes(self) -> dict[str, tuple[str, list[Dim]]]:
        """The ONNX file's inputs; a stateful IR's without the cache it keeps itself."""
        shapes = super()._input_shapes()
        return {k: v for k, v in shapes.items() if not is_past(k)} if self.stateful else shapes

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.stateful:
            past = feed["attention_mask"].shape[-1] - feed["input_ids"].shape[-1]
            if past == 0:
                self.request.reset_state()  # nothing cached before these tokens: a new sequence
            elif past != self.cached:
                raise UsageError(
                    f"the attention mask says {past} tokens come before these, but this stateful model holds "
                    f"{self.cached}: continue the sequence it last ran, or start one (mask as long as input_ids)"
                )
            self.cached = feed["attention_mask"].shape[-1]
            feed = {**feed, BEAM_INPUT: np.arange(feed["input_ids"].shape[0], dtype=np.int32)}
        assert self.compiled is not None
        results = self.request.infer(feed)
        return {port.get_any_name(): np.array(results[port]) for port in self.compiled.outputs}

    def _layer_records(self) -> list[LayerRecord]:
        return records_from_layers(runtime_layers(self.compiled))

