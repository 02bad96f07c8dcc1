"""A parameter that holds one of the project's concepts is typed as it: never ``Any``, ``object`` or nothing.

The names below are the ones the package uses for its records and handles (a target, a runner, a manifest, a
tokenizer ...). A raw JSON value is ``Any`` on purpose, so the few functions that read a manifest before it
is a ``Manifest`` are listed with why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ffsplit

PACKAGE = Path(ffsplit.__file__).parent
CONCEPTS = frozenset({
    "art", "artifact", "grids", "layers", "loaded", "manifest", "model", "plan", "plans", "pooling", "records",
    "runner", "spec", "split", "target", "task", "tokenizer",
})
# (module, function, parameter): why it takes something untyped
RAW = {
    ("manifest/document.py", "embedded_view", "manifest"): "the JSON of a manifest, before it is read",
    ("manifest/document.py", "manifest_problems", "manifest"): "any JSON at all: this is the schema check",
    ("resources.py", "drop_weights", "model"): "whatever torch.onnx left holding weights; not a module is a no-op",
}


def untyped() -> dict[tuple[str, str, str], str | None]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                if arg.arg not in CONCEPTS:
                    continue
                ann = ast.unparse(arg.annotation) if arg.annotation is not None else None
                if ann is None or ann == "object" or "Any" in ann:
                    found[(rel, node.name, arg.arg)] = ann
    return found


def test_concepts_are_typed() -> None:
    assert sorted(set(untyped()) - set(RAW)) == []


def test_the_raw_list_is_current() -> None:
    """An entry that no longer takes a raw value is dropped from the list, so the list cannot hide one."""
    assert sorted(set(RAW) - set(untyped())) == []
