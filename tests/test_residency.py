"""Residency: a bf16 checkpoint stays bf16 in memory and computes what its fp32 copy computes, bit for bit;
the export traces on placeholders and gets every real weight back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ffsplit.exporter import export_program
from ffsplit.loading import load_model
from ffsplit.residency import materialised, placeholders
from tests.conftest import MODEL_TYPES, save_family_model


def _twins(model_type: str, family_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The family's tiny model stored in bf16, and the same values stored in fp32."""
    import transformers

    src = save_family_model(model_type, family_root)
    dirs = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        cls = getattr(transformers, transformers.AutoConfig.from_pretrained(src).architectures[0])
        model = cls.from_pretrained(src, dtype=torch.float32).to(torch.bfloat16).to(dtype)
        out = tmp_path / f"{model_type}-{name}"
        model.save_pretrained(out, safe_serialization=True)
        for f in src.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")) or f.name == "vocab.txt":
                shutil.copy(f, out / f.name)
        dirs.append(out)
    return dirs[0], dirs[1]


def _ids() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_a_bf16_checkpoint_stays_bf16_and_computes_as_its_fp32_copy(
    model_type: str, family_root: Path, tmp_path: Path
) -> None:
    """Every model type the suite covers: a family whose code read a weight outside its module's call (or
    cast to the model's dtype) would compute something else, or fail, here."""
    bf16_dir, fp32_dir = _twins(model_type, family_root, tmp_path)
    held, wide = load_model(str(bf16_dir), task="auto"), load_model(str(fp32_dir), task="auto")
    assert {p.dtype for p in held.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in wide.model.parameters()} == {torch.float32}
    with torch.no_grad():
        got, want = held.model(**_ids())[0], wide.model(**_ids())[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert {p.dtype for p in held.model.parameters()} == {torch.bfloat16}  # widened only during each call


def test_a_failed_call_leaves_the_weights_as_stored(family_root: Path, tmp_path: Path) -> None:
    bf16_dir, _ = _twins("llama", family_root, tmp_path)
    model = load_model(str(bf16_dir), task="causal-lm").model
    with pytest.raises((IndexError, RuntimeError)):
        model(input_ids=torch.tensor([[10**9]]))  # out of the vocabulary: the embedding's call fails
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_placeholders_give_back_every_weight_and_restore_the_model(family_root: Path) -> None:
    """GPT-2 ties its LM head to the token embeddings: one placeholder, both paths, the same value."""
    model = load_model(str(save_family_model("gpt2", family_root)), task="causal-lm").model
    before = {n: p for n, p in model.named_parameters(remove_duplicate=False)}
    with placeholders(model, prefix="model.") as values:
        inside = dict(model.named_parameters(remove_duplicate=False))
        assert all(p.dtype == torch.float32 and p is not before[n] for n, p in inside.items())
        assert inside["lm_head.weight"] is inside["transformer.wte.weight"]
        assert set(values) == {f"model.{n}" for n in before}
        for name, p in before.items():
            assert torch.equal(values[f"model.{name}"](), p.float()), name
        assert values.unbound(inside["lm_head.weight"]) and not values.unbound(before["lm_head.weight"])
    assert all(p is before[n] for n, p in model.named_parameters(remove_duplicate=False))


def test_a_bf16_export_holds_the_fp32_copys_weights(family_root: Path, tmp_path: Path) -> None:
    """The graph of a bf16 checkpoint, traced on placeholders, holds exactly the weights of its fp32 copy's
    graph (and the TorchScript fallback, given real fp32 weights, the same)."""
    bf16_dir, fp32_dir = _twins("llama", family_root, tmp_path)
    graphs = []
    for folder in (bf16_dir, fp32_dir):
        loaded = load_model(str(folder), task="causal-lm")
        graphs.append(export_program(loaded.model, loaded.tokenizer, loaded.task))

    def weights(model: object) -> list[tuple[tuple[int, ...], bytes]]:
        return sorted((tuple(v.shape), (v.const_value.numpy() + np.float32(0)).tobytes())  # type: ignore[union-attr]
                      for v in model.graph.initializers.values() if v.const_value is not None)  # type: ignore[attr-defined]

    assert weights(graphs[0]) == weights(graphs[1])
    loaded = load_model(str(bf16_dir), task="causal-lm")
    with materialised(loaded.model):
        assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_a_graph_weight_left_on_a_placeholder_is_caught() -> None:
    from ffsplit.exporter.export import bind_weights

    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).eval()
    with placeholders(module) as values:
        program = torch.onnx.export(module, (torch.randn(2, 3, 8),), dynamo=True, verbose=False, optimize=False)
    assert bind_weights(program.model, values) == 4
    with placeholders(module) as values:
        program = torch.onnx.export(module, (torch.randn(2, 3, 8),), dynamo=True, verbose=False, optimize=False)
    del values["0.weight"]  # a path the binding does not know
    with pytest.raises(AssertionError, match="0.weight was traced from a placeholder"):
        bind_weights(program.model, values)


def test_an_older_split_file_with_grids_beside_the_weights_reads_as_held_grids() -> None:
    """Artifacts written before the split held its grids kept the dequantised fp32 weight and, beside it,
    ``quant.<path>.weight.q`` / ``.scale`` (/ ``.zero_point``): they load as the GridLinear state."""
    from ffsplit.split.compress import quantize_int4
    from ffsplit.split.modules import GridLinear
    from ffsplit.stages.reload import _held_grids

    qw = quantize_int4(torch.randn(8, 64), 32, symmetric=False)
    old = {"m.light.fc_out.weight": qw.weight, "quant.m.light.fc_out.weight.q": qw.q,
           "quant.m.light.fc_out.weight.scale": qw.scale, "quant.m.light.fc_out.weight.zero_point": qw.zero_point,
           "m.bias": torch.zeros(8)}
    state = _held_grids(old)
    assert set(state) == {"m.light.fc_out.weight", "m.light.fc_out.scale", "m.light.fc_out.zero_point", "m.bias"}
    grid = GridLinear(state["m.light.fc_out.weight"], state["m.light.fc_out.scale"],
                      state["m.light.fc_out.zero_point"], None, None, bits=4, block=32)
    assert torch.equal(grid.dequantised(), qw.weight)


def test_half_storage_names_the_one_16_bit_type_of_the_weight_matrices() -> None:
    from ffsplit.residency import half_storage

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    assert half_storage(model) is None  # fp32
    assert half_storage(model.to(torch.bfloat16)) == "bf16"
    model[1].float()  # a norm's 1-D weight does not count
    assert half_storage(model) == "bf16"
    model[2].float()  # one fp32 matrix: the graph could not store every weight as the source does
    assert half_storage(model) is None
    assert half_storage(model.half()) == "fp16"
