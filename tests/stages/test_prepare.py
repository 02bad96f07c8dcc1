"""stages.prepare: what loading refuses before any work, and which statistics profiling gathers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ffsplit.errors import UsageError
from ffsplit.plan import ExportOptions, resolve
from ffsplit.stages import prepare


def _plan(model: Path, **options: object):  # noqa: ANN202
    return resolve(ExportOptions(model=str(model), out=model.parent / "out", calib_size=8, eval_size=16,
                                 **{"max_length": 32, **options}))  # type: ignore[arg-type]


def test_a_length_beyond_the_models_positions_is_refused_at_load(tiny_bert_dir: Path) -> None:
    with pytest.raises(UsageError, match=r"--max-length 512 is longer than the 128 positions .*--max-length <= 128"):
        prepare.load(_plan(tiny_bert_dir, max_length=512, light="int8"))


def test_a_task_the_family_does_not_do_is_refused_at_load(tiny_bert_dir: Path) -> None:
    with pytest.raises(UsageError, match="task causal-lm is not supported for the bert family: use --task"):
        prepare.load(_plan(tiny_bert_dir, task="causal-lm", light="int8"))


@pytest.mark.parametrize(("light", "moments", "samples"), [
    ("none", False, 0),  # the exact recipe measures nothing
    ("int8", False, 512),  # errors measured on sampled FFN inputs
    ("lowrank:8", True, 512),  # activation-aware factors need the full second moments
])
def test_profile_gathers_second_moments_only_where_a_recipe_uses_them(
        tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, light: str, moments: bool, samples: int) -> None:
    seen: dict = {}
    monkeypatch.setattr("ffsplit.split.profile.profile_model", lambda *a, **kw: seen.update(kw) or ["profile"])
    loaded = SimpleNamespace(model=None, tokenizer=None, task=SimpleNamespace(position_ids=False))
    assert prepare.profile(_plan(tiny_bert_dir, light=light), loaded, None, progress=False) == ["profile"]
    assert (seen["moments"], seen["samples"]) == (moments, samples)
