"""Quantised and pruned recipes end to end: the runtime runs the torch grid, so fidelity stays tight."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file

from ffsplit import api

LENIENT = {"cosine_mean": 0.5, "cosine_min": 0.3, "retrieval_at10": 0.2}


def test_quantised_light_and_int8_heavy_export_and_check(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "q"
    res = api.export(str(tiny_bert_dir), out, light="prune:0.25+int4:16:asym", heavy="int8", limits=LENIENT,
                     calib_size=16, eval_size=24, max_length=32, progress=False)
    m = res.manifest
    assert m["recipe"]["light"]["recipe"] == "prune:0.25+int4:16:asym" and m["recipe"]["heavy_precision"] == "int8"
    assert m["params"]["ffn_bytes_reduction"] > 0.6
    fid = m["parity"]["comparisons"]["fidelity"]["metrics"]
    assert fid["max_abs"] < 1e-4  # ORT runs exactly the grid the torch model runs
    assert m["parity"]["comparisons"]["compression"]["metrics"]["max_abs"] > 1e-4  # and it is lossy
    state = load_file(str(out / "split.safetensors"))
    scales = [k for k in state if k.startswith("quant.") and k.endswith(".scale")]
    assert len(scales) == 2 * 4  # per layer: heavy fc_in, fc_out (int8), light fc_in, fc_out (int4)
    assert any(k.endswith("light.fc_in.weight.zero_point") for k in state)
    assert api.check(out).passed
