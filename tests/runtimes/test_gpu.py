"""GPU targets on a GPU machine (``pytest -m gpu``): exported and checked; built later from a deferred export.

Without a GPU they export with the build deferred: tests/test_build.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffsplit import api

LENIENT = {"cosine_mean": 0.5, "cosine_min": 0.3, "retrieval_at10": 0.2}
GPU_TARGETS = ["cuda-fp16", "tensorrt-fp16", "tensorrt-int8"]


@pytest.mark.gpu
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_target_exports_and_checks(target: str, tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / target
    res = api.export(str(tiny_bert_dir), out, target=target, limits=LENIENT, calib_size=16, eval_size=24,
                     max_length=32, progress=False)
    m = res.manifest.to_json()
    want = {"cuda-fp16": ("fp16", "fp16"), "tensorrt-fp16": ("fp16", "fp16"), "tensorrt-int8": ("fp16", "int8")}[target]
    assert m["separation"]["precisions"]["0"] == {"heavy": [want[0]], "light": [want[1]]}
    if target.startswith("tensorrt"):
        assert (out / "runtime" / target / "model.plan").is_file()
    assert api.check(out).passed


@pytest.mark.gpu
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_deferred_export_builds_on_the_gpu(target: str, tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU-CI flow on a GPU machine: export as if without a GPU (deferred), then `build` here."""
    from ffsplit.targets import target as targets

    out = tmp_path / target
    with monkeypatch.context() as m:
        m.setattr(targets, "gpu_present", lambda: "no NVIDIA GPU (pretended)")
        res = api.export(str(tiny_bert_dir), out, target=target, limits=LENIENT, calib_size=16, eval_size=24,
                         max_length=32, progress=False)
    assert res.manifest.to_json()["build"]["status"] == "deferred"
    built = api.build(out)
    assert built.built.status == "built" and built.separation is not None and built.separation.passed is True
    assert api.check(out).passed
