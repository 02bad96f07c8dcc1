"""QuantizeBranchWeightsPass: store each quantised branch weight as integers in the graph.

The split already put every quantised weight on its grid (fp32 values equal
to ``(q - zero_point) * scale``); this pass finds the multiply that holds
each one, by exact value, and stores the grid itself in the form the target's
runtime runs fastest or needs:

- int8 ``weight-only``: an int8 initializer and a per-channel DequantizeLinear
  feeding the MatMul. Exact: the runtime sees the very values split torch used.
- int8 ``dynamic``: ONNX Runtime's ``com.microsoft.DynamicQuantizeMatMul``,
  which also quantises the activation per tensor at run time. The fast CPU
  path; not exact (the activation's rounding is the runtime's).
- int8 ``qdq``: the weight as in ``weight-only``, and the activation through
  QuantizeLinear -> DequantizeLinear with a static per-tensor scale from
  calibration (symmetric, zero point 0): the explicit-quantisation form
  TensorRT builds int8 kernels from.
- a smoothed int8 grid (activation smoothing) gets a Mul by ``1 / s`` on the
  multiply's input first, whatever the form.
- int8 ``matmulnbits``: an 8-bit ``com.microsoft.MatMulNBits`` holding the
  per-channel grid exactly (blocks of 32 sharing their row's scale); with
  accuracy level 4 it multiplies int8 activations, as int4 decoders' kernels do.
- int4 ``matmulnbits``: ``com.microsoft.MatMulNBits`` with the grid's blocks
  along the input dimension (block a power of two, at least 16).

Matching by value rather than by name works for every exporter and proves
the grid stored is the weight the split was checked with.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError, PreconditionError

from ffsplit.graph_passes.precision import MS_DOMAIN, WeightGrid, add_initializer, replace_node
from ffsplit.graph_passes.tag_branches_pass import node_tags
from ffsplit.precisions import INT4_COMPUTE, INT4_GRAPH_FORMS, INT8_GRAPH_FORMS
from ffsplit.split.compress import array_digest


def matmulnbits_block_ok(block: int | None) -> bool:
    """MatMulNBits takes power-of-two blocks from 16 up."""
    return block is not None and block >= 16 and block & (block - 1) == 0


def _pack_nibbles(u: np.ndarray) -> np.ndarray:
    """uint4 values (last axis even) -> bytes, first value in the low nibble (MatMulNBits' layout)."""
    u = u.astype(np.uint8)
    return (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)


def matmulnbits_operands(grid: WeightGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(B, scales, zero_points) of MatMulNBits for a blockwise int4 grid over an (out, in) weight."""
    assert grid.block is not None
    n, k = grid.q.shape
    blocks = -(-k // grid.block)
    if grid.zero_point is None:  # symmetric: q in [-8, 7], stored with the default zero point 8
        u = grid.q.astype(np.int16) + 8
        pad_value = 8
    else:
        u = grid.q.astype(np.int16)
        pad_value = 0
    padded = np.full((n, blocks * grid.block), pad_value, dtype=np.int16)
    padded[:, :k] = u
    if grid.zero_point is not None:
        # padding must dequantise to 0: give each padded slot its block's zero point
        zp_full = np.repeat(grid.zero_point.astype(np.int16), grid.block, axis=1)
        padded[:, k:] = zp_full[:, k:]
    b = _pack_nibbles(padded.reshape(n, blocks, grid.block))
    scales = np.ascontiguousarray(grid.scale, dtype=np.float32).reshape(-1)
    zps = None
    if grid.zero_point is not None:
        zp = grid.zero_point.astype(np.int16)
        if blocks % 2:
            zp = np.concatenate([zp, np.full((n, 1), 8, dtype=np.int16)], axis=1)
        zps = _pack_nibbles(zp).reshape(-1)
    return b, scales, zps


INT8_BLOCK = 32  # a per-channel int8 grid is stored as blocks of 32 sharing their row's scale (the fast kernels')


def matmulnbits_int8_operands(grid: WeightGrid) -> tuple[np.ndarray, np.ndarray]:
    """(B, scales) of an 8-bit MatMulNBits holding a per-output-channel symmetric int8 grid exactly: q + 128
    (its default zero point), padded with 128 (dequantises to 0) to whole blocks, each block its row's scale."""
    n, k = grid.q.shape
    blocks = -(-k // INT8_BLOCK)
    u = np.full((n, blocks * INT8_BLOCK), 128, dtype=np.uint8)
    u[:, :k] = (grid.q.astype(np.int16) + 128).astype(np.uint8)
    scales = np.repeat(np.asarray(grid.scale, dtype=np.float32).reshape(n, 1), blocks, axis=1)
    return u.reshape(n, blocks, INT8_BLOCK), np.ascontiguousarray(scales.reshape(-1))


def matmulnbits_node(inputs: list[ir.Value | None], grid: WeightGrid, accuracy_level: int, keep: dict) -> ir.Node:
    """A MatMulNBits over ``grid`` (accuracy level 0, fp32 arithmetic, is the default and left unwritten)."""
    n_out, n_in = grid.q.shape
    block = int(grid.block) if grid.bits == 4 else INT8_BLOCK  # type: ignore[arg-type]
    attrs = {"K": n_in, "N": n_out, "bits": grid.bits, "block_size": block}
    if accuracy_level:
        attrs["accuracy_level"] = accuracy_level
    return ir.node("MatMulNBits", inputs, attrs, domain=MS_DOMAIN, **keep)


class QuantizeBranchWeightsPass(InPlacePass):
    """Replace the fp32 on-grid weights of tagged branch multiplies with their int8 / int4 grids.

    Args:
        grids: the quantised weights, by parameter path.
        int8_form: ``weight-only`` (DequantizeLinear -> MatMul), ``dynamic`` (DynamicQuantizeMatMul)
            or ``qdq`` (activation and weight through Q/DQ).
        int4_form: ``matmulnbits``; or ``nncf``, when NNCF compresses int4 in an OpenVINO IR and the graph
            holds no int4 grid.
        act_absmax: for ``qdq``, the largest |input| calibration showed each grid's multiply, by grid name.
        matmulnbits_accuracy_level: MatMulNBits' accuracy level (0: fp32 arithmetic; 4: int8 activations).
    """

    def __init__(
        self, *, grids: Mapping[str, WeightGrid], int8_form: str = "weight-only", int4_form: str = "matmulnbits",
        act_absmax: Mapping[str, float] | None = None, matmulnbits_accuracy_level: int = 0,
    ) -> None:
        super().__init__()
        self.matmulnbits_accuracy_level = matmulnbits_accuracy_level
        if int8_form not in INT8_GRAPH_FORMS:
            raise ValueError(f"int8_form {int8_form!r} is not one of {INT8_GRAPH_FORMS}")
        if int4_form not in INT4_COMPUTE:
            raise ValueError(f"int4_form {int4_form!r} is not one of {INT4_COMPUTE}")
        self.grids = grids
        self.int8_form = int8_form
        self.int4_form = int4_form
        self.act_absmax = dict(act_absmax or {})
        self.replaced: dict[str, str] = {}  # grid name -> node name

    def requires(self, model: ir.Model) -> None:
        for grid in self.grids.values():
            if grid.bits == 4 and self.int4_form not in INT4_GRAPH_FORMS:
                raise PreconditionError(f"{grid.name}: an int4 grid in the graph needs int4_form {INT4_GRAPH_FORMS}, "
                                        f"not {self.int4_form!r}")
            if grid.bits == 4 and not matmulnbits_block_ok(grid.block):
                raise PreconditionError(f"{grid.name}: int4 block {grid.block} is not a power of two >= 16 (MatMulNBits)")
            if grid.bits not in (4, 8):
                raise PreconditionError(f"{grid.name}: {grid.bits}-bit grids are not supported")
            if grid.bits == 8 and self.int8_form == "qdq" and not self.act_absmax.get(grid.name, 0) > 0:
                raise PreconditionError(f"{grid.name}: the qdq form needs its input's calibrated |max| (act_absmax)")
        if self.grids and not any(node_tags(n) for n in ir.traversal.RecursiveGraphIterator(model.graph)):
            raise PreconditionError("no node carries branch tags: run TagBranchesPass first")

    def _replace(self, graph: ir.Graph, node: ir.Node, grid: WeightGrid) -> None:
        x = node.inputs[0]
        prefix = f"ffsplit.{grid.name}"

        def init(name: str, array: np.ndarray) -> ir.Value:
            return add_initializer(graph, f"{prefix}.{name}", array)

        keep = {"name": node.name, "metadata_props": dict(node.metadata_props)}
        n_out, n_in = grid.q.shape
        if grid.smooth is not None and x is not None:
            # smoothed grid: the input's channels scaled by 1 / s, so the product is unchanged
            inv = init("inverse_smooth", (1.0 / grid.smooth).astype(np.float32))
            mul = ir.node("Mul", [x, inv], name=f"{node.name}/smooth_input", metadata_props=dict(node.metadata_props))
            mul.outputs[0].dtype = x.dtype
            mul.outputs[0].shape = x.shape
            graph.insert_before(node, mul)
            node.replace_input_with(0, mul.outputs[0])
            x = mul.outputs[0]
        if grid.bits == 8 and self.int8_form in ("weight-only", "qdq"):
            q = init("q", np.ascontiguousarray(grid.q.T.astype(np.int8)))
            scale = init("scale", grid.scale.astype(np.float32))
            dq = ir.node(
                "DequantizeLinear", [q, scale], {"axis": 1}, name=f"{node.name}/dequantize_weight",
                metadata_props=dict(node.metadata_props),
            )
            dq.outputs[0].dtype = ir.DataType.FLOAT
            dq.outputs[0].shape = ir.Shape([n_in, n_out])
            graph.insert_before(node, dq)
            node.replace_input_with(1, dq.outputs[0])
            if self.int8_form == "qdq" and x is not None:
                a_scale = init("input_scale", np.array(self.act_absmax[grid.name] / 127.0, dtype=np.float32))
                a_zero = init("input_zero_point", np.array(0, dtype=np.int8))
                meta = dict(node.metadata_props)
                qx = ir.node("QuantizeLinear", [x, a_scale, a_zero], name=f"{node.name}/quantize_input", metadata_props=meta)
                qx.outputs[0].dtype = ir.DataType.INT8
                qx.outputs[0].shape = x.shape
                dqx = ir.node("DequantizeLinear", [qx.outputs[0], a_scale, a_zero], name=f"{node.name}/dequantize_input",
                              metadata_props=meta)
                dqx.outputs[0].dtype = ir.DataType.FLOAT
                dqx.outputs[0].shape = x.shape
                graph.insert_before(node, [qx, dqx])
                node.replace_input_with(0, dqx.outputs[0])
            return
        if grid.bits == 8 and self.int8_form == "matmulnbits":
            b8, scales8 = matmulnbits_int8_operands(grid)
            new = matmulnbits_node([x, init("q8", b8), init("scales", scales8)], grid, self.matmulnbits_accuracy_level, keep)
        elif grid.bits == 8:
            q = init("q", np.ascontiguousarray(grid.q.T.astype(np.int8)))
            scale = init("scale", grid.scale.astype(np.float32))
            new = ir.node("DynamicQuantizeMatMul", [x, q, scale], domain=MS_DOMAIN, **keep)
        else:
            b, scales, zps = matmulnbits_operands(grid)
            inputs = [x, init("q4", b), init("scales", scales)]
            if zps is not None:
                inputs.append(init("zero_points", zps))
            new = matmulnbits_node(inputs, grid, self.matmulnbits_accuracy_level, keep)
        replace_node(graph, node, new)

    def call(self, model: ir.Model) -> PassResult:
        if not self.grids:
            return PassResult(model, False)
        wanted = {g.digest: g for g in self.grids.values()}
        graph = model.graph
        found: list[tuple[ir.Node, WeightGrid]] = []
        for node in graph:
            if node.op_type != "MatMul" or node_tags(node) is None or len(node.inputs) != 2:
                continue
            w = node.inputs[1]
            if w is None or w.const_value is None or w.dtype != ir.DataType.FLOAT or len(w.shape or ()) != 2:
                continue
            grid = wanted.get(array_digest(w.const_value.numpy()))
            if grid is not None:
                found.append((node, grid))
        if any(g.bits == 4 or self.int8_form in ("dynamic", "matmulnbits") for _, g in found):
            model.opset_imports.setdefault(MS_DOMAIN, 1)
        for node, grid in found:
            old = node.inputs[1]
            self.replaced[grid.name] = node.name or ""
            self._replace(graph, node, grid)
            if old is not None and not old.uses() and old.is_initializer() and old.name in graph.initializers:
                del graph.initializers[old.name]
        return PassResult(model, bool(found))

    def ensures(self, model: ir.Model) -> None:
        missing = sorted(set(g.name for g in self.grids.values()) - set(self.replaced))
        if missing:
            raise PostconditionError(
                "no tagged MatMul holds the weight of " + ", ".join(missing) + " (the export changed it, or it is a Gemm)"
            )
