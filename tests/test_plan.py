"""plan.resolve, pure: what a set of options and a target make of the export, and what they refuse, before
any model is loaded (the folder holds a config and an empty weights file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffsplit.errors import UsageError
from ffsplit.plan import DEFAULT_LIGHT, SMOOTH_ALPHA, ExportOptions, resolve


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder resolve accepts without reading weights: a Llama config and an empty safetensors file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (src / "model.safetensors").write_bytes(b"")
    return src


def _plan(folder: Path, **options: object):  # noqa: ANN202
    return resolve(ExportOptions(model=str(folder), out=folder.parent / "out", calib_size=8, eval_size=16,
                                 max_length=32, **options))  # type: ignore[arg-type]


def test_the_target_decides_the_default_recipe_and_precisions(folder: Path) -> None:
    cpu = _plan(folder, task="causal-lm")
    assert str(cpu.recipe) == DEFAULT_LIGHT and cpu.heavy == "fp32" and not cpu.exact and cpu.smooth_alpha is None
    int4 = _plan(folder, target="cpu-int4", task="causal-lm")
    assert str(int4.recipe) == "int4" and int4.heavy == "int8" and int4.target.split == "down"
    int8 = _plan(folder, target="cpu-int8", task="causal-lm")
    assert int8.recipe.quant == "int8" and int8.smooth_alpha == SMOOTH_ALPHA  # it rounds activations to int8
    nncf = _plan(folder, target="openvino-int8", task="causal-lm")
    assert nncf.nncf == "int8" and str(nncf.recipe) == "none" and nncf.planned_light == "int8"
    ov4 = _plan(folder, target="openvino-int4", task="causal-lm-with-past")
    assert ov4.nncf == "int4" and str(ov4.recipe) == "none" and (ov4.heavy, ov4.planned_light) == ("int8", "int4")
    assert not ov4.exact and ov4.target.split == "down"


def test_only_the_untouched_graph_is_exact(folder: Path) -> None:
    assert _plan(folder, light="none", task="causal-lm").exact
    assert not _plan(folder, light="none", heavy="int8", task="causal-lm").exact
    assert not _plan(folder, light="none", target="cpu-int8-full", task="causal-lm").exact  # attention int8 too


def test_the_heavy_ratio_comes_from_the_option_then_the_target_then_the_default(folder: Path) -> None:
    assert _plan(folder, target="openvino-int4", task="causal-lm-with-past").heavy_ratio == 0.02
    assert _plan(folder, target="openvino-int4", task="causal-lm-with-past", heavy_ratio=0.3).heavy_ratio == 0.3
    assert _plan(folder, task="causal-lm").heavy_ratio == 0.1


def test_a_kv_cache_graph_has_no_torchscript_fallback(folder: Path) -> None:
    assert _plan(folder, task="causal-lm").exporters == ("dynamo", "torchscript")
    assert _plan(folder, task="causal-lm-with-past").exporters == ("dynamo",)


def test_the_capture_strategies_are_the_exporters_the_cli_offers() -> None:
    """One table of strategies: the CLI's --exporter choices, the plan's order and the KV-cache refusal read it."""
    from ffsplit.cli.parser import build_parser
    from ffsplit.exporter.export import EXPORTERS, STRATEGIES, export_program

    export = next(a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions  # noqa: SLF001
                  if a.dest == "exporter")
    assert tuple(export.choices) == ("auto", *EXPORTERS) and tuple(STRATEGIES) == EXPORTERS
    with pytest.raises(UsageError, match="the torchscript exporter cannot export a KV cache here: use --exporter dynamo"):
        export_program(None, None, "causal-lm-with-past", exporter="torchscript")  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "says"), [
    ({"budget": "params=0.5", "light": "int8"}, "--budget chooses the light recipe"),
    ({"target": "openvino-int8", "light": "int4"}, "makes the light branch int8 with NNCF"),
    ({"target": "openvino-int4", "light": "int8"}, "makes the light branch int4 with NNCF"),
    ({"target": "openvino-int4", "heavy": "bf16"}, "--heavy fp32 or --heavy int8"),
    ({"target": "openvino-int4", "task": "feature-extraction"}, "is for decoders: NNCF keeps the last multiply int8"),
    ({"target": "openvino-int8", "heavy": "fp16"}, "--heavy fp16"),
    ({"heavy": "bf16"}, "runs on the CPU"),
    ({"light": "int4:24"}, "cannot be stored as MatMulNBits"),
    ({"limits": {"top1_agreement": 1.5}}, "--limit top1_agreement"),
    ({"exporter": "jit"}, "unknown exporter"),
    ({"task": "translation"}, "unknown task"),
])
def test_refused_before_any_work(folder: Path, options: dict[str, object], says: str) -> None:
    with pytest.raises(UsageError, match=says):
        _plan(folder, **({"task": "causal-lm"} | options))
