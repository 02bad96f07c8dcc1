"""FFN adapters: every registered family is tested on a tiny random model, for every task it supports."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import MODEL_TYPES, export_cases, save_family_model

from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.parity.check import torch_output
from ffsplit.split.adapters import find_adapter, registry
from ffsplit.split.apply import split_model
from ffsplit.split.calibration import calibration_texts, encode_batches
from ffsplit.split.compress import parse_light
from ffsplit.split.ffn_adapter import FFNAdapter, register
from ffsplit.split.profile import profile_model
from tests.split.families.test_exact_exports import CASES, ELSEWHERE


def _family_of(model_type: str) -> str:
    return next(f for f, a in registry().items() if model_type in a.model_types)


def test_every_family_and_model_type_has_an_export_test() -> None:
    """Fails when a model type an adapter lists has no tiny model, or an export case is left out of the
    parametrised exact exports (tests/split/families/test_exact_exports.py) without a test of its own."""
    listed = {t for a in registry().values() for t in a.model_types}
    assert not sorted(listed - set(MODEL_TYPES)), f"model types without a tiny model: {sorted(listed - set(MODEL_TYPES))}"
    assert not sorted(set(MODEL_TYPES) - listed), "MODEL_TYPES holds a model type no adapter lists"
    exported = {(m, t) for _, m, t in CASES} | ELSEWHERE
    for family, adapter in registry().items():
        cases = export_cases(family)
        assert set(cases) <= exported, f"export cases of {family} nowhere tested"
        assert {t for m, t in cases if m == adapter.model_types[0]} == set(adapter.tasks), family
        assert {m for m, _ in cases} == set(adapter.model_types), family


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_model_type_is_recognised(model_type: str, family_root: Path) -> None:
    loaded = load_model(str(save_family_model(model_type, family_root)))
    adapter = find_adapter(loaded.model)
    assert adapter.family == _family_of(model_type) and loaded.model.config.model_type == model_type
    w = adapter.weights(adapter.layer_modules(loaded.model)[0])
    d_ff, d_model = w.w_in.shape
    assert w.w_out.shape == (d_model, d_ff) and d_model == 32
    assert (w.w_gate is not None) == adapter.gated()


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
