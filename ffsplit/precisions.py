"""The precision names every layer shares: targets, recipes, graph passes, the manifest and the report."""

from __future__ import annotations

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
HEAVY_PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # the heavy hitters are never int4
HALF_FLOATS = ("fp16", "bf16")  # float below fp32: converted in the graph, or by TensorRT's builder
INTEGERS = ("int8", "int4")  # stored as integer grids in the graph
# How an int8 grid runs: the graph forms QuantizeBranchWeightsPass writes, and NNCF's static int8 in
# an OpenVINO IR (the graph keeps the light branch in fp32 for NNCF to quantise).
INT8_GRAPH_FORMS = ("weight-only", "dynamic", "qdq", "matmulnbits")
INT8_COMPUTE = (*INT8_GRAPH_FORMS, "nncf")
# How an int4 grid runs: ONNX Runtime's MatMulNBits in the graph, or NNCF's weight compression in an
# OpenVINO IR (the graph keeps the light branch in fp32 for NNCF to compress).
INT4_GRAPH_FORMS = ("matmulnbits",)
INT4_COMPUTE = (*INT4_GRAPH_FORMS, "nncf")
# How a split FFN is laid out in the graph. "both": each branch its own up- and down-projection; "down": one
# up-projection over all neurons, heavy first, and only the down-projection split (one multiply and one
# activation fewer per layer)
SPLIT_FORMS = ("both", "down")
