"""Structural discovery: an FFN adapter for a model no family file lists, found by shape and checked by running.

Behind the family registry (``adapters.find_adapter``): the repeated blocks
are the backbone's longest ``nn.ModuleList`` of one class; in the first
block, the FFN is an up projection d -> f (with a gate d -> f, or one fused
gate+up projection d -> 2f) and a down projection f -> d under one module
(the MLP), with an activation module beside them. The names are never
guessed. Every candidate is proven by running each block's MLP on random
inputs and comparing it with ``down(act(gate(x)) * up(x))`` (or
``down(act(up(x)))``): only a layout the SplitFFN reproduces to fp32 rounding
is returned. When the shapes are there but the MLP computes something else
(a norm between the projections, a residual added inside), discovery refuses
with what it found.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ffsplit.errors import UsageError
from ffsplit.split.ffn_adapter import FFNAdapter, backbone, get_submodule, projection
from ffsplit.tasks import TASKS

DISCOVERED = "discovered"
ALL_TASKS = tuple(TASKS)
_TOLERANCE = 1e-4  # relative to the MLP output's largest magnitude: fp32 rounding, not a different function
_NOT_ACTIVATIONS = (nn.Dropout, nn.Identity, nn.LayerNorm, nn.Embedding)


class DiscoveredAdapter(FFNAdapter):
    """Base of the adapters discovery builds (one class per model, never registered)."""

    family = DISCOVERED
    model_types: ClassVar[tuple[str, ...]] = ()
    tasks = ALL_TASKS
    found: ClassVar[str] = ""  # what discovery found, for inspect and error messages


@dataclass(frozen=True)
class _Layout:
    mlp: str  # the module the SplitFFN replaces, relative to the layer
    up: str | None
    gate: str | None
    gate_up: str | None
    act: str
    down: str

    def rel(self, path: str | None) -> str | None:
        return None if path is None else f"{self.mlp}.{path}" if self.mlp else path


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    lists = [
        (path, mod) for path, mod in backbone(model).named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) and len({type(m) for m in mod}) == 1
    ]
    return max(lists, key=lambda pm: (len(pm[1]), -pm[0].count("."))) if lists else None


def _candidates(layer: nn.Module) -> list[_Layout]:
    """Every (up, gate, act, down) the shapes allow, each under the innermost module holding all of them."""
    linears = {name: p[0].shape for name, m in layer.named_modules() if name and (p := projection(m)) is not None}
    out: list[_Layout] = []
    for down, (d, f) in linears.items():
        if d == f:
            continue
        ups = [n for n, s in linears.items() if s == (f, d)]
        fused = [n for n, s in linears.items() if s == (2 * f, d)]
        combos = [(u, None, None) for u in ups]
        combos += [(u, g, None) for u, g in itertools.permutations(ups, 2)]
        combos += [(None, None, fu) for fu in fused]
        for up, gate, gate_up in combos:
            names = [n for n in (up, gate, gate_up, down) if n]
            mlp = _common_parent(names)
            for act in _activations(get_submodule(layer, mlp), exclude=names, prefix=mlp):
                up_, gate_, gate_up_, act_, down_ = (_under(n, mlp) for n in (up, gate, gate_up, act, down))
                assert act_ is not None and down_ is not None
                out.append(_Layout(mlp, up_, gate_, gate_up_, act_, down_))
    return out


def _under(name: str | None, mlp: str) -> str | None:
    """``name`` (relative to the layer) relative to the MLP module ``mlp``."""
    return name[len(mlp) + 1:] if name and mlp else name


def _common_parent(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _activations(mlp: nn.Module, *, exclude: list[str], prefix: str) -> list[str]:
    """Parameterless modules of the MLP that are not dropout, identity or a norm: the activation candidates."""
    found = []
    for name, m in mlp.named_modules():
        full = f"{prefix}.{name}" if prefix and name else name or prefix
        if not name or full in exclude or isinstance(m, _NOT_ACTIVATIONS) or any(True for _ in m.parameters()):
            continue
        if not any(True for _ in m.children()):
            found.append(full)
    return found


def _widens(layer: nn.Module, layout: _Layout) -> bool:
    d_model, d_ff = projection(get_submodule(layer, layout.rel(layout.down) or ""))[0].shape  # type: ignore[index]
    return d_ff > d_model


@torch.no_grad()
def _mismatch(layer: nn.Module, layout: _Layout, d_model: int) -> float | None:
    """How far the MLP's own forward is from the reconstruction on random inputs (relative), None if it
    cannot be run with one tensor."""
    mlp = get_submodule(layer, layout.mlp)
    weight = next(mlp.parameters())
    x = torch.randn(2, 5, d_model, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    was_training = mlp.training
    mlp.eval()
    try:
        got = mlp(x)
    except Exception:  # a forward taking more than the hidden states (Bloom's adds the residual)
        return None
    finally:
        mlp.train(was_training)
    if isinstance(got, tuple):
        got = got[0]
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return None

    def lin(path: str) -> torch.Tensor:
        w, b = projection(get_submodule(mlp, path))  # type: ignore[misc]
        return torch.nn.functional.linear(x, w, b)

    act = get_submodule(mlp, layout.act)
    if layout.gate_up is not None:
        gate, up = lin(layout.gate_up).chunk(2, dim=-1)
        h = act(gate) * up
    elif layout.gate is not None:
        h = act(lin(layout.gate)) * lin(layout.up)  # type: ignore[arg-type]
    else:
        h = act(lin(layout.up))  # type: ignore[arg-type]
    w, b = projection(get_submodule(mlp, layout.down))  # type: ignore[misc]
    want = torch.nn.functional.linear(h, w, b)
    return float((got - want).abs().max() / max(float(want.abs().max()), 1e-6))


def discover_adapter(model: nn.Module) -> type[FFNAdapter] | None:
    """An adapter for ``model`` found by structure, None when no block has the shapes of an FFN; UsageError
    when one has them but its MLP computes something the SplitFFN cannot reproduce."""
    found = _layer_list(model)
    if found is None:
        return None
    path, layers = found
    candidates = _candidates(layers[0])
    if not candidates:
        return None
    # FFNs widen (d_ff > d_model) and the gated ones are the more specific match: those are tried, and named
    # in a refusal, first
    gated_first = sorted(candidates, key=lambda c: (not _widens(layers[0], c), c.gate is None and c.gate_up is None,
                                                    c.mlp.count(".")))
    closest: tuple[float, _Layout] | None = None
    for layout in gated_first:
        if not layout.mlp:
            continue  # the projections sit directly in the block: no module of its own computes just the FFN
        d_model = projection(get_submodule(get_submodule(layers[0], layout.mlp), layout.down))[0].shape[0]  # type: ignore[index]
        errors = [_mismatch(layer, layout, d_model) for layer in layers]
        if all(e is not None and e < _TOLERANCE for e in errors):
            return _adapter(model, path, layout)
        worst = max((e for e in errors if e is not None), default=None)
        if worst is not None and (closest is None or worst < closest[0]):
            closest = (worst, layout)
    first = gated_first[0]
    where = f"'{path}.0.{first.mlp}'" if first.mlp else f"the block '{path}.0' itself"
    what = (f"its MLP differs from down(act(up(x))) by {closest[0]:.2g} of its output" if closest else
            "no module holding them computes the FFN from the hidden states alone")
    raise UsageError(
        f"an FFN was found by shape ({where}: up {first.rel(first.up or first.gate_up)}, down "
        f"{first.rel(first.down)}), but {what} (a norm, a scale or a residual inside?), so it cannot be split "
        "exactly: add a family file for it (ffsplit/split/families/)"
    )


def _adapter(model: nn.Module, layers: str, layout: _Layout) -> type[FFNAdapter]:
    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    found = (f"layers '{layers}', MLP '{layout.mlp}': up {layout.rel(layout.up or layout.gate_up)}"
             + (f", gate {layout.rel(layout.gate)}" if layout.gate else "")
             + f", activation {layout.rel(layout.act)}, down {layout.rel(layout.down)}")
    attrs = {
        "model_types": (str(model_type),), "layers": layers, "fc_in": layout.rel(layout.up),
        "fc_gate": layout.rel(layout.gate), "fc_gate_up": layout.rel(layout.gate_up), "act": layout.rel(layout.act),
        "fc_out": layout.rel(layout.down), "replace": layout.mlp, "identities": (), "found": found,
    }
    return type(f"Discovered{str(model_type).title().replace('_', '').replace('-', '')}Adapter",
                (DiscoveredAdapter,), attrs)
