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
