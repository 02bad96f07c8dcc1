"""StripTracesPass: drop the exporter's per-node Python stack traces and FX node dumps.

torch.onnx records, on every node, the Python stack that created it
(``pkg.torch.onnx.stack_trace``, absolute paths of the exporting machine's
site-packages included) and the FX node it came from
(``pkg.torch.onnx.fx_node``). Neither is read by any runtime or by ffsplit;
both leak local paths into a file users publish, make it larger, and make two
exports of the same model on two machines differ. The module path and class
of each node (``pkg.torch.onnx.name_scopes`` / ``class_hierarchy``) stay: the
tag pass and ``debug`` read them, and they hold no paths.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

DROPPED_KEYS = ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.fx_node")


def _nodes(model: ir.Model) -> list[ir.Node]:
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    for function in model.functions.values():
        nodes.extend(ir.traversal.RecursiveGraphIterator(function))
    return nodes


class StripTracesPass(InPlacePass):
    """Remove ``DROPPED_KEYS`` from the metadata of every node, in the graph, its subgraphs and functions."""

    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for node in _nodes(model):
            for key in DROPPED_KEYS:
                if key in node.metadata_props:
                    del node.metadata_props[key]
                    modified = True
        return PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        left = sum(key in node.metadata_props for node in _nodes(model) for key in DROPPED_KEYS)
        if left:
            raise PostconditionError(f"{left} exporter traces left in the graph")
