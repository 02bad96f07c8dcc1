"""The output folder: its file names (``layout``), atomic writing and the lock (``fs``), reading without
trust (``reading``), manifest.json and verification (``verify``), the folder opened for use (``opened``) and
``ffsplit pack`` (``pack``). Everything is importable from here, as before it was split into modules.
"""

from ffsplit.artifact.fs import (
    check_output_file,
    finish_interrupted_runs,
    link_or_copy,
    make_parents,
    not_an_artifact,
    output_lock,
    refuse_inside,
    refuse_overlap,
    remove_empty_folders,
    remove_tree,
    resolve_out,
    signals_held,
    staged_output,
    write_text_atomic,
)
from ffsplit.artifact.layout import (
    EMBEDDED_KEY,
    ENGINE_FILE,
    GOLDEN_FILE,
    IR_FILE,
    LAYERS_FILE,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    MODEL_FILE,
    OPTIMIZED_GRAPH,
    RESERVED_FILES,
    RUNTIME_DIR,
    SPLIT_WEIGHTS,
    not_deployed,
)
from ffsplit.artifact.opened import (
    Artifact,
    holds_folder,
    unreplaced,
    versions,
)
from ffsplit.artifact.pack import pack_artifact
from ffsplit.artifact.reading import (
    list_files,
    parse_json,
    read_utf8,
    safe_relative,
    sha256_file,
    sha256_files,
)
from ffsplit.artifact.verify import (
    check_embedded_manifest,
    check_external_data,
    onnx_metadata,
    read_manifest,
    verify_artifact,
    verify_files,
    write_manifest,
    write_manifest_json,
)

__all__ = [
    "ENGINE_FILE", "GOLDEN_FILE", "IR_FILE", "LAYERS_FILE", "OPTIMIZED_GRAPH", "RESERVED_FILES",
    "EMBEDDED_KEY", "MANIFEST", "MANIFEST_MAX_BYTES", "MODEL_FILE", "RUNTIME_DIR", "SPLIT_WEIGHTS",
    "Artifact", "check_embedded_manifest", "check_external_data", "check_output_file",
    "finish_interrupted_runs", "holds_folder", "link_or_copy", "list_files", "make_parents",
    "not_an_artifact", "not_deployed", "onnx_metadata", "output_lock", "pack_artifact",
    "parse_json", "read_manifest", "read_utf8", "refuse_inside", "refuse_overlap", "remove_empty_folders",
    "remove_tree", "resolve_out", "safe_relative", "sha256_file",
    "sha256_files", "signals_held", "staged_output", "unreplaced", "verify_artifact", "verify_files",
    "versions", "write_manifest", "write_manifest_json", "write_text_atomic",
]
