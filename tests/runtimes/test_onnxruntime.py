"""The ONNX Runtime runner: interface, input validation against the signature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffsplit.errors import UsageError
from ffsplit.runtimes.onnxruntime import OrtRunner
from ffsplit.runtimes.targets import load_target


def test_runner_interface_and_validation(tiny_none_artifact: Path) -> None:
    runner = OrtRunner(tiny_none_artifact / "model.onnx", load_target("cpu"))
    with runner as r:
        assert set(r.input_signature()) == {"input_ids", "attention_mask", "token_type_ids"}
        ids = np.array([[101, 2023, 102]], dtype=np.int32)  # int32 is cast, same kind
        out = r.infer({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        assert out["last_hidden_state"].shape == (1, 3, 32)
        with pytest.raises(UsageError, match="missing \\['token_type_ids'\\]"):
            r.infer({"input_ids": ids, "attention_mask": ids})
        with pytest.raises(UsageError, match="rank 1"):
            r.infer({"input_ids": ids[0], "attention_mask": ids, "token_type_ids": ids})
        with pytest.raises(UsageError, match="is float64"):
            r.infer({"input_ids": ids * 1.0, "attention_mask": ids, "token_type_ids": ids})
    assert runner.session is None
