"""Records whose fields carry their bounds: the check built from the fields, and JSON both ways."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ffsplit.schema import Record, bound, integer, nested, nested_items, optional, record_check, text


@dataclass(frozen=True)
class Leaf(Record):
    name: str = bound(text(10))
    size: int = bound(integer(0, 5), default=1)


@dataclass(frozen=True)
class Tree(Record):
    root: Leaf = nested(Leaf)
    leaves: tuple[Leaf, ...] = nested_items(Leaf, max_len=3)
    by_name: dict[str, Leaf] = bound(lambda v, w, e: None, default_factory=dict)
    note: str | None = bound(optional(text()), default=None)
    last: Leaf | None = nested(Leaf, default=None, required=True)


def test_json_both_ways_keeps_nested_records_and_leaves_out_an_optional_none() -> None:
    tree = Tree(root=Leaf(name="a"), leaves=(Leaf(name="b", size=2),), by_name={"c": Leaf(name="c")})
    data = tree.to_json()
    assert data == {"root": {"name": "a", "size": 1}, "leaves": [{"name": "b", "size": 2}],
                    "by_name": {"c": {"name": "c", "size": 1}}, "last": None}
    assert Tree.from_json(data) == tree
    errors: list[str] = []
    Tree.check()(data, "tree", errors)
    assert errors == []


@pytest.mark.parametrize(("data", "says"), [
    ({"leaves": [], "last": None}, "tree.root is missing"),
    ({"root": {"name": "a"}, "leaves": []}, "tree.last is missing"),  # required although it defaults to None
    ({"root": {"name": "a", "size": 9}, "leaves": [], "last": None}, "tree.root.size = 9 is outside [0, 5]"),
    ({"root": {"name": "a"}, "leaves": [{}] * 4, "last": None}, "tree.leaves has 4 entries"),
    ({"root": {"name": "a"}, "leaves": [{"size": 1}], "last": None}, r"tree.leaves[0].name is missing"),
])
def test_the_check_built_from_the_fields_names_each_problem(data: dict, says: str) -> None:
    errors: list[str] = []
    Tree.check()(data, "tree", errors)
    assert any(e.startswith(says) for e in errors), errors


def test_a_field_without_bounds_is_refused() -> None:
    @dataclass(frozen=True)
    class Loose(Record):
        name: str = field(default="")

    with pytest.raises(TypeError, match="Loose fields without bounds: name"):
        record_check(Loose)
