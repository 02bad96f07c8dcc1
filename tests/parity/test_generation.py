"""The greedy KV-cache loop's stop tokens and timings, on a scripted runner (no model)."""

from __future__ import annotations

import numpy as np

from ffsplit.parity.generation import GenerationTimes, greedy_runtime


class Scripted:
    """A runner whose next token per row follows a script, one column per step; no KV cache."""

    def __init__(self, script: list[list[int]], vocab: int = 16) -> None:
        self.script, self.vocab, self.steps = np.array(script), vocab, 0

    def feed_from(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(batch)

    def infer(self, feed: dict[str, np.ndarray], check: bool = True) -> dict[str, np.ndarray]:
        logits = np.zeros((len(self.script), feed["input_ids"].shape[1], self.vocab), np.float32)
        logits[np.arange(len(self.script)), -1, self.script[:, self.steps]] = 1.0
        self.steps += 1
        return {"logits": logits}


def test_the_loop_ends_when_every_row_has_stopped() -> None:
    runner = Scripted([[5, 7, 2, 9, 9], [3, 2, 4, 4, 4]])
    ids, mask = np.ones((2, 3), np.int64), np.ones((2, 3), np.int64)
    times = GenerationTimes()
    out = greedy_runtime(runner, ids, mask, 5, stop=(2, 11), times=times)
    np.testing.assert_array_equal(out, [[5, 7, 2], [3, 2, 2]])  # a stopped row repeats its stop token
    assert runner.steps == 3 and (times.rows, times.prompt_tokens, times.new_tokens) == (2, 3, 3)
    assert times.first_token_s > 0 and times.decode_s > 0 and times.tokens_per_s > 0


def test_without_a_stop_every_step_runs() -> None:
    runner = Scripted([[5, 2, 2, 9], [3, 2, 4, 4]])
    out = greedy_runtime(runner, np.ones((2, 1), np.int64), np.ones((2, 1), np.int64), 4)
    np.testing.assert_array_equal(out, [[5, 2, 2, 9], [3, 2, 4, 4]])
    assert runner.steps == 4
