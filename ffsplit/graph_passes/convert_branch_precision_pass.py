"""ConvertBranchPrecisionPass: run one branch in fp16 or bf16, with Casts only at its edges.

The nodes of the chosen branch (by tag) compute in the new float type: their
float initializers are stored in it, values entering the branch are cast down
once, values leaving it are cast back up once. Ops on the block list
(normalisations, softmax, reductions) stay fp32 by default even inside the
branch, since that is where half precision loses the most.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

from ffsplit.graph_passes.tag_branches_pass import node_tags

DEFAULT_BLOCK_LIST = frozenset(
    {
        "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization",
        "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd",
        "Pow", "Sqrt", "Exp", "Log", "Range", "CumSum",
    }
)
_TYPES = {"fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
# Ops whose float inputs and outputs all share one type, so converting the node converts all of them.
_SKIP = frozenset({"Constant", "Shape", "Size", "Cast", "CastLike", "DequantizeLinear", "QuantizeLinear"})


class ConvertBranchPrecisionPass(InPlacePass):
    """Convert the nodes of ``branch`` (in ``layers``, or every layer) to ``precision``.

    Args:
        branch: ``heavy`` or ``light``.
        precision: ``fp16`` or ``bf16``.
        layers: layer indices to convert; None for every tagged layer.
        block_list: op types kept in fp32.
    """

    def __init__(
        self, *, branch: str, precision: str, layers: Collection[int] | None = None,
        block_list: Collection[str] = DEFAULT_BLOCK_LIST,
    ) -> None:
        super().__init__()
        if precision not in _TYPES:
            raise ValueError(f"precision {precision!r} is not one of {tuple(_TYPES)}")
        self.branch = branch
        self.precision = precision
        self.dtype = _TYPES[precision]
        self.layers = None if layers is None else set(layers)
        self.block_list = frozenset(block_list)
        self.converted: list[str] = []

    def _selected(self, node: ir.Node, chosen: set[int]) -> bool:
        tags = node_tags(node)
        if tags is None or tags[1] != self.branch or (self.layers is not None and tags[0] not in self.layers):
            return False
        if node.op_type in self.block_list or node.op_type in _SKIP or node.domain not in ("", "ai.onnx"):
            return False
        ins = [v for v in node.inputs if v is not None]
        floats = [v for v in ins if self._is_float(v, chosen)]
        return bool(floats) and all(v.dtype in (ir.DataType.INT64, ir.DataType.INT32) for v in ins if v not in floats)

    @staticmethod
    def _is_float(value: ir.Value, chosen: set[int]) -> bool:
        """fp32, or untyped and computed by a converted node (graphs without value_info)."""
        if value.dtype == ir.DataType.FLOAT:
            return True
        producer = value.producer()
        return value.dtype is None and producer is not None and id(producer) in chosen

    def _cast(self, value: ir.Value, to: ir.DataType, tag_from: ir.Node) -> ir.Node:
        way = "down" if to == self.dtype else "up"
        cast = ir.node(
            "Cast", [value], {"to": to}, name=f"{tag_from.name}/cast_{way}_{value.name}",
            metadata_props=dict(tag_from.metadata_props),
        )
        cast.outputs[0].dtype = to
        cast.outputs[0].shape = value.shape
        # the other branch's pass casts the same FFN input: the branch keeps the names apart (SSA)
        cast.outputs[0].name = f"{value.name}_{self.branch}_{way}"
        return cast

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        chosen: set[int] = set()
        selected = []
        for node in graph:  # graph order, so a producer is decided before its users
            if self._selected(node, chosen):
                selected.append(node)
                chosen.add(id(node))
        down: dict[int, ir.Value] = {}  # fp32 value from outside -> its cast
        for node in selected:  # graph order: the first user met is the earliest
            for i, v in enumerate(node.inputs):
                if v is None or v.dtype != ir.DataType.FLOAT:
                    continue
                producer = v.producer()
                if producer is not None and id(producer) in chosen:
                    continue  # converted along with its producer
                only_here = all(id(user) in chosen for user, _ in v.uses()) and not v.is_graph_output()
                if v.const_value is not None and only_here:
                    array = v.const_value.numpy().astype(self.dtype.numpy())
                    v.const_value = ir.tensor(array, dtype=self.dtype, name=v.name)
                    v.dtype = self.dtype
                    continue
                if id(v) not in down:
                    cast = self._cast(v, self.dtype, node)
                    graph.insert_before(node, cast)
                    down[id(v)] = cast.outputs[0]
                node.replace_input_with(i, down[id(v)])
        for node in selected:
            for out in node.outputs:
                if out.dtype not in (ir.DataType.FLOAT, None):
                    continue
                out.dtype = self.dtype
                outside = [(user, i) for user, i in out.uses() if id(user) not in chosen]
                if not outside and not out.is_graph_output():
                    continue
                cast = self._cast(out, ir.DataType.FLOAT, node)
                graph.insert_after(node, cast)
                for user, i in outside:
                    user.replace_input_with(i, cast.outputs[0])
                if out.is_graph_output():
                    graph.outputs[graph.outputs.index(out)] = cast.outputs[0]
        self.converted = [n.name or n.op_type for n in selected]
        return PassResult(model, bool(selected))

    def ensures(self, model: ir.Model) -> None:
        for node in model.graph:
            if node.op_type in self.block_list:
                for v in node.inputs:
                    if v is not None and v.dtype == self.dtype and node_tags(node):
                        raise PostconditionError(f"{node.name}: block-listed {node.op_type} was given {self.precision} input")
