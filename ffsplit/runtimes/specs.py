"""One record per runtime ffsplit runs on: its name, the module that registers its runner, the library it needs
and how to install it, what decides whether a target of it can run here, and how Triton serves it.

Everything that depends on which runtime a target names reads ``RUNTIME_SPECS``: the target schema (the
runtime names), ``Target.unavailable_reason``, ``runtimes.base.runner_class`` (the module to import) and
``serve.triton`` (the platform and the file served). A new runtime is one entry here and one
``runtimes/<name>.py`` registering its runner (``tests/runtimes/test_specs.py`` fails when one is missing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Protocol


class Target(Protocol):
    """What of a ``targets.Target`` the availability checks read (that module reads this one)."""

    @property
    def providers(self) -> Sequence[str]: ...

    @property
    def openvino(self) -> Mapping[str, Any]: ...


def _onnxruntime_lacks(target: Target) -> str | None:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    missing = [p for p in target.providers if p not in have]
    if missing:
        return (f"ONNX Runtime here lacks {', '.join(missing)} (has {', '.join(sorted(have))}); "
                "install ffsplit[gpu] on a machine with a GPU")
    return None


def _openvino_lacks(target: Target) -> str | None:
    import openvino as ov

    device = target.openvino.get("device", "CPU")
    devices = ov.Core().available_devices
    if device not in devices:
        return f"OpenVINO has no device {device} here (has {', '.join(devices)})"
    return None


@dataclass(frozen=True)
class RuntimeSpec:
    """What ffsplit knows of one runtime, in one place."""

    name: str  # a target's ``runtime``
    label: str  # how messages name it
    runner_module: str  # registers the runner for ``name`` (imported on first use)
    package: str  # the library it runs on (an import name)
    install: str  # how a user gets that library
    # what else a target of this runtime needs here (providers, a device), once the library is installed
    lacks: Callable[[Target], str | None] | None
    # Triton's platform for the model ffsplit writes into a repository, and the file it serves: model.onnx
    # (ONNX Runtime's backend runs OpenVINO targets' graph too), or an engine in the runtime folder
    triton_platform: str
    triton_file: str

    def unavailable_reason(self, target: Target) -> str | None:
        """Why ``target`` (of this runtime) cannot run here as far as the runtime goes, or None."""
        if find_spec(self.package) is None:
            return f"{self.label} is not installed: {self.install}"
        return self.lacks(target) if self.lacks else None


RUNTIME_SPECS: dict[str, RuntimeSpec] = {spec.name: spec for spec in (
    RuntimeSpec("onnxruntime", "ONNX Runtime", "ffsplit.runtimes.onnxruntime", "onnxruntime", "pip install ffsplit",
                _onnxruntime_lacks, "onnxruntime_onnx", "model.onnx"),
    RuntimeSpec("openvino", "OpenVINO", "ffsplit.runtimes.openvino", "openvino", "pip install 'ffsplit[openvino]'",
                _openvino_lacks, "onnxruntime_onnx", "model.onnx"),
    RuntimeSpec("tensorrt", "TensorRT", "ffsplit.runtimes.tensorrt", "tensorrt", "pip install 'ffsplit[gpu]'",
                None, "tensorrt_plan", "model.plan"),
)}
RUNTIMES = tuple(RUNTIME_SPECS)
