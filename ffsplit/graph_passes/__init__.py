"""onnx_ir passes over exported graphs, one ``<Verb><Object>Pass`` per file.

The order they run in is ``pipeline.py``'s; the CheckBranchSeparationPass
runs on the graph the runtime actually executes.
"""

from ffsplit.graph_passes.check_branch_separation_pass import (
    MATMUL_OPS,
    BranchSeparationError,
    CheckBranchSeparationPass,
    LayerRecord,
    check_separation,
    expected_matmuls,
    expected_precisions,
    records_from_onnx,
)
from ffsplit.graph_passes.embed_manifest_pass import EmbedManifestPass
from ffsplit.graph_passes.tag_branches_pass import BRANCH_KEY, LAYER_KEY, TagBranchesPass, node_tags

__all__ = [
    "BRANCH_KEY",
    "LAYER_KEY",
    "MATMUL_OPS",
    "BranchSeparationError",
    "CheckBranchSeparationPass",
    "EmbedManifestPass",
    "LayerRecord",
    "check_separation",
    "TagBranchesPass",
    "expected_matmuls",
    "expected_precisions",
    "records_from_onnx",
    "node_tags",
]
