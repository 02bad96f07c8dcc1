"""Llama-layout decoders (Llama, Mistral, Qwen2, Qwen3, Gemma): what is particular to them (their exact exports are
in test_exact_exports.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import save_family_model

from ffsplit import api
from ffsplit.loading import load_model
from ffsplit.split.adapters import find_adapter
from ffsplit.split.calibration import calibration_texts
from ffsplit.split.profile import profile_model


def test_gated_lowrank_with_kv_cache(family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    """Lossy light branch on a gated decoder: 6 light matmuls per layer survive ORT, and generation matches."""
    out = tmp_path / "out"
    res = api.export(str(save_family_model("llama", family_root)), out, light="lowrank:8", heavy_ratio=0.25,
                     calib_size=16, eval_size=24, max_length=32, progress=False,
                     limits={"top1_agreement": 0.0, "top5_agreement": 0.0, "perplexity_ratio": 100.0})
    m = res.manifest.to_json()
    assert m["task"] == "causal-lm-with-past"  # --task auto on a *ForCausalLM checkpoint
    assert m["separation"]["matmuls"]["0"] == {"heavy": 3, "light": 6}
    assert m["parity"]["comparisons"]["fidelity"]["metrics"]["generation_agreement"] == 1.0
    assert m["parity"]["comparisons"]["compression"]["metrics"]["max_abs"] > 1e-4  # lossy, measured


def test_gated_scores_use_gate_times_up(family_root: Path) -> None:
    """Score_j = mean |act(gate_j) * up_j| * ||W_down[:, j]||, over real tokens."""
    loaded = load_model(str(save_family_model("llama", family_root)))
    adapter = find_adapter(loaded.model)
    texts = calibration_texts(limit=1)
    (prof, *_) = profile_model(loaded.model, adapter, loaded.tokenizer, texts, progress=False, moments=False)
    layer = adapter.layer_modules(loaded.model)[0]
    captured = {}
    handle = layer.mlp.register_forward_hook(lambda _m, i, _o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        loaded.model(**loaded.tokenizer(texts, return_tensors="pt"))
    handle.remove()
    x = captured["x"][0]
    mlp = layer.mlp
    a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    want = a.abs().mean(0).double() * mlp.down_proj.weight.double().norm(dim=0)
    torch.testing.assert_close(prof.scores, want, rtol=1e-4, atol=1e-9)
