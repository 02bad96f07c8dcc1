"""FoldWeightTransposesPass: store each transposed weight transposed, without computing it now.

torch.onnx writes ``x @ W.T`` as ``MatMul(x, Transpose(W))``; its optimiser folds
the Transpose by computing ``W.T`` in memory, a second fp32 copy of every weight
at once (a 0.5B model's export held both). This pass folds it lazily instead:
the Transpose's output becomes an initializer whose value is computed from
``W`` when something reads it (a quantiser, or the save writing it to disk),
one weight at a time, and nothing is kept. Run it before the optimiser, which
then finds nothing left to fold there.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError


def _transposed(source: ir.TensorProtocol) -> ir.TensorProtocol:
    return ir.Tensor(np.ascontiguousarray(source.numpy().T))


def _foldable(node: ir.Node) -> bool:
    if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
        return False
    weight = node.inputs[0]
    if weight is None or not weight.is_initializer() or weight.const_value is None or node.outputs[0].is_graph_output():
        return False
    if len(weight.const_value.shape) != 2 or weight.is_graph_input() or weight.is_graph_output():
        return False
    perm = node.attributes.get("perm")
    return perm is None or list(perm.as_ints()) == [1, 0]


class FoldWeightTransposesPass(InPlacePass):
    """Replace ``Transpose(W)`` of a 2-D initializer (perm [1, 0]) by a lazily computed initializer ``W.T``
    named as the Transpose's output; ``W`` goes when nothing else uses it."""

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        folded = 0
        for node in [n for n in graph if _foldable(n)]:
            weight, out = node.inputs[0], node.outputs[0]
            assert weight is not None and weight.const_value is not None
            source = weight.const_value
            rows, cols = source.shape
            value = ir.Value(
                name=out.name, shape=ir.Shape([cols, rows]), type=ir.TensorType(source.dtype),
                const_value=ir.LazyTensor(lambda s=source: _transposed(s), dtype=source.dtype,
                                          shape=ir.Shape([cols, rows]), name=out.name),
            )
            ir.convenience.replace_all_uses_with(out, value)
            graph.remove(node, safe=True)
            graph.register_initializer(value)
            if not weight.uses() and weight.name in graph.initializers:
                del graph.initializers[weight.name]
            folded += 1
        return PassResult(model, folded > 0)

    def ensures(self, model: ir.Model) -> None:
        left = sum(_foldable(n) for n in model.graph)
        if left:
            raise PostconditionError(f"{left} weight transposes left unfolded")
