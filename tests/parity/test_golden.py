"""Golden outputs: written at export, re-run by check --golden without torch or the source model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import forge_manifest, run_cli

from ffsplit.parity.golden import GOLDEN_FILE, read_golden
from ffsplit.testing import assert_golden, assert_parity


def test_export_writes_golden_outputs_and_check_reproduces_them(tiny_none_artifact: Path, tmp_path: Path) -> None:
    feed, name, out = read_golden(tiny_none_artifact / GOLDEN_FILE)
    assert name == "last_hidden_state" and out.shape[0] == feed["input_ids"].shape[0] == 4
    assert GOLDEN_FILE in json.loads((tiny_none_artifact / "manifest.json").read_text())["files"]
    r = run_cli("check", str(tiny_none_artifact), "--golden", "--json", str(tmp_path / "g.json"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "g.json").read_text())
    assert result["passed"] and result["max_abs"] == 0.0 and result["tolerance"] == 1e-4
    assert assert_golden(tiny_none_artifact).passed


def test_a_moved_output_fails_golden(tiny_none_artifact: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(tiny_none_artifact, art)
    feed, name, out = read_golden(art / GOLDEN_FILE)
    np.savez(art / GOLDEN_FILE, **{f"in.{k}": v for k, v in feed.items()}, **{f"out.{name}": out + 1e-3})
    forge_manifest(art, lambda m: None)  # hashes made to agree: only the comparison itself can fail
    r = run_cli("check", str(art), "--golden")
    assert r.returncode == 1 and "golden last_hidden_state moved by 0.001 > 0.0001" in r.stderr
    with pytest.raises(AssertionError, match="moved by"):
        assert_golden(art)
    assert run_cli("check", str(art), "--golden", "--tolerance", "0.01").returncode == 0


def test_golden_needs_neither_torch_nor_the_source(tiny_none_artifact: Path) -> None:
    code = (
        "import sys; from ffsplit.cli import main; rc = main(['check', sys.argv[1], '--golden']); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tiny_none_artifact)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_assert_parity_names_the_failures(tiny_lowrank_artifact: Path) -> None:
    assert assert_parity(tiny_lowrank_artifact).passed
    with pytest.raises(AssertionError, match=r"compression \(original torch vs split torch\) cosine_min"):
        assert_parity(tiny_lowrank_artifact, {"cosine_min": 1.0})
