"""A sentence-transformers source's files and pooling: which files an export keeps, and ``Pooling``, its
pooling and normalisation in numpy (read from ``modules.json``, ``1_Pooling/config.json`` and
``sentence_bert_config.json``; every file is checked before use)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    from ffsplit.artifact import parse_json, read_utf8

    if not path.is_file() or path.stat().st_size > _MAX_CONFIG_BYTES:
        raise UsageError(f"{path} is not a small regular file: fix or remove the sentence-transformers files")
    return parse_json(read_utf8(path, "fix or remove the sentence-transformers files"), str(path))


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
