"""Export a (split or original) transformer to ONNX with torch.onnx's dynamo exporter.

Batch and sequence axes are dynamic. The exporter records each node's module
path in its metadata (``pkg.torch.onnx.name_scopes``), which the tag pass reads.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import nn

from ffsplit.errors import UsageError

TASKS = ("feature-extraction",)
# Module path prefix the wrapper adds in front of the model's own paths.
WRAPPER_PREFIX = "model."
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes; protobuf cannot hold 2 GiB


class FeatureExtraction(nn.Module):
    """Base model -> last_hidden_state, with inputs passed by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


def input_names_for(tokenizer, model: nn.Module) -> list[str]:  # noqa: ANN001
    wanted = ["input_ids", "attention_mask", "token_type_ids"]
    produced = set(tokenizer.model_input_names)
    forward_args = set(inspect.signature(model.forward).parameters)
    return [n for n in wanted if n in produced and n in forward_args]


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter warns at length about things users cannot act on; keep the CLI readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def sample_inputs(tokenizer, names: list[str]) -> dict[str, torch.Tensor]:  # noqa: ANN001
    # Two rows of different length so the padded one exercises the mask; no
    # axis of size 0 or 1, which torch.export would specialise.
    enc = tokenizer(
        ["a short sample sentence", "a somewhat longer sample sentence used only to trace the export graph"],
        padding=True,
        return_tensors="pt",
    )
    return {n: enc[n] for n in names}


def export_program(model: nn.Module, tokenizer, task: str = "feature-extraction") -> ir.Model:  # noqa: ANN001
    """Export ``model`` for ``task``; returns the in-memory ONNX IR model."""
    if task not in TASKS:
        raise UsageError(f"task '{task}' is not supported yet: use one of {', '.join(TASKS)}")
    names = input_names_for(tokenizer, model)
    # Positional order must follow FeatureExtraction.forward.
    if names[:2] != ["input_ids", "attention_mask"]:
        raise UsageError(f"the tokenizer gives inputs {names}; ffsplit needs input_ids and attention_mask")
    wrapper = FeatureExtraction(model).eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            tuple(sample_inputs(tokenizer, names).values()),
            dynamo=True,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
            verbose=False,
        )
    assert program is not None
    return program.model


def save_model(model: ir.Model, path: Path) -> list[Path]:
    """Save with external data only past the protobuf limit; check the saved file; return files written."""
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if size > EXTERNAL_DATA_THRESHOLD:
        data = path.name + ".data"
        ir.save(model, path, external_data=data)
        files = [path, path.parent / data]
    else:
        ir.save(model, path)
        files = [path]
    onnx.checker.check_model(str(path), full_check=True)
    return files
