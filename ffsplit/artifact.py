"""The output folder: its file names, atomic writing, the lock, manifest.json and verification.

An output folder is built in a hidden sibling folder and renamed into place
only when complete, so a failure or an interrupt leaves the previous folder
(or nothing), never a mix. ``--force`` replaces only a folder that is itself
a complete ffsplit output. Clean-up runs with SIGINT / SIGTERM held, so a
second signal cannot cut it short, and the next run over the same ``--out``
finishes what a killed run (SIGKILL, a power cut) left.

Reading trusts nothing: manifest.json is parsed with bounds and checked
against its schema (``ffsplit.manifest``), it must agree with the copy
embedded in the hash-protected model.onnx, the folder must hold exactly the
files the manifest lists (no more, no fewer, no links), and no ONNX file may
read external data from outside the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import hashlib
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ffsplit.errors import CheckFailed, UsageError
from ffsplit.jsonio import dumps
from ffsplit.manifest import Manifest, embedded_view

if TYPE_CHECKING:
    from ffsplit.runtimes.targets import Target

T = TypeVar("T")

MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
SPLIT_WEIGHTS = "split.safetensors"
RUNTIME_DIR = "runtime"
MANIFEST_MAX_BYTES = 64 << 20
EMBEDDED_KEY = "pkg.ffsplit.manifest"


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


# -- writing


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT / SIGTERM for a step that must not be cut short (a swap, a clean-up); they land after it.

    Python runs signal handlers in the main thread whichever thread the kernel delivered to, and
    torch, ONNX Runtime and OpenMP start threads whose signal masks a ``pthread_sigmask`` here would
    not cover; so the handlers themselves are swapped for one that only records the signal, and the
    first recorded signal is handed to the previous handler when the step is done.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, _frame: pending.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            handler = old[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                if pending[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                os.kill(os.getpid(), pending[0])


def remove_tree(path: Path) -> None:
    """Remove a folder (never following a link out of it), uninterruptibly."""
    with signals_held():
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a hidden temporary sibling; on any failure neither is left half-written."""
    import tempfile

    path = Path(path)
    # a name nobody can have planted a link on: mkstemp creates it with O_CREAT | O_EXCL, never following one
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".ffsplit-tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with signals_held(), contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_file(path: str | Path | None, flag: str) -> Path | None:
    """Refuse, before any work, a ``--json`` / ``--report`` destination that cannot be written as a file."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if str(path) == "" or p.is_dir():
        raise UsageError(f"{flag} '{path}' is a folder: pass a file path, e.g. {flag} report.json")
    if not p.parent.is_dir():
        raise UsageError(f"{flag} '{path}': folder '{p.parent}' does not exist: create it or pick another path")
    if p.exists() and not p.is_file():
        raise UsageError(f"{flag} '{path}' is not a regular file: pass a file path")
    return p


def refuse_inside(path: Path, folders: dict[str, Path], flag: str) -> None:
    """Refuse a side output (``--json``, ``--report``, ``--repo``) inside an artifact folder a verb reads or
    writes, or on the staging folder and lock beside it: writing there would replace one of the artifact's
    files, or add one its manifest does not list, and the folder would stop being an ffsplit output."""
    where = Path(path).expanduser()
    where = where.parent.resolve() / where.name if where.name not in ("", ".", "..") else where.resolve()
    for what, folder in folders.items():
        folder = resolve_out(folder)
        beside = where.parent == folder.parent and where.name.startswith(f".{folder.name}.ffsplit-")
        if where == folder or folder in where.parents or beside:
            raise UsageError(
                f"{flag} '{path}' is inside the {what} '{folder}', whose files ffsplit owns: write it outside that folder"
            )


def _pid_of(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return "unknown"


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold ``.<name>.ffsplit-lock`` beside ``out`` while writing ``out``.

    The lock is an flock on that file, so the kernel releases it when its
    holder dies by any means; the file records the holder's pid for the
    message a second writer gets. A lock file left behind is simply reused.
    """
    lock = out.parent / f".{out.name}.ffsplit-lock"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"'{lock}' is a symbolic link, not an ffsplit lock: remove it") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _pid_of(fd)
            os.close(fd)
            raise UsageError(
                f"another ffsplit export (pid {owner}) is writing '{out}': wait for it or choose another --out"
            ) from None
        # The previous holder may have unlinked the file between our open and our flock: lock the one on disk.
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock
    finally:
        with signals_held():
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            os.close(fd)


def _leftovers(out: Path, kind: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(out.parent / f".{glob.escape(out.name)}.ffsplit-{kind}-*")))


def finish_interrupted_runs(out: Path) -> None:
    """With ``out``'s lock held: remove what runs killed outright left beside it.

    A run killed between its two renames left the previous folder as
    ``.NAME.ffsplit-old-PID`` and no ``out``: that folder goes back in place.
    Staging folders of dead runs are removed. Nobody else can be writing
    ``out`` while we hold its lock, so every such leftover is a dead run's.
    """
    for old in _leftovers(out, "old"):
        if old.is_dir() and not old.is_symlink() and not out.exists() and not out.is_symlink():
            os.replace(old, out)
        else:
            remove_tree(old)
    for stage in _leftovers(out, "tmp"):
        remove_tree(stage)


def resolve_out(out: str | Path) -> Path:
    """The real path ``--out`` names (links resolved once, here), refused if it cannot be a folder."""
    if str(out).strip() == "":
        raise UsageError("--out is empty: pass the path of a new folder, e.g. --out out/model")
    path = Path(out).expanduser().resolve()
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8: tokenizers, JSON and most tools cannot hold the name
        raise UsageError(f"--out {os.fsencode(path)!r} is not a UTF-8 path: choose a name in UTF-8") from None
    if path == Path(path.anchor):
        raise UsageError(f"--out '{out}' is the file-system root: pass the path of a new folder")
    return path


def not_an_artifact(folder: Path) -> str | None:
    """Why ``folder`` is not a complete ffsplit output (None when it is one).

    One is a folder whose manifest.json (of any format) lists every file in it
    and nothing else; outputs of older ffsplit versions count, so --force can
    replace them.
    """
    path = folder / MANIFEST
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MANIFEST_MAX_BYTES:
            return f"no {MANIFEST} of ffsplit's"
        manifest = parse_json(path.read_text(encoding="utf-8"), str(path))
    except (UsageError, OSError, UnicodeDecodeError):
        return f"its {MANIFEST} is not ffsplit's"
    if not (isinstance(manifest, dict) and isinstance(manifest.get("format"), int) and isinstance(manifest.get("files"), dict)):
        return f"its {MANIFEST} is not ffsplit's"
    present, problems = list_files(folder)
    extra = sorted(set(present) - set(manifest["files"]) - {MANIFEST})
    if problems or extra:
        return f"'{folder}' holds files ffsplit did not write ({', '.join((problems + extra)[:3])})"
    return None


def refuse_overlap(out: Path, protected: dict[str, Path]) -> None:
    """Refuse an ``out`` that equals, contains or lies inside a protected folder (the source model)."""
    for what, p in protected.items():
        p = p.resolve()
        if out == p or out in p.parents or p in out.parents:
            raise UsageError(
                f"--out '{out}' overlaps the {what} '{p}': write the output to a folder outside it"
            )


@contextlib.contextmanager
def staged_output(out: str | Path, *, force: bool, protected: dict[str, Path] | None = None) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out``, on any error it is removed.

    ``out`` must be new, or (with ``force``) a complete ffsplit output; it may
    not overlap a ``protected`` folder. The folder is locked for the whole
    run, and the swap and every clean-up run with interrupts held, so ``out``
    is always the previous complete folder or the new complete one.
    """
    out = resolve_out(out)
    refuse_overlap(out, protected or {})
    _check_replaceable(out, force=force)
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"--out '{out}': '{parent}' is a file, not a folder: choose another --out")
    created = make_parents(parent)
    try:
        with output_lock(out):
            finish_interrupted_runs(out)
            stage = parent / f".{out.name}.ffsplit-tmp-{os.getpid()}"
            stage.mkdir()
            try:
                yield stage
                _check_replaceable(out, force=force)  # it may have changed during a long run
                with signals_held():
                    old = None
                    if out.exists():
                        old = parent / f".{out.name}.ffsplit-old-{os.getpid()}"
                        os.replace(out, old)
                    os.replace(stage, out)
                    if old is not None:
                        shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                remove_tree(stage)
                raise
    except BaseException:
        remove_empty_folders(created)
        raise


def make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders this call created, deepest first."""
    created = []
    p = folder
    while not p.exists() and not p.is_symlink():
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_folders(created: list[Path]) -> None:
    """Undo ``make_parents``: remove each folder it created, deepest first, only while it is empty.

    Anything put there meanwhile (a user's file, another export's complete output) keeps its folder: a
    clean-up removes only what its run created and still holds, never a tree.
    """
    with signals_held():
        for p in created:
            try:
                os.rmdir(p)
            except OSError:  # not empty (or gone, or replaced): leave it and everything above it
                return


def _check_replaceable(out: Path, *, force: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out '{out}' is a file, not a folder: choose a folder path for --out")
    if not out.exists():
        return
    reason = not_an_artifact(out)
    if reason is not None:
        raise UsageError(
            f"--out '{out}' exists and is not an ffsplit output folder ({reason}); --force replaces only "
            "ffsplit outputs: choose a new folder"
        )
    if not force:
        raise UsageError(f"output folder '{out}' already exists: choose another --out or pass --force to replace it")


# -- reading and verifying


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


def read_manifest(folder: str | Path) -> Manifest:
    """manifest.json, parsed with bounds and checked against the schema (UsageError when it departs)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not an ffsplit output folder: pass the --out folder of an export")
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"'{folder}' has no {MANIFEST}: pass the --out folder of a completed ffsplit export")
    if path.stat().st_size > MANIFEST_MAX_BYTES:
        raise UsageError(f"{path} is larger than any ffsplit manifest: re-run ffsplit export")
    return Manifest.from_json(parse_json(read_utf8(path, "re-run ffsplit export"), str(path)), where=str(path))


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the hashes of every file in ``folder`` and write manifest.json (atomically)."""
    files, problems = list_files(folder)
    if problems:
        raise RuntimeError(f"ffsplit wrote something other than files into its output: {problems}")
    manifest = {**manifest, "files": {rel: sha256_file(p) for rel, p in sorted(files.items()) if rel != MANIFEST}}
    write_text_atomic(folder / MANIFEST, dumps(manifest, strict=True, indent=2, sort_keys=False) + "\n")
    return manifest


def _safe_relative(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts)


def verify_files(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse an artifact whose files differ from what its manifest lists, either way."""
    folder = Path(folder)
    present, problems = list_files(folder)
    listed = manifest["files"]
    for rel, digest in listed.items():
        if not _safe_relative(rel):
            problems.append(f"{rel} points outside the folder")
        elif rel not in present:
            problems.append(f"{rel} is missing")
        elif sha256_file(present[rel]) != digest:
            problems.append(f"{rel} was modified")
    problems += [f"{rel} is not listed in the manifest" for rel in sorted(set(present) - set(listed) - {MANIFEST})]
    if problems:
        more = f" and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise UsageError(
            f"'{folder}' does not match its manifest ({'; '.join(problems[:4])}{more}): re-run ffsplit export"
        )


def onnx_metadata(model_path: Path) -> dict[str, str]:
    """An ONNX file's metadata_props, after refusing external data that would be read from outside its folder.

    The file is parsed without its external data, so nothing outside is ever read.
    """
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
                f"('{location}'); refusing to read it: re-run ffsplit export, or keep the data beside the model"
            )
    return {p.key: p.value for p in model.metadata_props}


def check_external_data(model_path: Path) -> None:
    """Refuse an ONNX file whose external data would be read from outside its own folder (never reads it)."""
    onnx_metadata(model_path)


def check_embedded_manifest(folder: Path, manifest: Mapping[str, Any], meta: dict[str, str] | None = None) -> None:
    """manifest.json must agree with the copy embedded in model.onnx (whose hash the manifest lists).

    Everything decided before the model was saved (source, target with its
    runtime options, recipe, layers, checks) lives in both; a difference
    means one of them was edited or swapped after the export: a failed check.
    ``meta``: model.onnx's metadata, when the caller has already read it.
    """
    if meta is None:
        meta = onnx_metadata(Path(folder) / MODEL_FILE)
    if EMBEDDED_KEY not in meta:
        raise CheckFailed(
            f"'{Path(folder) / MODEL_FILE}' carries no ffsplit manifest: it is not the model this folder was "
            "exported with; re-run ffsplit export"
        )
    embedded = parse_json(meta[EMBEDDED_KEY], f"the manifest embedded in {MODEL_FILE}")
    if not isinstance(embedded, dict):
        raise CheckFailed(f"the manifest embedded in {MODEL_FILE} is not an object: re-run ffsplit export")
    ours, theirs = embedded_view(embedded), embedded_view(manifest)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        raise CheckFailed(
            f"'{folder}': {MANIFEST} disagrees with the manifest embedded in {MODEL_FILE} "
            f"({', '.join(differ[:6])}): one was edited or swapped after the export; re-run ffsplit export"
        )


def verify_artifact(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Everything ``check`` / ``bench`` / ``debug`` / ``triton`` trust, before anything runs."""
    verify_files(folder, manifest)
    # each ONNX file is parsed once: its external data checked, and model.onnx's metadata kept
    metadata = {rel: onnx_metadata(Path(folder) / rel) for rel in manifest["files"] if rel.endswith(".onnx")}
    check_embedded_manifest(folder, manifest, metadata.get(MODEL_FILE))


# -- the artifact opened for use: manifest, target, source model and split weights


@dataclass
class LoadedArtifact:
    """An output folder opened for use: its manifest (schema-checked) and its target (validated)."""

    folder: Path
    manifest: Manifest
    target: Target  # what it runs on (the build's target, when `ffsplit build` chose one)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def unreplaced(folder: str | Path) -> Iterator[None]:
    """Refuse (UsageError) when ``folder`` is replaced while the body reads it.

    ``export --force`` renames a new folder into place: a verb that verified
    the old folder's hashes would go on to read the new one's files, and its
    verdict would be about neither artifact. The folder is held open
    throughout, so its inode cannot be reused, and its identity compared when
    the body ends, however it ends (an error then is most likely the swap).
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # not a folder (the verb's own checks say so), or a system that cannot open folders
        yield
        return
    try:
        held = _identity(os.fstat(fd))
        try:
            yield
        except Exception:
            _refuse_if_replaced(Path(folder), held)
            raise
        _refuse_if_replaced(Path(folder), held)
    finally:
        os.close(fd)


def _refuse_if_replaced(folder: Path, held: tuple[int, int]) -> None:
    try:
        same = _identity(os.stat(folder)) == held
    except OSError:
        same = False
    if not same:
        raise UsageError(f"'{folder}' was replaced while it was being read (an export --force into it?): the "
                         "result would mix two artifacts; run the command again") from None


def holds_folder(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn(folder, ...)`` run under ``unreplaced(folder)``."""

    @functools.wraps(fn)
    def wrapper(folder: str | Path, *args: Any, **kwargs: Any) -> T:
        with unreplaced(folder):
            return fn(folder, *args, **kwargs)

    return wrapper


def open_artifact(folder: str | Path, *, verify: bool = True) -> LoadedArtifact:
    """An output folder with its manifest (schema-checked) and target (checked like a target file).

    ``verify`` (everything but ``inspect``) also checks the files against the
    manifest both ways, external data of every ONNX file, and the manifest
    against the copy embedded in model.onnx.
    """
    from ffsplit.limits import TASK_METRICS
    from ffsplit.runtimes.targets import Target

    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        verify_artifact(folder, manifest)
    target = Target.from_json(manifest["target"], where=str(folder / "manifest.json"))
    built = manifest.build.runtime_target
    if built is not None:  # `ffsplit build --target` built this graph for another target with the same graph
        runtime_target = Target.from_json(built, where=f"{folder / 'manifest.json'} (build)")
        if runtime_target.graph_differences(target) or manifest.build.target != runtime_target.name:
            raise UsageError(f"{folder / 'manifest.json'} is damaged (its build target does not run this graph): "
                             "re-run ffsplit build")
        target = runtime_target
    unknown = {k for limits in manifest.limits.values() for k in limits} - set(TASK_METRICS[manifest.task])
    if unknown:
        raise UsageError(
            f"{folder / 'manifest.json'} is damaged (limits on {', '.join(sorted(unknown))}, which "
            f"{manifest.task} does not measure): re-run ffsplit export"
        )
    return LoadedArtifact(folder, manifest, target)


def versions() -> dict[str, str]:
    """The versions an artifact records (and the bench baseline cache is keyed on)."""
    import platform

    import onnx
    import onnx_ir
    import onnxruntime
    import torch
    import transformers

    from ffsplit.version import __version__

    return {
        "ffsplit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def not_deployed(rel: str, *, runs_ir: bool = False) -> bool:
    """Files of an artifact a deployment does not run: the split torch weights (``check`` rebuilds the
    split model from them) and the graphs and layer lists the guard read (the runtime rebuilds those). For a
    target that ``runs_ir`` (an OpenVINO IR NNCF built) also model.onnx's external weights: the IR holds what
    runs, and model.onnx stays only for its signature."""
    return rel == SPLIT_WEIGHTS or (runs_ir and rel == f"{MODEL_FILE}.data") or (
        rel.startswith(f"{RUNTIME_DIR}/") and rel.rsplit("/", 1)[-1] in ("optimized.onnx", "optimized.onnx.data", "layers.json")
    )


@holds_folder
def pack_artifact(folder: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Copy a verified artifact to ``out`` without the files its target does not run (``not_deployed``);
    the copy's manifest lists them under ``packed``. Returns the copy's manifest."""
    art = open_artifact(folder)
    require_unpacked(art, "pack")
    present, _ = list_files(art.folder)
    runs_ir = art.target.ir_compression is not None
    keep = sorted(rel for rel in art.manifest.files if not not_deployed(rel, runs_ir=runs_ir))
    dropped = sorted(rel for rel in art.manifest.files if not_deployed(rel, runs_ir=runs_ir))
    with staged_output(out, force=force, protected={"artifact": art.folder}) as stage:
        for rel in keep:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(present[rel], stage / rel, follow_symlinks=False)
        manifest = {k: v for k, v in art.manifest.items() if k != "files"}
        manifest["packed"] = {"dropped": dropped}
        written = write_manifest(stage, manifest)
        changed = sorted(rel for rel in keep if written["files"].get(rel) != art.manifest.files[rel])
        if changed:  # copied after verification: a file changed in between is not the verified one
            raise UsageError(f"{', '.join(changed[:3])} in '{art.folder}' changed while it was copied: run pack again")
    return written


def require_built(art: LoadedArtifact, verb: str) -> None:
    """Refuse to run an artifact whose build was deferred: no guard has seen what its runtime executes."""
    build = art.manifest.build
    if build.deferred:
        raise UsageError(
            f"{art.folder} was exported for '{build.target}' without building it (on that machine: "
            f"{str(build.reason or 'it could not run')[:200]}): run `ffsplit build {art.folder}` on a machine "
            f"where '{build.target}' runs, then `{verb}`"
        )


def require_unpacked(art: LoadedArtifact, verb: str) -> None:
    if art.manifest.packed:
        raise UsageError(
            f"{art.folder} is a packed folder (no {SPLIT_WEIGHTS}): `{verb}` needs the full artifact; "
            "run `ffsplit check DIR --golden` here, or point at the folder `ffsplit export` wrote"
        )
