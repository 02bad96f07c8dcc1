"""The schema of a target file: the values each key may take, and every problem of a target's table, listed at
once (``target_problems``); ``runtimes.targets`` reads the files and builds the Target."""

from __future__ import annotations

import math
import re
from typing import Any

from ffsplit.limits import METRICS, PARITY_KEYS
from ffsplit.precisions import HEAVY_PRECISIONS, INT4_COMPUTE, INT8_COMPUTE, PRECISIONS
from ffsplit.runtimes.specs import RUNTIMES

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
    "heavy_ratio": ((int, float), False),
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
    # the light branch's own group size (-1: one scale per output channel); absent: group_size
    "light_group_size": int,
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


def target_problems(data: dict[str, Any]) -> list[str]:
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
        light = data["nncf"].get("light_group_size")
        if _is(light, int) and light not in (-1, *NNCF_GROUP_SIZES):
            errors.append(f"nncf.light_group_size {light} is not -1 (per channel) or one of "
                          f"{', '.join(map(str, NNCF_GROUP_SIZES))}")
    heavy_ratio = data.get("heavy_ratio")
    if _is(heavy_ratio, (int, float)) and not 0.0 < heavy_ratio < 1.0:
        errors.append(f"heavy_ratio {heavy_ratio} is outside (0, 1)")
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
                elif (problem := METRICS[k].limit_problem(v)) is not None:
                    errors.append(f"'parity.{group}.{k}' = {problem}")
    return errors
