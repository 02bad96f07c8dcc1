"""QuantizeOtherMatMulsInt4Pass: the multiplies outside every SplitFFN (attention projections, the LM head) as
blockwise int4 MatMulNBits, what int4 decoder recipes do to a whole model.

Each weight is quantised on its own and replaced in place, one at a time, so a large graph never holds a
second copy of its weights (ONNX Runtime's own quantisers take a whole ModelProto). The grid is the light
branch's (``split.compress.quantize_int4``: round to nearest, per block of ``block`` input channels) and
is stored by the same code (``matmulnbits_operands``). Tagged nodes (heavy, light, merge) are left as they
are: the heavy hitters keep the precision the split gave them.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from ffsplit.graph_passes.precision import MS_DOMAIN, WeightGrid, add_initializer, replace_node
from ffsplit.graph_passes.quantize_branch_weights_pass import (
    matmulnbits_block_ok,
    matmulnbits_node,
    matmulnbits_operands,
)
from ffsplit.graph_passes.quantize_other_matmuls_pass import _untouched, require_untouched
from ffsplit.graph_passes.tag_branches_pass import node_tags


class QuantizeOtherMatMulsInt4Pass(InPlacePass):
    """Blockwise int4 (MatMulNBits) for every untagged MatMul with a constant 2-D fp32 weight.

    Args:
        block: input channels per scale (a power of two >= 16).
        symmetric: symmetric grid (no zero points), as the light branch's default.
        accuracy_level: MatMulNBits' accuracy level (0: fp32 arithmetic; 4: int8 activations).
    """

    def __init__(self, *, block: int = 32, symmetric: bool = True, accuracy_level: int = 0) -> None:
        super().__init__()
        if not matmulnbits_block_ok(block):
            raise ValueError(f"block {block} is not a power of two >= 16 (MatMulNBits)")
        self.block, self.symmetric, self.accuracy_level = block, symmetric, accuracy_level
        self.quantized: list[str] = []
        self._tagged: dict[str, str] = {}

    def requires(self, model: ir.Model) -> None:
        self._tagged = _untouched(model)

    def _grid(self, name: str, weight: ir.TensorProtocol) -> WeightGrid:
        import torch

        from ffsplit.split.compress import quantize_int4_grid

        w = torch.from_numpy(weight.numpy()).T  # ONNX (in, out) -> torch's (out, in)
        qw = quantize_int4_grid(w, self.block, self.symmetric)
        return WeightGrid(name=name, q=qw.q.numpy(), scale=qw.scale.numpy(),
                          zero_point=None if qw.zero_point is None else qw.zero_point.numpy(), bits=4, block=self.block)

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        for node in list(graph):
            if node.op_type != "MatMul" or node_tags(node) is not None or len(node.inputs) != 2:
                continue
            w = node.inputs[1]
            if w is None or w.const_value is None or w.dtype != ir.DataType.FLOAT or len(w.shape or ()) != 2:
                continue
            if not w.is_initializer() or len(w.uses()) != 1:  # a weight shared with another node stays fp32
                continue
            grid = self._grid(w.name or node.name or "", w.const_value)
            b, scales, zps = matmulnbits_operands(grid)
            prefix = f"ffsplit.other.{w.name}"
            inputs = [node.inputs[0], add_initializer(graph, f"{prefix}.q4", b),
                      add_initializer(graph, f"{prefix}.scales", scales)]
            if zps is not None:
                inputs.append(add_initializer(graph, f"{prefix}.zero_points", zps))
            keep = {"name": node.name, "metadata_props": dict(node.metadata_props)}
            replace_node(graph, node, matmulnbits_node(inputs, grid, self.accuracy_level, keep))
            del graph.initializers[w.name]
            self.quantized.append(node.name or "")
        if self.quantized:
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        return PassResult(model, bool(self.quantized))

    def ensures(self, model: ir.Model) -> None:
        require_untouched(model, self._tagged, "int4 quantisation")
