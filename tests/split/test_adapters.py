"""FFN adapters: every registered family is tested on a tiny random model, for every task it supports."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import MODEL_TYPES, save_family_model

from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.parity.check import torch_output
from ffsplit.split.adapters import FFNAdapter, find_adapter, register, registry
from ffsplit.split.apply import split_model
from ffsplit.split.calibration import calibration_texts, encode_batches
from ffsplit.split.compress import parse_light
from ffsplit.split.profile import profile_model


def _family_of(model_type: str) -> str:
    return next(f for f, a in registry().items() if model_type in a.model_types)


def _export_cases() -> list[tuple[str, str]]:
    """Every family's first model type for every task in its row; every other listed model type once,
    for its hardest task (the KV cache for decoders)."""
    cases = []
    for adapter in registry().values():
        first, *others = adapter.model_types
        cases += [(first, task) for task in adapter.tasks]
        cases += [(other, adapter.tasks[-1]) for other in others]
    return sorted(cases)


EXPORT_CASES = _export_cases()


def test_every_family_and_model_type_has_an_export_test() -> None:
    """Fails when an adapter, or a model type one lists, has no tiny model in MODEL_TYPES to export."""
    listed = {t for a in registry().values() for t in a.model_types}
    assert not sorted(listed - set(MODEL_TYPES)), f"model types without a tiny model: {sorted(listed - set(MODEL_TYPES))}"
    assert not sorted(set(MODEL_TYPES) - listed), "MODEL_TYPES holds a model type no adapter lists"
    for family, adapter in registry().items():
        assert {t for m, t in EXPORT_CASES if m == adapter.model_types[0]} == set(adapter.tasks), family
    assert {m for m, _ in EXPORT_CASES} == listed


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_model_type_is_recognised(model_type: str, family_root: Path) -> None:
    loaded = load_model(str(save_family_model(model_type, family_root)))
    adapter = find_adapter(loaded.model)
    assert adapter.family == _family_of(model_type) and loaded.model.config.model_type == model_type
    w = adapter.weights(adapter.layer_modules(loaded.model)[0])
    d_ff, d_model = w.w_in.shape
    assert w.w_out.shape == (d_model, d_ff) and d_model == 32
    assert (w.w_gate is not None) == adapter.gated()


@pytest.mark.parametrize(("model_type", "task"), EXPORT_CASES)
def test_exact_export_equals_torch(model_type: str, task: str, family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    """The exact split (--light none), exported and run in ONNX Runtime, equals the original torch
    model to fp32 rounding in all three comparisons, on every batch the check runs (the evaluation
    text, sequence length 1 and the longest length the model computes)."""
    out = tmp_path / "out"
    source = save_family_model(model_type, family_root)
    res = api.export(str(source), out, light="none", task=task, calib_size=16, eval_size=24, max_length=32,
                     progress=False)
    m = json.loads((out / "manifest.json").read_text())
    family = _family_of(model_type)
    assert m["task"] == task and m["adapter"] == family and res.report.passed
    assert m["source"]["model_type"] == model_type
    for name in ("compression", "fidelity", "shipped"):
        assert m["parity"]["comparisons"][name]["metrics"]["max_abs"] < 1e-4, name
    per_layer = 3 if registry()[family].gated() else 2
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


def test_unsupported_architecture_names_what_was_found(tiny_unsupported_dir: Path) -> None:
    loaded = load_model(str(tiny_unsupported_dir))
    with pytest.raises(UsageError, match=r"unsupported architecture: model_type 'bloom'.*supported families: bert") as err:
        find_adapter(loaded.model)
    assert "2 layers at 'h' (BloomBlock)" in str(err.value) and "mlp.dense_h_to_4h, mlp.dense_4h_to_h" in str(err.value)


def test_unsupported_architecture_is_exit_2_naming_its_layers(tiny_unsupported_dir: Path, tmp_path: Path) -> None:
    from conftest import main_in_process

    code, err = main_in_process("export", str(tiny_unsupported_dir), "--out", str(tmp_path / "o"), "--light", "none")
    errors = [line for line in err.splitlines() if line.startswith("ffsplit: ")]
    assert code == 2 and len(errors) == 1 and "mlp.dense_h_to_4h" in errors[0] and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_listed_model_type_with_another_layout_says_so(family_root: Path) -> None:
    """A checkpoint claiming model_type llama whose MLP is not Llama's (remote code, say) is named as such."""
    loaded = load_model(str(save_family_model("phi3", family_root)))
    loaded.model.config.model_type = "llama"
    assert find_adapter(loaded.model).family == "phi3"  # still matched by layout
    for layer in registry()["phi3"].layer_modules(loaded.model):
        layer.mlp.gate_up_proj = torch.nn.Linear(32, 100, bias=False)  # neither 2 x 64 nor any known layout
    with pytest.raises(UsageError, match="model_type 'llama' is listed under the llama family, but this model's FFN"):
        find_adapter(loaded.model)


@pytest.mark.parametrize("model_type", ["phi3", "modernbert"])
def test_fused_gate_up_takes_the_same_neurons_from_both_halves(model_type: str, family_root: Path) -> None:
    """Heavy neuron j of a fused projection is row j of the act half and row j of the other half."""
    loaded = load_model(str(save_family_model(model_type, family_root)))
    adapter = find_adapter(loaded.model)
    fused = [adapter.hooked(layer).weight.detach().clone() for layer in adapter.layer_modules(loaded.model)]
    profiles = profile_model(loaded.model, adapter, loaded.tokenizer, calibration_texts(limit=4), max_length=32,
                             progress=False, moments=False)
    split = copy.deepcopy(loaded.model)
    _, indices, _ = split_model(split, adapter, profiles, heavy_ratio=0.25, recipe=parse_light("none"))
    for i, layer in enumerate(adapter.layer_modules(split)):
        idx = next(v for k, v in indices.items() if k.endswith(f"layers.{i}.mlp"))
        act_half, other_half = fused[i].chunk(2, dim=0)
        torch.testing.assert_close(layer.mlp.heavy.fc_gate.weight, act_half[idx])
        torch.testing.assert_close(layer.mlp.heavy.fc_in.weight, other_half[idx])
    batch = next(encode_batches(loaded.tokenizer, calibration_texts(limit=4), batch_size=4, max_length=32))
    torch.testing.assert_close(torch_output(split, batch, loaded.task), torch_output(loaded.model, batch, loaded.task),
                               atol=1e-5, rtol=1e-5)


def test_usable_positions(family_root: Path) -> None:
    """RoBERTa's descendants lose padding_idx + 1 positions; a sliding window bounds only a KV-cache graph."""
    from ffsplit.loading import usable_positions

    def model(t: str) -> torch.nn.Module:
        return load_model(str(save_family_model(t, family_root)), task="feature-extraction").model

    assert usable_positions(model("bert")) == 128
    for t in ("roberta", "xlm-roberta", "camembert"):
        assert usable_positions(model(t)) == 128 - 1, t  # pad_token_id 0: positions 1..127
    assert usable_positions(model("mpnet")) == 128 - 2  # MPNet's padding_idx is always 1: positions 2..127
    assert usable_positions(model("mistral")) == 128 and usable_positions(model("mistral"), past=True) == 64
    assert usable_positions(model("modernbert")) == 128  # local attention is a mask, not a length


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
    assert not registry()["bert"].matches_layout(model)
