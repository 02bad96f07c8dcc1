"""``Artifact``: an output folder opened for use (manifest and target checked), and what a verb requires of it
(built, unpacked); holding a folder against being replaced while a verb reads it; the versions an export
records."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ffsplit.artifact.layout import MANIFEST, MODEL_FILE, SPLIT_WEIGHTS
from ffsplit.artifact.verify import read_manifest, verify_artifact
from ffsplit.errors import UsageError
from ffsplit.manifest import Manifest

if TYPE_CHECKING:
    from ffsplit.targets import Target


T = TypeVar("T")


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


@dataclass
class Artifact:
    """An output folder opened for use: its manifest (schema-checked) and its target (validated).

    ``Artifact.open(folder)`` opens one; a verb then states what it needs of it (``require_built``,
    ``require_unpacked``, each returning the artifact) and runs ``model_path`` on ``target``.
    """

    folder: Path
    manifest: Manifest
    target: Target  # what it runs on (the build's target, when `ffsplit build` chose one)

    @classmethod
    def open(cls, folder: str | Path, *, verify: bool = True) -> Artifact:
        """An output folder with its manifest (schema-checked) and target (checked like a target file).

        ``verify`` (everything but ``inspect``) also checks the files against the
        manifest both ways, external data of every ONNX file, and the manifest
        against the copy embedded in model.onnx.
        """
        from ffsplit.limits import TASK_METRICS
        from ffsplit.targets import Target

        folder = Path(folder)
        manifest = read_manifest(folder)
        if verify:
            verify_artifact(folder, manifest)
        target = Target.from_json(manifest.target, where=str(folder / MANIFEST))
        built = manifest.built.runtime_target
        if built is not None:  # `ffsplit build --target` built this graph for another target with the same graph
            runtime_target = Target.from_json(built, where=f"{folder / MANIFEST} (build)")
            if runtime_target.graph_differences(target) or manifest.built.target != runtime_target.name:
                raise UsageError(f"{folder / MANIFEST} is damaged (its build target does not run this "
                                 "graph): re-run ffsplit build")
            target = runtime_target
        unknown = {k for limits in manifest.limits.values() for k in limits} - set(TASK_METRICS[manifest.task])
        if unknown:
            raise UsageError(
                f"{folder / MANIFEST} is damaged (limits on {', '.join(sorted(unknown))}, which "
                f"{manifest.task} does not measure): re-run ffsplit export"
            )
        return cls(folder, manifest, target)

    @property
    def model_path(self) -> Path:
        """The split graph (what the target's runtime runs, or builds its engine / IR from)."""
        return self.folder / MODEL_FILE

    def require_built(self, verb: str) -> Artifact:
        """Refuse to run an artifact whose build was deferred: no guard has seen what its runtime executes."""
        build = self.manifest.built
        if build.deferred:
            raise UsageError(
                f"{self.folder} was exported for '{build.target}' without building it (on that machine: "
                f"{str(build.reason or 'it could not run')[:200]}): run `ffsplit build {self.folder}` on a "
                f"machine where '{build.target}' runs, then `{verb}`"
            )
        return self

    def require_unpacked(self, verb: str) -> Artifact:
        """Refuse a packed folder for a verb that needs the torch side (the split weights)."""
        if self.manifest.packed:
            raise UsageError(
                f"{self.folder} is a packed folder (no {SPLIT_WEIGHTS}): `{verb}` needs the full artifact; "
                "run `ffsplit check DIR --golden` here, or point at the folder `ffsplit export` wrote"
            )
        return self
