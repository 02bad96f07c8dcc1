"""The output folder: atomic writing, manifest.json, file hashes and their verification.

An output folder is built in a hidden sibling folder and renamed into place
only when complete, so a failure or an interrupt leaves the previous folder
(or nothing), never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ffsplit.errors import UsageError

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[Path], root: Path) -> str:
    """One digest over several files and their names relative to ``root``."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(root)).encode())
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


@contextlib.contextmanager
def staged_output(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out``, on any error it is removed."""
    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"output folder '{out}' already exists: choose another --out or pass --force")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output path '{out}' is a file: choose a folder path for --out")
    created_parent = None
    parent = out.resolve().parent
    if not parent.exists():
        created_parent = parent
        while not created_parent.parent.exists():
            created_parent = created_parent.parent
        parent.mkdir(parents=True)
    stage = parent / f".{out.name}.ffsplit-tmp-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        old = None
        if out.exists():
            old = parent / f".{out.name}.ffsplit-old-{os.getpid()}"
            os.replace(out, old)
        os.replace(stage, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created_parent is not None:
            shutil.rmtree(created_parent, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the hashes of every file in ``folder`` and write manifest.json (atomically)."""
    manifest = {**manifest, "files": file_hashes(folder)}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not an ffsplit output folder: pass the --out folder of an export")
    path = folder / MANIFEST
    if not path.is_file():
        raise UsageError(f"'{folder}' has no {MANIFEST}: pass the --out folder of a completed ffsplit export")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}): re-run ffsplit export") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise UsageError(f"{path} is not an ffsplit manifest of format {FORMAT}: re-run ffsplit export")
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse an artifact whose files differ from what its manifest recorded."""
    problems = []
    for rel, digest in manifest["files"].items():
        p = Path(folder) / rel
        if not p.resolve().is_relative_to(Path(folder).resolve()):
            problems.append(f"{rel} points outside the folder")
        elif not p.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel} was modified")
    if problems:
        raise UsageError(
            f"'{folder}' does not match its manifest ({'; '.join(problems)}): re-run ffsplit export"
        )
