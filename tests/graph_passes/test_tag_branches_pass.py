"""TagBranchesPass on an exported tiny split model, and on hand-made graphs."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from onnx_ir.passes import PostconditionError

from ffsplit.graph_passes import BRANCH_KEY, LAYER_KEY, TagBranchesPass, node_tags


def test_every_split_node_is_tagged(tiny_none_artifact: Path) -> None:
    model = ir.load(tiny_none_artifact / "model.onnx")
    in_split, tagged = 0, 0
    counts: dict[tuple[int, str], int] = {}
    for node in model.graph:
        hierarchy = node.metadata_props.get("pkg.torch.onnx.class_hierarchy", "")
        if "SplitFFN" in hierarchy:
            in_split += 1
            tags = node_tags(node)
            assert tags is not None, node
            assert node.metadata_props[LAYER_KEY] == str(tags[0])
            assert node.metadata_props[BRANCH_KEY] == tags[1]
            assert node.name.startswith(f"ffsplit/L{tags[0]}/{tags[1]}/")
            tagged += 1
            if node.op_type == "MatMul":
                counts[tags] = counts.get(tags, 0) + 1
        else:
            assert node_tags(node) is None, node
    assert in_split == tagged > 0
    assert counts == {(0, "heavy"): 2, (0, "light"): 2, (1, "heavy"): 2, (1, "light"): 2}
    onnx.checker.check_model(str(tiny_none_artifact / "model.onnx"), full_check=True)


def test_model_carries_the_manifest(tiny_none_artifact: Path) -> None:
    import json

    model = ir.load(tiny_none_artifact / "model.onnx")
    embedded = json.loads(model.metadata_props["pkg.ffsplit.manifest"])
    assert embedded["recipe"]["light"]["recipe"] == "none"
    assert len(embedded["layers"]) == 2


def _graph_with_scopes(scopes: list[list[str]], classes: list[list[str]]) -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape([2, 4]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, prev = [], x
    for i, (s, c) in enumerate(zip(scopes, classes, strict=True)):
        node = ir.node("Relu", [prev], name=f"n{i}")
        node.metadata_props["pkg.torch.onnx.name_scopes"] = repr(s)
        node.metadata_props["pkg.torch.onnx.class_hierarchy"] = repr(c)
        nodes.append(node)
        prev = node.outputs[0]
    prev.name = "y"
    graph = ir.Graph([x], [prev], nodes=nodes, opset_imports={"": 20})
    return ir.Model(graph, ir_version=10)


SPLIT = "ffsplit.split.modules.SplitFFN"


def test_tags_from_scopes_and_idempotent() -> None:
    base = ["", "model", "model.l.0", "model.l.0.ffn"]
    classes_base = ["W", "M", "Layer", SPLIT]
    model = _graph_with_scopes(
        [base + ["model.l.0.ffn.heavy", "model.l.0.ffn.heavy.fc_in", "op"], base + ["model.l.0.ffn.light", "op"],
         base + ["add"], ["", "model", "other"]],
        [classes_base + ["Branch", "Linear", "aten"], classes_base + ["Branch", "aten"], classes_base + ["aten"],
         ["W", "M", "aten"]],
    )
    p = TagBranchesPass(split_modules={"l.0.ffn": 3}, prefix="model.")
    result = p.call(model)
    assert result.modified
    assert [node_tags(n) for n in model.graph] == [(3, "heavy"), (3, "light"), (3, "merge"), None]
    assert not p.call(model).modified  # honest flag: nothing left to change


def test_ensures_fails_when_a_layer_has_no_branch_matmul() -> None:
    base = ["", "model", "model.l.0", "model.l.0.ffn"]
    model = _graph_with_scopes([base + ["add"]], [["W", "M", "Layer", SPLIT, "aten"]])
    with pytest.raises(PostconditionError, match="layer 0 has no heavy MatMul"):
        TagBranchesPass(split_modules={"l.0.ffn": 0}, prefix="model.")(model)


@pytest.mark.parametrize(
    ("scope", "want"),
    [
        ("model.layers.slice(None, 2, None).1.mlp", "model.layers.1.mlp"),
        ("model.layers.slice(2, 8, 2).1.mlp.heavy", "model.layers.4.mlp.heavy"),
        ("model.encoder.layer.3.intermediate", "model.encoder.layer.3.intermediate"),
    ],
)
def test_sliced_layer_scopes_map_to_module_paths(scope: str, want: str) -> None:
    from ffsplit.graph_passes.tag_branches_pass import normalize_scope

    assert normalize_scope(scope) == want


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("ffsplit/L3/heavy/node_linear_5", (3, "heavy")),
        ("fused ffsplit/L0/light/node_Gemm_294", (0, "light")),
        ("ffsplit/L12/merge/node_add/MatMulAddFusion/", (12, "merge")),
        ("node_MatMul_104", None),
        ("notffsplit/L1/heavy/x", None),
    ],
)
def test_tags_survive_runtime_renames(name: str, want: tuple[int, str] | None) -> None:
    node = ir.node("Relu", [ir.Value(name="x")], name=name)
    assert node_tags(node) == want
