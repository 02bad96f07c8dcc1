"""Triton model repositories for artifacts.

``write_repository`` lays out a Triton model repository for an artifact: the
onnxruntime backend for ONNX Runtime and OpenVINO targets, the tensorrt backend
for engines, with ``config.pbtxt`` (``serve.config``) built from the model's
signature, dynamic batching with preferred sizes from the target's batch range,
an instance group per target kind, and sequence batching (one sequence per
instance, in order) for KV-cache models. ``python_repository`` writes a
Python-backend model that runs the artifact through ONNX Runtime, which is what
the ``tritonserver`` binary shipped in the ``nvidia-pytriton`` wheel can run (it
has no onnxruntime backend inside; ``serve.server`` starts it).
``text_repository`` writes a Python-backend model that takes strings and
returns what ``ffsplit.load`` gives (embeddings or logits), the slim artifact
inside.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.artifact import MODEL_FILE, RUNTIME_DIR, holds_folder, staged_output
from ffsplit.errors import UsageError
from ffsplit.jsonio import dumps
from ffsplit.runtimes.specs import RUNTIME_SPECS
from ffsplit.serve.config import Signature, Tensor, model_config, signature, to_pbtxt
from ffsplit.signature import onnx_signature
from ffsplit.tasks import TASKS

if TYPE_CHECKING:
    from ffsplit.manifest import Manifest

# What ffsplit accepts as a Triton model name: one plain path component inside the repository.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _model_name(manifest: Manifest) -> str:
    base = Path(manifest.source.spec).name or "model"
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"ffsplit-{base}-{manifest.target_name}")[:128]


def _model_dir(repo: Path, name: str, artifact: Path) -> Path:
    """``repo/name`` for a validated model name; the folder must not exist yet, nor lie inside ``artifact``."""
    from ffsplit.artifact import refuse_inside

    refuse_inside(repo, {"artifact": artifact}, "--repo")
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise UsageError(
            f"--name '{name[:60]}' is not a Triton model name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (no '/' or '..')"
        )
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"--repo '{repo}' is a file: pass a folder for the model repository")
    model_dir = repo / name
    if model_dir.exists() or model_dir.is_symlink():
        raise UsageError(f"'{model_dir}' already exists: choose another --name or --repo, or remove it")
    return model_dir


@holds_folder
def write_repository(artifact: Path, repo: Path, *, name: str | None = None) -> Path:
    """A Triton model repository serving ``artifact`` with Triton's own backend for its target."""
    from ffsplit.artifact.opened import Artifact

    art = Artifact.open(artifact).require_built("triton")
    model_dir = _model_dir(repo, name or _model_name(art.manifest), art.folder)
    name = model_dir.name
    target = art.target
    if target.ir_compression:
        raise UsageError(
            f"'{artifact}' runs an OpenVINO IR (target {target.name}: runtime/{target.name}/model.xml), which "
            "ffsplit triton does not write (it writes ONNX Runtime and TensorRT models, and model.onnx is not the "
            "graph that was checked): serve the IR with Triton's OpenVINO backend, or ffsplit.load in Python"
        )
    sig = signature(art.model_path)
    spec = RUNTIME_SPECS[target.runtime]
    platform = spec.triton_platform
    if spec.triton_file == MODEL_FILE:
        files = [(p, p.name) for p in [art.model_path, *art.folder.glob(MODEL_FILE + ".data")]]
    else:  # an engine the build wrote into the runtime folder
        engine = art.folder / RUNTIME_DIR / target.name / spec.triton_file
        if not engine.is_file():
            raise UsageError(f"'{artifact}' has no {spec.label} engine ({engine}): export it for the target on a "
                             "GPU first")
        files = [(engine, spec.triton_file)]
    cfg = model_config(
        name, sig, platform=platform, backend=None, shapes=target.shapes,
        kind="KIND_GPU" if target.on_gpu else "KIND_CPU", sequence=TASKS[art.manifest.task].past,
    )
    # staged beside the repository's other models and renamed in when whole (a full disk leaves nothing)
    with staged_output(model_dir, force=False) as stage:
        (stage / "1").mkdir()
        for src, dst in files:
            shutil.copy2(src, stage / "1" / dst)
        (stage / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
    return model_dir


# The Python-backend model code: real files in ``backend/``, copied into a model's version folder as
# ``model.py`` with the array helpers they import beside them.
BACKEND_DIR = Path(__file__).parent / "backend"
ARRAYS_FILE = "ffsplit_triton_arrays.py"


def _write_model_code(version_dir: Path, model_file: str) -> None:
    """``backend/model_file`` as ``version_dir/model.py``, with the array helpers it imports."""
    shutil.copyfile(BACKEND_DIR / model_file, version_dir / "model.py")
    shutil.copyfile(BACKEND_DIR / ARRAYS_FILE, version_dir / ARRAYS_FILE)


@holds_folder
def text_repository(artifact: Path, repo: Path, *, name: str | None = None) -> Path:
    """A Python-backend model that takes text (``text``, one string per row) and returns what ``ffsplit.load``
    gives: ``sentence_embedding`` (feature-extraction: the source's pooling and normalisation, or mean
    pooling) or ``logits`` (text-classification). The slim artifact (``pack``) sits in its version folder."""
    from ffsplit.artifact.opened import Artifact
    from ffsplit.artifact.pack import pack_artifact
    from ffsplit.pooling import read_pooling
    from ffsplit.signature import SENTENCE_OUTPUT

    art = Artifact.open(artifact).require_built("triton --text")
    task = art.manifest.task
    if task not in TEXT_TASKS:
        raise UsageError(f"a text front end serves embeddings or class logits; '{artifact}' is {task}: "
                         "serve its tensors (without --text)")
    if TASKS[task].pooled:  # the pooling the served model will read, refused here if it is unreadable
        read_pooling(art.folder, default_length=None)
    _, outputs = onnx_signature(art.model_path)
    source = SENTENCE_OUTPUT if SENTENCE_OUTPUT in outputs else art_output(task)
    width = outputs[source][1][-1]
    if not isinstance(width, int):
        raise UsageError(f"'{artifact}': output {source} has no fixed width ({width}): re-run ffsplit export")
    out_name = SENTENCE_OUTPUT if TASKS[task].pooled else TASKS[task].output
    sig = Signature([Tensor("text", "TYPE_STRING", [1])], [Tensor(out_name, "TYPE_FP32", [width])])
    model_dir = _model_dir(repo, name or _model_name(art.manifest) + "-text", art.folder)
    cfg = model_config(model_dir.name, sig, platform=None, backend="python", shapes=art.target.shapes,
                       kind="KIND_CPU", sequence=False)
    with staged_output(model_dir, force=False) as stage:
        (stage / "1").mkdir()
        _write_model_code(stage / "1", "text_model.py")
        if art.manifest.packed:  # already slim (and verified)
            shutil.copytree(art.folder, stage / "1" / "artifact", symlinks=True)
        else:
            pack_artifact(art.folder, stage / "1" / "artifact")
        (stage / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
    return model_dir


def art_output(task: str) -> str:
    return TASKS[task].output


def text_served(artifact: Path) -> bool:
    """Whether ``serve`` adds a text front end: embedding and classification artifacts."""
    from ffsplit.artifact import read_manifest

    return read_manifest(artifact).task in TEXT_TASKS


def python_repository(artifact: Path, repo: Path, *, name: str | None = None) -> Path:
    """A Python-backend model running ``artifact`` with ONNX Runtime (what the pytriton server can run)."""
    from ffsplit.artifact.opened import Artifact

    art = Artifact.open(artifact).require_built("serve")
    if art.target.runtime != "onnxruntime" or art.target.on_gpu:
        raise UsageError(f"ffsplit serve runs ONNX Runtime CPU artifacts; '{artifact}' targets {art.target.name}")
    return python_model(
        art.model_path, repo, name=name or _model_name(art.manifest), shapes=art.target.shapes,
        session_config=art.target.session_config, sequence=TASKS[art.manifest.task].past,
    )


def python_model(
    model_path: Path, repo: Path, *, name: str, shapes: dict[str, list[int]] | None = None,
    session_config: dict[str, str] | None = None, sequence: bool = False,
) -> Path:
    """A Python-backend model over any ONNX file (an artifact's, or the original model's for comparison)."""
    model_dir = _model_dir(repo, name, model_path.parent)
    cfg = model_config(
        name, signature(model_path), platform=None, backend="python", shapes=shapes or {}, kind="KIND_CPU",
        sequence=sequence, parameters={"session_config": dumps(session_config or {})},
    )
    with staged_output(model_dir, force=False) as stage:
        (stage / "1").mkdir()
        _write_model_code(stage / "1", "onnx_model.py")
        for src in [Path(model_path), *Path(model_path).parent.glob(Path(model_path).name + ".data")]:
            shutil.copy2(src, stage / "1" / (MODEL_FILE + src.name[len(Path(model_path).name):]))
        (stage / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
    return model_dir


TEXT_TASKS = tuple(name for name, task in TASKS.items() if not task.decoder)


