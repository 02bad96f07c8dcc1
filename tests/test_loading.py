"""Model loading: how many positions a loaded model computes."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import save_family_model

from ffsplit.loading import load_model, usable_positions


def test_usable_positions(family_root: Path) -> None:
    """RoBERTa's descendants lose padding_idx + 1 positions; a sliding window bounds only a KV-cache graph."""
    def model(t: str) -> torch.nn.Module:
        return load_model(str(save_family_model(t, family_root)), task="feature-extraction").model

    assert usable_positions(model("bert")) == 128
    for t in ("roberta", "xlm-roberta", "camembert"):
        assert usable_positions(model(t)) == 128 - 1, t  # pad_token_id 0: positions 1..127
    assert usable_positions(model("mpnet")) == 128 - 2  # MPNet's padding_idx is always 1: positions 2..127
    assert usable_positions(model("mistral")) == 128 and usable_positions(model("mistral"), past=True) == 64
    assert usable_positions(model("modernbert")) == 128  # local attention is a mask, not a length


def test_max_length_beyond_the_offset_positions_is_refused(family_root: Path, tmp_path: Path) -> None:
    import pytest

    from ffsplit import api
    from ffsplit.errors import UsageError

    with pytest.raises(UsageError, match=r"--max-length 128 is longer than the 127 positions the model computes"):
        api.export(str(save_family_model("roberta", family_root)), tmp_path / "o", light="none", max_length=128,
                   calib_size=8, progress=False)
    assert not (tmp_path / "o").exists()
