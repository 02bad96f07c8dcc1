"""Shared fixtures: offline switches, tiny random models saved as HF folders, exported artifacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under xdist each worker gets its share of the cores: two workers whose torch and BLAS pools each take
# every core oversubscribe them (make test on 2 cores: the two slowest files took 146 s, 117 s at one
# thread per worker). Set before torch or numpy start their pools.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # a thread count the user set wins
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def _fixed_seeds() -> None:
    """Hypothesis draws the same examples on every run (seeds fixed): CI cannot fail on a new random draw.
    Counterexamples found while developing are pinned with @example in their tests."""
    from hypothesis import settings

    settings.register_profile("ffsplit", derandomize=True, database=None)
    settings.load_profile("ffsplit")


_fixed_seeds()

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# Small enough to keep the suite fast, large enough for retrieval@10.
FAST = {"calib_size": 32, "eval_size": 48, "max_length": 32}


def minilm_dir() -> Path:
    from ffsplit.loading import resolve_model

    return resolve_model("minilm")


def _save_tiny(path: Path, model_cls: str, config_cls: str, seed: int = 0) -> Path:
    import torch
    import transformers

    cfg = getattr(transformers, config_cls)(vocab_size=30522, max_position_embeddings=128, **TINY)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    src = minilm_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src / name).exists():
            shutil.copy(src / name, path / name)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models") / "tiny-bert", "BertModel", "BertConfig")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("models") / "tiny-roberta", "RobertaModel", "RobertaConfig", seed=1)


_DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128}
_ENCODER = dict(TINY, max_position_embeddings=128)
# The model types a family lists besides its first are exported once each: one layer is enough to
# show the type's own code paths (embeddings, attention, positions) and halves the export's trace.
_ONE_LAYER = {"num_hidden_layers": 1}
# model_type -> (model class saved, config class, config kwargs): one tiny random model for every
# model type an adapter lists (test_adapters fails when one is missing). Decoders are saved with
# their LM head and some encoders with a classification head, so --task auto has something to pick.
MODEL_TYPES: dict[str, tuple[str, str, dict]] = {
    "bert": ("BertModel", "BertConfig", _ENCODER),
    "roberta": ("RobertaModel", "RobertaConfig", dict(_ENCODER, **_ONE_LAYER)),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaConfig", dict(_ENCODER, **_ONE_LAYER)),
    "electra": ("ElectraModel", "ElectraConfig", dict(_ENCODER, embedding_size=32, **_ONE_LAYER)),
    "camembert": ("CamembertModel", "CamembertConfig", dict(_ENCODER, **_ONE_LAYER)),
    "mpnet": ("MPNetModel", "MPNetConfig", dict(_ENCODER, **_ONE_LAYER)),
    "distilbert": (
        "DistilBertForSequenceClassification", "DistilBertConfig",
        {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 128},
    ),
    "modernbert": (
        "ModernBertForSequenceClassification", "ModernBertConfig",
        # layer 0 global attention, layer 1 local over a 16-token window (shorter than the checks' batches)
        dict(_ENCODER, local_attention=16, global_attn_every_n_layers=2, cls_token_id=101, sep_token_id=102,
             bos_token_id=101, eos_token_id=102),
    ),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128}),
    "opt": (
        "OPTForCausalLM", "OPTConfig",
        {"hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64, "num_attention_heads": 2,
         "max_position_embeddings": 128, "word_embed_proj_dim": 32},
    ),
    "llama": ("LlamaForCausalLM", "LlamaConfig", _DECODER),
    # a 64-token window, shorter than the longest check batch, so the window is exercised
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(_DECODER, sliding_window=64, **_ONE_LAYER)),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(_DECODER, **_ONE_LAYER)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(_DECODER, **_ONE_LAYER)),
    "gemma": ("GemmaForCausalLM", "GemmaConfig", dict(_DECODER, **_ONE_LAYER)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(_DECODER, bos_token_id=101, eos_token_id=102)),
}
_model_dirs: dict[str, Path] = {}


def save_family_model(model_type: str, root: Path, dtype: str | None = None) -> Path:
    """A tiny random model of ``model_type`` saved as a Hugging Face folder (cached per session); stored in
    ``dtype`` (e.g. "bfloat16", as decoders are downloaded) when given, else fp32."""
    key = f"{model_type}-{dtype}" if dtype else model_type
    if key not in _model_dirs:
        import torch
        import transformers

        model_cls, config_cls, kwargs = MODEL_TYPES[model_type]
        cfg = getattr(transformers, config_cls)(vocab_size=30522, pad_token_id=0, **kwargs)
        torch.manual_seed(0)
        path = root / f"tiny-{key}"
        model = getattr(transformers, model_cls)(cfg).eval()
        (model.to(getattr(torch, dtype)) if dtype else model).save_pretrained(path, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(minilm_dir() / name, path / name)
        _model_dirs[key] = path
    return _model_dirs[key]


def export_cases(family: str) -> list[tuple[str, str]]:
    """What tests/split/families/test_<family>.py exports: the family's first model type for every
    task in its row, every other model type it lists once, for its hardest task (the KV cache)."""
    from ffsplit.split.adapters import registry

    first, *others = registry()[family].model_types
    tasks = registry()[family].tasks
    return [(first, task) for task in tasks] + [(other, tasks[-1]) for other in others]


def assert_exact_export(model_type: str, task: str, family_root: Path, tmp_path: Path) -> dict:
    """Export the exact split (--light none) and hold all three comparisons to fp32 rounding on every
    batch the check runs (the evaluation text, sequence length 1 and the longest length the model
    computes), with the branch MatMuls intact in what ONNX Runtime runs."""
    from ffsplit import api

    out = tmp_path / "out"
    api.export(str(save_family_model(model_type, family_root)), out, light="none", task=task,
               calib_size=16, eval_size=16, max_length=32, progress=False)
    return assert_exact_artifact(out, model_type, task)


def assert_exact_artifact(out: Path, model_type: str, task: str) -> dict:
    """What ``assert_exact_export`` holds an exported folder to."""
    import json

    from ffsplit.split.adapters import registry

    m = json.loads((out / "manifest.json").read_text())
    family = next(f for f, a in registry().items() if model_type in a.model_types)
    assert m["task"] == task and m["adapter"] == family and m["parity"]["passed"]
    assert m["source"]["model_type"] == model_type
    for name in ("compression", "fidelity", "shipped"):
        assert m["parity"]["comparisons"][name]["metrics"]["max_abs"] < 1e-4, name
    per_layer = 3 if registry()[family].gated() else 2
    layers = len(m["layers"])
    assert m["separation"]["matmuls"] == {str(i): {"heavy": per_layer, "light": per_layer} for i in range(layers)}
    if task == "causal-lm-with-past":
        fidelity = m["parity"]["comparisons"]["fidelity"]
        assert fidelity["metrics"]["generation_agreement"] == 1.0 == fidelity["limits"]["generation_agreement"]
        import onnx

        outputs = [o.name for o in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.output]
        assert outputs == ["logits", *(f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value"))]
    return m


@pytest.fixture(scope="session")
def family_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="session")
def tiny_unsupported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BLOOM: its FFN (mlp.dense_h_to_4h / dense_4h_to_h) matches no adapter."""
    import torch
    import transformers

    path = tmp_path_factory.mktemp("models") / "tiny-bloom"
    cfg = transformers.BloomConfig(vocab_size=30522, hidden_size=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.BloomModel(cfg).save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_dir() / name, path / name)
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    os.environ["FFSPLIT_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_none_artifact(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    from ffsplit import api

    out = tmp_path_factory.mktemp("artifacts") / "tiny-none"
    api.export(str(tiny_bert_dir), out, light="none", progress=False, **FAST)
    return out


@pytest.fixture(scope="session")
def tiny_lowrank_artifact(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """Exported through the CLI, so the export verb is exercised as a user runs it."""
    out = tmp_path_factory.mktemp("artifacts") / "tiny-lowrank"
    r = run_cli(
        "export", str(tiny_bert_dir), "--out", str(out), "--light", "lowrank:8",
        "--calib-size", "32", "--eval-size", "48", "--max-length", "32",
        "--limit", "cosine_mean=0.5", "--limit", "cosine_min=0.3", "--limit", "retrieval_at10=0.2",
    )
    assert r.returncode == 0, r.stderr
    return out


def forge_manifest(folder: Path, mutate: Callable[[dict], object]) -> dict:
    """Edit an artifact's manifest the way a careful forger would: manifest.json, the copy embedded in
    model.onnx and every file hash all made to agree, so only ffsplit's own checks can catch it."""
    import json

    import onnx

    from ffsplit.artifact import EMBEDDED_KEY, MANIFEST, list_files, sha256_file
    from ffsplit.manifest import POST_EXPORT_KEYS

    manifest = json.loads((folder / MANIFEST).read_text())
    mutate(manifest)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    embedded = {k: v for k, v in manifest.items() if k not in POST_EXPORT_KEYS}
    for prop in model.metadata_props:
        if prop.key == EMBEDDED_KEY:
            prop.value = json.dumps(embedded, sort_keys=True, separators=(",", ":"), allow_nan=True)
    onnx.save(model, str(folder / "model.onnx"))
    # written as a forger would, not through write_manifest (which refuses what a forger may write: NaN)
    files, _ = list_files(folder)
    manifest["files"] = {rel: sha256_file(p) for rel, p in sorted(files.items()) if rel != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=True) + "\n")
    return manifest


def main_in_process(*args: str) -> tuple[int, str]:
    """cli.main in this process: (exit code, stderr)."""
    r = run_cli(*args)
    return r.returncode, r.stderr


def triton_installed() -> bool:
    """Whether the nvidia-pytriton wheel's server is where ``ffsplit serve`` looks (make test puts it there)."""
    from ffsplit.errors import UsageError
    from ffsplit.serve.server import triton_home

    try:
        triton_home()
    except UsageError:
        return False
    return True


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ffsplit ARGS`` run by cli.main in this process (no new interpreter and imports), its exit code,
    stdout and stderr captured as subprocess.run would give them."""
    import contextlib
    import io

    from ffsplit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(["ffsplit", *args], code, out.getvalue(), err.getvalue())


def run_console_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real entry point, ``python -m ffsplit ARGS``, in a new process: for the one smoke test of it."""
    return subprocess.run(
        [sys.executable, "-m", "ffsplit", *args], capture_output=True, text=True, env=dict(os.environ), timeout=timeout
    )


def pytest_configure(config: pytest.Config) -> None:
    if _WORKERS > 1:  # a pool torch started before OMP_NUM_THREADS was read
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        # ONNX Runtime sizes its pool to every core and spins it between runs: the two workers' sessions
        # fought over both cores (a 73-test subset on 2 cores: 235 s, 219 s at one thread per worker)
        import onnxruntime as ort

        class _Shared(ort.SessionOptions):
            def __init__(self) -> None:
                super().__init__()
                self.intra_op_num_threads = int(os.environ["OMP_NUM_THREADS"])

        ort.SessionOptions = _Shared


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests skip on machines without an NVIDIA GPU (run them with ``pytest -m gpu`` where there is one)."""
    from ffsplit.targets import gpu_present

    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    reason = gpu_present()
    if reason is None:
        return
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason=reason))


def layer_plan(**fields: object) -> Any:
    """A manifest row (``LayerPlan``) of one small dense layer, with ``fields`` changed."""
    from ffsplit.manifest import LayerPlan

    row: dict[str, Any] = dict(
        layer=0, module="model.layers.0.mlp", d_model=8, d_ff=16, heavy=4, light=12, light_recipe="none",
        heavy_precision="fp32", light_precision="fp32", ffn_params_before=256, heavy_params=64, light_params=192,
        ffn_params_after=256, heavy_score_share=0.5, ffn_bytes_before=1024, heavy_bytes=256, light_bytes=768,
        ffn_bytes_after=1024,
    )
    row.update(fields)
    return LayerPlan(**row)
