"""File-system safety of an output: built in a hidden sibling folder and renamed into place only when
complete, so a failure or an interrupt leaves the previous folder (or nothing), never a mix. ``--force``
replaces only a folder that is itself a complete ffsplit output. Clean-up runs with SIGINT / SIGTERM held, so
a second signal cannot cut it short, and the next run over the same ``--out`` finishes what a killed run
(SIGKILL, a power cut) left. One writer per folder (a lock naming its pid); a verb that reads a folder holds
it against being replaced underneath (``unreplaced``, ``holds_folder``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ffsplit.artifact.layout import MANIFEST, MANIFEST_MAX_BYTES
from ffsplit.artifact.reading import list_files, parse_json
from ffsplit.errors import UsageError

T = TypeVar("T")


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


def link_or_copy(src: Path, dst: Path, *, copy: bool) -> None:
    """``dst`` as a hard link to ``src`` (a copy with ``copy``, or where links cannot be made)."""
    if not copy:
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:  # another file system, or links not allowed: a copy is the same file
            pass
    shutil.copyfile(src, dst, follow_symlinks=False)


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
