"""The dynamo export: dynamic batch and sequence, numeric equivalence with torch, external data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ffsplit.exporter import export, export_program, save_model
from ffsplit.loading import load_model


@pytest.fixture(scope="module")
def tiny_export(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    loaded = load_model(str(tiny_bert_dir))
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    save_model(export_program(loaded.model, loaded.tokenizer), path)
    return loaded, path


@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (1, 7), (3, 50), (5, 128)])
def test_dynamic_shapes_match_torch(tiny_export: tuple, batch: int, seq: int) -> None:
    loaded, path = tiny_export
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(1000, 2000, size=(batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, max(1, seq // 2):] = 0  # a padded row, when there is room
    types = np.zeros_like(ids)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    with torch.no_grad():
        want = loaded.model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), token_type_ids=torch.from_numpy(types)
        ).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=0)


def test_inputs_and_outputs(tiny_export: tuple) -> None:
    _, path = tiny_export
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) and d for d in dims), dims  # both axes symbolic


def test_large_models_use_external_data(tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model(str(tiny_bert_dir))
    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD", 0)
    files = save_model(export_program(loaded.model, loaded.tokenizer), tmp_path / "model.onnx")
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    assert (tmp_path / "model.onnx.data").stat().st_size > (tmp_path / "model.onnx").stat().st_size
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[101, 2000, 102]], dtype=np.int64)
    assert sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": 0 * ids})[0].shape == (1, 3, 32)


# What torch.onnx 2.13 raised for Mistral's KV-cache graph before its past was bounded (ANSI codes and all).
_TORCH_MESSAGE = (
    "Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting the model to ONNX. "
    "Next steps:\n- Modify the model code for `torch.export.export` to succeed.\n\n## Exception summary\n\n"
    "<class 'torch._dynamo.exc.UserError'>: Constraints violated (past_sequence)! For more information, run with "
    "TORCH_LOGS=\"+dynamic\".\n  - Not all values of past_sequence = L['past'][0].size()[2] in the specified range "
    "satisfy the generated guard L['past'][0].size()[2] <= 4095\nSuggested fixes:\n  past_sequence = "
    "Dim('past_sequence', max=4095)\n\nThe error above occurred when calling torch.export.export.\n\n"
    "(Refer to the full stack trace above for more information.)"
)


def test_failure_names_the_root_cause_from_torch_summary() -> None:
    line = export.describe_failure(RuntimeError(_TORCH_MESSAGE))
    assert line.startswith("UserError: Constraints violated (past_sequence)! - Not all values of past_sequence")
    assert "<= 4095 ; suggested fix: past_sequence = Dim('past_sequence', max=4095)" in line
    assert "Next steps" not in line and "\x1b" not in line and "TORCH_LOGS" not in line and "\n" not in line


def test_failure_follows_the_cause_chain_and_is_bounded() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer wrapper\nsecond line") from inner
    except RuntimeError as exc:
        assert export.describe_failure(exc) == "KeyError: 'inner'"
    assert len(export.describe_failure(ValueError("x" * 1000), limit=100)) == 100
    assert export.describe_failure(ValueError("")) == "ValueError: (no message)"


def test_unbounded_sliding_window_past_fails_with_its_cause(
    family_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path
) -> None:
    """Mistral's mask code guards past < window: an unbounded past_sequence fails in torch.export, and the
    one line says which constraint, what torch suggests and what to do, not torch's generic first line."""
    from conftest import main_in_process, save_family_model

    monkeypatch.setattr(export, "_dims", lambda model, past: tuple(
        torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence")
    ))
    code, err = main_in_process("export", str(save_family_model("mistral", family_root)), "--out", str(tmp_path / "o"),
                                "--light", "none", "--calib-size", "8", "--eval-size", "12", "--max-length", "16")
    line = next(x for x in err.splitlines() if x.startswith("ffsplit: "))
    assert code == 1 and not (tmp_path / "o").exists(), err
    assert "dynamo: export: UserError: Constraints violated (past_sequence)" in line
    assert "suggested fix: past_sequence = Dim('past_sequence', max=63)" in line and "What you can do:" in line
    assert "Next steps" not in line and "Traceback" not in err
