"""runtime_accuracy: several runtimes measured against the original torch model on the same padded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ffsplit.loading import load_model
from ffsplit.parity.check import runtime_accuracy, torch_output
from ffsplit.split.calibration import evaluation_texts


class _TorchRunner:
    """A runtime stand-in that runs the torch model itself, optionally adding a fixed perturbation."""

    def __init__(self, model: object, task: object, noise: float) -> None:
        self.model, self.task, self.noise, self.calls = model, task, noise, 0
        self.rng = np.random.default_rng(0)

    def input_signature(self) -> dict[str, object]:
        return {"input_ids": None, "attention_mask": None, "token_type_ids": None}

    def feed_from(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v for k, v in batch.items() if k in self.input_signature()}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        self.calls += 1
        out = torch_output(self.model, {k: torch.from_numpy(v) for k, v in feed.items()}, self.task)  # type: ignore[arg-type]
        return {self.task.output: out + self.noise * self.rng.standard_normal(out.shape).astype(np.float32)}  # type: ignore[attr-defined]


def test_each_runner_is_measured_against_the_original(tiny_bert_dir: Path) -> None:
    lm = load_model(str(tiny_bert_dir))
    texts = [t.text for t in evaluation_texts(24)]
    exact, noisy = _TorchRunner(lm.model, lm.task, 0.0), _TorchRunner(lm.model, lm.task, 0.5)
    m = runtime_accuracy(lm.model, {"exact": exact, "noisy": noisy}, lm.tokenizer, texts, lm.task,
                         batch_size=8, max_length=32)
    assert exact.calls == noisy.calls == 3  # every padded batch, each runner once
    assert m["exact"]["max_abs"] == 0.0 and m["exact"]["cosine_min"] > 0.99999 and m["exact"]["retrieval_at10"] == 1.0
    assert m["noisy"]["max_abs"] > 0.5 and m["noisy"]["cosine_mean"] < m["exact"]["cosine_mean"]


def test_recorded_outputs_give_the_metrics_of_the_live_models(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Parity of a large export compares the runtime with outputs recorded on disk (the torch models freed
    before the runtime is built): the same numbers as running the models alongside it."""
    from ffsplit.parity.check import RecordedOutputs, compare_three, parity_batches

    lm = load_model(str(tiny_bert_dir))
    texts = [t.text for t in evaluation_texts(24)]
    runner = _TorchRunner(lm.model, lm.task, 0.1)
    batches = parity_batches(lm.tokenizer, texts, lm.task, batch_size=8, max_length=32, max_positions=64)
    inputs = set(runner.input_signature())
    recorded = RecordedOutputs.record(lm.model, batches, lm.task, inputs, tmp_path / "orig")
    assert recorded.count == len(batches) == len(list((tmp_path / "orig").glob("*.npy")))
    kwargs = {"batch_size": 8, "max_length": 32, "max_positions": 64}
    live = compare_three(lm.model, lm.model, runner, lm.tokenizer, texts, lm.task, **kwargs)
    runner.rng = np.random.default_rng(0)  # the same noise again
    kept = compare_three(recorded, recorded, runner, lm.tokenizer, texts, lm.task, **kwargs)
    assert kept == live
    assert live["fidelity"]["max_abs"] > 0  # the noise was seen: the comparison compared something


def test_the_long_edge_batch_of_a_large_vocabulary_stays_within_its_memory(tiny_bert_dir: Path) -> None:
    """A decoder's long batch is as long as the model allows up to 2,048 positions, and shorter when its logits
    over the vocabulary would make one output larger than EDGE_OUTPUT_BYTES (held three times while compared)."""
    from ffsplit.parity.check import EDGE_OUTPUT_BYTES, edge_batches, edge_length

    assert edge_length(512) == 512 and edge_length(32768) == 2048  # encoders: the model's longest, capped
    assert edge_length(32768, 32000) == 2048  # a Llama-2-sized vocabulary fits at 2,048
    qwen = edge_length(32768, 151936)
    assert 256 <= qwen < 2048 and 2 * qwen * 151936 * 4 <= EDGE_OUTPUT_BYTES
    assert edge_length(32768, 10**9) == 64  # never shorter than 64
    lm = load_model(str(tiny_bert_dir))
    texts = [t.text for t in evaluation_texts(4)]
    long = edge_batches(lm.tokenizer, texts, max_positions=128, logits_width=10**9)[-1]
    assert long["input_ids"].shape == (2, 64)
    assert edge_batches(lm.tokenizer, texts, max_positions=128)[-1]["input_ids"].shape == (2, 128)
