"""TagBranchesPass: mark every node of a SplitFFN with its layer and branch.

The tags come from the module path the exporter recorded for each node
(``pkg.torch.onnx.name_scopes`` with ``pkg.torch.onnx.class_hierarchy``);
only a graph without that metadata (the TorchScript exporter's) is read from
its module-scoped node names (``/model/encoder/layer.0/intermediate/heavy/...``). Each tagged node is also renamed
``ffsplit/L<layer>/<branch>/<name>``: ONNX Runtime drops node metadata when it
saves its optimised graph but keeps names, so the name is how the tags survive
into the graph the runtime runs.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult, PostconditionError

LAYER_KEY = "pkg.ffsplit.layer"
BRANCH_KEY = "pkg.ffsplit.branch"
BRANCHES = ("heavy", "light", "merge")
NAME_PREFIX = "ffsplit/"
SPLIT_CLASS = "ffsplit.split.modules.SplitFFN"


_SLICE = re.compile(r"\.slice\((-?\d+|None), (-?\d+|None), (-?\d+|None)\)\.(\d+)")


def normalize_scope(scope: str) -> str:
    """``layers.slice(None, 2, None).1`` -> ``layers.1``.

    A model that iterates ``self.layers[:n]`` gets its layers recorded under
    the slice; the module path of item i of ``slice(a, b, c)`` is ``a + i*c``.
    """

    def real(m: re.Match[str]) -> str:
        start = 0 if m.group(1) == "None" else int(m.group(1))
        step = 1 if m.group(3) == "None" else int(m.group(3))
        return f".{start + int(m.group(4)) * step}"

    return _SLICE.sub(real, scope)


def _scopes(node: ir.Node) -> tuple[list[str], list[str]] | None:
    names = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    classes = node.metadata_props.get("pkg.torch.onnx.class_hierarchy")
    if not names or not classes:
        return None
    try:
        return [normalize_scope(n) for n in ast.literal_eval(names)], list(ast.literal_eval(classes))
    except (ValueError, SyntaxError):
        return None


_TAGGED_NAME = re.compile(r"(?:^|[\s/,+\[(:])ffsplit/L(\d+)/(heavy|light|merge)/")


def node_tags(node: ir.Node) -> tuple[int, str] | None:
    """(layer, branch) of a node: from metadata, else from a tagged name.

    Runtimes rename the nodes they fuse around the original name (ONNX Runtime
    writes ``fused ffsplit/L0/heavy/...``), so the tag is looked for anywhere in it.
    """
    layer = node.metadata_props.get(LAYER_KEY)
    branch = node.metadata_props.get(BRANCH_KEY)
    if layer is not None and branch is not None:
        return int(layer), branch
    m = _TAGGED_NAME.search(node.name or "")
    return (int(m.group(1)), m.group(2)) if m else None


def tags_in(text: str) -> list[tuple[int, str]]:
    """Every (layer, branch) tag in a text (a runtime's list of the ONNX nodes a kernel was built from)."""
    return [(int(m.group(1)), m.group(2)) for m in _TAGGED_NAME.finditer(text)]


class TagBranchesPass(InPlacePass):
    """Tag SplitFFN nodes with ``pkg.ffsplit.layer`` and ``pkg.ffsplit.branch``.

    Args:
        split_modules: module path of each SplitFFN in the model (as the model
            names it, e.g. ``encoder.layer.0.intermediate``) -> layer index.
        prefix: what the export wrapper puts in front of those paths.
    """

    def __init__(self, *, split_modules: Mapping[str, int], prefix: str = "") -> None:
        super().__init__()
        self.split_modules = {prefix + path: layer for path, layer in split_modules.items()}

    def _from_name(self, node: ir.Node) -> tuple[int, str] | None:
        """TorchScript-exported graphs have no metadata; their names are ``/scope/path/Op``."""
        name = node.name or ""
        if not name.startswith("/"):
            return None
        path = normalize_scope(".".join(name.split("/")[1:-1]))
        for module, layer in self.split_modules.items():
            if path == module:
                return layer, "merge"
            if path.startswith(module + "."):
                branch = path[len(module) + 1 :].split(".")[0]
                return (layer, branch) if branch in BRANCHES else None
        return None

    def _tag(self, node: ir.Node, layer: int, branch: str) -> bool:
        changed = False
        if node.metadata_props.get(LAYER_KEY) != str(layer) or node.metadata_props.get(BRANCH_KEY) != branch:
            node.metadata_props[LAYER_KEY] = str(layer)
            node.metadata_props[BRANCH_KEY] = branch
            changed = True
        # Keep the whole original name behind the tag: names stay unique (TorchScript's
        # end in a bare op type), and a second run does not prefix again.
        base = re.sub(r"^ffsplit/L\d+/(?:heavy|light|merge)/", "", node.name or "").lstrip("/") or node.op_type
        new_name = f"{NAME_PREFIX}L{layer}/{branch}/{base}"
        if node.name != new_name:
            node.name = new_name
            changed = True
        return changed

    def call(self, model: ir.Model) -> PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            scoped = _scopes(node)
            if scoped is None:
                tags = None if node_tags(node) else self._from_name(node)
                if tags is not None:
                    modified = self._tag(node, *tags) or modified
                continue
            names, classes = scoped
            for i, cls in enumerate(classes):
                if cls != SPLIT_CLASS or i >= len(names) or names[i] not in self.split_modules:
                    continue
                layer = self.split_modules[names[i]]
                # The last scope is the op itself; a module scope after the
                # SplitFFN's names the branch, none means the merge.
                child = names[i + 1] if i + 1 < len(names) - 1 else ""
                branch = child[len(names[i]) + 1 :].split(".")[0] if child else "merge"
                if branch in BRANCHES:
                    modified = self._tag(node, layer, branch) or modified
                break
        return PassResult(model, modified)

    def ensures(self, model: ir.Model) -> None:
        found: dict[int, dict[str, int]] = {layer: dict.fromkeys(BRANCHES, 0) for layer in self.split_modules.values()}
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            tags = node_tags(node)
            if tags and tags[0] in found and (node.op_type in ("MatMul", "Gemm") or tags[1] == "merge"):
                found[tags[0]][tags[1]] += 1
        missing = [
            f"layer {layer} has no {branch} {'node' if branch == 'merge' else 'MatMul'}"
            for layer, counts in sorted(found.items())
            for branch, n in counts.items()
            if n == 0
        ]
        if missing:
            raise PostconditionError("tagging incomplete: " + "; ".join(missing))
