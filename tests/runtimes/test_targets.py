"""Target registry: shipped targets load, user files are validated with every error listed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ffsplit.errors import UsageError
from ffsplit.targets import (
    GRAPH_FIELDS,
    Target,
    cpu_has_vnni,
    gpu_present,
    list_targets,
    load_target,
    weight_range,
)


def test_cpu_target_is_shipped_and_usable() -> None:
    cpu = load_target("cpu")
    assert cpu.runtime == "onnxruntime" and cpu.providers == ("CPUExecutionProvider",)
    assert cpu.unavailable_reason() is None
    assert "cpu" in [t.name for t in list_targets()]


def test_unknown_target_lists_the_shipped_ones() -> None:
    with pytest.raises(UsageError, match="unknown target 'tpu': use one of cpu"):
        load_target("tpu")


def test_user_file_errors_are_all_listed(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(
        'runtime = "onnxruntime"\nproviders = "CPU"\nheavy_precision = "fp8"\ncolour = "red"\n'
        "[shapes]\nbatch = [8, 1, 32]\n[parity.fidelity]\nmax_abs = \"tight\"\n",
        encoding="utf-8",
    )
    with pytest.raises(UsageError) as err:
        load_target(str(f))
    msg = str(err.value)
    for part in ("unknown key 'colour'", "light_precision is missing", "providers must be a list",
                 "heavy_precision 'fp8'", "shapes.batch must be", "parity.fidelity.max_abs must be a finite number"):
        assert part in msg, part


def test_user_file_missing_provider_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "gpu.toml"
    f.write_text(
        'runtime = "onnxruntime"\nproviders = ["CUDAExecutionProvider"]\nheavy_precision = "fp32"\nlight_precision = "fp32"\n',
        encoding="utf-8",
    )
    target = load_target(str(f))
    assert target.on_gpu
    import onnxruntime as ort

    if gpu_present() is None and "CUDAExecutionProvider" in ort.get_available_providers():
        assert target.unavailable_reason() is None
    else:
        reason = target.unavailable_reason() or ""
        assert "no NVIDIA GPU" in reason or "lacks CUDAExecutionProvider" in reason


SHIPPED = {"cpu", "cpu-int8", "openvino", "cuda-fp16", "tensorrt-fp16", "tensorrt-int8"}


def test_every_shipped_target_loads_and_says_whether_it_runs_here() -> None:
    targets = {t.name: t for t in list_targets()}
    assert set(targets) >= SHIPPED
    assert targets["tensorrt-int8"].int8_compute == "qdq" and targets["tensorrt-int8"].tensorrt["int8"] is True
    assert targets["cpu-int8"].int8_compute == "dynamic" and targets["cpu-int8"].light_precision == "int8"
    assert targets["openvino"].runtime == "openvino" and not targets["openvino"].on_gpu
    for name in ("cuda-fp16", "tensorrt-fp16", "tensorrt-int8"):
        assert targets[name].on_gpu and targets[name].shapes["past"] == [1, 256, 1024]
        if gpu_present() is not None:
            assert "no NVIDIA GPU" in (targets[name].unavailable_reason() or ""), name
    # round trip through a manifest
    for t in targets.values():
        assert Target.from_json(t.to_json()).to_json() == t.to_json()


def test_nested_tables_are_checked_too(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(
        'runtime = "tensorrt"\nheavy_precision = "fp16"\nlight_precision = "int8"\nint8_compute = "static"\n'
        'opset = 17\n[tensorrt]\nfp16 = "yes"\nworkspace_mb = 1.5\nturbo = true\n'
        '[openvino]\ndevice = 3\nconfig = { NUM_STREAMS = 2 }\n'
        '[provider_options.CUDAExecutionProvider]\ndevice_id = [0]\n'
        '[shapes]\npast = [0, 1, 2]\nbeam = [1, 1, 1]\n',
        encoding="utf-8",
    )
    with pytest.raises(UsageError) as err:
        load_target(str(f))
    msg = str(err.value)
    for part in (
        "int8_compute 'static' is not one of", "tensorrt.fp16 must be true or false", "tensorrt.workspace_mb must be an integer",
        "unknown key 'tensorrt.turbo'", "openvino.device must be a string", "'openvino.config.NUM_STREAMS' must be a string",
        "'provider_options.CUDAExecutionProvider.device_id' must be a string, finite number or boolean",
        "'provider_options.CUDAExecutionProvider' names a provider not in 'providers'",
        "shapes.past must be [min, opt, max] integers", "unknown key 'shapes.beam'",
        "opset 17 is not one of 18, 19, 20, 21, 22, 23",
    ):
        assert part in msg, part


def test_onnxruntime_target_needs_providers(tmp_path: Path) -> None:
    f = tmp_path / "t.toml"
    f.write_text('runtime = "onnxruntime"\nheavy_precision = "fp32"\nlight_precision = "fp32"\n', encoding="utf-8")
    with pytest.raises(UsageError, match="needs 'providers'"):
        load_target(str(f))


def test_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("runtime = \n", encoding="utf-8")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_target(str(f))


def test_new_keys_are_checked(tmp_path: Path) -> None:
    base = Path(load_target("cpu-int8-full").source).read_text()
    for old, new, fragment in (
        ('int8_compute = "dynamic"', 'int8_compute = "nncf"', "int8_compute 'nncf' (NNCF static int8 in an OpenVINO IR) needs runtime 'openvino'"),
        ('fusions = "ort"', 'fusions = "tensorrt"', "fusions 'tensorrt' is not one of none, ort"),
        ('int8_weight_range = "auto"', 'int8_weight_range = "7bit"', "int8_weight_range '7bit' is not one of auto, full, reduced"),
        ('fusions = "ort"', 'fusions = "ort"\nsplit = "up"', "split 'up' is not one of both, down"),
    ):
        path = tmp_path / "t.toml"
        path.write_text(base.replace(old, new))
        with pytest.raises(UsageError, match=re.escape(fragment)):
            load_target(str(path))
    t = load_target("openvino-int8")
    assert (t.int8_compute, t.other_matmuls, t.fusions) == ("nncf", "int8", "none") and t.ir_compression == "int8"
    assert t.int8_weight_range == ("full" if cpu_has_vnni() else "reduced")  # auto, resolved for this CPU
    assert load_target("cpu-int8-full").fusions == "ort" and load_target("cpu").fusions == "none"


def test_the_nncf_int4_settings_are_checked(tmp_path: Path) -> None:
    t = load_target("openvino-int4")
    assert (t.ir_compression, t.heavy_precision, t.other_matmuls, t.split) == ("int4", "int8", "int4", "down")
    assert t.nncf == {"mode": "int4_asym", "group_size": 128, "ratio": 1.0, "awq": False, "scale_estimation": False,
                      "light_group_size": -1}
    assert (t.light_group_size, t.heavy_ratio) == (-1, 0.02)
    assert load_target("cpu-int4").nncf == {} and "nncf" not in load_target("cpu-int4").to_json()
    assert load_target("cpu-int4").light_group_size is None and load_target("cpu-int4").heavy_ratio is None
    # a target (or a manifest from before the key) without a light group size: the light branch uses group_size
    assert dataclasses.replace(t, nncf={k: v for k, v in t.nncf.items() if k != "light_group_size"}).light_group_size == 128
    assert type(t).from_json(t.to_json()) == dataclasses.replace(t, source="", description="")
    base = Path(t.source).read_text()
    for old, new, fragment in (
        ('runtime = "openvino"', 'runtime = "onnxruntime"\nproviders = ["CPUExecutionProvider"]',
         "int4_compute 'nncf' (NNCF int4 weight compression in an OpenVINO IR) needs runtime 'openvino'"),
        ('int8_compute = "weight-only"', 'int8_compute = "nncf"', "build two different IRs: choose one"),
        ('int4_compute = "nncf"', 'int4_compute = "matmulnbits"', "a [nncf] table configures int4_compute"),
        ('mode = "int4_asym"', 'mode = "nf4"', "nncf.mode 'nf4' is not one of int4_asym, int4_sym"),
        ("group_size = 128", "group_size = 100", "nncf.group_size 100 is not one of 32, 64, 128, 256"),
        ("group_size = 128", "group_size = 128\nratio = 0", "nncf.ratio = 0 is outside (0, 1]"),
        ("light_group_size = -1", "light_group_size = 0", "nncf.light_group_size 0 is not one of -1, 32, 64, 128, 256"),
        ("heavy_ratio = 0.02", "heavy_ratio = 1.5", "heavy_ratio = 1.5 is outside (0, 1)"),
        ("heavy_ratio = 0.02", 'heavy_ratio = "2%"', "heavy_ratio must be a"),
        ("awq = false", 'awq = "yes"', "nncf.awq must be true or false"),
        ("awq = false", "gptq = true", "unknown key 'nncf.gptq'"),
    ):
        path = tmp_path / "t.toml"
        path.write_text(base.replace(old, new, 1))
        with pytest.raises(UsageError, match=re.escape(fragment)):
            load_target(str(path))


def test_auto_weight_range_follows_the_cpu(tmp_path: Path) -> None:
    """auto is resolved when a target is read (so a manifest records what the export used): full range only
    on a CPU whose int8 kernels add u8 x s8 products into int32 (VNNI), else within +-64."""
    assert weight_range("auto", vnni=True) == "full" and weight_range("auto", vnni=False) == "reduced"
    assert weight_range("reduced", vnni=True) == "reduced" and weight_range("full", vnni=False) == "full"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert cpu_has_vnni(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t\t: avx_vnni_fake\n")
    assert not cpu_has_vnni(info)
    assert not cpu_has_vnni(tmp_path / "missing")
    path = tmp_path / "mine.toml"
    path.write_text('extends = "cpu-int8"\nint8_weight_range = "reduced"\n')
    assert load_target(str(path)).int8_weight_range == "reduced"
    # a manifest holds the concrete value; a forged "auto" is resolved here rather than trusted
    data = load_target("cpu-int8").to_json()
    assert Target.from_json({**data, "int8_weight_range": "auto"}).int8_weight_range in ("full", "reduced")


def test_extends_inherits_every_table_and_lays_the_file_on_top(tmp_path: Path) -> None:
    from ffsplit.limits import limits_for

    f = tmp_path / "mine.toml"
    f.write_text('extends = "cpu-int8"\n[parity.compression]\ncosine_min = 0.5\n[shapes]\nsequence = [1, 64, 256]\n')
    mine, base = load_target(str(f)), load_target("cpu-int8")
    assert mine.name == "mine" and mine.int8_compute == base.int8_compute == "dynamic" and mine.fusions == "ort"
    assert mine.parity["fidelity"] == base.parity["fidelity"] and mine.session_config == base.session_config
    assert mine.parity["compression"] == {**base.parity["compression"], "cosine_min": 0.5}
    assert mine.shapes["sequence"] == [1, 64, 256]
    assert limits_for(mine, "feature-extraction", exact=False)["compression"]["cosine_mean"] == 0.95


@pytest.mark.parametrize("base", ["tpu", "../cpu", "/etc/passwd", 3])
def test_extends_takes_only_a_shipped_target(base: object, tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(f"extends = {base!r}\n".replace("'", '"'))
    with pytest.raises(UsageError, match="is not a shipped target: use one of cpu"):
        load_target(str(f))


def test_a_lossy_target_without_fidelity_tolerances_is_refused_up_front(tmp_path: Path) -> None:
    f = tmp_path / "fast.toml"
    f.write_text('runtime = "onnxruntime"\nproviders = ["CPUExecutionProvider"]\nheavy_precision = "fp32"\n'
                 'light_precision = "int8"\nint8_compute = "dynamic"\n')
    with pytest.raises(UsageError, match=r"needs its own tolerances: add \[parity.fidelity\]"):
        load_target(str(f))
    f.write_text(f.read_text() + "[parity.fidelity]\nmax_abs = 1.0\ncosine_min = 0.99\n")
    assert load_target(str(f)).parity["fidelity"] == {"max_abs": 1.0, "cosine_min": 0.99}


def test_a_partial_compression_table_keeps_the_other_defaults(tmp_path: Path) -> None:
    from ffsplit.limits import DEFAULT_LIMITS, limits_for

    f = tmp_path / "p.toml"
    f.write_text('runtime = "onnxruntime"\nproviders = ["CPUExecutionProvider"]\nheavy_precision = "fp32"\nlight_precision = "fp32"\n'
                 "[parity.compression]\ncosine_min = 0.7\n")
    lims = limits_for(load_target(str(f)), "causal-lm", exact=False)["compression"]
    assert lims["top1_agreement"] == DEFAULT_LIMITS["compression"]["top1_agreement"] == 0.85
    assert "cosine_min" not in lims  # causal-lm measures no cosine
    assert limits_for(load_target(str(f)), "feature-extraction", exact=False)["compression"]["cosine_min"] == 0.7


def test_graph_differences_name_what_shapes_the_graph(tmp_path: Path) -> None:
    """Targets that run the same model.onnx may differ in how it runs (shapes, providers, builder options);
    precisions, int8 / int4 forms, weight range, fusions and where fp16 is realised make another graph."""
    cpu = load_target("cpu")
    (tmp_path / "wide.toml").write_text('extends = "cpu"\nproviders = ["CUDAExecutionProvider"]\n'
                                        "[shapes]\nbatch = [1, 64, 256]\n")
    assert cpu.graph_differences(load_target(str(tmp_path / "wide.toml"))) == []
    (tmp_path / "down.toml").write_text('extends = "cpu"\nsplit = "down"\n')
    assert cpu.graph_differences(load_target(str(tmp_path / "down.toml"))) == ["split both vs down"]
    (tmp_path / "narrow.toml").write_text('extends = "cpu-int8"\nint8_weight_range = "reduced"\n')
    assert cpu.graph_differences(load_target(str(tmp_path / "narrow.toml"))) == [
        "light_precision fp32 vs int8", "int8_compute weight-only vs dynamic", "int8_weight_range full vs reduced",
        "fusions none vs ort",
    ]
    # both fp16 and both weight-only, but TensorRT lowers an fp32 graph while CUDA's graph holds fp16
    assert load_target("cuda-fp16").graph_differences(load_target("tensorrt-fp16")) == [
        "fp16 / bf16 in the graph vs by the TensorRT builder"
    ]


def test_stand_in_runs_the_same_graph_on_the_cpu() -> None:
    for name in ("cuda-fp16", "tensorrt-int8"):
        target = load_target(name)
        stand_in = target.stand_in()
        assert stand_in.runtime == "onnxruntime" and stand_in.providers == ("CPUExecutionProvider",)
        assert not stand_in.on_gpu and stand_in.unavailable_reason() is None
        assert stand_in.provider_options == {} and stand_in.tensorrt == {}
        assert [getattr(stand_in, f) for f in GRAPH_FIELDS] == [getattr(target, f) for f in GRAPH_FIELDS]
        assert stand_in.parity == target.parity  # held to the target's own tolerances


@pytest.mark.parametrize(("line", "says"), [
    ("perplexity_ratio = 0.9", "parity.fidelity.perplexity_ratio = 0.9 is outside [1, 1e+06]"),
    ("max_abs = -1.0", "parity.fidelity.max_abs = -1 is outside [0, 1e+06]"),
    ("top1_agreement = 1.5", "parity.fidelity.top1_agreement = 1.5 is outside [0, 1]"),
])
def test_a_ceiling_has_a_floor_and_a_floor_is_a_fraction(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f'extends = "cpu-int4"\n[parity.fidelity]\n{line}\n')
    with pytest.raises(UsageError, match=re.escape(says)):
        load_target(str(path))
    path.write_text('extends = "cpu-int4"\n[parity.fidelity]\nperplexity_ratio = 1000.0\nmax_abs = 50.0\n')
    assert load_target(str(path)).parity["fidelity"]["max_abs"] == 50.0


def test_every_target_key_has_one_field_with_its_bounds() -> None:
    """The target schema and Target share one definition: each field declares its key's bounds, and the schema
    bounds no key Target lacks (a key added to one alone fails here, or at import)."""
    from ffsplit.schema import record_check
    from ffsplit.targets.schema import FIELD_CHECKS

    assert set(FIELD_CHECKS) == {f.name for f in dataclasses.fields(Target)}
    assert all(f.metadata["check"] is FIELD_CHECKS[f.name] for f in dataclasses.fields(Target))
    errors: list[str] = []
    record_check(Target, strict=True, leave_out=frozenset({"name", "source"}))(
        {"name": "x", "runtime": "openvino", "heavy_precision": "fp32", "light_precision": "int8"}, "", errors)
    assert errors == ["unknown key 'name'"]  # a file's name is its file name
