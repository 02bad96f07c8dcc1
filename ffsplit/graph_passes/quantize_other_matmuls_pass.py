"""QuantizeOtherMatMulsPass: the multiplies outside every SplitFFN (attention projections, pooler) in dynamic int8.

FFSplit keeps the heavy hitters in full precision; the rest of the model can
then take ONNX Runtime's fast CPU path too. Every untagged MatMul with a
constant fp32 weight becomes ``com.microsoft.DynamicQuantizeMatMul`` with
per-output-channel symmetric int8 weights (scale = max|column| / qmax). Nodes
tagged heavy, light or merge are never touched: the light branch has its own
grids (QuantizeBranchWeightsPass), the heavy branch stays as asked.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from ffsplit.graph_passes.precision import MS_DOMAIN, add_initializer, replace_node
from ffsplit.graph_passes.tag_branches_pass import node_tags


def int8_columns(w: np.ndarray, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(q, scale) of an (in, out) weight, symmetric per output column, round half to even."""
    scale = np.maximum(np.abs(w).max(axis=0) / float(qmax), np.finfo(np.float32).tiny).astype(np.float32)
    q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
    return q, scale


class QuantizeOtherMatMulsPass(InPlacePass):
    """Dynamic int8 for every untagged MatMul with a constant 2-D fp32 weight of at least ``min_size`` elements.

    ``qmax`` 64 keeps the weights in the range no CPU kernel saturates (see ``compress.INT8_QMAX``).
    """

    def __init__(self, *, min_size: int = 4096, qmax: int = 127) -> None:
        super().__init__()
        self.min_size = min_size
        self.qmax = qmax
        self.quantized: list[str] = []

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        done = []
        for node in list(graph):
            if node.op_type != "MatMul" or node_tags(node) is not None or len(node.inputs) != 2:
                continue
            w = node.inputs[1]
            if w is None or w.const_value is None or w.dtype != ir.DataType.FLOAT:
                continue
            array = w.const_value.numpy()
            if array.ndim != 2 or array.size < self.min_size:
                continue
            q, scale = int8_columns(array, self.qmax)
            base = f"ffsplit.other.{node.name or len(done)}"
            inits = [add_initializer(graph, f"{base}.{suffix}", data) for suffix, data in (("q", q), ("scale", scale))]
            new = ir.node(
                "DynamicQuantizeMatMul", [node.inputs[0], *inits], domain=MS_DOMAIN, name=node.name,
                metadata_props=dict(node.metadata_props),
            )
            replace_node(graph, node, new)
            if not w.uses() and w.name in graph.initializers:
                del graph.initializers[w.name]
            done.append(node.name or "")
        if done:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        self.quantized = done
        return PassResult(model, bool(done))
