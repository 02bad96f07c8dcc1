"""Structural discovery: FFN layouts no family file lists, found by shape, proven by running, exported exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import main_in_process, minilm_dir, run_cli

from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.split.adapters import find_adapter, registry

_D = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
# model_type -> (model class, config class, config kwargs): one-layer random models of architectures that
# transformers ships and no family file lists, encoders and decoders, gated and not, parallel attention too
UNLISTED: dict[str, tuple[str, str, dict]] = {
    "gpt_neox": ("GPTNeoXModel", "GPTNeoXConfig", _D),
    "gptj": ("GPTJModel", "GPTJConfig", {"n_embd": 32, "n_inner": 64, "n_layer": 1, "n_head": 2, "rotary_dim": 8}),
    "codegen": ("CodeGenModel", "CodeGenConfig", {"n_embd": 32, "n_inner": 64, "n_layer": 1, "n_head": 2, "rotary_dim": 8}),
    "falcon": ("FalconModel", "FalconConfig", {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}),
    "starcoder2": ("Starcoder2Model", "Starcoder2Config", dict(_D, num_key_value_heads=1)),
    "persimmon": ("PersimmonModel", "PersimmonConfig", _D),
    "phi": ("PhiModel", "PhiConfig", _D),
    "nemotron": ("NemotronModel", "NemotronConfig", dict(_D, num_key_value_heads=1, head_dim=16)),
    # a text encoder
    "clip_text_model": ("CLIPTextModel", "CLIPTextConfig", dict(_D, max_position_embeddings=64)),
}
# found by shape, but the MLP is not up -> act -> down alone: refused, naming what was found
REFUSED: dict[str, tuple[str, str, dict, str]] = {
    "bloom": ("BloomModel", "BloomConfig", {"hidden_size": 32, "n_layer": 1, "n_head": 2},
              "no module holding them computes the FFN from the hidden states alone"),  # adds the residual inside
    "funnel": ("FunnelModel", "FunnelConfig", {"d_model": 32, "d_inner": 64, "n_head": 2, "d_head": 16,
                                               "block_sizes": [1], "num_decoder_layers": 1},
               "its MLP differs from down(act(up(x)))"),  # residual and LayerNorm inside the FFN module
    "biogpt": ("BioGptModel", "BioGptConfig", _D, "the block 'layers.0' itself"),  # fc1 / fc2 in the block
}


def _save(model_type: str, spec: tuple, root: Path) -> Path:
    import transformers

    model_cls, config_cls, kwargs = spec[:3]
    path = root / model_type
    if not path.is_dir():
        cfg = getattr(transformers, config_cls)(vocab_size=30522, pad_token_id=0, **kwargs)
        torch.manual_seed(0)
        getattr(transformers, model_cls)(cfg).eval().save_pretrained(path, safe_serialization=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
            shutil.copy(minilm_dir() / name, path / name)
    return path


def test_no_unlisted_architecture_has_a_family_file() -> None:
    """What this file proves is discovery's: none of these may be claimed by a family file."""
    listed = {t for a in registry().values() for t in a.model_types}
    assert not listed & (set(UNLISTED) | set(REFUSED))


@pytest.mark.parametrize("model_type", sorted(UNLISTED))
def test_an_unlisted_layout_is_discovered_and_exported_exact(model_type: str, family_root: Path, tmp_path: Path) -> None:
    source = _save(model_type, UNLISTED[model_type], family_root / "unlisted")
    out = tmp_path / "out"
    api.export(str(source), out, light="none", task="feature-extraction", calib_size=16, eval_size=24, max_length=32,
               progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["adapter"] == "discovered" and m["parity"]["passed"] and m["checks"]["exact"]
    for name in ("compression", "fidelity", "shipped"):  # the split equals the original to fp32 rounding
        assert m["parity"]["comparisons"][name]["metrics"]["max_abs"] < 1e-4, name
    assert m["separation"]["matmuls"] == {"0": {"heavy": 2, "light": 2}}
    assert api.check(out).passed  # check finds the same layout again
    assert m["layout"].startswith("layers ") and "MLP" in m["layout"]
    assert "FFN layout: layers " in run_cli("inspect", str(out)).stdout


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_a_layout_the_split_cannot_reproduce_is_refused_naming_it(model_type: str, family_root: Path,
                                                                  tmp_path: Path) -> None:
    import transformers

    *spec, says = REFUSED[model_type]
    model_cls, config_cls, kwargs = spec
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(vocab_size=1000, **kwargs)).eval()
    with pytest.raises(UsageError, match="found by shape") as err:
        find_adapter(model)
    assert says in str(err.value) and "add a family file" in str(err.value)
    if model_type == "bloom":  # and through the CLI: exit 2, one line
        source = _save(model_type, spec, family_root / "refused")
        code, stderr = main_in_process("export", str(source), "--out", str(tmp_path / "o"), "--light", "none")
        errors = [line for line in stderr.splitlines() if line.startswith("ffsplit:")]
        assert code == 2 and len(errors) == 1 and says in errors[0]
        assert not (tmp_path / "o").exists()


# one discovered decoder (partial rotary, parallel attention and MLP): the KV-cache capture is the families'
@pytest.mark.parametrize(("model_type", "model_cls"), [("phi", "PhiForCausalLM")])
def test_a_discovered_decoder_exports_its_kv_cache_graph_exact(model_type: str, model_cls: str, family_root: Path,
                                                                tmp_path: Path) -> None:
    """The decoders' hardest task, on a layout no family file lists: the KV-cache graph, exact, generating
    the same greedy tokens as torch."""
    _, config_cls, kwargs = UNLISTED[model_type]
    source = _save(f"{model_type}-lm", (model_cls, config_cls, kwargs), family_root / "unlisted")
    out = tmp_path / "out"
    api.export(str(source), out, light="none", task="causal-lm-with-past", calib_size=16, eval_size=16,
               max_length=32, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    fidelity = m["parity"]["comparisons"]["fidelity"]["metrics"]
    assert m["adapter"] == "discovered" and m["checks"]["exact"] and m["parity"]["passed"]
    assert fidelity["max_abs"] < 1e-4 and fidelity["generation_agreement"] == 1.0
