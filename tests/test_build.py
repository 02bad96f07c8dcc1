"""Build later: GPU targets export on a CPU machine with the build deferred; ``ffsplit build`` builds,
guards and replays the golden outputs where the target runs, and changes nothing when it fails."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from ffsplit import api
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.manifest import GoldenReplay, Separation
from ffsplit.targets import gpu_present, load_target
from tests.conftest import FAST, forge_manifest, run_cli

LENIENT = ("--limit", "cosine_mean=0.5", "--limit", "cosine_min=0.3", "--limit", "retrieval_at10=0.2")
SIZES = ("--calib-size", str(FAST["calib_size"]), "--eval-size", str(FAST["eval_size"]),
         "--max-length", str(FAST["max_length"]))


def _export(model: Path, out: Path, target: str, light: str = "lowrank:8") -> str:
    r = run_cli("export", str(model), "--out", str(out), "--target", target, "--light", light, *SIZES, *LENIENT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.skipif(gpu_present() is None, reason="this machine has a GPU")
@pytest.mark.parametrize(("target", "light"), [("cuda-fp16", "lowrank:8"), ("tensorrt-int8", "int8")])
def test_gpu_target_exports_here_with_its_build_deferred(
    target: str, light: str, tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path,
) -> None:
    out = tmp_path / target
    stdout = _export(tiny_bert_dir, out, target, light)
    assert f"build deferred: target '{target}' cannot run here (no NVIDIA GPU" in stdout
    assert f"ffsplit build {out}" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["build"]["status"] == "deferred" and m["build"]["target"] == target
    assert "CPUExecutionProvider" in m["build"]["checked_on"]
    assert m["separation"]["passed"] is None and m["parity"]["passed"] is True
    assert not (out / "runtime").exists()  # nothing was built
    graph = onnx.load(str(out / "model.onnx"))
    kinds = {i.data_type for i in graph.graph.initializer}
    if target == "cuda-fp16":  # the graph holds fp16 branches, and ONNX Runtime's CPU kernels checked them
        assert onnx.TensorProto.FLOAT16 in kinds
        # and the report counts them at 2 bytes a weight
        assert all(p["heavy_bytes"] == 2 * p["heavy_params"] and p["light_bytes"] == 2 * p["light_params"]
                   for p in m["layers"])
    else:  # TensorRT's builder lowers an fp32 graph; the light branch is int8 Q/DQ
        assert onnx.TensorProto.FLOAT16 not in kinds and onnx.TensorProto.INT8 in kinds
    # what needs the target refuses here, pointing at `ffsplit build`
    r = run_cli("inspect", str(out))
    assert r.returncode == 0 and "build: deferred (no NVIDIA GPU" in r.stdout and f"`ffsplit build {out}`" in r.stdout
    r = run_cli("build", str(out))
    assert r.returncode == 2 and f"target '{target}' cannot run on this machine: no NVIDIA GPU" in r.stderr
    for args in (("bench", str(out)), ("check", str(out), "--golden")):
        r = run_cli(*args)
        assert r.returncode == 2 and f"run `ffsplit build {out}` on a machine where '{target}' runs" in r.stderr
    import ffsplit

    with pytest.raises(UsageError, match="without building it"):
        ffsplit.load(out)


@pytest.fixture(scope="module")
def deferred(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A CPU graph exported for a target naming the CUDA provider: deferred here, buildable on the CPU."""
    root = tmp_path_factory.mktemp("build")
    (root / "cuda-named.toml").write_text('extends = "cpu"\nproviders = ["CUDAExecutionProvider"]\n')
    (root / "cpu-small.toml").write_text('extends = "cpu"\n[shapes]\nbatch = [1, 4, 16]\nsequence = [1, 32, 128]\n')
    out = root / "art"
    _export(tiny_bert_dir, out, str(root / "cuda-named.toml"))
    return out


def test_build_refuses_a_target_that_needs_another_graph(deferred: Path) -> None:
    before = _digest(deferred)
    r = run_cli("build", str(deferred), "--target", "cpu-int8")
    assert r.returncode == 2
    assert "needs another graph than the one exported for 'cuda-named'" in r.stderr
    assert "int8_compute weight-only vs dynamic" in r.stderr and "fusions none vs ort" in r.stderr
    assert _digest(deferred) == before


def test_a_failed_build_changes_nothing(deferred: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ffsplit.stages import verify

    before = _digest(deferred)
    monkeypatch.setattr(verify, "guard", lambda runner, plans: Separation(passed=False, graph="x", failure="merged"))
    with pytest.raises(CheckFailed, match="merged"):
        api.build(deferred, target=str(deferred.parent / "cpu-small.toml"))
    monkeypatch.undo()
    r = run_cli("build", str(deferred), "--target", str(deferred.parent / "cpu-small.toml"), "--tolerance", "0",
                "--json", str(tmp_path / "b.json"))
    # the same runtime replays its golden outputs exactly, so even tolerance 0 passes; now break them
    assert r.returncode == 0, r.stderr
    assert _digest(deferred) != before
    before = _digest(deferred)
    from ffsplit.parity import golden

    real = golden.replay_golden

    def moved(folder: Path, runner: object, manifest: object, *, tolerance: float | None = None) -> GoldenReplay:
        return dataclasses.replace(real(folder, runner, manifest, tolerance=tolerance), max_abs=1.0, passed=False)

    monkeypatch.setattr(golden, "replay_golden", moved)
    with pytest.raises(CheckFailed, match="moved the golden last_hidden_state by 1"):
        api.build(deferred, target=str(deferred.parent / "cpu-small.toml"))
    assert _digest(deferred) == before
    assert not list(deferred.parent.glob(".art.ffsplit-*"))


def test_build_on_this_machine_then_use(deferred: Path, tmp_path: Path) -> None:
    """After `build`, the artifact verifies, runs on the build's target and checks as any export does."""
    r = run_cli("build", str(deferred), "--target", str(deferred.parent / "cpu-small.toml"),
                "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stderr
    assert "branch separation in what cpu-small runs: pass" in r.stdout
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["passed"] is True and result["build"]["golden"]["passed"] is True
    m = json.loads((deferred / "manifest.json").read_text())
    assert m["build"]["status"] == "built" and m["build"]["target"] == "cpu-small"
    assert m["build"]["runtime_target"]["shapes"]["batch"] == [1, 4, 16]
    assert m["target"]["name"] == "cuda-named"  # the graph's target, embedded in model.onnx, is unchanged
    assert m["separation"]["passed"] is True and (deferred / "runtime" / "cpu-small" / "optimized.onnx").is_file()
    art = api.open_artifact(deferred)
    assert art.target.name == "cpu-small"
    assert run_cli("check", str(deferred), "--golden").returncode == 0
    import ffsplit

    emb = ffsplit.load(deferred).encode(["a built artifact"])
    assert emb.shape[0] == 1 and np.isfinite(emb).all()
    # a build target whose graph differs from the export's is a damaged manifest, even with consistent hashes
    forged = tmp_path / "forged"
    import shutil

    shutil.copytree(deferred, forged)
    cpu_int8 = load_target("cpu-int8").to_json()
    forge_manifest(forged, lambda m: m["build"].update(runtime_target={**cpu_int8, "name": "cpu-small"}))
    r = run_cli("check", str(forged), "--golden")
    assert r.returncode == 2 and "its build target does not run this graph" in r.stderr
