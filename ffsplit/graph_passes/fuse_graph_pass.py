"""FuseGraphPass: onnxscript's ONNX Runtime fusions for transformer graphs, with the branches kept apart.

The dynamo exporter writes attention, LayerNorm and GELU as many small ops;
ONNX Runtime's own optimizer does not recognise them, onnxscript's fusion
rules do (``onnxscript.rewriter.ort_fusions``). This pass applies those rules,
not patterns of our own: SkipLayerNormalization, scaled-dot-product attention
into ``MultiHeadAttention``, attention biases and scale, GELU and BiasGelu.

Q, K and V are deliberately not packed into one ``Attention`` node (its
weights come from a Concat at run time, which no int8 pass can quantise, and
its int8 twin ``QAttention`` takes no additive mask): they stay three MatMuls
that the quantize passes can reach. Fusion runs before the precision passes,
so no fused op hides a weight from them.

A rule never sees a tag, so afterwards every untagged node whose inputs all
come from one branch of one layer (a BiasGelu between two heavy MatMuls) gets
that branch's tag and name; ``ensures`` then proves that every tagged MatMul
is still there, one per projection and branch, so nothing crossed a branch
boundary.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

from ffsplit.graph_passes.tag_branches_pass import BRANCH_KEY, LAYER_KEY, NAME_PREFIX, node_tags

MATMULS = ("MatMul", "Gemm")


def _tagged_matmuls(model: ir.Model) -> Counter[tuple[int, str]]:
    return Counter(
        tags for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.op_type in MATMULS and (tags := node_tags(node)) is not None and tags[1] != "merge"
    )


def _run_fusions(model: ir.Model) -> dict[str, int]:
    # onnxscript exposes these rule sets one per module; optimize_for_ort runs them all and packs Q/K/V too
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import _core as ort_fusions
    from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

    rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    ort_fusions._pre_optimize(model)
    steps = [
        ("skip_layer_normalization", ort_fusions.fuse_skip_layer_normalization, {}),
        ("sdpa", ort_fusions.fuse_sdpa, {"apply_shape_inference": True}),
        ("mha1", ort_fusions.fuse_mha1, {}),
        ("mha2", ort_fusions.fuse_mha2, {}),
        ("mha_scale", ort_fusions.fuse_mha_scale, {}),
        ("mha_bias", ort_fusions.fuse_mha_bias, {}),
        ("gelu", ort_fusions.fuse_gelu, {}),
        ("bias_gelu", ort_fusions.fuse_bias_gelu, {}),
        # an SDPA the MultiHeadAttention rules left (a decoder's attention: rotary, grouped heads) is an
        # intermediate op no runtime has: onnxscript's own pipeline makes it a MultiHeadAttention here
        ("sdpa_via_mha", ort_fusions.replace_sdpa_by_mha, {}),
    ]
    counts = {name: int(fuse(model, **kwargs)) for name, fuse, kwargs in steps}
    optimize(model)
    rewrite(model, ort_fusions.ORT_PATTERN_REWRITE_RULES)
    return counts


def _propagate_tags(model: ir.Model) -> int:
    """Tag every untagged node fed only by one branch of one layer (and constants); return how many."""
    tagged = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node_tags(node) is not None:
            continue
        sources = set()
        for value in node.inputs:
            if value is None or value.const_value is not None or value.is_initializer():
                continue
            producer = value.producer()
            sources.add(node_tags(producer) if producer is not None else None)
        if len(sources) != 1:
            continue
        (tags,) = sources
        if tags is None or tags[1] == "merge":
            continue
        layer, branch = tags
        node.metadata_props[LAYER_KEY] = str(layer)
        node.metadata_props[BRANCH_KEY] = branch
        node.name = f"{NAME_PREFIX}L{layer}/{branch}/{node.name or node.op_type}"
        tagged += 1
    return tagged


class FuseGraphPass(InPlacePass):
    """Apply onnxscript's ORT transformer fusions; keep every tagged MatMul and tag the fused nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.fusions: dict[str, int] = {}
        self._before: Counter[tuple[int, str]] = Counter()

    def requires(self, model: ir.Model) -> None:
        self._before = _tagged_matmuls(model)

    def call(self, model: ir.Model) -> PassResult:
        self.fusions = _run_fusions(model)
        retagged = _propagate_tags(model)
        return PassResult(model, any(self.fusions.values()) or retagged > 0)

    def ensures(self, model: ir.Model) -> None:
        after = _tagged_matmuls(model)
        if after != self._before:
            lost = sorted(set(self._before) - set(after)) or sorted(k for k in after if after[k] != self._before[k])
            raise PostconditionError(
                f"fusion changed the branches' MatMuls (layer, branch: {lost[:4]}): a rule crossed a branch boundary"
            )
