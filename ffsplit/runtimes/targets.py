"""The target registry: TOML files shipped in ``runtimes/targets`` or given by path.

A target names the runtime, its providers and optimisation level, the
precision of each branch (the defaults for ``--heavy`` and ``--light``), how
int8 and int4 weights are computed in the graph, ONNX Runtime session config
entries, the shape ranges (min / opt / max) and the parity tolerances. Loading validates every key and lists every problem at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from ffsplit.errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
HEAVY_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
RUNTIMES = ("onnxruntime",)
OPT_LEVELS = ("disable", "basic", "extended", "all")

# key -> (type, required)
_TOP: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "description": (str, False),
    "runtime": (str, True),
    "providers": (list, True),
    "graph_optimization": (str, False),
    "heavy_precision": (str, True),
    "light_precision": (str, True),
    "int8_compute": (str, False),
    "int4_compute": (str, False),
    "session_config": (dict, False),
    "shapes": (dict, False),
    "parity": (dict, False),
}
INT8_COMPUTE = ("weight-only", "dynamic", "qdq")
INT4_COMPUTE = ("matmulnbits",)
_PARITY: dict[str, tuple[str, ...]] = {
    "fidelity": ("max_abs", "cosine_min", "generation_agreement"),
    "exact": ("max_abs", "cosine_min", "generation_agreement"),
    "compression": (
        "cosine_mean", "cosine_min", "retrieval_at10", "label_agreement", "top1_agreement", "top5_agreement",
        "perplexity_ratio",
    ),
}


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str
    providers: tuple[str, ...]
    heavy_precision: str
    light_precision: str
    graph_optimization: str = "all"
    int8_compute: str = "weight-only"
    int4_compute: str = "matmulnbits"
    session_config: dict[str, str] = field(default_factory=dict)
    description: str = ""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "providers": list(self.providers),
            "graph_optimization": self.graph_optimization,
            "heavy_precision": self.heavy_precision,
            "light_precision": self.light_precision,
            "int8_compute": self.int8_compute,
            "int4_compute": self.int4_compute,
            "session_config": self.session_config,
            "shapes": self.shapes,
            "parity": self.parity,
        }

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or None when it can."""
        if self.runtime == "onnxruntime":
            import onnxruntime as ort

            have = set(ort.get_available_providers())
            missing = [p for p in self.providers if p not in have]
            if missing:
                return f"ONNX Runtime here lacks {', '.join(missing)} (has {', '.join(sorted(have))})"
        return None


def _validate(data: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    for key in data:
        if key not in _TOP:
            errors.append(f"unknown key '{key}'")
    for key, (typ, required) in _TOP.items():
        if key not in data:
            if required:
                errors.append(f"missing key '{key}'")
            continue
        if not isinstance(data[key], typ):
            errors.append(f"'{key}' must be a {typ.__name__ if isinstance(typ, type) else typ}")
    if isinstance(data.get("runtime"), str) and data["runtime"] not in RUNTIMES:
        errors.append(f"runtime '{data['runtime']}' is not one of {', '.join(RUNTIMES)}")
    for key, allowed in (("heavy_precision", HEAVY_PRECISIONS), ("light_precision", PRECISIONS)):
        if isinstance(data.get(key), str) and data[key] not in allowed:
            errors.append(f"{key} '{data[key]}' is not one of {', '.join(allowed)}")
    if isinstance(data.get("graph_optimization"), str) and data["graph_optimization"] not in OPT_LEVELS:
        errors.append(f"graph_optimization '{data['graph_optimization']}' is not one of {', '.join(OPT_LEVELS)}")
    for key, allowed in (("int8_compute", INT8_COMPUTE), ("int4_compute", INT4_COMPUTE)):
        if isinstance(data.get(key), str) and data[key] not in allowed:
            errors.append(f"{key} '{data[key]}' is not one of {', '.join(allowed)}")
    if isinstance(data.get("session_config"), dict):
        for k, v in data["session_config"].items():
            if not isinstance(v, str):
                errors.append(f"'session_config.{k}' must be a string (ONNX Runtime session config values are strings)")
    if isinstance(data.get("providers"), list) and not all(isinstance(p, str) for p in data["providers"]):
        errors.append("'providers' must be a list of strings")
    for axis, rng in (data.get("shapes") or {}).items() if isinstance(data.get("shapes"), dict) else ():
        if axis not in ("batch", "sequence"):
            errors.append(f"unknown key 'shapes.{axis}'")
        elif not (
            isinstance(rng, list) and len(rng) == 3 and all(isinstance(v, int) and v > 0 for v in rng)
            and rng[0] <= rng[1] <= rng[2]
        ):
            errors.append(f"'shapes.{axis}' must be [min, opt, max] positive integers in order")
    if isinstance(data.get("parity"), dict):
        for group, values in data["parity"].items():
            if group not in _PARITY:
                errors.append(f"unknown key 'parity.{group}'")
                continue
            if not isinstance(values, dict):
                errors.append(f"'parity.{group}' must be a table")
                continue
            for k, v in values.items():
                if k not in _PARITY[group]:
                    errors.append(f"unknown key 'parity.{group}.{k}'")
                elif not isinstance(v, (int, float)) or isinstance(v, bool):
                    errors.append(f"'parity.{group}.{k}' must be a number")
    return errors


def _builtin_dir() -> Path:
    return Path(str(resources.files("ffsplit.runtimes") / "targets"))


def list_targets() -> list[Target]:
    return [load_target(p.stem) for p in sorted(_builtin_dir().glob("*.toml"), key=lambda p: p.stem)]


def load_target(spec: str) -> Target:
    """A shipped target by name, or a TOML file by path."""
    if spec.endswith(".toml") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"target file '{spec}' not found: pass a shipped target name or a .toml path")
        name = path.stem
    else:
        path = _builtin_dir() / f"{spec}.toml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in _builtin_dir().glob("*.toml")))
            raise UsageError(f"unknown target '{spec}': use one of {names}, or a path to a target .toml")
        name = spec
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"target file '{path}' is not valid TOML ({exc}): fix the file") from None
    errors = _validate(data, str(path))
    if errors:
        raise UsageError(f"target file '{path}' is invalid: " + "; ".join(errors))
    return Target(
        name=name,
        runtime=data["runtime"],
        providers=tuple(data["providers"]),
        heavy_precision=data["heavy_precision"],
        light_precision=data["light_precision"],
        graph_optimization=data.get("graph_optimization", "all"),
        int8_compute=data.get("int8_compute", "weight-only"),
        int4_compute=data.get("int4_compute", "matmulnbits"),
        session_config=data.get("session_config", {}),
        description=data.get("description", ""),
        shapes=data.get("shapes", {}),
        parity=data.get("parity", {}),
        source=str(path),
    )
