"""GPT-2 (Conv1D projections): its KV-cache export (the other exact exports are in test_exact_exports.py).

The KV-cache export goes through the CLI with ``--task auto`` (a checkpoint with an LM head gets the KV-cache
graph), and the same folder is then checked and benchmarked: one export serves all three.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import assert_exact_artifact, run_cli, save_family_model

KV = ("gpt2", "causal-lm-with-past")
SIZES = ("--calib-size", "16", "--eval-size", "24", "--max-length", "32")  # as assert_exact_export


def test_kv_cache_export_by_task_auto_then_check_and_bench(family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "out"
    r = run_cli("export", str(save_family_model("gpt2", family_root)), "--out", str(out), "--light", "none", *SIZES)
    assert r.returncode == 0, r.stderr
    assert "generation_agreement" in r.stdout
    assert_exact_artifact(out, *KV)
    r = run_cli("check", str(out), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["task"] == "causal-lm-with-past"
    assert report["comparisons"]["fidelity"]["metrics"]["generation_agreement"] == 1.0
    r = run_cli("bench", str(out), "--batch", "1", "--seq", "16", "--runs", "2", "--warmup", "0", "--min-seconds", "0")
    assert r.returncode == 0, r.stderr
