"""SplitFFN and its branches.

The module names are a contract (DESIGN.md): a ``SplitFFN`` has children
``heavy`` and ``light``; the exporter records module paths in node metadata
and the tag pass reads them from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ffsplit.split.compress import Quantized


class LowRankLinear(nn.Module):
    """``x -> up(down(x))``: a rank-``rank`` factorisation of a Linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _activations(fc_in: nn.Module, act: nn.Module, fc_gate: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``act(fc_in(x))``, or ``act(fc_gate(x)) * fc_in(x)`` for a gated MLP: what a down-projection takes."""
    if fc_gate is None:
        return act(fc_in(x))
    return act(fc_gate(x)) * fc_in(x)


class Branch(nn.Module):
    """``fc_out(act(fc_in(x)))`` over a subset of the FFN's neurons; no output bias.

    Gated (Llama-style) branches compute ``fc_out(act(fc_gate(x)) * fc_in(x))``
    with the same neurons selected from the gate and the up projection. A
    branch of the ``down`` split form has no ``fc_in``: its input is already
    its neurons' activations, and it computes ``fc_out(x)``.
    """

    def __init__(
        self, fc_in: nn.Module | None, act: nn.Module | None, fc_out: nn.Module, fc_gate: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.fc_gate = fc_gate
        self.fc_in = fc_in
        self.act = act
        self.fc_out = fc_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc_in is None:
            return self.fc_out(x)
        assert self.act is not None
        return self.fc_out(_activations(self.fc_in, self.act, self.fc_gate, x))


class SharedUp(nn.Module):
    """The ``down`` split form's up-projection: every neuron's activation at once, the heavy ones first
    (``act(fc_gate(x)) * fc_in(x)`` when gated). It belongs to neither branch."""

    def __init__(self, fc_in: nn.Module, act: nn.Module, fc_gate: nn.Module | None = None) -> None:
        super().__init__()
        self.fc_gate = fc_gate
        self.fc_in = fc_in
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _activations(self.fc_in, self.act, self.fc_gate, x)


class SplitFFN(nn.Module):
    """An FFN computed as ``heavy(x) + light(x) + bias`` (split form ``both``), or, with a shared
    up-projection (form ``down``), ``heavy(h[..., :k]) + light(h[..., k:]) + bias`` with ``h = up(x)``:
    one up-projection over all neurons and only the down-projection split.

    The output bias belongs to neither branch: it is added once, by a node the
    tag pass marks ``merge`` (as are the two slices of the ``down`` form).
    """

    def __init__(self, heavy: Branch, light: Branch, bias: torch.Tensor | None, up: SharedUp | None = None) -> None:
        super().__init__()
        self.up = up
        self.heavy = heavy
        self.light = light
        # fp32 whatever the checkpoint's dtype: a pruned branch's mean contribution is folded into it
        self.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False) if bias is not None else None
        self.k = heavy.fc_out.in_features if up is not None else 0

    @property
    def form(self) -> str:
        return "both" if self.up is None else "down"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up is None:
            y = self.heavy(x) + self.light(x)
        else:
            h = self.up(x)
            y = self.heavy(h[..., : self.k]) + self.light(h[..., self.k :])
        if self.bias is not None:
            y = y + self.bias
        return y


class GridLinear(nn.Linear):
    """A Linear whose weight is held on its quantisation grid: int8 codes (int4 values in int8), a scale per
    output channel (int8) or per block of ``block`` inputs (int4), zero points when asymmetric, and the
    SmoothQuant factors when smoothed. Each call computes with the fp32 weight ``(q - zero_point) * scale
    [/ smooth]``, exactly as ``compress``' quantisers and a runtime's DequantizeLinear do; 1 byte per
    weight held instead of 4.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 smooth: torch.Tensor | None, bias: torch.Tensor | None, *, bits: int, block: int | None) -> None:
        nn.Module.__init__(self)
        self.out_features, self.in_features = q.shape
        self.bits, self.block = bits, block
        self.weight = nn.Parameter(q.to(torch.int8).contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.register_buffer("scale", scale.float().contiguous())
        self.register_buffer("zero_point", None if zero_point is None else zero_point.to(torch.int8).contiguous())
        self.register_buffer("smooth", None if smooth is None else smooth.float().contiguous())

    @classmethod
    def from_quantized(cls, qw: Quantized, bias: torch.Tensor | None = None) -> GridLinear:
        return cls(qw.q, qw.scale, qw.zero_point, qw.smooth, bias, bits=qw.bits, block=qw.block)

    def dequantised(self) -> torch.Tensor:
        q = self.weight.float()
        per_input = self.bits == 4
        if per_input and self.zero_point is None and self.smooth is None and self.in_features % self.block == 0:
            # the usual int4 case without a full-size scale tensor: per block, the same products
            blocks = q.view(self.out_features, -1, self.block)
            return blocks.mul_(self.scale[..., None]).view(self.out_features, self.in_features)
        scale = self.scale.repeat_interleave(self.block, dim=1)[:, : self.in_features] if per_input else self.scale[:, None]
        if self.zero_point is not None:
            zp = self.zero_point.float()
            q = q - (zp.repeat_interleave(self.block, dim=1)[:, : self.in_features] if per_input else zp[:, None])
        w = q * scale
        return w if self.smooth is None else w / self.smooth[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a floating weight is the export's placeholder (``residency.placeholders``): a plain Linear then
        w = self.weight if self.weight.is_floating_point() else self.dequantised()
        return nn.functional.linear(x, w, self.bias)


def _linear(w: torch.Tensor, b: torch.Tensor | None) -> nn.Linear:
    """A Linear holding ``w`` (and ``b``) in their own dtype: rows of a bf16 checkpoint stay bf16."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    lin.weight = nn.Parameter(w.detach().clone().contiguous(), requires_grad=False)
    if b is not None:
        lin.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
    return lin


def _lowrank(factors: tuple[torch.Tensor, torch.Tensor], b: torch.Tensor | None) -> LowRankLinear:
    down, up = factors
    lin = LowRankLinear(down.shape[1], up.shape[0], down.shape[0], bias=b is not None)
    lin.down, lin.up = _linear(down, None), _linear(up, b)
    return lin


def dense_branch(
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    act: nn.Module,
    gate: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> Branch:
    """A branch holding the given weight rows/columns at full precision (``gate``: (w, b) of a gated MLP)."""
    fc_gate = None if gate is None else _linear(*gate)
    return Branch(_linear(w_in, b_in), act, _linear(w_out, None), fc_gate)


def shared_up(
    w_in: torch.Tensor, b_in: torch.Tensor | None, act: nn.Module, gate: tuple[torch.Tensor, torch.Tensor | None] | None
) -> SharedUp:
    """The ``down`` form's up-projection over the given neuron rows (``gate``: (w, b) of a gated MLP)."""
    return SharedUp(_linear(w_in, b_in), act, None if gate is None else _linear(*gate))


def down_branch(w_out: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor] | None = None) -> Branch:
    """A ``down``-form branch: only its down-projection, dense or factorised (``factors``: (down, up))."""
    return Branch(None, None, _linear(w_out, None) if factors is None else _lowrank(factors, None))


def lowrank_branch(
    factors_in: tuple[torch.Tensor, torch.Tensor],
    b_in: torch.Tensor | None,
    factors_out: tuple[torch.Tensor, torch.Tensor],
    act: nn.Module,
    gate: tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor | None] | None = None,
) -> Branch:
    """A branch whose projections are factorised as ``up @ down`` (factors given as (down, up))."""
    fc_gate = None if gate is None else _lowrank(*gate)
    return Branch(_lowrank(factors_in, b_in), act, _lowrank(factors_out, None), fc_gate)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
