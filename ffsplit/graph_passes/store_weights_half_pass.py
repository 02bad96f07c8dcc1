"""StoreWeightsHalfPass: keep the weights a later compressor reads in the source's 16-bit storage type.

The exporter computes every weight in fp32, so a model stored in bf16 becomes a
graph twice its size. For targets whose weights another tool compresses after
the export (NNCF's int4 ``compress_weights`` builds the OpenVINO IR from
model.onnx), that tool then reads, and holds, twice the stored weights. This
pass stores each such weight in bf16 (or fp16) with one Cast back to fp32 in
front of its users: the graph computes what it computed before, OpenVINO reads
the pair as a compressed constant with its decompression, and NNCF compresses
from the 16-bit values.

Only weights read as a multiply's right-hand side (MatMul B, Gemm B) or as an
embedding table (Gather data) are stored so, from ``min_elements`` up: those are
what the compressor compresses. And only weights the 16-bit type holds exactly:
each is computed once here and compared after the round trip (one weight at a
time), so a constant the graph computed in fp32 (a rotary table, a product of
low-rank factors) stays fp32 and the graph's values never change.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

_TYPES = {"bf16": ir.DataType.BFLOAT16, "fp16": ir.DataType.FLOAT16}
# (op type, input index) of the uses a compressor treats as weights
_WEIGHT_USES = frozenset({("MatMul", 1), ("Gemm", 1), ("Gather", 0)})


class StoreWeightsHalfPass(InPlacePass):
    """Store large fp32 weights of multiplies and embeddings as ``precision``, cast back to fp32 where used.

    Args:
        precision: ``bf16`` or ``fp16``: the source model's storage type.
        min_elements: smaller weights stay fp32 (norms, biases, scales).
    """

    def __init__(self, *, precision: str, min_elements: int = 256) -> None:
        super().__init__()
        if precision not in _TYPES:
            raise ValueError(f"precision {precision!r} is not one of {tuple(_TYPES)}")
        self.precision = precision
        self.dtype = _TYPES[precision]
        self.min_elements = min_elements
        self.stored: list[str] = []
        self.inexact: list[str] = []  # weights of a multiply the 16-bit type cannot hold: kept fp32

    def _exact(self, value: ir.Value) -> bool:
        array = value.const_value.numpy()
        return bool(np.array_equal(array.astype(self.dtype.numpy()).astype(np.float32), array))

    def _candidate(self, value: ir.Value) -> bool:
        if value.dtype != ir.DataType.FLOAT or value.const_value is None or value.is_graph_output():
            return False
        shape = value.shape
        if shape is None or len(shape) < 2 or not shape.is_static() or math.prod(shape.dims) < self.min_elements:
            return False
        uses = list(value.uses())
        return bool(uses) and all((user.op_type, i) in _WEIGHT_USES and user.domain in ("", "ai.onnx")
                                  for user, i in uses)

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        self.stored, self.inexact = [], []
        order = {id(node): i for i, node in enumerate(graph)}  # inserting Casts keeps the others' order
        for name, value in list(graph.initializers.items()):
            if not self._candidate(value):
                continue
            if not self._exact(value):
                self.inexact.append(name)
                continue
            source = value.const_value
            np_type = self.dtype.numpy()
            # converted when written, one weight at a time, as the exporter computes them
            half = ir.LazyTensor(lambda source=source, np_type=np_type: ir.Tensor(source.numpy().astype(np_type)),
                                 dtype=self.dtype, shape=value.shape, name=name)
            stored = ir.Value(name=f"{name}.{self.precision}", shape=value.shape, type=ir.TensorType(self.dtype),
                              const_value=half)
            first = min((user for user, _ in value.uses()), key=lambda node: order[id(node)])
            cast = ir.node("Cast", [stored], {"to": ir.DataType.FLOAT}, name=f"{name}/stored_{self.precision}",
                           metadata_props=dict(first.metadata_props))
            cast.outputs[0].dtype, cast.outputs[0].shape = ir.DataType.FLOAT, value.shape
            graph.initializers.pop(name)
            graph.register_initializer(stored)
            value.replace_all_uses_with(cast.outputs[0])
            cast.outputs[0].name = name  # the weight keeps its name, now the Cast's output
            graph.insert_before(first, cast)  # before the earliest user, so before every user
            self.stored.append(name)
        return PassResult(model, bool(self.stored))

    def ensures(self, model: ir.Model) -> None:
        for name in self.stored:
            value = model.graph.node(f"{name}/stored_{self.precision}").inputs[0]
            if value is None or value.dtype != self.dtype or not value.is_initializer():
                raise PostconditionError(f"{name}: not stored as a {self.precision} initializer")
