"""The package's import graph reads top-down (ARCHITECTURE.md, Layers): no module imports one in a higher
layer, and no two modules import each other, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import ffsplit

PACKAGE = Path(ffsplit.__file__).parent
# Top to bottom. A module belongs to the longest entry that is its name or a package above it; the root
# package itself (``ffsplit.load``, ``__version__``) sits with the verbs.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ffsplit.__main__", "ffsplit.cli"),
    ("ffsplit", "ffsplit.api", "ffsplit.testing", "ffsplit.inference", "ffsplit.serve"),
    ("ffsplit.stages", "ffsplit.plan"),
    # an output folder opened to be run (``Artifact.runner()``), and ``pack``, which opens one
    ("ffsplit.artifact.opened", "ffsplit.artifact.pack"),
    ("ffsplit.split", "ffsplit.exporter", "ffsplit.graph_passes", "ffsplit.runtimes", "ffsplit.parity", "ffsplit.bench"),
    # the output folder and what an artifact records: its manifest, source model, pooling and target
    ("ffsplit.artifact", "ffsplit.manifest", "ffsplit.loading", "ffsplit.residency", "ffsplit.pooling",
     "ffsplit.targets", "ffsplit.runtimes.specs"),
    ("ffsplit.errors", "ffsplit.bounds", "ffsplit.jsonio", "ffsplit.schema", "ffsplit.resources", "ffsplit.precisions", "ffsplit.limits", "ffsplit.tasks", "ffsplit.signature",
     "ffsplit.version"),
)


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("ffsplit", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The package's modules ``name`` imports (at any depth of its code) -> the first line doing so."""
    found: dict[str, int] = {}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            wanted = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            wanted = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in wanted:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("ffsplit") and target != name:
                found.setdefault(target, node.lineno)
    return found


def layer_of(name: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching entry, layer)
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            matches = name == entry or (entry != "ffsplit" and name.startswith(entry + "."))
            if matches and (best is None or len(entry) > best[0]):
                best = (len(entry), layer)
    return None if best is None else best[1]


def test_every_module_has_a_layer() -> None:
    assert [m for m in sorted(modules()) if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer() -> None:
    known = modules()
    upward = [
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)}) at line {line}"
        for name, path in sorted(known.items())
        for target, line in sorted(imports(name, path, known).items())
        if (layer_of(target) or 0) < (layer_of(name) or 0)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    known = modules()
    graph = {name: set(imports(name, path, known)) for name, path in known.items()}
    cycles = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_checker_sees_an_upward_and_a_circular_import(tmp_path: Path) -> None:
    """The analysis itself: a relative import inside a function is found, and so is the cycle it closes."""
    (tmp_path / "a.py").write_text("def f():\n    from .b import x\n")
    (tmp_path / "b.py").write_text("from ffsplit.pkg.a import f\nx = 1\n")
    known = {"ffsplit.pkg.a": tmp_path / "a.py", "ffsplit.pkg.b": tmp_path / "b.py"}
    assert imports("ffsplit.pkg.a", known["ffsplit.pkg.a"], known) == {"ffsplit.pkg.b": 2}
    assert imports("ffsplit.pkg.b", known["ffsplit.pkg.b"], known) == {"ffsplit.pkg.a": 1}
    assert layer_of("ffsplit.artifact") > layer_of("ffsplit.api")  # lower layers have higher numbers
    assert layer_of("ffsplit.targets") > layer_of("ffsplit.runtimes.base")
