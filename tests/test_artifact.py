"""The output folder: atomic replace, no leftovers on failure, hash verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffsplit.artifact import read_manifest, staged_output, verify_files, write_manifest_json
from ffsplit.errors import UsageError


def test_success_renames_into_place(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    with staged_output(out, force=False) as stage:
        (stage / "model.onnx").write_bytes(b"x")
        write_manifest_json(stage, {"format": 2})
    assert (out / "model.onnx").read_bytes() == b"x"
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), staged_output(out, force=False) as stage:
        (stage / "half").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()


def test_failure_with_force_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("previous")
    write_manifest_json(out, {"format": 2})
    with pytest.raises(KeyboardInterrupt), staged_output(out, force=True) as stage:
        (stage / "new").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "old"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_existing_output_needs_force(tmp_path: Path) -> None:
    with staged_output(tmp_path / "out", force=False) as stage:
        write_manifest_json(stage, {"format": 2})
    with pytest.raises(UsageError, match="already exists: choose another --out or pass --force"), staged_output(tmp_path / "out", force=False):
        pass
    with staged_output(tmp_path / "out", force=True) as stage:
        (stage / "f").write_text("new")
    assert (tmp_path / "out" / "f").read_text() == "new"


def test_hashes_are_verified(tmp_path: Path) -> None:
    with staged_output(tmp_path / "out", force=False) as stage:
        (stage / "model.onnx").write_bytes(b"model")
        (stage / "sub").mkdir()
        (stage / "sub" / "x.txt").write_text("x")
        write_manifest_json(stage, {"format": 2})
    folder = tmp_path / "out"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.onnx", "sub/x.txt"}
    verify_files(folder, manifest["files"])
    (folder / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(UsageError, match="model.onnx was modified"):
        verify_files(folder, manifest["files"])
    (folder / "sub" / "x.txt").unlink()
    with pytest.raises(UsageError, match="sub/x.txt is missing"):
        verify_files(folder, manifest["files"])


def test_manifest_path_traversal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": 2, "files": {"../secret": "0" * 64}}))
    with pytest.raises(UsageError, match="points outside the folder"):
        verify_files(folder, json.loads((folder / "manifest.json").read_text())["files"])


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"format": 99, "files": {}})])
def test_bad_manifest(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(UsageError):
        read_manifest(tmp_path)


def test_pack_keeps_what_the_target_runs(tiny_none_artifact: Path, tmp_path: Path) -> None:
    """A slim folder: no split weights, no guard graphs; it loads, encodes and passes --golden like the full one."""
    import numpy as np
    from conftest import run_cli

    import ffsplit

    out = tmp_path / "slim"
    r = run_cli("pack", str(tiny_none_artifact), "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = read_manifest(out).to_json()
    assert m["packed"]["dropped"] == ["runtime/cpu/optimized.onnx", "split.safetensors"]
    assert not (out / "split.safetensors").exists() and (out / "golden.npz").is_file()
    assert sorted(m["files"]) == sorted(set(read_manifest(tiny_none_artifact).files) - set(m["packed"]["dropped"]))
    with ffsplit.load(out) as slim, ffsplit.load(tiny_none_artifact) as full:
        texts = ["a cat", "the weather is nice today"]
        np.testing.assert_array_equal(slim.encode(texts), full.encode(texts))
    assert run_cli("check", str(out), "--golden").returncode == 0
    r = run_cli("check", str(out))
    assert r.returncode == 2 and "is a packed folder (no split.safetensors)" in r.stderr
    # --force replaces a packed output (it is ffsplit's), never the artifact it came from
    assert run_cli("pack", str(tiny_none_artifact), "--out", str(out), "--force").returncode == 0
    r = run_cli("pack", str(out), "--out", str(tmp_path / "again"))
    assert r.returncode == 2 and "needs the full artifact" in r.stderr
    r = run_cli("pack", str(tiny_none_artifact), "--out", str(tiny_none_artifact), "--force")
    assert r.returncode == 2 and read_manifest(tiny_none_artifact).packed is None


def test_every_stage_reports_its_time_and_peak_memory(tiny_none_artifact: Path) -> None:
    """The manifest records the peak resident memory of each stage beside its time (a figure, not a bound:
    memory targets live in benchmarks/decoders.py), and the recorded parity outputs are gone."""
    m = json.loads((tiny_none_artifact / "manifest.json").read_text())
    stages = ["load", "profile", "original outputs", "split", "save split weights", "split outputs",
              "export (dynamo)", "build", "check"]
    run = m["run"]
    assert list(run["timings"]) == stages and "timings" not in m and "memory" not in m
    assert list(run["memory"]["peak_mb"]) == stages
    assert all(v > 0 for v in run["memory"]["peak_mb"].values())
    assert isinstance(run["memory"]["per_stage"], bool) and run["created"].endswith("+00:00")
    assert not any(rel.startswith(".parity") for rel in m["files"]) and not (tiny_none_artifact / ".parity").exists()


def test_two_exports_of_the_same_source_are_byte_identical(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Same source (here, the same files in two folders, as on two machines), options and library versions:
    every file but manifest.json is byte-identical, and the manifests differ only in the run record and in
    where the source lay."""
    import json
    import shutil

    from ffsplit import api
    from ffsplit.artifact import list_files, sha256_file

    elsewhere = shutil.copytree(tiny_bert_dir, tmp_path / "elsewhere" / "tiny-bert")
    outs = [tmp_path / "a", tmp_path / "b"]
    for source, out in zip((tiny_bert_dir, elsewhere), outs, strict=True):
        api.export(str(source), out, light="int8", calib_size=16, eval_size=16, max_length=16, progress=False)
    hashes = [{rel: sha256_file(p) for rel, p in list_files(out)[0].items() if rel != "manifest.json"} for out in outs]
    assert hashes[0] == hashes[1] and "runtime/cpu/optimized.onnx" in hashes[0]
    a, b = (json.loads((out / "manifest.json").read_text()) for out in outs)
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"run", "source"}
    assert {k for k in a["source"] if a["source"][k] != b["source"][k]} == {"path", "spec"}


def test_every_file_name_of_an_output_folder_is_written_once() -> None:
    """artifact/layout.py names each file ffsplit writes into an output folder; no other module spells one out
    (the Triton model code runs inside Triton, without ffsplit; Triton's repository layout names its own)."""
    import ast

    import ffsplit
    from ffsplit.artifact import RESERVED_FILES

    root = Path(ffsplit.__file__).parent
    allowed = {root / "artifact" / "layout.py", root / "serve" / "backend" / "onnx_model.py",
               root / "runtimes" / "specs.py"}
    found = [
        f"{path.relative_to(root)}:{node.lineno} {node.value!r}"
        for path in sorted(root.rglob("*.py")) if path not in allowed
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and node.value in RESERVED_FILES
    ]
    assert found == []
