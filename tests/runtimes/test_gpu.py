"""GPU targets: refused cleanly without a GPU; on a GPU machine (``pytest -m gpu``) exported and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.runtimes.targets import gpu_present

LENIENT = {"cosine_mean": 0.5, "cosine_min": 0.3, "retrieval_at10": 0.2}
GPU_TARGETS = ["cuda-fp16", "tensorrt-fp16", "tensorrt-int8"]


@pytest.mark.skipif(gpu_present() is None, reason="this machine has a GPU")
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_target_without_a_gpu_is_bad_input(target: str, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from ffsplit.cli import main

    with pytest.raises(UsageError, match=f"target '{target}' cannot run on this machine: no NVIDIA GPU"):
        api.export(str(tiny_bert_dir), tmp_path / "o", target=target, progress=False)
    assert not (tmp_path / "o").exists()
    assert main(["export", str(tiny_bert_dir), "--out", str(tmp_path / "o"), "--target", target]) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_target_exports_and_checks(target: str, tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / target
    res = api.export(str(tiny_bert_dir), out, target=target, limits=LENIENT, calib_size=16, eval_size=24,
                     max_length=32, progress=False)
    m = res.manifest
    want = {"cuda-fp16": ("fp16", "fp16"), "tensorrt-fp16": ("fp16", "fp16"), "tensorrt-int8": ("fp16", "int8")}[target]
    assert m["separation"]["precisions"]["0"] == {"heavy": [want[0]], "light": [want[1]]}
    if target.startswith("tensorrt"):
        assert (out / "runtime" / target / "model.plan").is_file()
    assert api.check(out).passed
