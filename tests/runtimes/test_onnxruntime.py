"""The ONNX Runtime runner: interface, input validation against the signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffsplit.errors import UsageError
from ffsplit.runtimes.onnxruntime import OrtRunner, SessionFromOnnx
from ffsplit.targets import load_target


def test_runner_interface_and_validation(tiny_none_artifact: Path) -> None:
    runner = OrtRunner(SessionFromOnnx(tiny_none_artifact / "model.onnx", load_target("cpu")))
    with runner as r:
        assert set(r.input_signature()) == {"input_ids", "attention_mask", "token_type_ids"}
        ids = np.array([[101, 2023, 102]], dtype=np.int32)  # int32 is cast, same kind
        out = r.infer({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        assert out["last_hidden_state"].shape == (1, 3, 32)
        with pytest.raises(UsageError, match="missing \\['token_type_ids'\\]"):
            r.infer({"input_ids": ids, "attention_mask": ids})
        with pytest.raises(UsageError, match="rank 1"):
            r.infer({"input_ids": ids[0], "attention_mask": ids, "token_type_ids": ids})
        with pytest.raises(UsageError, match="is float64"):
            r.infer({"input_ids": ids * 1.0, "attention_mask": ids, "token_type_ids": ids})
    assert runner.session is None


def test_tensorrt_provider_options_from_the_target(tmp_path: Path) -> None:
    from ffsplit.runtimes.onnxruntime import provider_options
    from tests.runtimes.test_shapes import ENCODER

    target = load_target("tensorrt-int8")
    ort_trt = type(target)(**{**target.__dict__, "runtime": "onnxruntime", "providers": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
                              "provider_options": {"TensorrtExecutionProvider": {"trt_max_workspace_size": 1 << 30}}})
    (trt, opts), (cuda, cuda_opts) = provider_options(ort_trt, ENCODER, tmp_path)
    assert (trt, cuda, cuda_opts) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", {})
    assert opts["trt_fp16_enable"] is True and opts["trt_int8_enable"] is True  # heavy fp16, light int8 via Q/DQ
    assert opts["trt_engine_cache_path"] == str(tmp_path / "trt-engines") and opts["trt_timing_cache_enable"] is True
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert opts["trt_profile_max_shapes"] == "input_ids:32x512,attention_mask:32x512"
    assert opts["trt_max_workspace_size"] == 1 << 30  # the target's own options are passed through


def test_cpu_target_passes_session_config(tiny_none_artifact: Path) -> None:
    from ffsplit.runtimes.onnxruntime import session_options

    so = session_options(load_target("cpu"))
    assert so.get_session_config_entry("session.qdq_matmulnbits_accuracy_level") == "0"


def test_a_runner_is_composed_with_its_loader(tiny_none_artifact: Path, tmp_path: Path) -> None:
    """make_runner composes the target's runner with its loader; the loader alone builds (here: the session and
    the optimised graph the guard reads), and takes the paths a caller gives as strings."""
    from ffsplit.runtimes.base import make_runner

    runner = make_runner(str(tiny_none_artifact / "model.onnx"), load_target("cpu"), runtime_dir=str(tmp_path))  # type: ignore[arg-type]
    assert isinstance(runner, OrtRunner) and isinstance(runner.loader, SessionFromOnnx)
    assert runner.model_path == tiny_none_artifact / "model.onnx" and runner.loader.runtime_dir == tmp_path
    assert not (tmp_path / "optimized.onnx").exists()  # nothing is built until activate
    session = runner.loader()
    assert (tmp_path / "optimized.onnx").is_file() and {i.name for i in session.get_inputs()} >= {"input_ids"}


def test_an_opened_artifact_gives_its_runner(tiny_none_artifact: Path) -> None:
    from ffsplit.artifact.opened import Artifact

    art = Artifact.open(tiny_none_artifact)
    runner = art.runner(timing=True)
    assert isinstance(runner, OrtRunner) and not runner.active
    assert (runner.model_path, runner.target, runner.loader.timing) == (art.model_path, art.target, True)
    with runner as r:
        assert "last_hidden_state" in r.infer(r.feed_from({"input_ids": np.array([[101, 102]]),
                                                            "attention_mask": np.array([[1, 1]]),
                                                            "token_type_ids": np.array([[0, 0]])}))
