"""The exported graphs' I/O contract: input order, KV-cache names and the feed rules around them.

Every module that names a cache tensor or builds a feed for a KV-cache graph
asks here, so the exporter, the runners, the generation loop and the shape
ranges cannot disagree on a name.
"""

from __future__ import annotations

PAST = "past_key_values"
PRESENT = "present"
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
# the pooled, normalised embedding a sentence-transformers source's graph outputs beside its token states
SENTENCE_OUTPUT = "sentence_embedding"


def past_names(layers: int) -> tuple[list[str], list[str]]:
    """The cache inputs and the matching outputs of a ``layers``-layer KV-cache graph, in graph order."""
    inputs = [f"{PAST}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return inputs, [present_for(n) for n in inputs]


def is_past(name: str) -> bool:
    return name.startswith(f"{PAST}.")


def present_for(past: str) -> str:
    """The output that becomes input ``past`` on the next decode step."""
    return PRESENT + past[len(PAST):]


def has_past(names: object) -> bool:
    """Whether a graph with these input names takes a KV cache."""
    return any(is_past(n) for n in names)  # type: ignore[attr-defined]


# ONNX element types the graphs use: ONNX Runtime's type string, Triton's data type.
ELEMENT_TYPES = {
    1: ("tensor(float)", "TYPE_FP32"),
    6: ("tensor(int32)", "TYPE_INT32"),
    7: ("tensor(int64)", "TYPE_INT64"),
    9: ("tensor(bool)", "TYPE_BOOL"),
    10: ("tensor(float16)", "TYPE_FP16"),
    11: ("tensor(double)", "TYPE_FP64"),
}


# one axis of a graph input's shape: a static size, a symbolic name (``batch``, ``past_sequence + sequence``),
# or unknown
Dim = int | str | None


def onnx_signature(model_path: object) -> tuple[dict[str, tuple[int, list[Dim]]], dict[str, tuple[int, list[Dim]]]]:
    """(inputs, outputs) of an ONNX file as name -> (element type, dims with symbolic names as strings),
    read without its weights; initializers listed as inputs are left out."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in proto.graph.initializer}

    def tensors(values: object) -> dict[str, tuple[int, list[Dim]]]:
        return {
            v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values if v.name not in init  # type: ignore[attr-defined]
        }

    return tensors(proto.graph.input), tensors(proto.graph.output)
