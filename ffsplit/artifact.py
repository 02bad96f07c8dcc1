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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold ``.<name>.ffsplit-lock`` beside ``out`` (it records the owner's pid) while writing ``out``.

    A second writer is refused while the owner lives; a lock left by a dead
    process is taken over.
    """
    lock = out.parent / f".{out.name}.ffsplit-lock"
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(lock.read_text(encoding="utf-8").strip() or "0")
            except (OSError, ValueError):
                owner = 0
            if owner and owner != os.getpid() and _pid_alive(owner):
                raise UsageError(
                    f"another ffsplit export (pid {owner}) is writing '{out}': wait for it or choose another --out"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its owner is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        break
    else:
        raise UsageError(f"cannot take the lock '{lock}': remove it if no ffsplit export is running")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT / SIGTERM for the two renames that swap the folders, so no interrupt lands between them."""
    import signal

    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError):  # not the main thread, or no POSIX signals
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def staged_output(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out``, on any error it is removed.

    The folder is locked for the whole run (``output_lock``), and the final
    swap happens with interrupts held, so ``out`` is always the previous
    complete folder or the new complete one.
    """
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
    out = parent / out.name
    try:
        with output_lock(out):
            stage = parent / f".{out.name}.ffsplit-tmp-{os.getpid()}"
            shutil.rmtree(stage, ignore_errors=True)
            stage.mkdir()
            try:
                yield stage
                with _signals_held():
                    old = None
                    if out.exists():
                        old = parent / f".{out.name}.ffsplit-old-{os.getpid()}"
                        os.replace(out, old)
                    os.replace(stage, out)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
    except BaseException:
        if created_parent is not None:
            shutil.rmtree(created_parent, ignore_errors=True)
        raise


def check_external_data(model_path: Path) -> None:
    """Refuse an ONNX file whose external data would be read from outside its own folder (never reads it)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise UsageError(
            f"'{model_path}' is not a readable ONNX model ({type(exc).__name__}): re-run ffsplit export"
        ) from None
    folder = Path(model_path).resolve().parent
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise UsageError(
                f"'{model_path}': external data of tensor '{tensor.name}' points outside the model's folder "
                f"('{location}'); refusing to read it"
            )


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
    if not isinstance(manifest["files"], dict) or not all(isinstance(v, str) for v in manifest["files"].values()):
        raise UsageError(f"{path} is damaged (files malformed): re-run ffsplit export")
    return manifest


def require_fields(folder: Path, manifest: dict[str, Any], fields: dict[str, type]) -> None:
    """Refuse a manifest whose sections a verb needs are missing or of the wrong kind (a hand-edited file)."""
    wrong = [k for k, t in fields.items() if not isinstance(manifest.get(k), t)]
    if wrong:
        raise UsageError(f"{Path(folder) / MANIFEST} is damaged ({', '.join(wrong)} malformed): re-run ffsplit export")


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
