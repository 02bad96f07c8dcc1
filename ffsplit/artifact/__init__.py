"""The output folder: its file names (``layout``), atomic writing, the lock and holding a folder while it is
read (``fs``), reading without trust (``reading``), manifest.json and verification (``verify``), all
importable from here. The folder opened to be run, ``opened.Artifact``, and ``ffsplit pack`` (``pack``) sit
above the runtimes (``Artifact.runner()`` builds one), so they are imported from their own modules.
"""

from ffsplit.artifact.fs import (
    check_output_file,
    finish_interrupted_runs,
    holds_folder,
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
    unreplaced,
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
    "check_embedded_manifest", "check_external_data", "check_output_file",
    "finish_interrupted_runs", "holds_folder", "link_or_copy", "list_files", "make_parents",
    "not_an_artifact", "not_deployed", "onnx_metadata", "output_lock",
    "parse_json", "read_manifest", "read_utf8", "refuse_inside", "refuse_overlap", "remove_empty_folders",
    "remove_tree", "resolve_out", "safe_relative", "sha256_file",
    "sha256_files", "signals_held", "staged_output", "unreplaced", "verify_artifact", "verify_files",
    "write_manifest", "write_manifest_json", "write_text_atomic",
]
