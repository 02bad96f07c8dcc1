"""The target registry: TOML files shipped in ``runtimes/targets`` or given by path.

A target names the runtime (ONNX Runtime with its execution providers,
OpenVINO, or native TensorRT), the runtime's options, the precision of each
branch (the defaults for ``--heavy`` and ``--light``), how int8 and int4
weights are computed in the graph, the shape ranges (min / opt / max, with the
decode range of KV-cache models apart) and the parity tolerances. Loading
checks every key against a schema and lists every problem at once.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import tomllib

from ffsplit.errors import UsageError
from ffsplit.limits import PARITY_KEYS, UPPER_BOUNDED
from ffsplit.precisions import HALF_FLOATS, HEAVY_PRECISIONS, INT4_COMPUTE, INT8_COMPUTE, PRECISIONS

RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
OPT_LEVELS = ("disable", "basic", "extended", "all")
# NNCF compress_weights modes a target may ask for (asymmetric: a zero point per group)
NNCF_INT4_MODES = ("int4_asym", "int4_sym")
INT8_WEIGHT_RANGES = ("auto", "full", "reduced")
# x86 instructions that add u8 x s8 products straight into int32 (no int16 step that full-range weights saturate)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
FUSIONS = ("none", "ort")
# "both": each branch its own up- and down-projection; "down": one up-projection over all neurons, heavy
# first, and only the down-projection split (one multiply and one activation fewer per layer)
SPLIT_FORMS = ("both", "down")
SHAPE_AXES = ("batch", "sequence", "past")
# ONNX opsets a target may ask the exporter for (torch.onnx's dynamo exporter writes 20 unless told). At 23 it writes
# scaled dot-product attention as one ONNX Attention op, which OpenVINO reads as ScaledDotProductAttention and,
# in a stateful decoder, fuses with its KV cache.
OPSETS = range(18, 24)
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# What the graph passes read from a target: two targets equal in these run the same model.onnx.
GRAPH_FIELDS = (
    "heavy_precision", "light_precision", "int8_compute", "int4_compute", "matmulnbits_accuracy_level", "other_matmuls",
    "int8_weight_range", "fusions", "split", "opset",
)
OTHER_MATMULS = ("fp32", "int8", "int4")
# MatMulNBits' accuracy_level: 0 computes in the input's float type (exactly what split torch computed),
# 4 quantises the activation to int8 per block and multiplies in integers (the fast CPU path)
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)

_SCALAR = (str, int, float, bool)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
# ONNX Runtime session config entries a target may set: ones that tune computation and name no file.
SESSION_CONFIG_KEYS = frozenset({
    "session.disable_prepacking", "session.use_env_allocators", "session.set_denormal_as_zero",
    "session.enable_quant_qdq", "session.disable_quant_qdq", "session.enable_quant_qdq_cleanup",
    "session.disable_double_qdq_remover", "session.x64quantprecision", "session.qdq_matmulnbits_accuracy_level",
    "session.qdqisint8allowed", "session.disable_aot_function_inlining", "session.dynamic_block_base",
    "session.intra_op.allow_spinning", "session.inter_op.allow_spinning", "session.force_spinning_stop",
    "session.strict_shape_type_inference", "session.allow_released_opsets_only", "session.disable_cpu_ep_fallback",
    "session.use_device_allocator_for_initializers", "session.graph_optimizations_loop_level",
    "session.optimized_model_external_initializers_min_size_in_bytes",
    "optimization.enable_gelu_approximation", "optimization.disable_specified_optimizers",
    "optimization.enable_cast_chain_elimination", "mlas.enable_gemm_fastmath_arm64_bfloat16",
})
# Entries naming a file ONNX Runtime writes beside the graph it saves: a plain file name is accepted.
SESSION_CONFIG_FILE_KEYS = frozenset({"session.optimized_model_external_initializers_file_name"})
RESERVED_FILES = frozenset({"model.onnx", "model.onnx.data", "manifest.json", "split.safetensors", "optimized.onnx",
                            "optimized.onnx.data"})
# Provider options and OpenVINO properties that name files or folders (caches, dumps, plug-in
# libraries): ffsplit keeps everything a runtime writes inside the artifact, so a target may not set them.
_PATH_KEY = re.compile(r"path|file|dir|folder|dump|lib|location|table_name", re.IGNORECASE)


def _option_problems(where: str, key: str, value: object) -> list[str]:
    """What is wrong with one runtime option from a target: a file-naming key or a path-like value."""
    if _PATH_KEY.search(key):
        return [f"'{where}.{key}' names a file or folder, which a target may not set (ffsplit keeps runtime files "
                "inside the artifact)"]
    if isinstance(value, str) and (any(c in value for c in "/\\\0") or value.startswith(".") or len(value) > 1024):
        return [f"'{where}.{key}' has a path-like or overlong value, which a target may not set"]
    return []


def _session_config_problems(key: str, value: object) -> list[str]:
    if key in SESSION_CONFIG_FILE_KEYS:
        if not (isinstance(value, str) and NAME.fullmatch(value) and value not in RESERVED_FILES):
            return [f"'session_config.{key}' must be a plain file name (letters, digits, . _ + -), not a path"]
        return []
    if key not in SESSION_CONFIG_KEYS:
        return [f"session_config key '{key[:60]}' is not one ffsplit passes to ONNX Runtime (see README, Targets)"]
    return []
# key -> (type, required); nested tables are checked below.
_TOP: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "description": (str, False),
    "runtime": (str, True),
    "providers": (list, False),
    "provider_options": (dict, False),
    "graph_optimization": (str, False),
    "heavy_precision": (str, True),
    "light_precision": (str, True),
    "int8_compute": (str, False),
    "int4_compute": (str, False),
    "other_matmuls": (str, False),
    "matmulnbits_accuracy_level": (int, False),
    "int8_weight_range": (str, False),
    "fusions": (str, False),
    "split": (str, False),
    "opset": (int, False),
    "session_config": (dict, False),
    "openvino": (dict, False),
    "nncf": (dict, False),
    "tensorrt": (dict, False),
    "shapes": (dict, False),
    "parity": (dict, False),
}
_OPENVINO: dict[str, type | tuple[type, ...]] = {"device": str, "config": dict}
# NNCF's int4 weight compression (int4_compute = "nncf"): its mode, group size and data-aware methods
_NNCF: dict[str, type | tuple[type, ...]] = {
    "mode": str, "group_size": int, "ratio": (int, float), "awq": bool, "scale_estimation": bool,
}
NNCF_GROUP_SIZES = (32, 64, 128, 256)
# ratio: the share of the multiplies (by weight count) NNCF makes int4; the rest int8, chosen by its weight
# sensitivity (below 1.0 whole layers of the light branch may end up int8, which the guard then reports)
NNCF_DEFAULTS = {"mode": "int4_asym", "group_size": 128, "ratio": 1.0, "awq": False, "scale_estimation": False}
_TENSORRT: dict[str, type | tuple[type, ...]] = {
    "fp16": bool, "int8": bool, "bf16": bool, "obey_precision_constraints": bool, "workspace_mb": int,
    "builder_optimization_level": int, "timing_cache": bool,
}


def _type_name(typ: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "table"}
    if isinstance(typ, tuple):
        return " or ".join(names.get(t, t.__name__) for t in typ)
    return names.get(typ, typ.__name__)


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and typ in (int, float):  # TOML true is not a number
        return False
    return isinstance(value, typ)


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


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str
    heavy_precision: str
    light_precision: str
    providers: tuple[str, ...] = ()
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    graph_optimization: str = "all"
    int8_compute: str = "weight-only"
    int4_compute: str = "matmulnbits"
    other_matmuls: str = "fp32"
    matmulnbits_accuracy_level: int = 0
    int8_weight_range: str = "full"
    fusions: str = "none"
    split: str = "both"
    opset: int | None = None  # None: the exporter's default
    session_config: dict[str, str] = field(default_factory=dict)
    openvino: dict[str, Any] = field(default_factory=dict)
    nncf: dict[str, Any] = field(default_factory=dict)  # int4 weight compression settings (int4_compute nncf)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    shapes: dict[str, list[int]] = field(default_factory=dict)
    parity: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = ""

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
        errors = _validate(rest)
        if not (isinstance(data.get("name"), str) and NAME.fullmatch(data["name"])):
            errors.insert(0, "the name is not a plain target name")
        if errors:
            text = "; ".join(errors[:3]).replace("\r", "\\r").replace("\n", "\\n")
            raise UsageError(f"{where} has a damaged target ({text}): re-run ffsplit export")
        known = {f for f in cls.__dataclass_fields__ if f not in ("source", "description")}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["providers"] = tuple(kwargs.get("providers", ()))
        kwargs["int8_weight_range"] = weight_range(kwargs.get("int8_weight_range", "full"))
        return cls(**kwargs)

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run here, or None when it can."""
        if self.on_gpu:
            reason = gpu_present()
            if reason:
                return reason
        if self.runtime == "onnxruntime":
            import onnxruntime as ort

            have = set(ort.get_available_providers())
            missing = [p for p in self.providers if p not in have]
            if missing:
                return (
                    f"ONNX Runtime here lacks {', '.join(missing)} (has {', '.join(sorted(have))}); "
                    "install ffsplit[gpu] on a machine with a GPU"
                )
        elif self.runtime == "openvino":
            if find_spec("openvino") is None:
                return "OpenVINO is not installed: pip install 'ffsplit[openvino]'"
            import openvino as ov

            device = self.openvino.get("device", "CPU")
            if device not in ov.Core().available_devices:
                return f"OpenVINO has no device {device} here (has {', '.join(ov.Core().available_devices)})"
        elif self.runtime == "tensorrt" and find_spec("tensorrt") is None:
            return "TensorRT is not installed: pip install 'ffsplit[gpu]'"
        return None


def _check_table(
    table: Any, schema: dict[str, type | tuple[type, ...]], where: str, errors: list[str]
) -> None:
    if not isinstance(table, dict):
        return
    for k, v in table.items():
        if k not in schema:
            errors.append(f"unknown key '{where}.{k}'")
        elif not _is(v, schema[k]):
            errors.append(f"'{where}.{k}' must be a {_type_name(schema[k])}")


def _validate(data: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    for key in data:
        if key not in _TOP:
            errors.append(f"unknown key '{key}'")
    for key, (typ, required) in _TOP.items():
        if key not in data:
            if required:
                errors.append(f"missing key '{key}'")
            continue
        if not _is(data[key], typ):
            errors.append(f"'{key}' must be a {_type_name(typ)}")
    runtime = data.get("runtime")
    if isinstance(runtime, str) and runtime not in RUNTIMES:
        errors.append(f"runtime '{runtime}' is not one of {', '.join(RUNTIMES)}")
    if data.get("int8_compute") == "nncf" and runtime != "openvino":
        errors.append("int8_compute 'nncf' (NNCF static int8 in an OpenVINO IR) needs runtime 'openvino'")
    if data.get("int4_compute") == "nncf" and runtime != "openvino":
        errors.append("int4_compute 'nncf' (NNCF int4 weight compression in an OpenVINO IR) needs runtime 'openvino'")
    if data.get("int4_compute") == "nncf" and data.get("int8_compute") == "nncf":
        errors.append("int4_compute 'nncf' and int8_compute 'nncf' build two different IRs: choose one")
    if "nncf" in data and data.get("int4_compute") != "nncf":
        errors.append("a [nncf] table configures int4_compute = 'nncf': set it, or drop the table")
    if runtime == "onnxruntime" and not data.get("providers"):
        errors.append("an onnxruntime target needs 'providers', e.g. [\"CPUExecutionProvider\"]")
    for key, allowed in (
        ("heavy_precision", HEAVY_PRECISIONS), ("light_precision", PRECISIONS), ("int8_compute", INT8_COMPUTE),
        ("int4_compute", INT4_COMPUTE), ("graph_optimization", OPT_LEVELS), ("other_matmuls", OTHER_MATMULS),
        ("int8_weight_range", INT8_WEIGHT_RANGES), ("fusions", FUSIONS), ("split", SPLIT_FORMS),
    ):
        if isinstance(data.get(key), str) and data[key] not in allowed:
            errors.append(f"{key} '{data[key]}' is not one of {', '.join(allowed)}")
    level = data.get("matmulnbits_accuracy_level", 0)
    if isinstance(level, int) and level not in INT4_ACCURACY_LEVELS:
        errors.append(f"matmulnbits_accuracy_level {level} is not one of {', '.join(map(str, INT4_ACCURACY_LEVELS))}")
    opset = data.get("opset", OPSETS[0])
    if _is(opset, int) and opset not in OPSETS:
        errors.append(f"opset {opset} is not one from {OPSETS[0]} to {OPSETS[-1]}")
    errors += _runtime_option_problems(data)
    errors += _shape_problems(data.get("shapes"))
    errors += _parity_problems(data.get("parity"))
    return errors


def _runtime_option_problems(data: dict[str, Any]) -> list[str]:
    """Providers and their options, session config, OpenVINO and TensorRT tables."""
    errors: list[str] = []
    if isinstance(data.get("providers"), list) and not all(isinstance(p, str) for p in data["providers"]):
        errors.append("'providers' must be a list of strings")
    if isinstance(data.get("provider_options"), dict):
        for provider, options in data["provider_options"].items():
            if not isinstance(options, dict):
                errors.append(f"'provider_options.{provider}' must be a table")
                continue
            if not isinstance(data.get("providers"), str) and provider not in (data.get("providers") or []):
                errors.append(f"'provider_options.{provider}' names a provider not in 'providers'")
            for k, v in options.items():
                if not _is(v, _SCALAR) or (isinstance(v, float) and not math.isfinite(v)):
                    errors.append(f"'provider_options.{provider}.{k}' must be a string, finite number or boolean")
                errors += _option_problems(f"provider_options.{provider}", k, v)
    if isinstance(data.get("session_config"), dict):
        for k, v in data["session_config"].items():
            if not isinstance(v, str):
                errors.append(f"'session_config.{k}' must be a string (ONNX Runtime session config values are strings)")
            errors += _session_config_problems(k, v)
    _check_table(data.get("openvino"), _OPENVINO, "openvino", errors)
    if isinstance(data.get("openvino"), dict) and isinstance(data["openvino"].get("config"), dict):
        for k, v in data["openvino"]["config"].items():
            if not isinstance(v, str):
                errors.append(f"'openvino.config.{k}' must be a string")
            errors += _option_problems("openvino.config", k, v)
    _check_table(data.get("nncf"), _NNCF, "nncf", errors)
    if isinstance(data.get("nncf"), dict):
        mode, group = data["nncf"].get("mode"), data["nncf"].get("group_size")
        if isinstance(mode, str) and mode not in NNCF_INT4_MODES:
            errors.append(f"nncf.mode '{mode}' is not one of {', '.join(NNCF_INT4_MODES)}")
        if _is(group, int) and group not in NNCF_GROUP_SIZES:
            errors.append(f"nncf.group_size {group} is not one of {', '.join(map(str, NNCF_GROUP_SIZES))}")
        ratio = data["nncf"].get("ratio")
        if _is(ratio, (int, float)) and not 0.0 < ratio <= 1.0:
            errors.append(f"nncf.ratio {ratio} is outside (0, 1]")
    _check_table(data.get("tensorrt"), _TENSORRT, "tensorrt", errors)
    if isinstance(data.get("tensorrt"), dict):
        for k in ("workspace_mb", "builder_optimization_level"):
            v = data["tensorrt"].get(k)
            if _is(v, int) and not 0 <= v <= (1 << 24 if k == "workspace_mb" else 5):
                errors.append(f"'tensorrt.{k}' = {v} is out of range")
    return errors


def _shape_problems(shapes: Any) -> list[str]:
    errors: list[str] = []
    if isinstance(shapes, dict):
        for axis, rng in shapes.items():
            if axis not in SHAPE_AXES:
                errors.append(f"unknown key 'shapes.{axis}'")
            elif not (
                isinstance(rng, list) and len(rng) == 3 and all(_is(v, int) and 0 < v <= 1 << 20 for v in rng)
                and rng[0] <= rng[1] <= rng[2]
            ):
                errors.append(f"'shapes.{axis}' must be [min, opt, max] integers from 1 to 1048576, in order")
    return errors


# the least a ceiling may be: a perplexity ratio below 1 would fail the original itself
_CEILING_FLOOR = {"perplexity_ratio": 1.0}


def _parity_problems(parity: Any) -> list[str]:
    errors: list[str] = []
    if isinstance(parity, dict):
        for group, values in parity.items():
            if group not in PARITY_KEYS:
                errors.append(f"unknown key 'parity.{group}'")
                continue
            if not isinstance(values, dict):
                errors.append(f"'parity.{group}' must be a table")
                continue
            for k, v in values.items():
                if k not in PARITY_KEYS[group]:
                    errors.append(f"unknown key 'parity.{group}.{k}'")
                elif not _is(v, (int, float)) or not math.isfinite(v):
                    errors.append(f"'parity.{group}.{k}' must be a finite number")
                elif k in UPPER_BOUNDED and not v >= _CEILING_FLOOR.get(k, 0.0):
                    errors.append(f"'parity.{group}.{k}' = {v} is below {_CEILING_FLOOR.get(k, 0.0):g}")
                elif k not in UPPER_BOUNDED and not 0.0 <= v <= 1.0:
                    errors.append(f"'parity.{group}.{k}' = {v} is outside [0, 1]")
    return errors


def _builtin_dir() -> Path:
    return Path(str(resources.files("ffsplit.runtimes") / "targets"))


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
    errors = _validate(data)
    if not errors and "fidelity" not in data.get("parity", {}) and _lossy_at_runtime(data):
        errors.append(
            "the runtime computes in lower precision than split torch (int8 compute, fp16 / bf16 or int8 other "
            "multiplies), so it needs its own tolerances: add [parity.fidelity] (e.g. max_abs = 1.0, cosine_min = "
            "0.99), or extends = a shipped target that has them"
        )
    if errors:
        # values and keys come from the file: keep the message on one line
        raise UsageError(f"target file '{path}' is invalid: " + "; ".join(errors).replace("\r", "\\r").replace("\n", "\\n"))
    return Target(
        name=name,
        runtime=data["runtime"],
        providers=tuple(data.get("providers", ())),
        provider_options=data.get("provider_options", {}),
        heavy_precision=data["heavy_precision"],
        light_precision=data["light_precision"],
        graph_optimization=data.get("graph_optimization", "all"),
        int8_compute=data.get("int8_compute", "weight-only"),
        int4_compute=data.get("int4_compute", "matmulnbits"),
        other_matmuls=data.get("other_matmuls", "fp32"),
        matmulnbits_accuracy_level=data.get("matmulnbits_accuracy_level", 0),
        int8_weight_range=weight_range(data.get("int8_weight_range", "full")),
        fusions=data.get("fusions", "none"),
        split=data.get("split", "both"),
        opset=data.get("opset"),
        session_config=data.get("session_config", {}),
        openvino=data.get("openvino", {}),
        nncf={**NNCF_DEFAULTS, **data.get("nncf", {})}
        if data.get("int4_compute") == "nncf" else {},
        tensorrt=data.get("tensorrt", {}),
        description=data.get("description", ""),
        shapes=data.get("shapes", {}),
        parity=data.get("parity", {}),
        source=str(path),
    )


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
