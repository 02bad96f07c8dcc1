"""Triton model configuration: the signature of a graph as Triton tensors, ``config.pbtxt`` built from it
(batching, instance groups, sequence batching) and written, and read back for checks."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffsplit.jsonio import dumps
from ffsplit.signature import ELEMENT_TYPES, onnx_signature


@dataclass
class Tensor:
    name: str
    data_type: str
    dims: list[int]  # without the batch dimension; -1 where dynamic


@dataclass
class Signature:
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


def signature(model_path: Path) -> Signature:
    """Inputs and outputs of an ONNX model, batch dimension dropped (Triton adds it with max_batch_size)."""
    inputs, outputs = onnx_signature(model_path)

    def tensors(values: dict[str, tuple[int, list[int | str]]]) -> list[Tensor]:
        return [
            Tensor(name, ELEMENT_TYPES.get(t, ("", "TYPE_FP32"))[1], [d if isinstance(d, int) and d > 0 else -1 for d in dims][1:])
            for name, (t, dims) in values.items()
        ]

    return Signature(tensors(inputs), tensors(outputs))


def model_config(
    name: str, sig: Signature, *, platform: str | None, backend: str | None, shapes: dict[str, list[int]],
    kind: str, sequence: bool, parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The model configuration as a dict shaped like Triton's ModelConfig message."""
    batch = shapes.get("batch", [1, 8, 32])
    cfg: dict[str, Any] = {"name": name}
    if platform:
        cfg["platform"] = platform
    if backend:
        cfg["backend"] = backend
    cfg["max_batch_size"] = int(batch[2])
    cfg["input"] = [{"name": t.name, "data_type": t.data_type, "dims": t.dims} for t in sig.inputs]
    cfg["output"] = [{"name": t.name, "data_type": t.data_type, "dims": t.dims} for t in sig.outputs]
    preferred = sorted({b for b in (batch[1], batch[2]) if b > 1})
    if sequence:
        # one KV-cache sequence stays on one instance and its requests run in order
        cfg["sequence_batching"] = {
            "max_sequence_idle_microseconds": 5_000_000,
            "oldest": {"max_candidate_sequences": int(batch[2]), "preferred_batch_size": preferred,
                       "max_queue_delay_microseconds": 1000},
        }
    else:
        cfg["dynamic_batching"] = {"preferred_batch_size": preferred, "max_queue_delay_microseconds": 1000}
    cfg["instance_group"] = [{"count": 1, "kind": kind}]
    if parameters:
        cfg["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in parameters.items()]
    return cfg


_ENUMS = re.compile(r"^(TYPE_[A-Z0-9]+|KIND_[A-Z]+)$")


def to_pbtxt(cfg: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format for a ModelConfig dict (enums are bare words, strings quoted)."""
    pad = "  " * indent
    lines = []
    for key, value in cfg.items():
        items = value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]
        for item in items:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{\n{to_pbtxt(item, indent + 1)}{pad}}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in item)}]")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "".join(line + "\n" for line in lines)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str) and _ENUMS.match(v):
        return v
    return dumps(str(v))


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|("(?:[^"\\]|\\.)*")|(-?[0-9.eE+-]+)|([{}\[\]:,]))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse the protobuf text format back into a dict (repeated fields become lists); for checking configs."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unexpected text at {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1):
            continue
        tokens.append(m.group(0).strip())
    tokens = [t for t in tokens if t]
    i = 0

    def value(tok: str) -> Any:
        if tok.startswith('"'):
            return json.loads(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        try:
            return float(tok)
        except ValueError:
            return tok

    def message(end: str | None) -> dict[str, Any]:
        nonlocal i
        out: dict[str, Any] = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "{":
                i += 1
                item: Any = message("}")
                i += 1
            elif tokens[i] == "[":
                i += 1
                item = []
                while tokens[i] != "]":
                    if tokens[i] != ",":
                        item.append(value(tokens[i]))
                    i += 1
                i += 1
            else:
                item = value(tokens[i])
                i += 1
            if key in out:
                out[key] = (out[key] if isinstance(out[key], list) and isinstance(item, dict) else [out[key]]) + [item]
            else:
                out[key] = item
        return out

    return message(None)
