"""The target registry: TOML files shipped in ``targets/shipped`` or given by path.

A target names the runtime (ONNX Runtime with its execution providers,
OpenVINO, or native TensorRT), the runtime's options, the precision of each
branch (the defaults for ``--heavy`` and ``--light``), how int8 and int4
weights are computed in the graph, the shape ranges (min / opt / max, with the
decode range of KV-cache models apart) and the parity tolerances. Loading
checks every key against the schema (``targets.schema``) and lists every
problem at once.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from ffsplit.errors import UsageError
from ffsplit.precisions import HALF_FLOATS
from ffsplit.runtimes.specs import RUNTIME_SPECS
from ffsplit.schema import NAME, bound, record_check
from ffsplit.targets.schema import (
    FIELD_CHECKS,
    GPU_PROVIDERS,
    GRAPH_FIELDS,
    NNCF_DEFAULTS,
    VNNI_FLAGS,
    rule_problems,
)


def gpu_present() -> str | None:
    """Why there is no usable NVIDIA GPU here, or None when there is one."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU (nvidia-smi not found)"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed ({exc})"
    if out.returncode != 0 or "GPU" not in out.stdout:
        return "no NVIDIA GPU (nvidia-smi lists none)"
    return None


def _key(name: str, **kw: Any) -> Any:
    """A Target field with the bounds the target schema gives its key."""
    return bound(FIELD_CHECKS[name], **kw)


# Target fields a target file does not hold: its name is the file's, its source the file's path
FROM_PATH = frozenset({"name", "source"})


@dataclass(frozen=True)
class Target:
    """A target: the runtime and its options, the branches' precisions and how integers are computed, the shape
    ranges and the parity tolerances. Each field carries the bounds of its key in a target file."""

    name: str = _key("name")
    runtime: str = _key("runtime")
    heavy_precision: str = _key("heavy_precision")
    light_precision: str = _key("light_precision")
    providers: tuple[str, ...] = _key("providers", default=())
    provider_options: dict[str, dict[str, Any]] = _key("provider_options", default_factory=dict)
    graph_optimization: str = _key("graph_optimization", default="all")
    int8_compute: str = _key("int8_compute", default="weight-only")
    int4_compute: str = _key("int4_compute", default="matmulnbits")
    other_matmuls: str = _key("other_matmuls", default="fp32")
    matmulnbits_accuracy_level: int = _key("matmulnbits_accuracy_level", default=0)
    int8_weight_range: str = _key("int8_weight_range", default="full")
    fusions: str = _key("fusions", default="none")
    split: str = _key("split", default="both")
    heavy_ratio: float | None = _key("heavy_ratio", default=None)  # the export's default --heavy-ratio
    opset: int | None = _key("opset", default=None)  # None: the exporter's default
    session_config: dict[str, str] = _key("session_config", default_factory=dict)
    openvino: dict[str, Any] = _key("openvino", default_factory=dict)
    nncf: dict[str, Any] = _key("nncf", default_factory=dict)  # int4 weight compression (int4_compute nncf)
    tensorrt: dict[str, Any] = _key("tensorrt", default_factory=dict)
    description: str = _key("description", default="")
    shapes: dict[str, list[int]] = _key("shapes", default_factory=dict)
    parity: dict[str, dict[str, float]] = _key("parity", default_factory=dict)
    source: str = _key("source", default="")

    @property
    def on_gpu(self) -> bool:
        return self.runtime == "tensorrt" or any(p in GPU_PROVIDERS for p in self.providers)

    def graph_differences(self, other: Target) -> list[str]:
        """The fields that make ``other`` need a different model.onnx than this target (empty: the same
        graph runs on both, so an artifact exported for one can be built for the other)."""
        out = [f"{k} {getattr(self, k)} vs {getattr(other, k)}" for k in GRAPH_FIELDS
               if getattr(self, k) != getattr(other, k)]
        if self.floats_in_graph != other.floats_in_graph:
            out.append("fp16 / bf16 " + " vs ".join(
                "in the graph" if t.floats_in_graph else "by the TensorRT builder" for t in (self, other)))
        return out

    def built_as(self, target: str | None) -> Target:
        """What ``ffsplit build`` builds this (the export's) target's graph for: itself, or ``target`` (a name or
        TOML file) when it runs the same graph (and, for an NNCF IR, has the same name); UsageError otherwise,
        or when it cannot run on this machine."""
        tgt = self if target is None else load_target(target)
        differ = self.graph_differences(tgt)
        if differ:
            raise UsageError(f"target '{tgt.name}' needs another graph than the one exported for '{self.name}' "
                             f"({'; '.join(differ)}): re-run ffsplit export --target {target}")
        if tgt.ir_compression and tgt.name != self.name:
            raise UsageError(f"the NNCF IR of this artifact belongs to '{self.name}': build it under that name")
        require_supported(tgt)
        return tgt

    @property
    def light_group_size(self) -> int | None:
        """NNCF's int4 group along the light branch's input (-1: one scale per output channel); None when NNCF
        does not compress this target's weights to int4."""
        if not self.nncf:
            return None
        return int(self.nncf.get("light_group_size", self.nncf["group_size"]))

    @property
    def ir_compression(self) -> str | None:
        """What NNCF does to build the OpenVINO IR this target runs: "int8" (static quantisation), "int4"
        (weight compression), or None when the runtime runs model.onnx itself."""
        return "int8" if self.int8_compute == "nncf" else "int4" if self.int4_compute == "nncf" else None

    @property
    def floats_in_graph(self) -> bool:
        """Whether fp16 / bf16 branches are converted in model.onnx (TensorRT's builder does it instead)."""
        return self.runtime != "tensorrt"

    def stand_in(self) -> Target:
        """ONNX Runtime on the CPU running this target's graph: what an export checks parity on when the
        target cannot run on the machine (its build is deferred to ``ffsplit build``). For a TensorRT
        target the graph is fp32 (the engine builder lowers it); a CUDA fp16 graph runs its fp16 nodes
        in ONNX Runtime's CPU kernels, or fp32 with casts where it has none."""
        return replace(
            self, name=f"{self.name}.cpu-stand-in", runtime="onnxruntime", providers=("CPUExecutionProvider",),
            provider_options={}, session_config={}, graph_optimization="all", tensorrt={}, openvino={},
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "providers": list(self.providers),
            "provider_options": self.provider_options,
            "graph_optimization": self.graph_optimization,
            "heavy_precision": self.heavy_precision,
            "light_precision": self.light_precision,
            "int8_compute": self.int8_compute,
            "int4_compute": self.int4_compute,
            "other_matmuls": self.other_matmuls,
            "matmulnbits_accuracy_level": self.matmulnbits_accuracy_level,
            "int8_weight_range": self.int8_weight_range,
            "fusions": self.fusions,
            "split": self.split,
            **({"heavy_ratio": self.heavy_ratio} if self.heavy_ratio is not None else {}),
            **({"opset": self.opset} if self.opset else {}),
            "session_config": self.session_config,
            "openvino": self.openvino,
            **({"nncf": self.nncf} if self.nncf else {}),
            "tensorrt": self.tensorrt,
            "shapes": self.shapes,
            "parity": self.parity,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = "the manifest") -> Target:
        """A target as an artifact's manifest recorded it, checked as strictly as a target file."""
        if not isinstance(data, dict):
            raise UsageError(f"{where} has a damaged target (not a table): re-run ffsplit export")
        rest = {k: v for k, v in data.items() if k != "name"}
        errors = target_problems(rest)
        if not (isinstance(data.get("name"), str) and NAME.fullmatch(data["name"])):
            errors.insert(0, "the name is not a plain target name")
        if errors:
            text = "; ".join(errors[:3]).replace("\r", "\\r").replace("\n", "\\n")
            raise UsageError(f"{where} has a damaged target ({text}): re-run ffsplit export")
        return cls.from_table({k: v for k, v in data.items() if k not in ("source", "description")})

    @classmethod
    def from_table(cls, data: dict[str, Any], **fixed: Any) -> Target:
        """A target from a table ``target_problems`` accepted (a file's, or a manifest's): each key its field, a
        missing key its field's default, ``fixed`` on top; ``auto`` weight range and NNCF's defaults resolved."""
        kwargs = {**{k: v for k, v in data.items() if k in cls.__dataclass_fields__}, **fixed}
        kwargs["providers"] = tuple(kwargs.get("providers", ()))
        if "int8_weight_range" in kwargs:
            kwargs["int8_weight_range"] = weight_range(kwargs["int8_weight_range"])
        if kwargs.get("int4_compute") == "nncf":
            kwargs["nncf"] = {**NNCF_DEFAULTS, **kwargs.get("nncf", {})}
        return cls(**kwargs)

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or None when it can."""
        if self.on_gpu:
            reason = gpu_present()
            if reason:
                return reason
        return RUNTIME_SPECS[self.runtime].unavailable_reason(self)


def target_problems(data: dict[str, Any]) -> list[str]:
    """Every problem of a target file's table, at once: each key against its field's bounds (a key that is no
    field is unknown), then the rules keys obey together."""
    errors: list[str] = []
    record_check(Target, strict=True, leave_out=FROM_PATH)(data, "", errors)
    return errors + rule_problems(data)


def _builtin_dir() -> Path:
    return Path(str(resources.files("ffsplit.targets") / "shipped"))


def require_supported(target: Target) -> None:
    """Refuse, in one line, a target whose runtime or hardware this machine lacks."""
    reason = target.unavailable_reason()
    if reason:
        raise UsageError(f"target '{target.name}' cannot run on this machine: {reason}")


def list_targets() -> list[Target]:
    return [load_target(p.stem) for p in sorted(_builtin_dir().glob("*.toml"), key=lambda p: p.stem)]


TARGET_MAX_BYTES = 1 << 20  # a target file is a few KB
TARGET_MAX_DEPTH = 16  # tables within tables: the schema needs 3


def _depth(value: Any) -> int:
    """How deeply tables and arrays nest in ``value`` (iteratively: no recursion on hostile input)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth <= TARGET_MAX_DEPTH and isinstance(item, (dict, list)):
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > TARGET_MAX_BYTES:
            raise UsageError(f"target file '{path}' is larger than {TARGET_MAX_BYTES >> 20} MB: a target file is a few KB")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"target file '{path}' is not valid TOML ({str(exc)[:200]}): fix the file") from None
    except RecursionError:
        data = None
    except OSError as exc:
        raise UsageError(f"target file '{path}' cannot be read ({exc.strerror})") from None
    if data is None or _depth(data) > TARGET_MAX_DEPTH:
        raise UsageError(f"target file '{path}' nests tables or arrays more than {TARGET_MAX_DEPTH} deep: fix the file")
    return data


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, every other value replaces."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _extended(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A target file with ``extends = "<shipped target>"``: that target's every table, with this file's on top."""
    base = data["extends"]
    names = sorted(p.stem for p in _builtin_dir().glob("*.toml"))
    if not isinstance(base, str) or base not in names:
        raise UsageError(f"target file '{path}': extends = {str(base)[:40]!r} is not a shipped target: use one of "
                         f"{', '.join(names)}")
    rest = {k: v for k, v in data.items() if k != "extends"}
    return _merged(_read_toml(_builtin_dir() / f"{base}.toml"), rest)


def _lossy_at_runtime(data: dict[str, Any]) -> bool:
    """Whether the runtime rounds what split torch computes in fp32 (so fidelity cannot be fp32-tight)."""
    return (
        data.get("int8_compute", "weight-only") in ("dynamic", "qdq", "nncf") or data.get("int4_compute") == "nncf"
        or data.get("heavy_precision") in HALF_FLOATS or data.get("light_precision") in HALF_FLOATS
        or data.get("other_matmuls", "fp32") != "fp32" or data.get("matmulnbits_accuracy_level", 0) != 0
    )


def load_target(spec: str) -> Target:
    """A shipped target by name, or a TOML file by path."""
    if spec.endswith(".toml") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"target file '{spec}' not found: pass a shipped target name or a .toml path")
        name = path.stem
        if not NAME.fullmatch(name):
            raise UsageError(
                f"target file '{spec}': its name '{name[:40]}' becomes a folder name in the artifact; "
                "rename the file to letters, digits and . _ + - only"
            )
    else:
        path = _builtin_dir() / f"{spec}.toml"
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in _builtin_dir().glob("*.toml")))
            raise UsageError(f"unknown target '{spec}': use one of {names}, or a path to a target .toml")
        name = spec
    data = _read_toml(path)
    if "extends" in data:
        data = _extended(data, path)
    errors = target_problems(data)
    if not errors and "fidelity" not in data.get("parity", {}) and _lossy_at_runtime(data):
        errors.append(
            "the runtime computes in lower precision than split torch (int8 compute, fp16 / bf16 or int8 other "
            "multiplies), so it needs its own tolerances: add [parity.fidelity] (e.g. max_abs = 1.0, cosine_min = "
            "0.99), or extends = a shipped target that has them"
        )
    if errors:
        # values and keys come from the file: keep the message on one line
        raise UsageError(f"target file '{path}' is invalid: " + "; ".join(errors).replace("\r", "\\r").replace("\n", "\\n"))
    return Target.from_table(data, name=name, source=str(path))


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies u8 x s8 into int32 directly (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in VNNI_FLAGS)


def weight_range(value: str, *, vnni: bool | None = None) -> str:
    """``auto`` as this machine needs it: full-range int8 weights where the CPU has VNNI, else within +-64.

    Without VNNI, x86 int8 kernels (ONNX Runtime's MLAS, OpenVINO) add pairs of
    u8 x s8 products in int16, which full-range weights saturate; with it,
    the +-64 range only throws away a bit of every weight. The choice is made
    when the target is read, so an export records the concrete value it used.
    """
    if value != "auto":
        return value
    return "full" if (cpu_has_vnni() if vnni is None else vnni) else "reduced"
