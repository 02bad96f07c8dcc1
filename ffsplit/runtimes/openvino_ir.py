"""The OpenVINO IR a target runs instead of model.onnx, built from the exported split graph by NNCF.

Two ways to build it, chosen by the target:

* ``int8_compute = "nncf"``: NNCF's post-training static int8 (``model_type=TRANSFORMER``: calibration,
  range estimation, SmoothQuant, bias correction), with every heavy-branch MatMul, found by its tag, in
  NNCF's ignored scope, so the heavy hitters stay fp32 and everything else (light branch, attention
  projections) runs int8.
* ``int4_compute = "nncf"``: NNCF's weight compression, int4 in groups along the input (the target's
  ``[nncf]`` mode and group size), with the heavy-branch MatMuls in the ignored scope: the graph already
  holds them as int8 weights per channel (DequantizeLinear, which OpenVINO runs as a compressed
  FullyConnected). NNCF keeps the embeddings and the LM head int8 (its backup precision), as OpenVINO's
  own int4 releases do; AWQ and scale estimation, when the target asks, calibrate on the calibration text.

A KV-cache graph then becomes stateful, as optimum-intel exports decoders: each ``past_key_values.*``
input and its ``present.*`` output turn into one OpenVINO variable, so the cache stays inside the infer
request between steps instead of going out to numpy and back. Each variable starts, after
``reset_state``, as an empty cache as wide as the batch of ``input_ids``.

The IR lives at ``runtime/<target>/model.xml`` beside model.onnx, its weights as NNCF left them
(``compress_to_fp16=False``), and the target's OpenVINO config stored in its ``runtime_options``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ffsplit.artifact import IR_FILE, RUNTIME_DIR
from ffsplit.resources import runtime_writes
from ffsplit.signature import is_past, present_for

if TYPE_CHECKING:
    import openvino as ov
    import torch
    from transformers import PreTrainedTokenizerBase

    from ffsplit.targets import Target

# a stateful IR's input choosing, per sequence of the batch, whose cache it continues (optimum-intel's name)
BEAM_INPUT = "beam_idx"


def ir_path(onnx_path: Path, target: Target) -> Path:
    """Where an NNCF target's IR lives for the ONNX file ``onnx_path`` (in the artifact's runtime folder)."""
    return Path(onnx_path).parent / RUNTIME_DIR / target.name / IR_FILE


def weight_storage(target: Target, model: torch.nn.Module) -> str | None:
    """"bf16" / "fp16" when NNCF compresses model.onnx's weights into an int4 IR for ``target`` and the torch
    ``model`` holds every float weight matrix in that type: the graph then stores those weights so, exactly
    (``StoreWeightsHalfPass``), and NNCF reads the stored size rather than the fp32 graph's twice that. None
    otherwise."""
    from ffsplit.residency import half_storage

    return half_storage(model) if target.ir_compression == "int4" else None


def branch_nodes(model: ov.Model, branch: str) -> list[str]:
    """Friendly names of one branch's MatMuls (``heavy`` or ``light``) in a converted model, from their tags."""
    from ffsplit.graph_passes.tag_branches_pass import tags_in

    out = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        tags = tags_in(op.get_friendly_name())
        if tags and all(b == branch for _, b in tags):
            out.append(op.get_friendly_name())
    return out


def heavy_nodes(model: ov.Model) -> list[str]:
    """Friendly names of the heavy-branch MatMuls of a converted model, from their tags."""
    return branch_nodes(model, "heavy")


def quantize_int8(model: ov.Model, target: Target, feeds: list[dict[str, np.ndarray]], *, keep_heavy: bool = True) -> ov.Model:
    """NNCF static int8 of ``model`` calibrated on ``feeds`` (one tokenised text each).

    With ``keep_heavy`` the heavy-branch MatMuls are in NNCF's ignored scope (fp32); without it NNCF
    quantises them too, and since they are multiplies of their own, the heavy hitters' large activations
    get an int8 scale of their own instead of stretching the light neurons' one. Weights are kept within
    +-64 when the target asks for the reduced int8 range, which CPUs without VNNI need (NNCF's overflow fix).
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    heavy = heavy_nodes(model) if keep_heavy else []
    overflow = OverflowFix.ENABLE if target.int8_weight_range == "reduced" else OverflowFix.DISABLE
    return nncf.quantize(
        model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=heavy) if heavy else None,
        advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow),
    )


def compress_int4(model: ov.Model, target: Target, feeds: list[dict[str, np.ndarray]] | None) -> ov.Model:
    """NNCF int4 weight compression of every multiply but the heavy branch's, as ``target.nncf`` says.

    ``feeds`` calibrate AWQ and scale estimation (None when the target asks for neither). A multiply
    whose input width is not a whole number of groups gets the largest smaller group that fits (NNCF's
    ADJUST fallback): the split rounds the heavy count so that the light branch's width is one. A target
    whose light branch has a group size of its own (``light_group_size``) gets that branch compressed
    first, in a pass of its own.
    """
    import nncf

    settings = target.nncf
    ignored = heavy_nodes(model)
    light = branch_nodes(model, "light") if target.light_group_size != settings["group_size"] else []
    if light:  # the light branch first, on a grid of its own
        ignored += light
        model = _compress_light(model, target, set(light))
    data_aware = settings["awq"] or settings["scale_estimation"]
    return nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode(settings["mode"]), group_size=settings["group_size"],
        ratio=float(settings["ratio"]),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
        dataset=nncf.Dataset(feeds) if data_aware and feeds else None,
        awq=settings["awq"] or None, scale_estimation=settings["scale_estimation"] or None,
        subset_size=len(feeds) if data_aware and feeds else 128,
        advanced_parameters=_group_fallback(),
    )


def _group_fallback() -> Any:
    """NNCF's advanced compression settings: a multiply whose width is not a whole number of groups gets the
    largest smaller group that fits (down to 16)."""
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    return AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST,
                                         min_adjusted_group_size=16)


def _compress_light(model: ov.Model, target: Target, light: set[str]) -> ov.Model:
    """The light branch's multiplies alone compressed in the target's int4 mode with their own group size
    (``light_group_size``; -1: one scale per output channel), data-free: the heavy hitters, kept int8, carry
    what a coarser grid would lose. Every other multiply is left to the main pass."""
    import nncf

    others = [op.get_friendly_name() for op in model.get_ordered_ops()
              if op.get_type_name() in ("MatMul", "Gather") and op.get_friendly_name() not in light]
    # all_layers: NNCF would otherwise keep the last multiply it compresses (here a light one) int8
    return nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode(target.nncf["mode"]), group_size=target.light_group_size,
        ratio=1.0, all_layers=True, ignored_scope=nncf.IgnoredScope(names=others, validate=False),
        advanced_parameters=_group_fallback(),
    )


def stateful(model: ov.Model) -> ov.Model:
    """``model`` with its KV cache turned into OpenVINO variables (a new model), or ``model`` itself when it
    has none.

    Each ``past_key_values.*`` input becomes a ReadValue and its ``present.*`` output an Assign of one
    variable. A variable's initial value is an empty cache, (batch of ``input_ids``, heads, 0, head width),
    so a request after ``reset_state`` starts a new sequence at whatever batch it is given. (OpenVINO's
    MakeStateful pass makes variables without that initial value, and its ReadValues cannot be replaced
    afterwards: each Assign keeps a dependency on the one it was made with.)

    Each cache is read through a Gather along the batch by a ``beam_idx`` input (int32, one index per
    sequence: ``arange(batch)`` keeps every sequence's own cache), as optimum-intel's decoders have it. That
    Gather is what OpenVINO's CPU plugin looks for to fuse ReadValue, Concat, ScaledDotProductAttention and
    Assign into one attention node that appends to its cache in place; without it attention runs as
    separate multiplies over a cache copied at every step.
    """
    import openvino as ov
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    params = {p.get_output_tensor(0).get_any_name(): p for p in model.get_parameters()}
    results = {r.get_output_tensor(0).get_any_name(): r for r in model.get_results()}
    pasts = [name for name in params if is_past(name) and present_for(name) in results]
    if not pasts:
        return model
    ids = params["input_ids"]
    beam = ops.parameter([-1], np.int32, name=BEAM_INPUT)
    beam.output(0).get_tensor().set_names({BEAM_INPUT})
    batch = ops.gather(ops.shape_of(ids, "i64"), ops.constant([0], np.int64), ops.constant(0, np.int64))
    variables, sinks = [], []
    for name in pasts:
        param, result = params.pop(name), results.pop(present_for(name))
        shape = param.get_output_partial_shape(0)  # (batch, heads, past, head width): heads and width static
        info = VariableInfo()
        info.variable_id, info.data_type, info.data_shape = name, param.get_element_type(), shape
        variable = Variable(info)
        empty = ops.concat([batch, ops.constant([shape[1].get_length(), 0, shape[3].get_length()], np.int64)], 0)
        zero = ops.constant(np.zeros((), dtype=param.get_element_type().to_dtype()))
        cache = ops.read_value(ops.broadcast(zero, empty), variable)
        param.output(0).replace(ops.gather(cache, beam, ops.constant(0, np.int64)).output(0))
        present = result.input_value(0)
        if present.get_node().get_output_size() != 1:  # Assign takes a node: one whose only output is the cache
            present = ops.convert(present, param.get_element_type()).output(0)
        sinks.append(ops.assign(present.get_node(), variable))
        variables.append(variable)
    out = ov.Model(list(results.values()), sinks, [*params.values(), beam], variables, model.get_friendly_name())
    out.validate_nodes_and_infer_types()
    return out


def build_ir(
    onnx_path: Path, target: Target, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, *, keep_heavy: bool = True
) -> Path:
    """The target's OpenVINO IR for ``onnx_path`` (static int8 or int4 weights, per the target), stateful
    when the graph has a KV cache; its path (``ir_path``)."""
    from ffsplit.loading import no_telemetry
    from ffsplit.runtimes.base import empty_past, onnx_inputs
    from ffsplit.split.calibration import calibration_feeds

    no_telemetry()
    import openvino as ov

    inputs = onnx_inputs(onnx_path)
    model = ov.Core().read_model(str(onnx_path))
    int8 = target.ir_compression == "int8"
    feeds = None
    if int8 or target.nncf["awq"] or target.nncf["scale_estimation"]:
        # a KV-cache graph calibrates on the prefill: each text with an empty cache
        feeds = [{**feed, **empty_past(inputs, len(feed["input_ids"]))}
                 for feed in calibration_feeds(tokenizer, texts, max_length=max_length, names=set(inputs))]
    model = quantize_int8(model, target, feeds or [], keep_heavy=keep_heavy) if int8 else \
        compress_int4(model, target, feeds)
    model = stateful(model)
    for key, value in target.openvino.get("config", {}).items():
        model.set_rt_info(value, ["runtime_options", key])
    out = ir_path(onnx_path, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    with runtime_writes(out.parent):
        ov.save_model(model, str(out), compress_to_fp16=False)
    return out
