"""Use an output folder from Python: ``ffsplit.load(folder)`` and the task's verb.

The model runs on the artifact's own target through the same runner ``check``
uses (ONNX Runtime, OpenVINO or TensorRT), with the tokenizer saved beside it.
Nothing needs torch or the source model:

* ``encode`` (feature-extraction): sentence-transformers semantics, the
  source's pooling (``1_Pooling/config.json``) and ``Normalize`` when its
  ``modules.json`` lists one, mean pooling otherwise;
* ``predict`` (text-classification): logits per text;
* ``generate`` (causal-lm-with-past): greedy tokens through the KV-cache loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from ffsplit.errors import UsageError
from ffsplit.pooling import Pooling, read_pooling
from ffsplit.signature import SENTENCE_OUTPUT

if TYPE_CHECKING:
    from ffsplit.parity.generation import GenerationTimes


class Model:
    """An artifact bound to its target's runtime and its tokenizer. Use as a context manager, or ``close()``."""

    def __init__(self, folder: str | Path, *, verify: bool = True) -> None:
        from transformers import AutoTokenizer

        from ffsplit.artifact.opened import Artifact
        from ffsplit.loading import set_padding
        from ffsplit.signature import onnx_signature
        from ffsplit.targets import require_supported
        from ffsplit.tasks import TASKS

        self.artifact = Artifact.open(folder, verify=verify).require_built("ffsplit.load")
        require_supported(self.artifact.target)
        self.folder = self.artifact.folder
        self.task = TASKS[self.artifact.manifest.task]
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as exc:
            raise UsageError(f"cannot load the tokenizer saved in {self.folder} ({type(exc).__name__}): re-export") from None
        self.tokenizer = set_padding(tokenizer, self.task.padding_side, str(self.folder))
        max_positions = self.artifact.manifest.source.max_positions
        self.pooling = read_pooling(self.folder, default_length=max_positions) if self.task.pooled \
            else Pooling(max_seq_length=max_positions)
        self.runner = self.artifact.runner().activate()
        self.outputs = set(onnx_signature(self.artifact.model_path)[1])
        self.generation_times: list[GenerationTimes] = []  # per batch of the last generate()

    def close(self) -> None:
        if self.runner.active:
            self.runner.deactivate()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _require(self, *tasks: str) -> None:
        if self.task.name not in tasks:
            raise UsageError(f"this artifact was exported for {self.task.name}: use {self.task.use}")

    def _batches(self, texts: Sequence[str], batch_size: int, progress: bool) -> Iterator[dict[str, np.ndarray]]:
        from tqdm.auto import tqdm

        from ffsplit.split.calibration import positions_from_mask

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise UsageError("pass a list of strings")
        if not 1 <= batch_size <= 4096:
            raise UsageError(f"batch_size {batch_size}: pass 1 to 4096")
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="batches", disable=not progress, leave=False):
            enc = self.tokenizer(
                list(texts[start:start + batch_size]), padding=True, truncation=True,
                max_length=self.pooling.max_seq_length, return_tensors="np",
            )
            batch = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
            batch["position_ids"] = positions_from_mask(batch["attention_mask"]).astype(np.int64)
            yield batch

    def encode(
        self, texts: Sequence[str], *, batch_size: int = 32, show_progress_bar: bool = False,
        normalize_embeddings: bool | None = None,
    ) -> np.ndarray:
        """One embedding per text, (len(texts), dim) float32, as ``SentenceTransformer.encode`` gives it."""
        self._require("feature-extraction")
        pooling = self.pooling if normalize_embeddings is None else \
            Pooling(self.pooling.modes, normalize_embeddings, self.pooling.max_seq_length)
        # the graph's own sentence_embedding when it has one (a sentence-transformers source), else pooled here
        in_graph = normalize_embeddings is None and SENTENCE_OUTPUT in self.outputs
        out = []
        for b in self._batches(texts, batch_size, show_progress_bar):
            result = self.runner.infer(self.runner.feed_from(b))
            out.append(result[SENTENCE_OUTPUT] if in_graph else pooling(result[self.task.output], b["attention_mask"]))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Logits per text, (len(texts), labels); ``.argmax(-1)`` is the label id (``config.json``'s id2label)."""
        self._require("text-classification")
        out = [self.runner.infer(self.runner.feed_from(b))["logits"] for b in self._batches(texts, batch_size, False)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def generate(
        self, prompts: Sequence[str], *, max_new_tokens: int = 32, batch_size: int = 16, stop_at_eos: bool = True,
    ) -> list[str]:
        """Greedy continuations through the artifact's KV-cache graph (prefill, then one token per step), in
        batches of ``batch_size`` prompts. Each continuation ends at the model's end-of-sequence token
        (``config.json``'s ``eos_token_id``, else the tokenizer's) unless ``stop_at_eos`` is False; a batch stops
        once every row has ended. ``generation_times`` then holds what each batch cost (time to the first
        token, decode tokens/s)."""
        from ffsplit.parity.generation import GenerationTimes, greedy_runtime

        self._require("causal-lm-with-past")
        if not 1 <= max_new_tokens <= 4096:
            raise UsageError(f"max_new_tokens {max_new_tokens}: pass 1 to 4096")
        stop = self.eos_token_ids() if stop_at_eos else ()
        texts: list[str] = []
        self.generation_times = []
        for b in self._batches(prompts, batch_size, False):
            limit = self.pooling.max_seq_length
            if limit is not None and b["input_ids"].shape[1] + max_new_tokens > limit:
                raise UsageError(f"prompt + max_new_tokens exceeds the {limit} positions this artifact was checked for")
            times = GenerationTimes()
            tokens = greedy_runtime(self.runner, b["input_ids"], b["attention_mask"], max_new_tokens, stop=stop,
                                    times=times)
            self.generation_times.append(times)
            texts += [self.tokenizer.decode(_until_stop(row, stop), skip_special_tokens=True) for row in tokens]
        return texts

    def eos_token_ids(self) -> tuple[int, ...]:
        """The token ids that end a continuation: ``config.json``'s ``eos_token_id`` (one or a list), else the
        tokenizer's end-of-sequence token; none if neither names one."""
        from ffsplit.artifact import parse_json, read_utf8

        config = self.folder / "config.json"
        data = parse_json(read_utf8(config, "re-export"), str(config)) if config.is_file() else None
        eos = data.get("eos_token_id") if isinstance(data, dict) else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return tuple(int(i) for i in ids if isinstance(i, int) and not isinstance(i, bool) and i >= 0)


def _until_stop(row: np.ndarray, stop: tuple[int, ...]) -> list[int]:
    """A row's tokens before its first stop token."""
    hits = np.flatnonzero(np.isin(row, stop)) if stop else []
    return row[: hits[0]].tolist() if len(hits) else row.tolist()


def load(folder: str | Path, *, verify: bool = True) -> Model:
    """The artifact in ``folder`` ready to run: verified (files, hashes, embedded manifest) unless told not to."""
    from ffsplit.artifact import unreplaced

    with unreplaced(folder):
        return Model(folder, verify=verify)
