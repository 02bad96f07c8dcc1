"""Triton: repositories and configs parsed back; a real tritonserver answering concurrent requests like ORT."""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import triton_installed

from ffsplit.errors import UsageError
from ffsplit.serve.config import Signature, Tensor, model_config, parse_pbtxt, to_pbtxt
from ffsplit.serve.triton import write_repository


def test_onnxruntime_repository_config_parses_back(tiny_none_artifact: Path, tmp_path: Path) -> None:
    model_dir = write_repository(tiny_none_artifact, tmp_path / "repo")
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert cfg["name"] == model_dir.name and cfg["platform"] == "onnxruntime_onnx" and cfg["max_batch_size"] == 32
    assert [(i["name"], i["data_type"], i["dims"]) for i in cfg["input"]] == [
        ("input_ids", "TYPE_INT64", [-1]), ("attention_mask", "TYPE_INT64", [-1]), ("token_type_ids", "TYPE_INT64", [-1]),
    ]
    assert cfg["output"] == {"name": "last_hidden_state", "data_type": "TYPE_FP32", "dims": [-1, 32]}
    assert cfg["dynamic_batching"] == {"preferred_batch_size": [8, 32], "max_queue_delay_microseconds": 1000}
    assert cfg["instance_group"] == {"count": 1, "kind": "KIND_CPU"}
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (model_dir / "1" / "model.onnx", tiny_none_artifact / "model.onnx")]
    assert digest[0] == digest[1]
    with pytest.raises(UsageError, match="already exists"):
        write_repository(tiny_none_artifact, tmp_path / "repo")


def test_kv_cache_and_gpu_configs() -> None:
    sig = Signature(
        [Tensor("input_ids", "TYPE_INT64", [-1]), Tensor("past_key_values.0.key", "TYPE_FP32", [4, -1, 16])],
        [Tensor("logits", "TYPE_FP32", [-1, 100])],
    )
    cfg = parse_pbtxt(to_pbtxt(model_config(
        "m", sig, platform="tensorrt_plan", backend=None, shapes={"batch": [1, 4, 16]}, kind="KIND_GPU", sequence=True,
    )))
    assert cfg["platform"] == "tensorrt_plan" and cfg["instance_group"]["kind"] == "KIND_GPU"
    assert "dynamic_batching" not in cfg  # Triton takes one batching strategy
    assert cfg["sequence_batching"]["oldest"]["preferred_batch_size"] == [4, 16]
    assert cfg["sequence_batching"]["max_sequence_idle_microseconds"] == 5_000_000
    assert cfg["input"][1] == {"name": "past_key_values.0.key", "data_type": "TYPE_FP32", "dims": [4, -1, 16]}


def test_pbtxt_round_trip_of_nested_and_repeated_fields() -> None:
    cfg = {"name": "a b", "max_batch_size": 0, "input": [{"name": "x", "dims": [1, -1]}, {"name": "y", "dims": [2]}],
           "parameters": [{"key": "k", "value": {"string_value": "p\"q"}}], "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
           "flag": True, "ratio": 0.5}
    back = parse_pbtxt(to_pbtxt(cfg))
    assert back["input"] == cfg["input"] and back["parameters"] == cfg["parameters"][0]
    assert back["name"] == "a b" and back["flag"] is True and back["ratio"] == 0.5
    assert back["instance_group"] == {"count": 2, "kind": "KIND_CPU"}


def test_tensorrt_artifact_without_engine_is_refused(tiny_none_artifact: Path, tmp_path: Path) -> None:
    import shutil

    from conftest import forge_manifest

    art = tmp_path / "art"
    shutil.copytree(tiny_none_artifact, art)
    forge_manifest(art, lambda m: m.update(target={**m["target"], "name": "tensorrt-fp16", "runtime": "tensorrt", "providers": []}))
    with pytest.raises(UsageError, match="has no TensorRT engine"):
        write_repository(art, tmp_path / "repo")


@pytest.mark.skipif(not triton_installed(), reason="nvidia-pytriton is not installed (make test installs it)")
def test_real_server_answers_concurrent_requests_like_onnxruntime(tiny_none_artifact: Path) -> None:
    from ffsplit.runtimes.base import make_runner
    from ffsplit.serve.server import start_server, triton_home
    from ffsplit.targets import load_target

    sys.path.insert(0, str(triton_home()))
    import tritonclient.http as httpclient

    rng = np.random.default_rng(0)
    requests = []
    for i in range(24):
        batch, seq = 1 + i % 3, 3 + (i * 7) % 20
        ids = rng.integers(1000, 20000, (batch, seq)).astype(np.int64)
        requests.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    with make_runner(tiny_none_artifact / "model.onnx", load_target("cpu")) as ort_runner:
        want = [ort_runner.infer(r)["last_hidden_state"] for r in requests]
    server = start_server(tiny_none_artifact)
    try:
        def ask(feed: dict[str, np.ndarray]) -> np.ndarray:
            client = httpclient.InferenceServerClient(server.url)
            inputs = []
            for name, array in feed.items():
                t = httpclient.InferInput(name, list(array.shape), "INT64")
                t.set_data_from_numpy(array)
                inputs.append(t)
            return client.infer(server.model, inputs).as_numpy("last_hidden_state")

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, requests))

        # the text front end: strings in, what ffsplit.load gives out, under the same concurrent load
        def ask_text(texts: list[str]) -> np.ndarray:
            client = httpclient.InferenceServerClient(server.url)
            t = httpclient.InferInput("text", [len(texts), 1], "BYTES")
            t.set_data_from_numpy(np.array([[s.encode()] for s in texts], dtype=object))
            return client.infer(server.text_model, [t]).as_numpy("sentence_embedding")

        phrases = [" ".join(["word"] * (1 + i % 9)) + f" number {i}, café" for i in range(16)]
        text_requests = [phrases[i: i + 1 + i % 3] for i in range(0, 16, 2)]
        with ThreadPoolExecutor(8) as pool:
            got_text = list(pool.map(ask_text, text_requests))
    finally:
        server.stop()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    import ffsplit

    with ffsplit.load(tiny_none_artifact) as model:
        for texts, g in zip(text_requests, got_text, strict=True):
            np.testing.assert_allclose(g, model.encode(texts), rtol=1e-5, atol=1e-5)
    assert server.process.poll() is not None and not server.workdir.exists()


def test_text_repository_carries_the_slim_artifact_and_no_path_of_this_machine(
    tiny_none_artifact: Path, tmp_path: Path,
) -> None:
    import ffsplit
    from ffsplit.serve.triton import text_repository

    model_dir = text_repository(tiny_none_artifact, tmp_path / "repo", name="t")
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert cfg["backend"] == "python" and cfg["input"]["data_type"] == "TYPE_STRING"  # one input, one output
    assert cfg["output"]["name"] == "sentence_embedding" and cfg["output"]["dims"] == [32]
    inside = model_dir / "1" / "artifact"
    assert not (inside / "split.safetensors").exists()  # packed: what the runtime runs, and the tokenizer
    assert ffsplit.load(inside).encode(["x"]).shape == (1, 32)
    written = (model_dir / "1" / "model.py").read_text() + (model_dir / "config.pbtxt").read_text()
    assert str(tiny_none_artifact) not in written and str(tmp_path) not in written


def test_python_backend_repository_holds_no_path_of_this_machine(tiny_none_artifact: Path, tmp_path: Path) -> None:
    """The repository can be copied to another server: the graph sits in the version folder, and neither
    the artifact's folder nor this environment's site-packages is written into it."""
    import sysconfig

    from ffsplit.serve.triton import python_repository

    model_dir = python_repository(tiny_none_artifact, tmp_path / "repo", name="m")
    assert (model_dir / "1" / "model.onnx").read_bytes() == (tiny_none_artifact / "model.onnx").read_bytes()
    written = "".join(p.read_text(errors="ignore") for p in model_dir.rglob("*") if p.suffix in (".py", ".pbtxt"))
    for here in (str(tiny_none_artifact), str(tmp_path), sysconfig.get_paths()["purelib"], sys.prefix):
        assert here not in written, here
    cfg = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert cfg["backend"] == "python" and "model_path" not in str(cfg)


@pytest.mark.skipif(not triton_installed(), reason="nvidia-pytriton is not installed (make test installs it)")
def test_serve_fails_when_its_server_dies(tiny_none_artifact: Path) -> None:
    """kill -9 of tritonserver: `ffsplit serve` exits 1 with one line saying how the server ended (it was 0)."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "ffsplit", "serve", str(tiny_none_artifact),
                             "--http-port", "0", "--grpc-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert proc.stdout is not None and "serving model" in proc.stdout.readline()
        children = [int(p) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                    for p in (t / "children").read_text().split()]
        server = [pid for pid in children if Path(f"/proc/{pid}/exe").resolve().name == "tritonserver"]
        assert len(server) == 1, children
        os.kill(server[0], signal.SIGKILL)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read() if proc.stderr else ""
    errors = [line for line in err.splitlines() if line.startswith("ffsplit:")]
    assert code == 1 and len(errors) == 1 and "killed by SIGKILL" in errors[0], err
