"""The timing harness: interleaving, warm-up exclusion and the summary (no timed assertions)."""

from __future__ import annotations

import numpy as np
import pytest

from ffsplit.bench.harness import make_feed, summarise, time_interleaved
from ffsplit.bounds import require_shape
from ffsplit.errors import UsageError


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def infer(self, feed: dict, *, check: bool = True) -> dict:
        self.log.append(self.name)
        return {}


def test_runs_are_interleaved_in_blocks_after_warmup() -> None:
    log: list[str] = []
    runners = {"a": Recorder("a", log), "b": Recorder("b", log)}
    times = time_interleaved(runners, {}, warmup=2, runs=3, block=2)
    # warm-up, then blocks of two (the first of each not counted), the order flipping every round
    assert log == ["a", "a", "b", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    log.clear()
    time_interleaved(runners, {}, warmup=0, runs=2, block=1)
    assert log == ["a", "b", "b", "a"]


def test_summary_ratios() -> None:
    rows = summarise({"original": [0.2] * 5, "ffsplit": [0.1] * 5}, batch=8, sequence=128, reference="original")
    by = {r.model: r for r in rows}
    assert by["ffsplit"].speedup == pytest.approx(2.0)
    assert by["original"].speedup == pytest.approx(1.0)
    assert by["ffsplit"].throughput == pytest.approx(80.0)


def test_feed_has_exact_shape() -> None:
    from ffsplit.loading import load_model

    tok = load_model("minilm").tokenizer
    feed = make_feed(tok, ["short", "another text"], ["input_ids", "attention_mask"], batch=3, sequence=40)
    assert feed["input_ids"].shape == (3, 40) and feed["input_ids"].dtype == np.int64
    assert feed["attention_mask"].all()  # full-length real tokens, not padding


def test_shape_checks() -> None:
    with pytest.raises(UsageError, match="longer than the model's maximum of 512 positions"):
        require_shape(1, 513, 512)
    with pytest.raises(UsageError, match="--batch 0"):
        require_shape(0, 128, 512)
    with pytest.raises(UsageError, match="--batch 100000: pass a whole number from 1 to 1,024"):
        require_shape(100_000, 128, 512)
    with pytest.raises(UsageError, match="tokens in one run"):
        require_shape(1024, 512, 512)
    require_shape(8, 512, 512)
