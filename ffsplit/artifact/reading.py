"""Reading what an output folder holds without trusting it: hashes, the file list (no links, nothing
outside), UTF-8 and JSON with finite numbers and bounds."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ffsplit.errors import UsageError


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


def list_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Every regular file below ``folder`` by relative POSIX path, and what else is there (links, devices)."""
    files: dict[str, Path] = {}
    problems: list[str] = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in [*dirs, *names]:
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                problems.append(f"{rel} is a symbolic link")
                if name in dirs:
                    dirs.remove(name)
            elif name in names:
                if p.is_file():
                    files[rel] = p
                else:
                    problems.append(f"{rel} is not a regular file")
    return files, problems


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_utf8(path: Path, fix: str) -> str:
    """``path`` as UTF-8 text; UsageError saying ``fix`` when it is not (a decode error is bad input)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: {fix}") from None


def parse_json(text: str, where: str) -> Any:
    """JSON as ffsplit accepts it from disk: no NaN / Infinity, bounded nesting; UsageError otherwise."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply to be an ffsplit manifest: re-run ffsplit export") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"{where} is not valid JSON ({str(exc)[:120]}): re-run ffsplit export") from None


def safe_relative(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts)
