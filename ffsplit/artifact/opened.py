"""``Artifact``: an output folder opened for use (manifest and target checked), what a verb requires of it
(built, unpacked), and the runner of its graph on its target.

It sits above the runtimes in the layers (ARCHITECTURE.md): an opened folder is one that is about to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffsplit.artifact.layout import MANIFEST, MODEL_FILE, SPLIT_WEIGHTS
from ffsplit.artifact.verify import read_manifest, verify_artifact
from ffsplit.errors import UsageError
from ffsplit.manifest import Manifest

if TYPE_CHECKING:
    from ffsplit.runtimes.base import Runner
    from ffsplit.targets import Target


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

    def runner(self, *, runtime_dir: Path | None = None, timing: bool = False) -> Runner[Any]:
        """The runner of the split graph on the artifact's target (not yet activated): ``with art.runner() as r``.
        ``runtime_dir``: where the runtime keeps what it builds; ``timing`` for side-by-side benchmarks."""
        from ffsplit.runtimes.base import make_runner

        return make_runner(self.model_path, self.target, runtime_dir=runtime_dir, timing=timing)
