"""SplitFFN and its branches.

The module names are a contract (DESIGN.md): a ``SplitFFN`` has children
``heavy`` and ``light``; the exporter records module paths in node metadata
and the tag pass reads them from there.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """``x -> up(down(x))``: a rank-``rank`` factorisation of a Linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class Branch(nn.Module):
    """``fc_out(act(fc_in(x)))`` over a subset of the FFN's neurons; no output bias."""

    def __init__(self, fc_in: nn.Module, act: nn.Module, fc_out: nn.Module) -> None:
        super().__init__()
        self.fc_in = fc_in
        self.act = act
        self.fc_out = fc_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class SplitFFN(nn.Module):
    """An FFN computed as ``heavy(x) + light(x) + bias``.

    The output bias belongs to neither branch: it is added once, by a node the
    tag pass marks ``merge``.
    """

    def __init__(self, heavy: Branch, light: Branch, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.heavy = heavy
        self.light = light
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.heavy(x) + self.light(x)
        if self.bias is not None:
            y = y + self.bias
        return y


def dense_branch(w_in: torch.Tensor, b_in: torch.Tensor | None, w_out: torch.Tensor, act: nn.Module) -> Branch:
    """A branch holding the given weight rows/columns at full precision."""
    width, d_model = w_in.shape
    fc_in = nn.Linear(d_model, width, bias=b_in is not None)
    fc_out = nn.Linear(width, w_out.shape[0], bias=False)
    with torch.no_grad():
        fc_in.weight.copy_(w_in)
        if b_in is not None:
            fc_in.bias.copy_(b_in)
        fc_out.weight.copy_(w_out)
    return Branch(fc_in, act, fc_out)


def lowrank_branch(
    factors_in: tuple[torch.Tensor, torch.Tensor],
    b_in: torch.Tensor | None,
    factors_out: tuple[torch.Tensor, torch.Tensor],
    act: nn.Module,
) -> Branch:
    """A branch whose two projections are factorised as ``up @ down``."""
    down_in, up_in = factors_in
    down_out, up_out = factors_out
    fc_in = LowRankLinear(down_in.shape[1], up_in.shape[0], down_in.shape[0], bias=b_in is not None)
    fc_out = LowRankLinear(down_out.shape[1], up_out.shape[0], down_out.shape[0], bias=False)
    with torch.no_grad():
        fc_in.down.weight.copy_(down_in)
        fc_in.up.weight.copy_(up_in)
        if b_in is not None:
            fc_in.up.bias.copy_(b_in)
        fc_out.down.weight.copy_(down_out)
        fc_out.up.weight.copy_(up_out)
    return Branch(fc_in, act, fc_out)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
