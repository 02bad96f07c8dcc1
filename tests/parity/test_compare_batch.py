"""One batch's three comparisons hold at most two models' outputs at once, and compute what holding all
three would."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from ffsplit.limits import COMPARISONS
from ffsplit.parity.check import _compare_batch
from ffsplit.parity.metrics import CausalLMMetrics


def test_at_most_two_outputs_are_alive_and_the_metrics_are_those_of_all_three() -> None:
    rng = np.random.default_rng(0)
    logits = {name: rng.standard_normal((2, 9, 50)).astype(np.float32) for name in ("original", "split", "runtime")}
    batch = {"input_ids": rng.integers(0, 50, (2, 9)), "attention_mask": np.ones((2, 9), dtype=np.int64)}
    batch["attention_mask"][1, :3] = 0
    alive: list[weakref.ref[np.ndarray]] = []
    most = [0]

    class Watched(CausalLMMetrics):
        def update(self, ref: np.ndarray, other: np.ndarray, batch: dict[str, np.ndarray]) -> None:
            gc.collect()
            most[0] = max(most[0], sum(r() is not None for r in alive))
            super().update(ref, other, batch)

    def supplier(name: str):  # noqa: ANN202
        def read() -> np.ndarray:
            value = logits[name].copy()  # as a recorded output is read from disk, a new array each time
            alive.append(weakref.ref(value))
            return value
        return read

    accs = {name: Watched() for name in COMPARISONS}
    pairs = {name: COMPARISONS[name][:2] for name in ("shipped", "fidelity", "compression")}
    _compare_batch(accs, pairs, {name: supplier(name) for name in logits}, batch)
    assert most[0] == 2
    for name, (ref, other, _) in COMPARISONS.items():
        want = CausalLMMetrics()
        want.update(logits[ref], logits[other], batch)
        assert accs[name].result() == want.result(), name
