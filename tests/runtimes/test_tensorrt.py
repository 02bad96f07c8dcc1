"""TensorRT's pure logic, without a GPU: profiles, pinned layers, flags, engine keys (the inspector's layer list: test_records)."""

from __future__ import annotations

import json
from pathlib import Path

from ffsplit.runtimes.tensorrt import (
    ENGINE_FILE,
    ENGINE_INFO,
    builder_flags,
    engine_is_current,
    engine_key,
    layer_precisions,
    profiles,
)
from ffsplit.targets import load_target
from tests.runtimes.test_shapes import ENCODER, KV


def test_profiles_per_phase() -> None:
    t = load_target("tensorrt-int8")
    assert len(profiles(t, ENCODER)) == 1
    pre, dec = profiles(t, KV)
    assert pre["input_ids"][2] == (32, 512) and dec["input_ids"][2] == (32, 1)
    assert dec["past_key_values.0.key"][2] == (32, 4, 1024, 16)


def test_heavy_layers_are_pinned_and_nothing_else() -> None:
    names = [
        "ffsplit/L0/heavy/node_MatMul_1", "ffsplit/L0/heavy/node_gelu", "ffsplit/L0/light/node_MatMul_2",
        "ffsplit/L0/merge/node_add", "node_attention_MatMul", "ffsplit/L1/heavy/node_linear_5",
    ]
    assert layer_precisions(names, "fp16") == {
        "ffsplit/L0/heavy/node_MatMul_1": "fp16", "ffsplit/L0/heavy/node_gelu": "fp16", "ffsplit/L1/heavy/node_linear_5": "fp16",
    }
    assert layer_precisions(names, "int8") == {}  # an int8 heavy branch is Q/DQ in the graph, not a pin


def test_builder_flags_from_targets() -> None:
    assert builder_flags(load_target("tensorrt-fp16")) == {
        "fp16": True, "int8": False, "bf16": False, "obey_precision_constraints": True, "workspace_mb": 4096,
        "builder_optimization_level": 3, "timing_cache": True,
    }
    assert builder_flags(load_target("tensorrt-int8"))["int8"] is True


def test_engine_key_changes_with_everything_it_depends_on(tmp_path: Path) -> None:
    t = load_target("tensorrt-fp16")
    base = dict(
        onnx_sha256="a" * 64, compute_capability="8.9", trt_version="10.13.0", profiles=profiles(t, ENCODER),
        flags=builder_flags(t), pinned={"ffsplit/L0/heavy/x": "fp16"},
    )
    key = engine_key(**base)
    assert key == engine_key(**dict(base))
    changes = [
        {"onnx_sha256": "b" * 64}, {"compute_capability": "9.0"}, {"trt_version": "10.14.1"},
        {"profiles": profiles(load_target("tensorrt-int8"), KV)}, {"flags": {**builder_flags(t), "int8": True}},
        {"pinned": {}},
    ]
    assert len({engine_key(**{**base, **c}) for c in changes} | {key}) == len(changes) + 1
    # a stale engine is never reused
    (tmp_path / ENGINE_FILE).write_bytes(b"plan")
    assert not engine_is_current(tmp_path, key)
    (tmp_path / ENGINE_INFO).write_text(json.dumps({"key": key}))
    assert engine_is_current(tmp_path, key)
    assert not engine_is_current(tmp_path, engine_key(**{**base, "compute_capability": "7.5"}))
    (tmp_path / ENGINE_INFO).write_text("{not json")
    assert not engine_is_current(tmp_path, key)
