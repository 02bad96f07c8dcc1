"""FFN adapters: every registered family is tested on a tiny random model, for every task it supports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILY_MODELS, save_family_model

from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.parity.check import torch_output
from ffsplit.split.adapters import REGISTRY, FFNAdapter, find_adapter, register
from ffsplit.split.apply import split_model
from ffsplit.split.calibration import calibration_texts, encode_batches
from ffsplit.split.compress import parse_light
from ffsplit.split.profile import profile_model

FAMILY_TASKS = [(family, task) for family in sorted(FAMILY_MODELS) for task in REGISTRY[family].tasks]


def test_every_adapter_is_tested() -> None:
    """Fails when an adapter is registered without a tiny model in FAMILY_MODELS (which drives the tests below)."""
    untested = sorted(set(REGISTRY) - set(FAMILY_MODELS))
    assert not untested, f"registered adapters without a test model: {untested}"
    assert {f for f, _ in FAMILY_TASKS} == set(REGISTRY)


@pytest.mark.parametrize("family", sorted(FAMILY_MODELS))
def test_family_is_recognised(family: str, family_root: Path) -> None:
    loaded = load_model(str(save_family_model(family, family_root)))
    adapter = find_adapter(loaded.model)
    assert adapter.family == family
    w = adapter.weights(adapter.layer_modules(loaded.model)[0])
    d_ff, d_model = w.w_in.shape
    assert w.w_out.shape == (d_model, d_ff) and d_model == 32
    assert (w.w_gate is not None) == adapter.gated()


@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_none_export_equals_torch(family: str, task: str, family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The exact split, exported and run in ONNX Runtime, equals the original torch model to fp32 rounding."""
    out = tmp_path / "out"
    res = api.export(str(save_family_model(family, family_root)), out, light="none", task=task,
                     calib_size=16, eval_size=24, max_length=32, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == task and m["adapter"] == family and res.report.passed
    for name in ("compression", "fidelity", "shipped"):
        assert m["parity"]["comparisons"][name]["metrics"]["max_abs"] < 1e-4, name
    per_layer = 3 if REGISTRY[family].gated() else 2
    assert m["separation"]["matmuls"] == {"0": {"heavy": per_layer, "light": per_layer}, "1": {"heavy": per_layer, "light": per_layer}}
    if task == "causal-lm-with-past":
        fidelity = m["parity"]["comparisons"]["fidelity"]
        assert fidelity["metrics"]["generation_agreement"] == 1.0 == fidelity["limits"]["generation_agreement"]
        import onnx

        outputs = [o.name for o in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.output]
        assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]


def test_gated_lowrank_with_kv_cache(family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    """Lossy light branch on a gated decoder: 6 light matmuls per layer survive ORT, and generation matches."""
    out = tmp_path / "out"
    res = api.export(str(save_family_model("llama", family_root)), out, light="lowrank:8", heavy_ratio=0.25,
                     calib_size=16, eval_size=24, max_length=32, progress=False,
                     limits={"top1_agreement": 0.0, "top5_agreement": 0.0, "perplexity_ratio": 100.0})
    m = res.manifest
    assert m["task"] == "causal-lm-with-past"  # --task auto on a *ForCausalLM checkpoint
    assert m["separation"]["matmuls"]["0"] == {"heavy": 3, "light": 6}
    assert m["parity"]["comparisons"]["fidelity"]["metrics"]["generation_agreement"] == 1.0
    assert m["parity"]["comparisons"]["compression"]["metrics"]["max_abs"] > 1e-4  # lossy, measured


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lowrank_changes_the_output_but_keeps_shapes(family: str, family_root: Path) -> None:
    loaded = load_model(str(save_family_model(family, family_root)), task="causal-lm")
    adapter = find_adapter(loaded.model)
    texts = calibration_texts(limit=8)
    profiles = profile_model(loaded.model, adapter, loaded.tokenizer, texts, max_length=32, progress=False,
                             position_ids=True)
    split = copy.deepcopy(loaded.model)
    plans, _, _ = split_model(split, adapter, profiles, heavy_ratio=0.25, recipe=parse_light("lowrank:8"))
    assert all(p.ffn_params_after < p.ffn_params_before for p in plans)
    batch = next(encode_batches(loaded.tokenizer, texts, batch_size=8, max_length=32))
    ref, got = torch_output(loaded.model, batch, loaded.task), torch_output(split, batch, loaded.task)
    assert ref.shape == got.shape and 0 < abs(ref - got).max() < 10 * abs(ref).max()


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


def test_layout_recognised_without_model_type(tiny_bert_dir: Path, tiny_roberta_dir: Path) -> None:
    for folder in (tiny_bert_dir, tiny_roberta_dir):
        loaded = load_model(str(folder))
        loaded.model.config.model_type = "my-bert-descendant"
        assert find_adapter(loaded.model).family == "bert"


def test_unsupported_architecture_names_what_is_supported(tiny_unsupported_dir: Path) -> None:
    loaded = load_model(str(tiny_unsupported_dir))
    with pytest.raises(UsageError, match=r"unsupported architecture: model_type 'bloom'.*supported families: bert"):
        find_adapter(loaded.model)


def test_task_the_family_lacks_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="task causal-lm is not supported for the bert family"):
        api.export(str(tiny_bert_dir), tmp_path / "o", task="causal-lm", calib_size=8, progress=False)
    assert not (tmp_path / "o").exists()


def test_register_rejects_a_duplicate_family() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @register
        class Again(FFNAdapter):  # noqa: F841
            family = "bert"


def test_layout_mismatch_is_not_matched() -> None:
    model = torch.nn.Module()
    model.encoder = torch.nn.Module()  # no layers inside
    assert not REGISTRY["bert"].matches_layout(model)


@pytest.mark.parametrize(
    ("config_cls", "model_cls", "family"),
    [("MistralConfig", "MistralForCausalLM", "llama"), ("Qwen2Config", "Qwen2ForCausalLM", "llama"),
     ("RobertaConfig", "RobertaModel", "bert")],
)
def test_model_types_named_in_the_registry_split_exactly(config_cls: str, model_cls: str, family: str) -> None:
    """The extra model types an adapter claims: recognised, and the exact split equals the original."""
    import transformers

    cfg = getattr(transformers, config_cls)(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    adapter = find_adapter(model)
    assert adapter.family == family and cfg.model_type in adapter.model_types
    ids = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        ref = model(input_ids=ids).__getitem__(0)
    from ffsplit.split.profile import LayerProfile

    profiles = [
        LayerProfile(scores=torch.rand(64, dtype=torch.float64), mean_abs_act=torch.ones(64), input_moment=None,
                     act_moment=None, tokens=1)
        for _ in range(2)
    ]
    split_model(model, adapter, profiles, heavy_ratio=0.25, recipe=parse_light("none"))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).__getitem__(0), ref, atol=1e-5, rtol=1e-5)
