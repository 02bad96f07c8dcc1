"""``ffsplit pack``: a slim copy of an artifact with only what its target runs (a verb on an opened artifact, so
above the runtimes with ``opened``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ffsplit.artifact.fs import holds_folder, staged_output
from ffsplit.artifact.layout import not_deployed
from ffsplit.artifact.opened import Artifact
from ffsplit.artifact.reading import list_files
from ffsplit.artifact.verify import write_manifest
from ffsplit.errors import UsageError
from ffsplit.manifest import Manifest, Packed


@holds_folder
def pack_artifact(folder: str | Path, out: str | Path, *, force: bool = False) -> Manifest:
    """Copy a verified artifact to ``out`` without the files its target does not run (``not_deployed``);
    the copy's manifest lists them under ``packed``. Returns the copy's manifest."""
    art = Artifact.open(folder).require_unpacked("pack")
    present, _ = list_files(art.folder)
    runs_ir = art.target.ir_compression is not None
    keep = sorted(rel for rel in art.manifest.files if not not_deployed(rel, runs_ir=runs_ir))
    dropped = sorted(rel for rel in art.manifest.files if not_deployed(rel, runs_ir=runs_ir))
    with staged_output(out, force=force, protected={"artifact": art.folder}) as stage:
        for rel in keep:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(present[rel], stage / rel, follow_symlinks=False)
        written = write_manifest(stage, art.manifest.replace(packed=Packed(dropped=tuple(dropped))))
        changed = sorted(rel for rel in keep if written.files.get(rel) != art.manifest.files[rel])
        if changed:  # copied after verification: a file changed in between is not the verified one
            raise UsageError(f"{', '.join(changed[:3])} in '{art.folder}' changed while it was copied: run pack again")
    return written
