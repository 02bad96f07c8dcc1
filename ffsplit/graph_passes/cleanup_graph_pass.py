"""CleanupGraphPass: constant folding, dead-code removal and shape inference, from onnxscript / onnx_ir.

Nothing here fuses: a fusion could put heavy and light into one node. Common
subexpression elimination is left out for the same reason (two branches
that cast the same input would share one tagged Cast), and DequantizeLinear
is never folded, so running the cleanup after the precision passes cannot
turn stored integers back into fp32.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassManager, PassResult
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)
from onnxscript.optimizer._constant_folding import FoldConstantsPass

_NEVER_FOLD = frozenset({"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"})


def _should_fold(node: ir.Node) -> bool | None:
    return False if node.op_type in _NEVER_FOLD else None


class CleanupGraphPass(InPlacePass):
    """Fold constants, drop unused nodes and opsets, lift constants to initializers.

    Args:
        shape_inference: run ONNX shape inference on each node while folding.
        output_size_limit: largest tensor (elements) a fold may create.
    """

    def __init__(self, *, shape_inference: bool = True, output_size_limit: int = 1 << 18) -> None:
        super().__init__()
        self.manager = PassManager(
            [
                FoldConstantsPass(
                    shape_inference=shape_inference, input_size_limit=1 << 13, output_size_limit=output_size_limit,
                    should_fold=_should_fold,
                ),
                RemoveUnusedNodesPass(),
                RemoveUnusedOpsetsPass(),
                LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
            ]
        )

    def call(self, model: ir.Model) -> PassResult:
        result = self.manager(model)
        return PassResult(model, result.modified)
