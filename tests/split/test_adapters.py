"""FFN adapters: registry, layout recognition, and a test for every registered family."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ffsplit.errors import UsageError
from ffsplit.loading import load_model
from ffsplit.split.adapters import REGISTRY, FFNAdapter, find_adapter, register

# family -> the test below that covers it; test_every_adapter_is_tested fails when one is missing.
TESTED_FAMILIES = {"bert": "test_bert_family_adapters"}


def test_every_adapter_is_tested() -> None:
    untested = sorted(set(REGISTRY) - set(TESTED_FAMILIES))
    assert not untested, f"registered adapters without a test: {untested}"
    for family, test_name in TESTED_FAMILIES.items():
        assert test_name in globals(), f"{family}: {test_name} does not exist"


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_roberta_dir"])
def test_bert_family_adapters(fixture: str, request: pytest.FixtureRequest) -> None:
    loaded = load_model(str(request.getfixturevalue(fixture)))
    adapter = find_adapter(loaded.model)
    assert adapter.family == "bert"
    layers = adapter.layer_modules(loaded.model)
    assert len(layers) == 2
    w = adapter.weights(layers[0])
    assert w.w_in.shape == (64, 32) and w.w_out.shape == (32, 64)


def test_layout_recognised_without_model_type(tiny_bert_dir: Path) -> None:
    loaded = load_model(str(tiny_bert_dir))
    loaded.model.config.model_type = "my-bert-descendant"
    assert find_adapter(loaded.model).family == "bert"


def test_unsupported_architecture_names_what_is_supported(tiny_gpt2_dir: Path) -> None:
    loaded = load_model(str(tiny_gpt2_dir))
    with pytest.raises(UsageError, match=r"unsupported architecture: model_type 'gpt2'.*supported families: bert"):
        find_adapter(loaded.model)


def test_register_rejects_a_duplicate_family() -> None:
    with pytest.raises(ValueError, match="registered twice"):

        @register
        class Again(FFNAdapter):  # noqa: F841
            family = "bert"


def test_layout_mismatch_is_not_matched() -> None:
    model = torch.nn.Module()
    model.encoder = torch.nn.Module()  # no layers inside
    assert not REGISTRY["bert"].matches_layout(model)
