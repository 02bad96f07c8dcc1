"""CheckBranchSeparationPass: the guard that no runtime optimisation merged the branches.

Run on the graph a runtime actually executes (ONNX Runtime's saved optimised
model). Per layer it counts the matrix-multiply nodes tagged heavy and light
and compares them with what the split put there: a horizontal fusion, a weight
concat or a branch folded into another shows up as a missing or extra node.
It also reads the precision each multiply realises (an int8 light branch that
the runtime dequantised back to fp32, or fp16 weights cast up to fp32, is a
failure) when given the precisions the target asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassError, PassResult

from ffsplit.graph_passes.precision import MATMUL_OPS, LayerRecord, realized_precision
from ffsplit.graph_passes.tag_branches_pass import node_tags
from ffsplit.manifest import LayerPlan


class BranchSeparationError(PassError):
    """Heavy and light were merged (or lost) in the runtime's graph."""

    def __init__(self, findings: list[str]) -> None:
        super().__init__("; ".join(findings))
        self.findings = findings


def expected_precisions(plans: Sequence[LayerPlan]) -> dict[int, dict[str, str]]:
    """The precision each branch of each layer must run at, as the split planned it."""
    return {p.layer: {"heavy": p.heavy_precision, "light": p.light_precision} for p in plans}


def expected_matmuls(plans: Sequence[LayerPlan]) -> dict[int, dict[str, int]]:
    """Matrix multiplies each branch of each layer must keep.

    A dense (or pruned) branch has one per projection (2, or 3 when gated); a low-rank one two per projection.
    In the ``down`` split form each branch is its down-projection alone (the shared up-projection is neither's).
    """
    return {p.layer: {"heavy": p.projections, "light": 2 * p.projections if p.lowrank else p.projections}
            for p in plans}


def records_from_onnx(model: ir.Model) -> list[LayerRecord]:
    """The tagged matrix multiplies of an ONNX graph (ONNX Runtime's saved optimised model)."""
    out = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type not in MATMUL_OPS:
            continue
        tags = node_tags(node)
        if tags is not None:
            out.append(LayerRecord(node.name or "", node.op_type, (tags,), realized_precision(node)))
    return out


def check_separation(
    records: list[LayerRecord], expected: Mapping[int, Mapping[str, int]],
    precisions: Mapping[int, Mapping[str, str]] | None = None,
) -> tuple[dict[int, dict[str, int]], dict[int, dict[str, list[str]]], list[str]]:
    """Counts per layer and branch, realised precisions, and every finding (empty when separate)."""
    found: dict[int, dict[str, int]] = {layer: {"heavy": 0, "light": 0} for layer in expected}
    realized: dict[int, dict[str, list[str]]] = {}
    findings: list[str] = []
    for rec in records:
        # A merge Add fused into a branch's kernel as a post-op is harmless; two branches in one kernel are not.
        branches = sorted({t for t in rec.tags if t[1] != "merge"})
        if len(branches) > 1:
            parts = ", ".join(f"L{layer} {branch}" for layer, branch in branches)
            findings.append(f"{rec.op_type} '{rec.name}' computes {parts} in one kernel (branches merged)")
            continue
        if not branches:
            layer = rec.tags[0][0]
            findings.append(f"layer {layer}: {rec.op_type} '{rec.name}' multiplies in the merge, outside both branches")
            continue
        layer, branch = branches[0]
        found.setdefault(layer, {"heavy": 0, "light": 0})[branch] += 1
        realized.setdefault(layer, {"heavy": [], "light": []})[branch].append(rec.precision)
        want = (precisions or {}).get(layer, {}).get(branch)
        if want is not None and rec.precision != want:
            findings.append(
                f"layer {layer}: {branch} {rec.op_type} '{rec.name}' runs at {rec.precision}, the target asked for {want}"
            )
    for layer, want_counts in sorted(expected.items()):
        for branch, n in want_counts.items():
            got = found.get(layer, {}).get(branch, 0)
            if got != n:
                findings.append(f"layer {layer}: {got} {branch} matmul nodes, expected {n} (branches merged or lost)")
    return found, realized, findings


class CheckBranchSeparationPass(InPlacePass):
    """Fail if any layer's heavy and light matrix multiplies are not the separate nodes expected.

    Args:
        expected: layer -> branch -> number of matrix-multiply nodes.
        precisions: layer -> branch -> the precision every multiply of that
            branch must realise (see ``realized_precision``); None skips the check.
    """

    def __init__(
        self, *, expected: Mapping[int, Mapping[str, int]], precisions: Mapping[int, Mapping[str, str]] | None = None
    ) -> None:
        super().__init__()
        self.expected = expected
        self.precisions = precisions
        self.found: dict[int, dict[str, int]] = {}
        self.realized: dict[int, dict[str, list[str]]] = {}

    def call(self, model: ir.Model) -> PassResult:
        found, self.realized, findings = check_separation(records_from_onnx(model), self.expected, self.precisions)
        self.found = found
        if findings:
            raise BranchSeparationError(findings)
        return PassResult(model, False)
