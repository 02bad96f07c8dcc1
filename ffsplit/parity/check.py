"""The three-way parity check: original torch, split torch and the runtime, on the evaluation text.

* compression: original torch vs split torch (what the recipe costs);
* fidelity: split torch vs runtime (the export and the runtime, always tight);
* shipped: original torch vs runtime (what the user ships).

The three models run batch by batch on the same padded inputs; comparing is a
separate step (the task's accumulator). The report is plain JSON with every
value, its limit and whether it passed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ffsplit.limits import COMPARISONS, DEFAULT_LIMITS, METRICS, TASK_METRICS, limits_for
from ffsplit.manifest import Comparison, ParityReport
from ffsplit.parity.metrics import Outputs, metrics_for
from ffsplit.split.calibration import encode_batches, model_inputs, positions_from_mask
from ffsplit.tasks import TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ffsplit.parity.metrics import Scores
    from ffsplit.runtimes.base import Runner

__all__ = [
    "COMPARISONS", "DEFAULT_LIMITS", "METRICS", "TASK_METRICS", "ParityReport", "RecordedOutputs", "RunnerOutputs",
    "TorchOutputs", "compare", "compare_three",
    "evaluate", "generation_prompts", "parity_batches",
    "format_table", "limits_for", "run_torch", "torch_output",
]


def torch_output(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], task: TaskSpec, only: set[str] | None = None
) -> np.ndarray:
    """The task output of a torch model; ``only`` restricts it to the inputs the exported graph takes."""
    extra = {"use_cache": False} if task.decoder else {}
    feed = model_inputs(model, batch, position_ids=task.position_ids)
    if only is not None:
        feed = {k: v for k, v in feed.items() if k in only}
    with torch.no_grad():
        out = model(**feed, **extra)
    return getattr(out, task.output).float().numpy()


def run_torch(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], task: TaskSpec, *, batch_size: int, max_length: int) -> Outputs:
    """Keep every output (for scripts and tests on small data)."""
    outs, batches = [], []
    for batch in encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length):
        outs.append(torch_output(model, batch, task))
        batches.append({k: v.numpy() for k, v in batch.items()})
    return Outputs(outs, batches)


# The most one fp32 output of the long edge batch may hold (2 rows): its logits are held three times over while
# the check compares them, and at 2,048 positions a 150,000-token vocabulary (Qwen) would need 2.5 GB each.
EDGE_OUTPUT_BYTES = 1 << 29


def edge_length(max_positions: int, logits_width: int | None = None) -> int:
    """The long edge batch's length: the model's longest, at most 2,048 (huge context windows stay affordable on
    a CPU) and, for a language model's logits ``logits_width`` wide, what keeps one output within
    ``EDGE_OUTPUT_BYTES`` (at least 64)."""
    longest = min(max_positions, 2048)
    if logits_width:
        longest = min(longest, max(64, EDGE_OUTPUT_BYTES // (2 * 4 * logits_width)))
    return longest


def edge_batches(tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_positions: int | None,
                 logits_width: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Inputs at the ends of the range: sequence length 1, and the longest length the model allows
    (``edge_length``: bounded, and bounded by the logits' width for a language model)."""
    first = [tokenizer(t)["input_ids"] for t in texts[:2]]
    ones = torch.ones(2, 1, dtype=torch.long)
    short = {
        "input_ids": torch.tensor([[ids[0]] for ids in first]), "attention_mask": ones,
        "token_type_ids": torch.zeros_like(ones), "position_ids": torch.zeros_like(ones),
    }
    batches = [short]
    if max_positions:
        longest = edge_length(max_positions, logits_width)
        long_text = " ".join(texts * (1 + 8 * longest // max(1, sum(len(t) for t in texts))))
        enc = dict(tokenizer(
            [long_text, long_text[: len(long_text) // 3]], padding=True, truncation=True, max_length=longest,
            return_tensors="pt",
        ))
        enc["position_ids"] = positions_from_mask(enc["attention_mask"])
        batches.append(enc)
    return batches


def parity_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], task: TaskSpec, *, batch_size: int, max_length: int,
    max_positions: int | None,
) -> list[dict[str, torch.Tensor]]:
    """What parity runs every model on: the texts in padded batches, then a sequence-1 batch and one at the
    model's longest length (for a decoder, as long as its logits over the tokenizer's vocabulary allow)."""
    batches = list(encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length))
    width = len(tokenizer) if task.decoder else None
    return batches + edge_batches(tokenizer, texts, max_positions=max_positions, logits_width=width)


def generation_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The prompts a KV-cache check generates from: (input_ids, attention_mask)."""
    prompts = next(encode_batches(tokenizer, texts[:4], batch_size=4, max_length=16))
    return prompts["input_ids"].numpy(), prompts["attention_mask"].numpy()


class RecordedOutputs:
    """One torch model's outputs on the parity batches, kept on disk, so the model can be freed before the
    next one is loaded or built: a large model's export never holds two of them (and a runtime) at once.

    Each batch's task output is one ``.npy`` file, read back one batch at a time; ``generated`` holds the greedy
    tokens of a KV-cache task. Record and compare on the same ``parity_batches`` list.
    """

    def __init__(self, folder: Path, count: int, generated: np.ndarray | None) -> None:
        self.folder, self.count, self.generated = folder, count, generated

    @classmethod
    def record(
        cls, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], task: TaskSpec, graph_inputs: set[str],
        folder: Path, *, prompts: tuple[np.ndarray, np.ndarray] | None = None, generate_tokens: int = 32,
        progress: bool = False, desc: str = "recording outputs",
    ) -> RecordedOutputs:
        folder.mkdir(parents=True, exist_ok=True)
        source = TorchOutputs(model, task, graph_inputs)
        for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)):
            np.save(folder / f"{i}.npy", source.output(i, batch), allow_pickle=False)
        generated = source.tokens(*prompts, generate_tokens) if task.past and prompts is not None else None
        return cls(folder, len(batches), generated)

    def output(self, i: int, batch: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """Batch ``i``'s task output as recorded (``batch`` is the one it was recorded on)."""
        # read whole, one batch at a time: pages of a mapping would stay in this process's resident set
        return np.load(self.folder / f"{i}.npy", allow_pickle=False)

    def tokens(self, ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> np.ndarray:
        """The greedy tokens recorded on the generation prompts."""
        assert self.generated is not None, "recorded without the generation prompts"
        return self.generated


class TorchOutputs:
    """A torch model read the way a comparison reads ``RecordedOutputs``: each batch's task output, computed
    on exactly the inputs the graph takes, and greedy tokens. Every comparator runs the torch side through
    one of the two."""

    def __init__(self, model: torch.nn.Module, task: TaskSpec, graph_inputs: set[str]) -> None:
        self.model, self.task, self.graph_inputs = model, task, graph_inputs

    def output(self, i: int, batch: dict[str, torch.Tensor]) -> np.ndarray:
        return torch_output(self.model, batch, self.task, self.graph_inputs)

    def tokens(self, ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> np.ndarray:
        from ffsplit.parity.generation import greedy_torch

        return greedy_torch(self.model, ids, mask, new_tokens)


class RunnerOutputs:
    """A runtime read the way a comparison reads a torch model: each batch's task output (the runner's feed
    built from the batch) and greedy tokens through its own prefill + decode loop. ``on_outputs`` sees every
    output of the graph, for checks of its other outputs."""

    def __init__(self, runner: Runner, task: TaskSpec,
                 on_outputs: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None) -> None:
        self.runner, self.task, self.on_outputs = runner, task, on_outputs

    def output(self, i: int, batch: dict[str, torch.Tensor]) -> np.ndarray:
        np_batch = {k: v.numpy() for k, v in batch.items()}
        out = self.runner.infer(self.runner.feed_from(np_batch))
        if self.on_outputs is not None:
            self.on_outputs(np_batch, out)
        return out.pop(self.task.output)

    def tokens(self, ids: np.ndarray, mask: np.ndarray, new_tokens: int) -> np.ndarray:
        from ffsplit.parity.generation import greedy_runtime

        return greedy_runtime(self.runner, ids, mask, new_tokens)


# what a comparison reads outputs from (not the manifest's Source, the model an artifact came from)
OutputSource = RecordedOutputs | TorchOutputs | RunnerOutputs


def torch_side(model: torch.nn.Module | RecordedOutputs | TorchOutputs, task: TaskSpec,
               graph_inputs: set[str]) -> RecordedOutputs | TorchOutputs:
    """``model`` as a comparison reads it: recorded outputs as they are, a torch model through TorchOutputs."""
    return model if isinstance(model, RecordedOutputs | TorchOutputs) else TorchOutputs(model, task, graph_inputs)


def compare(
    sources: Mapping[str, OutputSource], pairs: Mapping[str, tuple[str, str]], batches: Iterable[dict[str, torch.Tensor]],
    task: TaskSpec, *, progress: bool = False, desc: str = "comparing",
) -> dict[str, dict[str, float]]:
    """The one comparator: every source on each batch, each pair (reference, compared) scored by the task's
    metrics; the results per pair. Pairs are scored in the order given, holding at most two outputs at once."""
    accs = {name: metrics_for(task.name) for name in pairs}
    for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)):
        outputs = {name: _reader(source, i, batch) for name, source in sources.items()}
        _compare_batch(accs, pairs, outputs, {k: v.numpy() for k, v in batch.items()})
        del outputs
    return {name: acc.result() for name, acc in accs.items()}


def _reader(source: OutputSource, i: int, batch: dict[str, torch.Tensor]) -> Callable[[], np.ndarray]:
    """How a comparison takes batch ``i``'s output of ``source``: a recording is read from disk as often as
    needed; a torch model runs once and keeps its output for the batch; a runtime runs now and hands its
    output over once (so it is freed as soon as its last comparison is done)."""
    if isinstance(source, RecordedOutputs):
        return partial(source.output, i)
    if isinstance(source, TorchOutputs):
        value = source.output(i, batch)
        return lambda: value
    held = [source.output(i, batch)]
    return held.pop


def compare_three(
    original: torch.nn.Module | RecordedOutputs, split: torch.nn.Module | RecordedOutputs, runner: Runner,
    tokenizer: PreTrainedTokenizerBase, texts: list[str], task: TaskSpec,
    *, batch_size: int, max_length: int, max_positions: int | None = None, generate_tokens: int = 32,
    progress: bool = False, on_runtime: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Run the three models batch by batch and return each comparison's metrics.

    Besides the evaluation text in padded batches, every task also sees a batch
    of sequence length 1 and one at the model's longest length; a KV-cache task
    additionally generates ``generate_tokens`` greedy tokens per prompt with each
    model (the runtime through its own prefill + decode loop). ``original`` and
    ``split`` are torch models, or their ``RecordedOutputs`` on these batches.
    """
    batches = parity_batches(tokenizer, texts, task, batch_size=batch_size, max_length=max_length,
                             max_positions=max_positions)
    # torch gets exactly what the graph gets (a KV-cache graph takes no token_type_ids, say).
    graph_inputs = set(runner.input_signature())
    sides: dict[str, OutputSource] = {
        "original": torch_side(original, task, graph_inputs), "split": torch_side(split, task, graph_inputs),
        "runtime": RunnerOutputs(runner, task, on_runtime),
    }
    for side in sides.values():
        if isinstance(side, RecordedOutputs) and side.count != len(batches):
            raise AssertionError(f"recorded {side.count} batches, parity runs {len(batches)}")
    # the runtime's output first (it is handed over once), then the pair of torch models
    pairs = {name: COMPARISONS[name][:2] for name in ("shipped", "fidelity", "compression")}
    assert sorted(pairs) == sorted(COMPARISONS)
    results = compare(sides, pairs, batches, task, progress=progress, desc="checking parity")
    if task.past:
        from ffsplit.parity.generation import agreement

        ids, mask = generation_prompts(tokenizer, texts)
        generated = {name: side.tokens(ids, mask, generate_tokens) for name, side in sides.items()}
        for name, (ref, other, _) in COMPARISONS.items():
            results[name]["generation_agreement"] = agreement(generated[ref], generated[other])
    return results


def _compare_batch(accs: dict[str, Scores], pairs: Mapping[str, tuple[str, str]],
                   outputs: dict[str, Callable[[], np.ndarray]], batch: dict[str, np.ndarray]) -> None:
    """Every pair on one batch, in order, holding at most two sources' outputs at once: at the longest batch a
    decoder's logits are 0.5 GB each (2 x 2,048 positions x 32,000), and a recorded output is read again
    rather than kept."""
    held: dict[str, np.ndarray] = {}
    for name, (ref, other) in pairs.items():
        for needed in (ref, other):
            if needed not in held:
                for gone in [k for k in held if k not in (ref, other)]:
                    del held[gone]
                held[needed] = outputs[needed]()
        accs[name].update(held[ref], held[other], batch)


REFERENCE = "original torch"  # runtime_accuracy's reference, under a name no runner has


def runtime_accuracy(
    original: torch.nn.Module, runners: Mapping[str, Runner], tokenizer: PreTrainedTokenizerBase, texts: list[str], task: TaskSpec,
    *, batch_size: int, max_length: int,
) -> dict[str, dict[str, float]]:
    """Each runner's task metrics against the original torch model on ``texts`` in padded batches: what
    each one costs, measured on the same inputs (``bench``: a lossy baseline next to ffsplit)."""
    reference = TorchOutputs(original, task, set(next(iter(runners.values())).input_signature()))
    sources: dict[str, OutputSource] = {REFERENCE: reference, **{n: RunnerOutputs(r, task) for n, r in runners.items()}}
    batches = encode_batches(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    return compare(sources, {name: (REFERENCE, name) for name in runners}, batches, task)


def evaluate(
    metrics: Mapping[str, Mapping[str, float]], limits: Mapping[str, Mapping[str, float]], *,
    task: TaskSpec, texts: int,
) -> ParityReport:
    report = ParityReport(task=task.name, texts=texts)
    for name, (_, _, what) in COMPARISONS.items():
        m = dict(metrics[name])
        lim = dict(limits[name])
        ok = all(METRICS[k].holds(m[k], v) for k, v in lim.items())
        report.comparisons[name] = Comparison(what=what, output=task.output, metrics=m, limits=lim, passed=bool(ok))
    return report


def format_table(report: ParityReport) -> str:
    """Each comparison's metrics, and under them the limit each was held to (``>=`` a floor, ``<=`` a ceiling)."""
    metrics = list(TASK_METRICS[report.task])
    width = max(14, *(len(m) + 1 for m in metrics))
    head = f"{'comparison':<13} {'what':<30} " + " ".join(f"{m:>{width}}" for m in metrics) + "  result"
    lines = [head, "-" * len(head)]

    def number(m: str, v: float) -> str:
        return f"{v:.2e}" if m in ("max_abs", "mean_abs") else f"{v:.4f}"

    for name, comp in report.comparisons.items():
        cells = [f"{number(m, comp.metrics[m]):>{width}}" for m in metrics]
        lines.append(f"{name:<13} {comp.what:<30} " + " ".join(cells) + ("  pass" if comp.passed else "  FAIL"))
        limits = [
            f"{METRICS[m].sign + ' ' + number(m, comp.limits[m]):>{width}}" if m in comp.limits
            else " " * width for m in metrics
        ]
        lines.append((f"{'':<13} {'  limits':<30} " + " ".join(limits)).rstrip())
    lines.append(f"({report.texts} evaluation texts in padded batches, plus sequence-1 and longest-length batches)")
    return "\n".join(lines)
