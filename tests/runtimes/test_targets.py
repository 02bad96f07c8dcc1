"""Target registry: shipped targets load, user files are validated with every error listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffsplit.errors import UsageError
from ffsplit.runtimes.targets import list_targets, load_target


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
    for part in ("unknown key 'colour'", "missing key 'light_precision'", "'providers' must be a list",
                 "heavy_precision 'fp8'", "'shapes.batch' must be", "'parity.fidelity.max_abs' must be a number"):
        assert part in msg, part


def test_user_file_missing_provider_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "gpu.toml"
    f.write_text(
        'runtime = "onnxruntime"\nproviders = ["CUDAExecutionProvider"]\nheavy_precision = "fp32"\nlight_precision = "fp32"\n',
        encoding="utf-8",
    )
    target = load_target(str(f))
    assert "lacks CUDAExecutionProvider" in (target.unavailable_reason() or "")


def test_invalid_toml(tmp_path: Path) -> None:
    f = tmp_path / "broken.toml"
    f.write_text("runtime = \n", encoding="utf-8")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_target(str(f))
