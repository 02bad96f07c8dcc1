"""What precision a matrix multiply runs at, read from the graph, and the weight grids the passes store.

Shared by the precision passes (which write int8 / int4 / fp16 into the
graph), the separation guard (which checks the runtime kept them) and
``ffsplit inspect`` (which shows them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from ffsplit.split.compress import Quantized

# Every op that multiplies by a weight matrix in the runtimes we build for.
MATMUL_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "FusedMatMul",
        "FusedGemm",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
        "QGemm",
        "QLinearMatMul",
    }
)

MS_DOMAIN = "com.microsoft"

# Ops whose second operand is an integer weight (ONNX Runtime's quantised kernels).
_INT8_OPS = frozenset({"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul"})
_DTYPES = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.BFLOAT16: "bf16",
    ir.DataType.INT8: "int8",
    ir.DataType.UINT8: "int8",
    ir.DataType.INT4: "int4",
    ir.DataType.UINT4: "int4",
}
# Value-preserving ops a runtime may put between a stored weight and its multiply.
_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class WeightGrid:
    """A weight on a quantisation grid: ``weight == (q - zero_point) * scale`` in fp32.

    ``q`` is (out, in) as torch's Linear holds the weight; ``scale``
    (and ``zero_point``) are (out,) for int8, (out, blocks) for blockwise int4
    with blocks along ``in``.
    """

    name: str
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    bits: int
    block: int | None = None
    smooth: np.ndarray | None = None  # (in,): the multiply's input is scaled by 1 / smooth first
    # what a graph's weight is matched by: ``compress.onnx_digest`` of the fp32 weight (None: never matched)
    digest: tuple[tuple[int, ...], str] | None = None

    @classmethod
    def from_quantized(cls, name: str, qw: Quantized) -> WeightGrid:
        """From the split's ``Quantized`` (torch tensors)."""
        return cls(
            name=name, q=qw.q.numpy(), scale=qw.scale.numpy(), digest=qw.held().digest,
            zero_point=None if qw.zero_point is None else qw.zero_point.numpy(), bits=qw.bits, block=qw.block,
            smooth=None if getattr(qw, "smooth", None) is None else qw.smooth.numpy(),
        )


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as an initializer named ``name`` (typed and shaped) and return its value."""
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.dtype = value.const_value.dtype  # type: ignore[union-attr]
    graph.register_initializer(value)
    return value


def replace_node(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    """Put ``new`` where ``old`` was: same place, its output takes over every use and the old name."""
    out = old.outputs[0]
    new.outputs[0].shape = out.shape
    new.outputs[0].type = out.type
    graph.insert_before(old, new)
    # a graph output (the LM head's logits) moves to the new node too
    ir.convenience.replace_all_uses_with(out, new.outputs[0], replace_graph_outputs=True)
    name = out.name
    graph.remove(old, safe=True)
    new.outputs[0].name = name


def _dtype_name(dtype: ir.DataType | None) -> str | None:
    return _DTYPES.get(dtype) if dtype is not None else None


def weight_source(value: ir.Value | None) -> tuple[ir.Value | None, ir.Node | None]:
    """Follow a multiply's weight operand back through layout ops to its stored initializer.

    Returns the initializer (or None when the operand is computed from the
    input) and the DequantizeLinear it passed through, if any.
    """
    dq = None
    seen = 0
    while value is not None and seen < 8:
        seen += 1
        if value.const_value is not None or value.is_initializer():
            return value, dq
        producer = value.producer()
        if producer is None:
            return None, dq
        if producer.op_type == "DequantizeLinear" and dq is None:
            dq = producer
            value = producer.inputs[0]
        elif producer.op_type in _LAYOUT_OPS or (producer.op_type == "Cast" and dq is None):
            value = producer.inputs[0]
        elif producer.op_type == "Constant":
            return producer.outputs[0], dq
        else:
            return None, dq
    return None, dq


def realized_precision(node: ir.Node) -> str:
    """The precision a matrix-multiply node really computes with: int8, int4, fp16, bf16 or fp32.

    Integer weights count whether the runtime multiplies in integers
    (MatMulInteger, DynamicQuantizeMatMul) or dequantises them in the kernel
    (MatMulNBits, DequantizeLinear feeding the MatMul). A float multiply is
    the type of its output, so fp16 weights that a runtime casts back up to
    fp32 before multiplying count as fp32.
    """
    if node.op_type == "MatMulNBits":
        bits = node.attributes.get("bits")
        return f"int{bits.as_int() if bits is not None else 4}"
    if node.op_type in _INT8_OPS:
        return "int8"
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    stored, dq = weight_source(weight)
    if dq is not None and stored is not None:
        return _dtype_name(stored.dtype) or "unknown"
    out = _dtype_name(node.outputs[0].dtype) if node.outputs else None
    if out is not None:
        return out
    if stored is not None:
        return _dtype_name(stored.dtype) or "unknown"
    return "unknown"


@dataclass(frozen=True)
class LayerRecord:
    """One matrix multiply of a runtime's executed graph: what the guard reads.

    ``tags`` holds every (layer, branch) the runtime's node was built from;
    more than one means the runtime merged them into one kernel.
    """

    name: str
    op_type: str
    tags: tuple[tuple[int, str], ...]
    precision: str


def branch_summary(model: ir.Model) -> dict[int, dict[str, dict[str, Any]]]:
    """Per layer and branch: how many nodes of each op type, and the precisions its multiplies realise."""
    from ffsplit.graph_passes.tag_branches_pass import node_tags

    out: dict[int, dict[str, dict[str, Any]]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        tags = node_tags(node)
        if tags is None:
            continue
        entry = out.setdefault(tags[0], {}).setdefault(tags[1], {"ops": {}, "precisions": []})
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        entry["ops"][op] = entry["ops"].get(op, 0) + 1
        if node.op_type in MATMUL_OPS:
            precision = realized_precision(node)
            if precision not in entry["precisions"]:
                entry["precisions"].append(precision)
    order = {"heavy": 0, "light": 1, "merge": 2}
    return {k: dict(sorted(v.items(), key=lambda kv: order.get(kv[0], 3))) for k, v in sorted(out.items())}


def records_summary(records: list[LayerRecord]) -> dict[int, dict[str, dict[str, Any]]]:
    """Like ``branch_summary``, from a runtime's layer records (its multiplies only)."""
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for rec in records:
        for layer, branch in sorted(set(rec.tags)):
            entry = out.setdefault(layer, {}).setdefault(branch, {"ops": {}, "precisions": []})
            entry["ops"][rec.op_type] = entry["ops"].get(rec.op_type, 0) + 1
            if rec.precision not in entry["precisions"]:
                entry["precisions"].append(rec.precision)
    order = {"heavy": 0, "light": 1, "merge": 2}
    return {k: dict(sorted(v.items(), key=lambda kv: order.get(kv[0], 3))) for k, v in sorted(out.items())}
