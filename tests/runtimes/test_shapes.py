"""Shape ranges per phase from a target, and the provider's profile strings."""

from __future__ import annotations

import pytest

from ffsplit.errors import UsageError
from ffsplit.runtimes.shapes import input_ranges, phases, trt_shape_string

ENCODER = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
KV = {
    "input_ids": ["batch", "sequence"], "attention_mask": ["batch", "past_sequence + sequence"],
    "position_ids": ["batch", "sequence"],
    "past_key_values.0.key": ["batch", 4, "past_sequence", 16], "past_key_values.0.value": ["batch", 4, "past_sequence", 16],
}
SHAPES = {"batch": [1, 4, 16], "sequence": [1, 64, 256], "past": [1, 100, 1000]}


def test_encoder_ranges() -> None:
    assert phases(ENCODER) == ("encoder",)
    r = input_ranges(ENCODER, SHAPES, "encoder")
    assert r["input_ids"] == ((1, 1), (4, 64), (16, 256))
    assert trt_shape_string(r, 0) == "input_ids:1x1,attention_mask:1x1"
    assert trt_shape_string(r, 2) == "input_ids:16x256,attention_mask:16x256"


def test_kv_graphs_get_prefill_and_decode_apart_without_zero_sizes() -> None:
    assert phases(KV) == ("prefill", "decode")
    pre = input_ranges(KV, SHAPES, "prefill")
    dec = input_ranges(KV, SHAPES, "decode")
    # prefill: the prompt, over one masked past slot
    assert pre["input_ids"] == ((1, 1), (4, 64), (16, 256))
    assert pre["past_key_values.0.key"] == ((1, 4, 1, 16), (4, 4, 1, 16), (16, 4, 1, 16))
    assert pre["attention_mask"] == ((1, 2), (4, 65), (16, 257))
    # decode: one token over the past range
    assert dec["input_ids"] == ((1, 1), (4, 1), (16, 1))
    assert dec["past_key_values.0.value"] == ((1, 4, 1, 16), (4, 4, 100, 16), (16, 4, 1000, 16))
    assert dec["attention_mask"] == ((1, 2), (4, 101), (16, 1001))
    for ranges in (pre, dec):
        assert all(0 not in shape for r in ranges.values() for shape in r)


def test_defaults_and_unknown_dimensions() -> None:
    r = input_ranges(ENCODER, {}, "encoder")
    assert r["input_ids"][2] == (32, 512)
    with pytest.raises(UsageError, match="dimension 'heads \\* 2'"):
        input_ranges({"x": ["heads * 2"]}, SHAPES, "encoder")
    with pytest.raises(UsageError, match="unnamed dynamic dimension"):
        input_ranges({"x": [""]}, SHAPES, "encoder")


def test_ranges_are_clamped_to_the_model_positions() -> None:
    from ffsplit.runtimes.shapes import clamp_shapes

    assert clamp_shapes({}, None, past=False) == {}
    assert clamp_shapes({}, 4096, past=True) == {}  # the defaults (max 512) fit
    assert clamp_shapes({}, 127, past=False) == {"sequence": [1, 127, 127]}
    # KV cache: the prompt keeps one position for the masked past slot, the past one for the new token
    assert clamp_shapes({"past": [1, 16, 64]}, 64, past=True) == {"past": [1, 16, 63], "sequence": [1, 63, 63]}
    ranges = input_ranges(KV, clamp_shapes({}, 64, past=True), "decode")
    assert max(ranges["attention_mask"][2]) <= 64
