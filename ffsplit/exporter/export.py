"""Export a (split or original) transformer to ONNX with torch.onnx's dynamo exporter.

Batch and sequence axes are dynamic. The exporter records each node's module
path in its metadata (``pkg.torch.onnx.name_scopes``), which the tag pass reads.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import onnx
import onnx_ir as ir
import torch
from torch import nn

from ffsplit.errors import UsageError
from ffsplit.exporter.wrappers import PastWrapper, TaskWrapper, kv_shape
from ffsplit.pooling import Pooling
from ffsplit.signature import INPUT_ORDER, SENTENCE_OUTPUT, past_names
from ffsplit.split.calibration import positions_from_mask
from ffsplit.tasks import TASKS, TaskSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ffsplit.residency import Placeholders

# Module path prefix the wrapper adds in front of the model's own paths.
WRAPPER_PREFIX = "model."
# Weights past this many bytes go to model.onnx.data: protobuf cannot hold 2 GiB, and an inline graph is
# serialised whole in memory while saving and checking (a 0.5B decoder's 387 MB inline graph: 1.15 GB more
# at save, 0.8 GB in onnx.checker), where external data is written one weight at a time.
EXTERNAL_DATA_THRESHOLD = 128_000_000
SAVE_IN_FLIGHT_BYTES = 64 << 20




def _dims(model: nn.Module, past: bool) -> tuple[torch.export.Dim, torch.export.Dim, torch.export.Dim]:
    """batch, sequence and past_sequence, bounded by the positions the model computes as trained.

    Unbounded dims fail on models whose code branches on the length (a sliding-window
    mask guards ``past <= window - 1``); the bounds are what the graph is checked for.
    """
    from ffsplit.loading import usable_positions

    limit = usable_positions(model, past=past)
    seq_max = None if limit is None else max(limit, 4)
    past_max = None if limit is None else max(seq_max - 1, 5)  # the trace itself uses past 4 + 3 new tokens
    return (
        torch.export.Dim("batch"),
        torch.export.Dim("sequence", max=seq_max) if seq_max else torch.export.Dim("sequence"),
        torch.export.Dim("past_sequence", max=past_max) if past and past_max else torch.export.Dim("past_sequence"),
    )


def _export_with_past(model: nn.Module, tokenizer: PreTrainedTokenizerBase, opset: int | None) -> ir.Model:
    layers, heads, dim = kv_shape(model)
    past_in, present_out = past_names(layers)
    # Traced with past 4 and 3 new tokens (no axis of size 0 or 1, which torch.export
    # would specialise); past 0 (prefill) and 1 new token (decode) run from the same graph.
    batch, seq, past = 2, 3, 4
    ids = torch.randint(0, max(2, tokenizer.vocab_size - 1), (batch, seq))
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[0, :2] = 0
    positions = positions_from_mask(mask)[:, past:]
    past_kv = [torch.zeros(batch, heads, past, dim) for _ in past_in]
    b, s, p = _dims(model, past=True)
    dynamic = (
        {0: b, 1: s}, {0: b, 1: torch.export.Dim.AUTO}, {0: b, 1: s}, tuple({0: b, 2: p} for _ in past_in),
    )
    return _capture(
        PastWrapper(model, layers).eval(), (ids, mask, positions, *past_kv),
        input_names=["input_ids", "attention_mask", "position_ids", *past_in],
        output_names=["logits", *present_out], dynamic_shapes=dynamic, opset=opset,
    )


def _capture(wrapper: nn.Module, args: tuple[torch.Tensor, ...], *, opset: int | None, **options: Any) -> ir.Model:
    """torch.onnx's dynamo export of ``wrapper`` (at ``opset``, or torch.onnx's default), traced on placeholder
    weights: each weight of the graph is computed (in fp32, from the model's stored form) only when read, so
    the graph never holds a second copy of the model; then torch.onnx's own optimiser, as its default export
    runs it."""
    from ffsplit.graph_passes.fold_weight_transposes_pass import FoldWeightTransposesPass
    from ffsplit.residency import placeholders

    with placeholders(wrapper.model, prefix=WRAPPER_PREFIX) as values, quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(wrapper, args, dynamo=True, optimize=False, verbose=False, opset_version=opset,
                                    **options)
    assert program is not None
    bind_weights(program.model, values)
    FoldWeightTransposesPass()(program.model)
    with quiet_exporter():
        program.optimize()
    return program.model


def bind_weights(model: ir.Model, values: Placeholders) -> int:
    """Give each initializer named in ``values`` (``residency.Placeholders``: parameter path -> its fp32
    torch tensor, computed on demand) its real value, lazily; the number bound. A weight left pointing at
    a placeholder (named in a way ``values`` does not know) is a bug, caught here rather than shipped."""
    bound = 0
    for name, value in values.items():
        init = model.graph.initializers.get(name)
        if init is None:  # a parameter the graph does not use, or one path of a tied weight
            continue
        init.const_value = ir.LazyTensor(
            lambda value=value: ir.Tensor(value().numpy()), dtype=ir.DataType.FLOAT,
            shape=ir.Shape(init.shape or ()), name=name,
        )
        init.dtype = ir.DataType.FLOAT
        bound += 1
    for name, init in model.graph.initializers.items():
        if values.unbound(getattr(init.const_value, "raw", None)):
            raise AssertionError(f"the graph's weight {name} was traced from a placeholder that no parameter path names")
    return bound


def input_names_for(tokenizer: PreTrainedTokenizerBase, model: nn.Module, task: TaskSpec) -> list[str]:
    produced = set(tokenizer.model_input_names) | ({"position_ids"} if task.position_ids else set())
    accepted = set(inspect.signature(model.forward).parameters)
    names = [n for n in INPUT_ORDER if n in produced and n in accepted]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise UsageError(f"the tokenizer and model give inputs {names}; ffsplit needs input_ids and attention_mask")
    return names


def graph_input_names(tokenizer: PreTrainedTokenizerBase, model: nn.Module, task: TaskSpec) -> list[str]:
    """The token inputs the exported graph will take (a KV-cache graph's cache inputs aside), known before
    the export: torch is run on exactly these when its outputs are recorded for parity."""
    if task.past:
        return ["input_ids", "attention_mask", "position_ids"]
    return input_names_for(tokenizer, model, task)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(r"## Exception summary\s*\n+<class '([\w.]+)'>: (.*?)(?:\n\s*\n|\Z)", re.S)
# Sentences in torch's messages that point at its own logs or bug tracker rather than the cause.
_NOISE = re.compile(r"(For more information, run with [^\n]*|\(Refer to the full stack trace[^\n]*\)|"
                    r"If you would like to view[^\n]*|The error above occurred[^\n]*)")


def describe_failure(exc: BaseException, limit: int = 400) -> str:
    """The root cause of an export failure in one line: the innermost exception's type and what it says.

    torch.onnx wraps capture errors in a message whose first line is generic ("Failed to export the
    model with torch.export ... Next steps:"); its "Exception summary" names the real error, else the
    ``__cause__`` chain does. Multi-line causes (a violated shape constraint and its suggested fix)
    are joined, so a user sees e.g. ``UserError: Constraints violated (past_sequence)! - Not all
    values of past_sequence ... <= 4095; Suggested fixes: past_sequence = Dim('past_sequence', max=4095)``.
    """
    text = _ANSI.sub("", str(exc))
    found = _SUMMARY.search(text)
    if found:
        name, body = found.group(1).rsplit(".", 1)[-1], found.group(2)
    else:
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        name, body = type(root).__name__, _ANSI.sub("", str(root))
    lines = [ln.strip() for ln in _NOISE.sub("", body).splitlines()]
    said = " ".join(ln for ln in lines if ln).replace("Suggested fixes:", "; suggested fix:")
    said = re.sub(r"\s+", " ", said).strip() or "(no message)"
    line = f"{name}: {said}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


EXPORT_ADVICE = (
    "the model's code does something the exporter cannot capture at these input shapes; "
    "run with FFSPLIT_EXPORT_LOGS=1 for torch's full log, try --exporter torchscript (not for a KV cache: "
    "use --task causal-lm there), or report it with this line"
)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter logs at length about things users cannot act on; keep the CLI readable.

    Its errors are summarised by ``describe_failure`` instead; ``FFSPLIT_EXPORT_LOGS=1`` shows them all.
    """
    if os.environ.get("FFSPLIT_EXPORT_LOGS") == "1":
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch._guards",
                                              "torch.fx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


def sample_inputs(tokenizer: PreTrainedTokenizerBase, names: list[str]) -> dict[str, torch.Tensor]:
    # Two rows of different length so the padded one exercises the mask; no
    # axis of size 0 or 1, which torch.export would specialise.
    enc = dict(tokenizer(
        ["a short sample sentence", "a somewhat longer sample sentence used only to trace the export graph"],
        padding=True,
        return_tensors="pt",
    ))
    enc["position_ids"] = positions_from_mask(enc["attention_mask"])
    return {n: enc[n] for n in names}


def _export_torchscript(wrapper: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], outputs: list[str]) -> ir.Model:
    """The legacy TorchScript exporter (fallback only). Its node names carry the module scope
    (``/model/encoder/layer.0/intermediate/heavy/fc_in/MatMul``), which the tag pass reads
    when there is no metadata."""
    with tempfile.TemporaryDirectory(prefix="ffsplit-ts-") as tmp, quiet_exporter(), torch.no_grad():
        path = Path(tmp) / "captured.onnx"
        torch.onnx.export(
            wrapper, args, str(path), dynamo=False, input_names=names, output_names=outputs,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, opset_version=18,
        )
        return ir.load(path)


class CaptureStrategy:
    """One way to capture a model as ONNX, as torch.onnx's capture strategies are: ``capture`` returns the
    in-memory graph or raises what stopped it (``stages.capture.Captured`` is the result the export keeps)."""

    name: ClassVar[str]
    kv_cache: ClassVar[bool]  # whether it can capture a KV-cache graph (causal-lm-with-past)

    def capture(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, *, pooling: Pooling | None, opset: int | None) -> ir.Model:
        raise NotImplementedError

    @staticmethod
    def _wrapped(model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, pooling: Pooling | None) -> tuple[TaskWrapper, list[str], list[str]]:
        """The task wrapper, its input names and its output names."""
        names = input_names_for(tokenizer, model, spec)
        outputs = [spec.output] + ([SENTENCE_OUTPUT] if pooling is not None else [])
        return TaskWrapper(model, spec, names, pooling).eval(), names, outputs


class DynamoCapture(CaptureStrategy):
    """torch.export and torch.onnx's dynamo exporter, with dynamic batch and sequence (and past) dimensions."""

    name = "dynamo"
    kv_cache = True

    def capture(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, *, pooling: Pooling | None, opset: int | None) -> ir.Model:
        if spec.past:
            return _export_with_past(model, tokenizer, opset)
        wrapper, names, outputs = self._wrapped(model, tokenizer, spec, pooling)
        batch, seq, _ = _dims(model, past=False)
        return _capture(wrapper, tuple(sample_inputs(tokenizer, names).values()), input_names=names,
                        output_names=outputs, dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), opset=opset)


class TorchScriptCapture(CaptureStrategy):
    """The legacy TorchScript exporter: the fallback when dynamo cannot capture a model (no KV cache)."""

    name = "torchscript"
    kv_cache = False

    def capture(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, *, pooling: Pooling | None, opset: int | None) -> ir.Model:
        from ffsplit.residency import materialised

        wrapper, names, outputs = self._wrapped(model, tokenizer, spec, pooling)
        with materialised(model):  # it writes the weights itself: give it real fp32 ones
            return _export_torchscript(wrapper, tuple(sample_inputs(tokenizer, names).values()), names, outputs)


# in the order `--exporter auto` tries them
STRATEGIES: dict[str, type[CaptureStrategy]] = {cls.name: cls for cls in (DynamoCapture, TorchScriptCapture)}
EXPORTERS = tuple(STRATEGIES)


def export_program(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: TaskSpec | str = "feature-extraction", *, exporter: str = "dynamo",
    pooling: Pooling | None = None, opset: int | None = None,
) -> ir.Model:
    """Export ``model`` for ``task`` with the capture strategy named ``exporter``; returns the in-memory ONNX IR
    model.

    ``pooling`` (feature-extraction; a ``pooling.Pooling``) adds a ``sentence_embedding`` output. ``opset``
    (the dynamo exporter) is the ONNX opset to write, None for torch.onnx's default.
    """
    spec = TASKS[task] if isinstance(task, str) else task
    if exporter not in STRATEGIES:
        raise UsageError(f"unknown exporter '{exporter}': use auto, {' or '.join(EXPORTERS)}")
    strategy = STRATEGIES[exporter]()
    if spec.past and not strategy.kv_cache:
        kv = " or ".join(n for n, s in STRATEGIES.items() if s.kv_cache)
        raise UsageError(f"the {exporter} exporter cannot export a KV cache here: use --exporter {kv}")
    return strategy.capture(model, tokenizer, spec, pooling=pooling, opset=opset)


def save_model(model: ir.Model, path: Path) -> list[Path]:
    """Save with external data only past the protobuf limit; check the saved file; return files written."""
    size = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if size > EXTERNAL_DATA_THRESHOLD:
        data = path.name + ".data"
        # onnx_ir computes weights ahead of writing them, up to 1 GB by default: a lazily bound graph
        # (``bind_weights``) would hold that much at once
        ir.save(model, path, external_data=data, max_in_flight_bytes=SAVE_IN_FLIGHT_BYTES)
        files = [path, path.parent / data]
    else:
        ir.save(model, path)
        files = [path]
    onnx.checker.check_model(str(path), full_check=True)
    return files
