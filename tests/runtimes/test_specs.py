"""The runtime table: every runtime is one record, and one runner module registering that name."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import ffsplit.runtimes
from ffsplit.runtimes.base import _RUNNERS, Loader
from ffsplit.runtimes.specs import RUNTIME_SPECS
from ffsplit.targets import list_targets, load_target


def _registered_names() -> dict[str, str]:
    """runtime name -> the module whose ``@register_runtime(name)`` registers it, read from the source."""
    found = {}
    for path in Path(ffsplit.runtimes.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_runtime":
                found[node.args[0].value] = f"ffsplit.runtimes.{path.stem}"  # type: ignore[attr-defined]
    return found


def test_each_runtime_is_one_record_and_one_runner_module() -> None:
    """A runtime added to the table without a runner, or a runner without a record, fails here."""
    assert _registered_names() == {name: spec.runner_module for name, spec in RUNTIME_SPECS.items()}
    for name, spec in RUNTIME_SPECS.items():
        importlib.import_module(spec.runner_module)  # no runtime library is imported at module level
        assert name in _RUNNERS
        # composed with a loader of its own, which builds (``__call__``) what the runner runs
        loader = _RUNNERS[name].loader_class
        assert issubclass(loader, Loader) and loader.__call__ is not Loader.__call__, name
        assert loader.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
    assert {t.runtime for t in list_targets()} == set(RUNTIME_SPECS)  # every runtime ships a target


def test_a_missing_library_says_how_to_install_it() -> None:
    spec = dataclasses.replace(RUNTIME_SPECS["openvino"], package="ffsplit_no_such_library")
    assert spec.unavailable_reason(load_target("openvino")) == "OpenVINO is not installed: pip install 'ffsplit[openvino]'"
    cpu = load_target("cpu")
    assert RUNTIME_SPECS["onnxruntime"].unavailable_reason(cpu) is None
    missing = dataclasses.replace(cpu, providers=["NoSuchExecutionProvider"])
    assert "ONNX Runtime here lacks NoSuchExecutionProvider" in str(missing.unavailable_reason())
