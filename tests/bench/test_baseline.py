"""bench's baseline: the original model exported as the split one was, cached by what shapes the export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ffsplit.artifact.opened import Artifact
from ffsplit.bench.baseline import baseline_onnx, lossy_baseline
from ffsplit.stages.reload import load_source
from ffsplit.targets import load_target


def test_lossy_baseline_names_the_peer_of_each_target() -> None:
    assert lossy_baseline(load_target("cpu")) is None
    assert lossy_baseline(load_target("cpu-int8")) is None
    assert "NNCF static int8" in str(lossy_baseline(load_target("openvino-int8")))
    int4 = load_target("openvino-int4")
    text = str(lossy_baseline(int4))
    assert "int4" in text and int4.nncf["mode"] in text and f"groups of {int4.nncf['group_size']}" in text


def _original_outputs(path: Path, loaded) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """The baseline's and the torch model's last hidden state on one sentence."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = loaded.tokenizer(["the heavy hitters of a feed-forward layer"], return_tensors="np")
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    with torch.no_grad():
        ref = loaded.model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    return session.run(None, feed)[0], ref.numpy()


def test_the_baseline_is_the_original_exported_once(tiny_none_artifact: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFSPLIT_CACHE", str(tmp_path))
    art = Artifact.open(tiny_none_artifact)
    loaded = load_source(art)
    said: list[str] = []
    path = baseline_onnx(art.manifest, art.target, loaded, said.append)
    assert path.is_file() and path.parent.parent == tmp_path / "baseline" and len(said) == 1
    out, ref = _original_outputs(path, loaded)
    np.testing.assert_allclose(out, ref, atol=1e-4)

    def no_export(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the cached baseline was exported again")

    monkeypatch.setattr("ffsplit.exporter.export_program", no_export)
    assert baseline_onnx(art.manifest, art.target, loaded, said.append) == path and len(said) == 1
    # nothing but the one cached folder: no temporary folder left behind
    assert [p.name for p in (tmp_path / "baseline").iterdir()] == [path.parent.name]


def test_a_target_at_another_opset_gets_a_baseline_of_its_own(tiny_none_artifact: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache key holds what changes the baseline's graph: here the opset the target asks for."""
    monkeypatch.setenv("FFSPLIT_CACHE", str(tmp_path))
    art = Artifact.open(tiny_none_artifact)
    loaded = load_source(art)
    default = baseline_onnx(art.manifest, art.target, loaded)
    at23 = baseline_onnx(art.manifest, dataclasses.replace(art.target, opset=23), loaded)
    assert at23 != default

    def opset(path: Path) -> int:
        return next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain == "")

    assert opset(at23) == 23 and opset(default) != 23
    out, ref = _original_outputs(at23, loaded)
    np.testing.assert_allclose(out, ref, atol=1e-4)
