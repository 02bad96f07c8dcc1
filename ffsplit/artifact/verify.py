"""manifest.json and the files it lists: written with every file's hash; read with bounds and checked
against its schema (``ffsplit.manifest``); it must agree with the copy embedded in the hash-protected
model.onnx, the folder must hold exactly the files it lists, and no ONNX file may read external data from
outside the folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ffsplit.artifact.fs import write_text_atomic
from ffsplit.artifact.layout import EMBEDDED_KEY, MANIFEST, MANIFEST_MAX_BYTES, MODEL_FILE
from ffsplit.artifact.reading import list_files, parse_json, read_utf8, safe_relative, sha256_file
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.jsonio import dumps
from ffsplit.manifest import Manifest, embedded_view


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


def write_manifest(folder: Path, manifest: Manifest) -> Manifest:
    """Write manifest.json (atomically) with the hashes of every file in ``folder``; the manifest as written."""
    return manifest.replace(files=write_manifest_json(folder, manifest.to_json())["files"])


def write_manifest_json(folder: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """Write the JSON object ``data`` as manifest.json (atomically), ``files`` set to the hash of every file in
    ``folder``; what was written. ``write_manifest`` for a Manifest; this, for any object (tests that damage one)."""
    files, problems = list_files(folder)
    if problems:
        raise RuntimeError(f"ffsplit wrote something other than files into its output: {problems}")
    data = {**data, "files": {rel: sha256_file(p) for rel, p in sorted(files.items()) if rel != MANIFEST}}
    write_text_atomic(folder / MANIFEST, dumps(data, strict=True, indent=2, sort_keys=False) + "\n")
    return data


def verify_files(folder: Path, listed: Mapping[str, str]) -> None:
    """Refuse an artifact whose files differ from what its manifest lists (``listed``: path -> hash), either way."""
    folder = Path(folder)
    present, problems = list_files(folder)
    for rel, digest in listed.items():
        if not safe_relative(rel):
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


def check_embedded_manifest(folder: Path, manifest: Manifest, meta: dict[str, str] | None = None) -> None:
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
    ours, theirs = embedded_view(embedded), manifest.embedded()
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        raise CheckFailed(
            f"'{folder}': {MANIFEST} disagrees with the manifest embedded in {MODEL_FILE} "
            f"({', '.join(differ[:6])}): one was edited or swapped after the export; re-run ffsplit export"
        )


def verify_artifact(folder: Path, manifest: Manifest) -> None:
    """Everything ``check`` / ``bench`` / ``debug`` / ``triton`` trust, before anything runs."""
    verify_files(folder, manifest.files)
    # each ONNX file is parsed once: its external data checked, and model.onnx's metadata kept
    metadata = {rel: onnx_metadata(Path(folder) / rel) for rel in manifest.files if rel.endswith(".onnx")}
    check_embedded_manifest(folder, manifest, metadata.get(MODEL_FILE))
