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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ffsplit.errors import UsageError

# Files of a sentence-transformers model folder that an export keeps (pooling and normalisation).
SENTENCE_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# sentence-transformers' pooling modes ffsplit computes, by their names in its config files: the
# current ``pooling_mode`` values, and the older ``pooling_mode_<x>: true`` keys (in that order).
_POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Pooling:
    """How token states become one sentence embedding (sentence-transformers' Pooling + Normalize)."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        m = mask.astype(hidden.dtype)[..., None]
        parts = []
        for mode in self.modes:  # concatenated in sentence-transformers' order
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(np.where(m > 0, hidden, -1e9).max(1))
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                total, count = (hidden * m).sum(1), np.clip(m.sum(1), 1e-9, None)
                parts.append(total / (count if mode == "mean" else np.sqrt(count)))
            elif mode == "lasttoken":  # right padding: the last real token of each row
                last = np.maximum(mask.sum(1) - 1, 0)
                parts.append(hidden[np.arange(len(hidden)), last])
        out = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        if self.normalize:
            out = out / np.clip(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12, None)
        return out.astype(np.float32)


def _small_json(path: Path) -> Any:
    """A small JSON config. A source folder may hold links (the Hugging Face cache links every file
    to a blob); an artifact never does (its file check refuses links)."""
    from ffsplit.artifact import parse_json

    if not path.is_file() or path.stat().st_size > _MAX_CONFIG_BYTES:
        raise UsageError(f"{path} is not a small regular file: fix or remove the sentence-transformers files")
    return parse_json(path.read_text(encoding="utf-8"), str(path))


def sentence_files(folder: Path) -> list[str]:
    """The sentence-transformers files of ``folder`` worth keeping, relative paths, checked to stay inside it."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return []
    found = [name for name in SENTENCE_FILES if (folder / name).is_file()]
    for name in found:
        if (folder / name).stat().st_size > _MAX_CONFIG_BYTES:
            raise UsageError(f"{folder / name} is larger than any sentence-transformers config: fix or remove it")
    pooling = _pooling_dir(folder)
    if pooling is not None and (folder / pooling / "config.json").is_file():
        found.append(f"{pooling}/config.json")
    return found


def _pooling_dir(folder: Path) -> str | None:
    """The Pooling module's folder named in modules.json (a plain relative name), or None."""
    data = _small_json(folder / "modules.json")
    if not isinstance(data, list):
        raise UsageError(f"{folder / 'modules.json'} is not a list of modules")
    for module in data:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("models.Pooling"):
            path = module.get("path")
            if not isinstance(path, str) or not path or "/" in path or "\\" in path or path.startswith("."):
                raise UsageError(f"{folder / 'modules.json'}: the Pooling path {path!r} is not a plain folder name")
            return path
    return None


def _pooling_modes(cfg: Any, where: Path) -> tuple[str, ...]:
    """The modes of a Pooling config: ``pooling_mode`` (a name or a list) or the older boolean keys."""
    if not isinstance(cfg, dict):
        raise UsageError(f"{where} is not a table")
    given = cfg.get("pooling_mode")
    if isinstance(given, str):
        modes: tuple[str, ...] = (given,)
    elif isinstance(given, list) and all(isinstance(m, str) for m in given):
        modes = tuple(given)
    else:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if cfg.get(key) is True) or ("mean",)
    unknown = [m for m in modes if m not in _POOLING_MODES]
    if unknown or not modes:
        raise UsageError(f"{where}: pooling {', '.join(unknown) or 'none'} is not one ffsplit computes: use "
                         f"{', '.join(_POOLING_MODES)}")
    return modes


def read_pooling(folder: Path, *, default_length: int | None) -> Pooling:
    """The pooling a sentence-transformers folder declares; plain mean pooling for any other folder."""
    if not (folder / "modules.json").is_file():
        return Pooling(max_seq_length=default_length)
    pooling = _pooling_dir(folder)  # also refuses a modules.json that is not a list of modules
    data = _small_json(folder / "modules.json")
    normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith("models.Normalize") for m in data)
    modes: tuple[str, ...] = ("mean",)
    if pooling is not None and (folder / pooling / "config.json").is_file():
        modes = _pooling_modes(_small_json(folder / pooling / "config.json"), folder / pooling / "config.json")
    length = default_length
    if (folder / "sentence_bert_config.json").is_file():
        st = _small_json(folder / "sentence_bert_config.json")
        if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int) and st["max_seq_length"] > 0:
            length = min(st["max_seq_length"], default_length or st["max_seq_length"])
    return Pooling(modes=modes, normalize=normalize, max_seq_length=length)


class Model:
    """An artifact bound to its target's runtime and its tokenizer. Use as a context manager, or ``close()``."""

    def __init__(self, folder: str | Path, *, verify: bool = True) -> None:
        from transformers import AutoTokenizer

        from ffsplit.artifact import MODEL_FILE, open_artifact, require_built
        from ffsplit.plan import require_supported
        from ffsplit.runtimes.base import make_runner
        from ffsplit.signature import onnx_signature
        from ffsplit.tasks import TASKS

        self.artifact = open_artifact(folder, verify=verify)
        require_built(self.artifact, "ffsplit.load")
        require_supported(self.artifact.target)
        self.folder = self.artifact.folder
        self.task = TASKS[self.artifact.manifest.task]
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as exc:
            raise UsageError(f"cannot load the tokenizer saved in {self.folder} ({type(exc).__name__}): re-export") from None
        self.tokenizer.padding_side = self.task.padding_side
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        max_positions = self.artifact.manifest.source.max_positions
        self.pooling = read_pooling(self.folder, default_length=max_positions) if self.task.name == "feature-extraction" \
            else Pooling(max_seq_length=max_positions)
        self.runner = make_runner(self.folder / MODEL_FILE, self.artifact.target).activate()
        self.outputs = set(onnx_signature(self.folder / MODEL_FILE)[1])

    def close(self) -> None:
        if self.runner.active:
            self.runner.deactivate()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _require(self, *tasks: str) -> None:
        if self.task.name not in tasks:
            raise UsageError(f"this artifact was exported for {self.task.name}: use {_VERB[self.task.name]}")

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
        in_graph = normalize_embeddings is None and "sentence_embedding" in self.outputs
        out = []
        for b in self._batches(texts, batch_size, show_progress_bar):
            result = self.runner.infer(self.runner.feed_from(b))
            out.append(result["sentence_embedding"] if in_graph else pooling(result[self.task.output], b["attention_mask"]))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def predict(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Logits per text, (len(texts), labels); ``.argmax(-1)`` is the label id (``config.json``'s id2label)."""
        self._require("text-classification")
        out = [self.runner.infer(self.runner.feed_from(b))["logits"] for b in self._batches(texts, batch_size, False)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 32) -> list[str]:
        """Greedy continuations through the artifact's KV-cache graph (prefill, then one token per step)."""
        from ffsplit.parity.generation import greedy_runtime

        self._require("causal-lm-with-past")
        if not 1 <= max_new_tokens <= 4096:
            raise UsageError(f"max_new_tokens {max_new_tokens}: pass 1 to 4096")
        texts: list[str] = []
        for b in self._batches(prompts, 16, False):
            limit = self.pooling.max_seq_length
            if limit is not None and b["input_ids"].shape[1] + max_new_tokens > limit:
                raise UsageError(f"prompt + max_new_tokens exceeds the {limit} positions this artifact was checked for")
            tokens = greedy_runtime(self.runner, b["input_ids"], b["attention_mask"], max_new_tokens)
            texts += self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return texts


_VERB = {
    "feature-extraction": "encode()", "text-classification": "predict()", "causal-lm-with-past": "generate()",
    "causal-lm": "the runner directly (no KV cache: export with --task causal-lm-with-past to generate)",
}


def load(folder: str | Path, *, verify: bool = True) -> Model:
    """The artifact in ``folder`` ready to run: verified (files, hashes, embedded manifest) unless told not to."""
    return Model(folder, verify=verify)
