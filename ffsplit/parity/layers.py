"""Layer-by-layer parity: where split torch and the runtime first part ways.

Every module inside a SplitFFN (the branches, their projections and
activations, the SplitFFN itself) is matched to the ONNX value that carries
its output, through the module path the exporter recorded for each node
(``pkg.torch.onnx.name_scopes``; the node name for TorchScript graphs). Those
values become extra graph outputs, torch forward hooks capture the same
modules, and the two are compared on the same batch, in graph order. The
first module whose error crosses the tolerance, and the op that produced its
value, is where to look.

Extra graph outputs can keep a runtime from fusing across them, so this
compares a slightly less optimised graph than the one shipped; the separation
guard covers the shipped one.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir
import torch

from ffsplit.graph_passes.precision import MATMUL_OPS, realized_precision
from ffsplit.graph_passes.tag_branches_pass import NAME_PREFIX, normalize_scope

if TYPE_CHECKING:
    from ffsplit.runtimes.base import Runner


@dataclass(frozen=True)
class Probe:
    """One module's output, in torch and in the graph."""

    order: int  # position of the producing node in the graph
    layer: int
    module: str  # torch path, relative to the task model
    value: str  # ONNX value name
    op_type: str  # the node that produced the value
    node: str
    precision: str | None  # what the module's matrix multiplies realise, if it has any


@dataclass
class ProbeResult:
    layer: int
    module: str
    op_type: str
    node: str
    precision: str | None
    max_abs: float
    reference_max: float
    tolerance: float
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def module_of(node: ir.Node, prefix: str) -> str | None:
    """The module path (without the export wrapper's ``prefix``) a node was traced in."""
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    path = None
    if scopes:
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            names = []
        if len(names) >= 2:
            path = normalize_scope(names[-2])
    else:  # TorchScript: ffsplit/L0/light/model/encoder/layer.0/intermediate/light/fc_in/MatMul
        name = node.name or ""
        if name.startswith(NAME_PREFIX):
            name = "/" + name.split("/", 3)[3]
        if name.startswith("/"):
            path = normalize_scope(".".join(name.split("/")[1:-1]))
    if path is None or not path.startswith(prefix):
        return None
    return path[len(prefix):]


def find_probes(model: ir.Model, split_modules: Mapping[str, int], prefix: str) -> list[Probe]:
    """The value carrying the output of every module inside each SplitFFN."""
    nodes = list(model.graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    members: dict[str, set[int]] = {}  # module path -> ids of its nodes (nested modules included)
    layer_of: dict[str, int] = {}
    for node in nodes:
        path = module_of(node, prefix)
        if path is None:
            continue
        for ffn, layer in split_modules.items():
            if path == ffn or path.startswith(ffn + "."):
                parts = path[len(ffn):].strip(".").split(".") if path != ffn else []
                for depth in range(len(parts) + 1):
                    sub = ".".join([ffn, *parts[:depth]])
                    members.setdefault(sub, set()).add(id(node))
                    layer_of[sub] = layer
    probes = []
    for path, ids in members.items():
        outs = [
            out for n in nodes if id(n) in ids for out in n.outputs
            if out.is_graph_output() or any(id(user) not in ids for user, _ in out.uses())
        ]
        if len(outs) != 1 or outs[0].dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            continue
        producer = outs[0].producer()
        assert producer is not None
        precisions = sorted({realized_precision(n) for n in nodes if id(n) in ids and n.op_type in MATMUL_OPS})
        probes.append(
            Probe(
                index[id(producer)], layer_of[path], path, outs[0].name or "", producer.op_type, producer.name or "",
                ",".join(precisions) or None,
            )
        )
    # a value several modules share (a branch's output is its fc_out's) goes to the innermost first
    return sorted(probes, key=lambda p: (p.order, -p.module.count(".")))


def probed_model(model: ir.Model, probes: list[Probe]) -> ir.Model:
    """``model`` with every probe's value added as a graph output."""
    values = {v.name: v for n in model.graph for v in n.outputs}
    for probe in probes:
        value = values[probe.value]
        if not value.is_graph_output():
            model.graph.outputs.append(value)
    return model


def _capture(model: torch.nn.Module, paths: list[str]) -> tuple[Any, list[Any]]:
    """Hooks recording each module's outputs; ``collect()`` maps paths to outputs afterwards.

    One module object may sit at several paths (an activation shared by both
    branches): its calls are handed to those paths in the order given, which is
    graph order, which is the order torch ran them in.
    """
    by_module: dict[int, list[str]] = {}
    modules: dict[int, torch.nn.Module] = {}
    for path in paths:
        mod = model.get_submodule(path)
        by_module.setdefault(id(mod), []).append(path)
        modules[id(mod)] = mod
    calls: dict[int, list[torch.Tensor]] = {key: [] for key in by_module}
    handles = []
    for key, mod in modules.items():
        def hook(_m: torch.nn.Module, _i: Any, out: Any, key: int = key) -> None:
            calls[key].append(out.detach())

        handles.append(mod.register_forward_hook(hook))

    def collect() -> dict[str, torch.Tensor]:
        seen = {}
        for key, ps in by_module.items():
            if len(calls[key]) == len(ps):
                seen.update(zip(ps, calls[key], strict=True))
        return seen

    return collect, handles


def compare_layers(
    split: torch.nn.Module, model: ir.Model, runner_at: Callable[[Path], Runner], batch: dict[str, torch.Tensor],
    run_torch: Callable[[torch.nn.Module, dict[str, torch.Tensor]], object],
    *, split_modules: Mapping[str, int], prefix: str, tolerance: float,
) -> list[ProbeResult]:
    """Compare every probe on one batch; ``runner_at(path)`` gives an activated runner for an ONNX file."""
    from ffsplit.exporter import save_model

    probes = find_probes(model, split_modules, prefix)
    if not probes:
        return []
    with tempfile.TemporaryDirectory(prefix="ffsplit-debug-") as tmp:
        path = Path(tmp) / "probed.onnx"
        save_model(probed_model(model, probes), path)
        runner = runner_at(path)
        try:
            outs = runner.infer(runner.feed_from({k: v.numpy() for k, v in batch.items()}))
        finally:
            runner.deactivate()
    collect, handles = _capture(split, [p.module for p in probes])
    try:
        run_torch(split, batch)
    finally:
        for h in handles:
            h.remove()
    seen = collect()
    mask = batch["attention_mask"].numpy().astype(bool)
    results = []
    for p in probes:
        if p.module not in seen:
            continue  # a module torch called a different number of times than the graph shows
        ref = seen[p.module].float().numpy()
        got = np.asarray(outs[p.value], dtype=np.float32)
        if ref.shape != got.shape:
            raise ValueError(f"{p.module}: torch gives {ref.shape}, the graph's '{p.value}' {got.shape}")
        if ref.ndim >= 2 and ref.shape[:2] == mask.shape:  # padding tokens are not compared
            ref, got = ref[mask], got[mask]
        err = float(np.abs(ref - got).max()) if ref.size else 0.0
        ref_max = float(np.abs(ref).max()) if ref.size else 0.0
        tol = tolerance * max(1.0, ref_max)
        results.append(ProbeResult(p.layer, p.module, p.op_type, p.node, p.precision, err, ref_max, tol, err <= tol))
    return results


def first_failure(results: list[ProbeResult]) -> ProbeResult | None:
    return next((r for r in results if not r.passed), None)
