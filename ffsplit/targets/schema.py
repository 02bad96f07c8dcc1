"""The schema of a target file: the values each key may take (``FIELD_CHECKS``, the bounds ``Target`` declares
its fields with, in the shared ``ffsplit.schema`` mechanism) and the rules keys obey together
(``rule_problems``); ``targets.target`` reads the files, lists every problem at once and builds the Target."""

from __future__ import annotations

import math
import re
from typing import Any

from ffsplit.artifact.layout import RESERVED_FILES
from ffsplit.limits import METRICS, PARITY_KEYS
from ffsplit.precisions import HEAVY_PRECISIONS, INT4_COMPUTE, INT8_COMPUTE, PRECISIONS, SPLIT_FORMS
from ffsplit.runtimes.specs import RUNTIMES
from ffsplit.schema import (
    NAME,
    Check,
    anything,
    boolean,
    integer,
    items,
    mapping,
    number,
    one_of,
    optional,
    table,
    text,
)

OPT_LEVELS = ("disable", "basic", "extended", "all")


# NNCF compress_weights modes a target may ask for (asymmetric: a zero point per group)
NNCF_INT4_MODES = ("int4_asym", "int4_sym")


INT8_WEIGHT_RANGES = ("auto", "full", "reduced")


# x86 instructions that add u8 x s8 products straight into int32 (no int16 step that full-range weights saturate)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


FUSIONS = ("none", "ort")


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


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and typ in (int, float, (int, float)):  # TOML true is not a number
        return False
    return isinstance(value, typ)


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


_OPENVINO = table({"device": text(100), "config": mapping(anything, max_len=200)},
                  optional_keys=frozenset({"device", "config"}), strict=True)


NNCF_GROUP_SIZES = (32, 64, 128, 256)


# NNCF's int4 weight compression (int4_compute = "nncf"): its mode, group size and data-aware methods; ratio: the
# share of the multiplies (by weight count) NNCF makes int4, the rest int8, chosen by its weight sensitivity
# (below 1.0 whole layers of the light branch may end up int8, which the guard then reports); the light
# branch's own group size (-1: one scale per output channel), absent: group_size
_NNCF_FIELDS = {
    "mode": text(choices=NNCF_INT4_MODES), "group_size": one_of(*NNCF_GROUP_SIZES),
    "ratio": number(0.0, 1.0, open_lo=True), "awq": boolean, "scale_estimation": boolean,
    "light_group_size": one_of(-1, *NNCF_GROUP_SIZES),
}
_NNCF = table(_NNCF_FIELDS, optional_keys=frozenset(_NNCF_FIELDS), strict=True)
NNCF_DEFAULTS = {"mode": "int4_asym", "group_size": 128, "ratio": 1.0, "awq": False, "scale_estimation": False}


_TENSORRT_FIELDS = {
    "fp16": boolean, "int8": boolean, "bf16": boolean, "obey_precision_constraints": boolean,
    "workspace_mb": integer(0, 1 << 24), "builder_optimization_level": integer(0, 5), "timing_cache": boolean,
}
_TENSORRT = table(_TENSORRT_FIELDS, optional_keys=frozenset(_TENSORRT_FIELDS), strict=True)


def _shape_range(v: Any, where: str, errors: list[str]) -> None:
    if not (isinstance(v, list) and len(v) == 3 and all(_is(x, int) and 0 < x <= 1 << 20 for x in v)
            and v[0] <= v[1] <= v[2]):
        errors.append(f"{where} must be [min, opt, max] integers from 1 to 1048576, in order")


_SHAPES = table(dict.fromkeys(SHAPE_AXES, _shape_range), optional_keys=frozenset(SHAPE_AXES), strict=True)


def _limit(v: Any, where: str, errors: list[str]) -> None:
    """A parity limit: a finite number in its metric's range (the metric is the key, last in ``where``)."""
    if not _is(v, (int, float)) or not math.isfinite(v):
        errors.append(f"{where} must be a finite number")
    elif (problem := METRICS[where.rsplit(".", 1)[-1]].limit_problem(v)) is not None:
        errors.append(f"{where} = {problem}")


_PARITY = table(
    {group: table(dict.fromkeys(keys, _limit), optional_keys=frozenset(keys), strict=True)
     for group, keys in PARITY_KEYS.items()},
    optional_keys=frozenset(PARITY_KEYS), strict=True,
)


# The bounds of each target key (``targets.Target`` declares its fields with them).
FIELD_CHECKS: dict[str, Check] = {
    "name": text(100, NAME), "source": text(), "description": text(),
    "runtime": text(choices=RUNTIMES), "providers": items(text(200), max_len=16),
    "provider_options": mapping(mapping(anything, max_len=200), max_len=16),
    "graph_optimization": text(choices=OPT_LEVELS),
    "heavy_precision": text(choices=HEAVY_PRECISIONS), "light_precision": text(choices=PRECISIONS),
    "int8_compute": text(choices=INT8_COMPUTE), "int4_compute": text(choices=INT4_COMPUTE),
    "other_matmuls": text(choices=OTHER_MATMULS), "matmulnbits_accuracy_level": one_of(*INT4_ACCURACY_LEVELS),
    "int8_weight_range": text(choices=INT8_WEIGHT_RANGES), "fusions": text(choices=FUSIONS),
    "split": text(choices=SPLIT_FORMS), "heavy_ratio": optional(number(0.0, 1.0, open_lo=True, open_hi=True)),
    "opset": optional(one_of(*OPSETS)), "session_config": mapping(anything, max_len=200), "openvino": _OPENVINO,
    "nncf": _NNCF, "tensorrt": _TENSORRT, "shapes": _SHAPES, "parity": _PARITY,
}


def rule_problems(data: dict[str, Any]) -> list[str]:
    """What the keys of a target say together that no key says alone (a runtime and what it needs, two
    options that exclude each other, runtime options that would name files)."""
    errors: list[str] = []
    runtime = data.get("runtime")
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
    return errors + _runtime_option_problems(data)


def _runtime_option_problems(data: dict[str, Any]) -> list[str]:
    """Provider options (finite scalars, for a listed provider), session config and OpenVINO properties: none
    may name a file or folder."""
    errors: list[str] = []
    if isinstance(data.get("provider_options"), dict):
        for provider, options in data["provider_options"].items():
            if not isinstance(options, dict):
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
    if isinstance(data.get("openvino"), dict) and isinstance(data["openvino"].get("config"), dict):
        for k, v in data["openvino"]["config"].items():
            if not isinstance(v, str):
                errors.append(f"'openvino.config.{k}' must be a string")
            errors += _option_problems("openvino.config", k, v)
    return errors
