"""OpenVINO: compile the ONNX model for a device (CPU here) and run it behind the runner interface.

OpenVINO reads the ONNX file directly, including the ``com.microsoft`` ops
the precision pass writes (DynamicQuantizeMatMul, MatMulNBits). The guard
reads the compiled model's runtime graph: each executed layer lists the
original ONNX node names it was built from (``originalLayersNames``) and the
precision it runs at (``runtimePrecision``). The layer list is also written to
``layers.json`` beside the artifact, for ``ffsplit inspect``.

Targets with ``int8_compute = "nncf"`` run an OpenVINO IR instead of the ONNX
file: ``quantize_ir`` converts the exported split graph and hands it to NNCF's
post-training static int8 (``model_type=TRANSFORMER``: calibration, range
estimation, SmoothQuant, bias correction), with every heavy-branch MatMul,
found by its tag, in NNCF's ignored scope, so the heavy hitters stay fp32 and
everything else (light branch, attention projections) runs int8. The IR lives
at ``runtime/<target>/model.xml`` beside model.onnx, fp32 weights kept fp32
(``compress_to_fp16=False``) and the inference precision stored in its
``runtime_options``; the runner compiles exactly that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ffsplit.errors import UsageError
from ffsplit.jsonio import dumps
from ffsplit.resources import runtime_writes
from ffsplit.runtimes.base import Runner, register_runtime
from ffsplit.runtimes.records import LAYERS_FILE, records_from_layers
from ffsplit.runtimes.targets import Target

IR_FILE = "model.xml"


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


def ir_path(onnx_path: Path, target: Target) -> Path:
    """Where an NNCF target's IR lives for the ONNX file ``onnx_path`` (in the artifact's runtime folder)."""
    return Path(onnx_path).parent / "runtime" / target.name / IR_FILE


def heavy_nodes(model: Any) -> list[str]:
    """Friendly names of the heavy-branch MatMuls of a converted model, from their tags."""
    from ffsplit.graph_passes.tag_branches_pass import tags_in

    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        tags = tags_in(op.get_friendly_name())
        if tags and all(branch == "heavy" for _, branch in tags):
            out.append(op.get_friendly_name())
    return out


def quantize_ir(
    onnx_path: Path, target: Target, feeds: list[dict[str, np.ndarray]], *, keep_heavy: bool = True
) -> Path:
    """NNCF static int8 of ``onnx_path``; the IR at ``ir_path``.

    ``feeds`` are the calibration inputs (one tokenised text each). With
    ``keep_heavy`` the heavy-branch MatMuls are in NNCF's ignored scope (fp32);
    without it NNCF quantises them too, and since they are multiplies of their
    own, the heavy hitters' large activations get an int8 scale of their own
    instead of stretching the light neurons' one. Weights are kept within +-64
    when the target asks for the reduced int8 range, which CPUs without VNNI
    need (NNCF's overflow fix).
    """
    from ffsplit.loading import no_telemetry

    no_telemetry()
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = ov.convert_model(str(onnx_path))
    heavy = heavy_nodes(model) if keep_heavy else []
    overflow = OverflowFix.ENABLE if target.int8_weight_range == "reduced" else OverflowFix.DISABLE
    quantized = nncf.quantize(
        model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=heavy) if heavy else None,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow),
    )
    precision = target.openvino.get("config", {}).get("INFERENCE_PRECISION_HINT", "f32")
    quantized.set_rt_info(precision, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    out = ir_path(onnx_path, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    with runtime_writes(out.parent):
        ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


@register_runtime("openvino")
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

    @property
    def model_file(self) -> Path:
        """What OpenVINO compiles: the target's IR beside the ONNX file (NNCF targets), or the ONNX file."""
        return ir_path(self.model_path, self.target) if self.target.int8_compute == "nncf" else self.model_path

    def _activate(self) -> None:
        import openvino as ov

        if not self.model_file.is_file():
            raise UsageError(
                f"'{self.model_path.parent}' has no OpenVINO IR for target {self.target.name} ({self.model_file}): "
                "re-run ffsplit export"
            )
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", **self.target.openvino.get("config", {})}
        self.compiled = core.compile_model(core.read_model(str(self.model_file)), self.target.openvino.get("device", "CPU"), config)
        self.request = self.compiled.create_infer_request()
        if self.runtime_dir is not None:
            (self.runtime_dir / LAYERS_FILE).write_text(dumps(runtime_layers(self.compiled), indent=1), encoding="utf-8")

    def _deactivate(self) -> None:
        self.compiled = self.request = None

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feed)
        return {port.get_any_name(): np.array(results[port]) for port in self.compiled.outputs}

    def _layer_records(self) -> list[Any]:
        return records_from_layers(runtime_layers(self.compiled))


def nncf_ir(
    onnx_path: Path, target: Any, tokenizer: Any, texts: list[str], max_length: int, *, keep_heavy: bool = True
) -> Path:
    """The target's OpenVINO IR for ``onnx_path``: NNCF static int8 calibrated on ``texts`` (``quantize_ir``)."""
    from ffsplit.runtimes.base import onnx_inputs
    from ffsplit.split.calibration import calibration_feeds

    feeds = calibration_feeds(tokenizer, texts, max_length=max_length, names=set(onnx_inputs(onnx_path)))
    return quantize_ir(onnx_path, target, feeds, keep_heavy=keep_heavy)
