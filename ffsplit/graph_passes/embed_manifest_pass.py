"""EmbedManifestPass: store ffsplit's manifest in the model's metadata_props."""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir
from onnx_ir.passes import InPlacePass, PassResult

from ffsplit.artifact import EMBEDDED_KEY as MANIFEST_KEY
from ffsplit.jsonio import dumps


class EmbedManifestPass(InPlacePass):
    """Write ``manifest`` (JSON) under ``pkg.ffsplit.manifest``, so the graph says how it was made."""

    def __init__(self, *, manifest: Mapping[str, object]) -> None:
        super().__init__()
        self.text = dumps(manifest, strict=True, sort_keys=True, separators=(",", ":"))

    def call(self, model: ir.Model) -> PassResult:
        if model.metadata_props.get(MANIFEST_KEY) == self.text:
            return PassResult(model, False)
        model.metadata_props[MANIFEST_KEY] = self.text
        return PassResult(model, True)
