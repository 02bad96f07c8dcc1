"""QuantizeOtherMatMulsPass: the multiplies outside every SplitFFN (attention projections, pooler) in dynamic int8.

FFSplit keeps the heavy hitters in full precision; the rest of the model can
then take ONNX Runtime's fast CPU path too. The quantiser is ONNX Runtime's
own (``onnxruntime.quantization.quantize_dynamic``: per-output-channel
symmetric int8 weights, and one DynamicQuantizeLinear per input shared by
every multiply that reads it, so Q, K and V quantise their input once). Every
tagged node (heavy, light, merge) is excluded by name: the light branch has
its own grids (QuantizeBranchWeightsPass), the heavy branch stays as asked.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult, PostconditionError

from ffsplit.graph_passes.tag_branches_pass import node_tags


def _untouched(model: ir.Model) -> dict[str, str]:
    """Name -> op type of every tagged node, which must come through unchanged."""
    return {node.name: node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph) if node_tags(node)}


def require_untouched(model: ir.Model, tagged: dict[str, str], who: str) -> None:
    """PostconditionError when a tagged node (``_untouched`` before the pass) changed op or disappeared."""
    now = _untouched(model)
    changed = sorted(name for name, op in tagged.items() if now.get(name) != op)
    if changed:
        raise PostconditionError(f"{who} touched tagged nodes: {changed[:4]}")


class QuantizeOtherMatMulsPass(FunctionalPass):
    """Dynamic int8 (ONNX Runtime's quantiser) for every untagged MatMul with a constant weight.

    Args:
        reduce_range: weights within +-64, which no x86 kernel can saturate (see ``compress.INT8_QMAX``).
    """

    def __init__(self, *, reduce_range: bool = False) -> None:
        super().__init__()
        self.reduce_range = reduce_range
        self.quantized: list[str] = []
        self._tagged: dict[str, str] = {}

    def requires(self, model: ir.Model) -> None:
        self._tagged = _untouched(model)

    def call(self, model: ir.Model) -> PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        before = {n.name for n in model.graph if n.op_type == "MatMul"}
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # it advises pre-processing on every call
        try:
            with tempfile.TemporaryDirectory(prefix="ffsplit-quant-") as tmp:
                out = Path(tmp) / "quantized.onnx"
                quantize_dynamic(
                    ir.to_proto(model), out, op_types_to_quantize=["MatMul"], per_channel=True,
                    reduce_range=self.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=sorted(self._tagged),
                    extra_options={"MatMulConstBOnly": True},
                )
                result = ir.from_proto(onnx.load(str(out)))
        finally:
            logging.getLogger().setLevel(quiet)
        after = {n.name for n in result.graph if n.op_type == "MatMul"}
        self.quantized = sorted(before - after)
        # the quantiser writes a model of its own: keep ours for what it does not own
        result.metadata_props.update(model.metadata_props)
        return PassResult(result, bool(self.quantized))

    def ensures(self, model: ir.Model) -> None:
        require_untouched(model, self._tagged, "the quantiser")
