"""Every CLI verb through cli.main in process (one smoke test through the installed console script), and
every bad input of the foundation: exit 2, one line, nothing left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import forge_manifest, run_cli, run_console_script

FAST_ARGS = ["--calib-size", "16", "--eval-size", "24", "--max-length", "32"]


class _Result:
    """What cli.main returned and printed, shaped like subprocess.CompletedProcess."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> _Result:
    """The CLI in this process: same code path as the console script, without a new interpreter."""
    from ffsplit.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return _Result(code, out.out, out.err)


def _assert_usage_error(r, out: Path | None, fragment: str) -> None:  # noqa: ANN001
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    # Progress lines ("[ffsplit] load ...") may precede it; the error itself is one line.
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("[ffsplit] ")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("ffsplit: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    if out is not None:
        assert not out.exists()
        assert not any(p.name.startswith(f".{out.name}.ffsplit-") for p in out.parent.iterdir())


def _pickle_only(tmp_path: Path) -> Path:
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return d


def _empty_calib(tmp_path: Path) -> Path:
    f = tmp_path / "empty.txt"
    f.write_text("\n\n")
    return f


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("missing-model", "not found: pass a local Hugging Face model folder"),
        ("not-a-model", "is not a Hugging Face model folder"),
        ("pickle-only", "loads safetensors only"),
        ("unsupported", "unsupported architecture: model_type 'bloom'"),
        ("heavy-ratio", "outside (0, 1)"),
        ("rank-too-large", "is not smaller than the light width 56"),
        ("empty-calib", "is empty"),
        ("out-exists", "exists and is not an ffsplit output folder"),
        ("unknown-target", "unknown target 'tpu'"),
        ("unknown-recipe", "unknown light recipe 'svd:3'"),
        ("bad-limit", "not METRIC=VALUE"),
        ("bad-flag", "unrecognized arguments"),
    ],
)
def test_export_bad_input(
    case: str, fragment: str, tmp_path: Path, tiny_bert_dir: Path, tiny_unsupported_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    model, extra = str(tiny_bert_dir), []
    if case == "missing-model":
        model = str(tmp_path / "no-such-model")
    elif case == "not-a-model":
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    elif case == "pickle-only":
        model = str(_pickle_only(tmp_path))
    elif case == "unsupported":
        model = str(tiny_unsupported_dir)
    elif case == "heavy-ratio":
        extra = ["--heavy-ratio", "1.5"]
    elif case == "rank-too-large":
        extra = ["--light", "lowrank:56"]
    elif case == "empty-calib":
        extra = ["--calib", str(_empty_calib(tmp_path))]
    elif case == "out-exists":
        out.mkdir()
        (out / "keep").write_text("mine")
    elif case == "unknown-target":
        extra = ["--target", "tpu"]
    elif case == "unknown-recipe":
        extra = ["--light", "svd:3"]
    elif case == "bad-limit":
        extra = ["--limit", "cosine_min"]
    elif case == "bad-flag":
        extra = ["--colour", "red"]
    r = run_main(capsys, "export", model, "--out", str(out), *FAST_ARGS, *extra)
    if case == "out-exists":
        _assert_usage_error(r, None, fragment)
        assert (out / "keep").read_text() == "mine"
    else:
        _assert_usage_error(r, out, fragment)


def test_export_fails_closed_when_parity_misses(tmp_path: Path, tiny_bert_dir: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    r = run_cli("export", str(tiny_bert_dir), "--out", str(out), "--light", "lowrank:1", *FAST_ARGS,
                "--limit", "cosine_min=1.0", "--json", str(report))
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ffsplit: check failed: parity failed, nothing written: compression (original torch vs split torch) cosine_min")
    assert "short by" in last and "Traceback" not in r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    # --json still says what was measured and why nothing was written (for CI)
    failed = json.loads(report.read_text())
    assert failed["passed"] is False and failed["error"].startswith("parity failed")
    assert failed["parity"]["comparisons"]["compression"]["passed"] is False and failed["separation"]["passed"]


def test_export_check_inspect_bench(tiny_lowrank_artifact: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_lowrank_artifact / "manifest.json").read_text())
    assert manifest["parity"]["passed"] and manifest["separation"]["passed"]
    for name in ("model.onnx", "split.safetensors", "config.json", "tokenizer.json", "runtime/cpu/optimized.onnx"):
        assert name in manifest["files"], name

    r = run_cli("check", str(tiny_lowrank_artifact), "--json", str(tmp_path / "check.json"))
    assert r.returncode == 0, r.stderr
    assert "fidelity" in r.stdout and "FAIL" not in r.stdout
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["passed"] and report["comparisons"]["fidelity"]["metrics"]["max_abs"] < 1e-4
    assert report["separation"]["passed"] and report["separation"]["matmuls"]["0"] == {"heavy": 2, "light": 4}
    # --limit tightens what compression may cost at check time; the JSON is written on failure too
    r = run_cli("check", str(tiny_lowrank_artifact), "--limit", "cosine_min=1.0", "--json", str(tmp_path / "c2.json"))
    report = json.loads((tmp_path / "c2.json").read_text())
    assert r.returncode == 1 and not report["passed"] and report["separation"]["passed"]
    assert report["comparisons"]["compression"]["limits"]["cosine_min"] == 1.0
    assert report["comparisons"]["fidelity"]["limits"] == manifest["checks"]["limits"]["fidelity"]
    r = run_cli("check", str(tiny_lowrank_artifact), "--limit", "top1_agreement=0.5")
    assert r.returncode == 2 and "feature-extraction does not measure it" in r.stderr

    r = run_cli("inspect", str(tiny_lowrank_artifact))
    assert r.returncode == 0, r.stderr
    assert "lowrank:8" in r.stdout and "fp32/fp32" in r.stdout and "build: built for cpu" in r.stdout
    # per layer and branch, ops and realised precision in the exported and the runtime's graph
    assert "graph model.onnx:" in r.stdout and "graph runtime/cpu/optimized.onnx:" in r.stdout
    assert "    0 light  fp32       MatMul x4" in r.stdout
    r = run_cli("inspect", str(tiny_lowrank_artifact), "--json")
    info = json.loads(r.stdout)
    r = run_cli("inspect", str(tiny_lowrank_artifact), "--json", str(tmp_path / "inspect.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "inspect.json").read_text()) == info
    assert "graph model.onnx:" in r.stdout  # the table still prints
    assert info["layers"][0]["light_recipe"] == "lowrank:8"
    assert info["graphs"]["model.onnx"]["1"]["light"]["precisions"] == ["fp32"]
    assert info["graphs"]["model.onnx"]["1"]["light"]["ops"]["MatMul"] == 4

    r = run_cli("bench", str(tiny_lowrank_artifact), "--batch", "1,2", "--seq", "16", "--runs", "3",
                "--warmup", "1", "--min-seconds", "0", "--json", str(tmp_path / "bench.json"),
                "--report", str(tmp_path / "bench.md"))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert [(x["model"], x["batch"], x["sequence"], x["runs"]) for x in rows] == [
        ("original", 1, 16, 3), ("ffsplit", 1, 16, 3), ("original", 2, 16, 3), ("ffsplit", 2, 16, 3)
    ]
    assert all(x["p50_ms"] > 0 and x["speedup"] > 0 for x in rows)
    assert "speedup" in r.stdout
    report = (tmp_path / "bench.md").read_text()
    assert "| ffsplit | 2 | 16 | 3 |" in report and "Machine: cpu " in report and "onnxruntime" in report
    assert "Accuracy of what ships" in report and "retrieval_at10" in report
    # a speed gate for CI: no machine makes this tiny model 1000x faster
    r = run_cli("bench", str(tiny_lowrank_artifact), "--batch", "1", "--seq", "8", "--runs", "2", "--warmup", "0",
                "--min-seconds", "0", "--min-speedup", "1000")
    assert r.returncode == 1 and "is below --min-speedup 1000" in r.stderr
    assert run_cli("bench", str(tiny_lowrank_artifact), "--min-speedup", "-1").returncode == 2


def test_targets_verb() -> None:
    r = run_cli("targets")
    assert r.returncode == 0 and r.stdout.startswith("cpu ") and "usable" in r.stdout


def test_check_exits_1_when_a_limit_is_missed(tiny_lowrank_artifact: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_lowrank_artifact, art)
    # a consistent edit (manifest, embedded copy, hashes) that only the parity run itself can fail
    forge_manifest(art, lambda m: m["checks"]["limits"]["compression"].update(cosine_min=1.0))
    r = run_cli("check", str(art))
    assert r.returncode == 1
    assert "ffsplit: check failed: compression (original torch vs split torch) cosine_min" in r.stderr
    assert "Traceback" not in r.stderr


def test_console_script_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    """The real entry point (python -m ffsplit), not just main(): exit 2, one line, no traceback."""
    r = run_console_script("export", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    _assert_usage_error(r, tmp_path / "o", "not found")


@pytest.mark.parametrize("verb", ["check", "bench", "inspect", "debug"])
def test_verbs_refuse_a_folder_that_is_not_an_artifact(verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _assert_usage_error(run_main(capsys, verb, str(tmp_path)), None, "has no manifest.json")


@pytest.mark.parametrize("verb", ["check", "bench", "debug"])
def test_verbs_refuse_a_tampered_artifact(
    verb: str, tiny_none_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_none_artifact, art)
    with open(art / "split.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x00\x01")
    _assert_usage_error(run_main(capsys, verb, str(art)), None, "split.safetensors was modified")


def test_bench_refuses_a_sequence_past_the_model_maximum(tiny_none_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "bench", str(tiny_none_artifact), "--seq", "4096")
    _assert_usage_error(r, None, "longer than the model's maximum")


def test_export_and_check_on_the_users_evaluation_text(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """--eval FILE: parity on the user's domain, recorded in the manifest, reused by check while unchanged."""
    texts = tmp_path / "domain.txt"
    texts.write_text("\n".join(f"invoice {i} for order {i * 7} was paid late" for i in range(20)) + "\n")
    out = tmp_path / "out"
    r = run_cli("export", str(tiny_bert_dir), "--out", str(out), "--light", "none", "--eval", str(texts),
                "--calib-size", "16", "--max-length", "32")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["evaluation"]["source"] == str(texts) and m["evaluation"]["texts"] == 20
    assert m["parity"]["texts"] == 20
    r = run_cli("check", str(out), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c.json").read_text())["texts"] == 20
    texts.write_text(texts.read_text() + "a line past the 20 checked changes nothing\n")
    assert run_cli("check", str(out)).returncode == 0
    texts.write_text(texts.read_text().replace("invoice 3 ", "receipt 3 "))
    r = run_cli("check", str(out))
    assert r.returncode == 2 and "changed since the export was checked on it: pass --eval FILE" in r.stderr
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"line {i}" for i in range(12)))
    r = run_cli("check", str(out), "--eval", str(other), "--json", str(tmp_path / "c2.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "c2.json").read_text())["texts"] == 12
    other.write_text("only\nfive\nlines\nin\nhere\n")
    r = run_cli("export", str(tiny_bert_dir), "--out", str(tmp_path / "o2"), "--eval", str(other))
    assert r.returncode == 2 and "has 5 texts: give at least 11" in r.stderr and not (tmp_path / "o2").exists()


def test_the_export_report_says_which_int8_weight_range_was_used() -> None:
    """Full-range int8 weights run well only on CPUs with VNNI, so the report says which range an export used
    (and nothing when nothing is int8)."""
    from conftest import layer_plan

    from ffsplit.cli.output import weight_range_line

    def line(weight_range: str, light: str, other: str = "fp32") -> str | None:
        return weight_range_line({"int8_weight_range": weight_range, "other_matmuls": other},
                                 [layer_plan(light_precision=light)])

    assert line("full", "fp32") is None
    assert "CPUs without VNNI saturate" in (line("full", "int8") or "")
    assert "within +-64" in (line("reduced", "fp32", other="int8") or "")
