"""Budget mode: per layer, the heavy ratio and light recipe that minimise calibration output error.

``--budget ffn-params=0.5`` (a fraction of the FFN parameters), ``flops=0.5`` (a
fraction of the FFN multiply-adds per token) or ``size-mb=15`` (the whole model
at the recipes' precision). Every candidate is built for real and run on real
FFN inputs saved during calibration; its error is the relative error of the
FFN output. A multiple-choice knapsack then picks one candidate per layer,
minimising the summed error. Costs are rounded up onto the knapsack's grid, so
the plan never exceeds the budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ffsplit.errors import UsageError
from ffsplit.manifest import Budget, BudgetLayer
from ffsplit.split.apply import heavy_count, split_layer
from ffsplit.split.compress import parse_light
from ffsplit.split.ffn_adapter import FFNWeights
from ffsplit.split.profile import LayerProfile

BUDGET_KINDS = ("ffn-params", "flops", "size-mb")
HEAVY_RATIOS = (0.05, 0.1, 0.2)
GRID = 4000  # knapsack resolution: steps of budget / GRID


MAX_SIZE_MB = 10_000_000  # 10 TB: past any model a machine holds


def parse_budget(spec: str) -> tuple[str, float]:
    kind, sep, value = spec.strip().lower().partition("=")
    try:
        v = float(value)
    except ValueError:
        sep = ""
    if not sep or kind not in BUDGET_KINDS:
        raise UsageError(f"--budget '{spec}' is not KIND=VALUE with KIND one of {', '.join(BUDGET_KINDS)}, e.g. ffn-params=0.5")
    if kind != "size-mb" and not 0.0 < v <= 1.0:
        raise UsageError(f"--budget {kind}={value} must be a fraction in (0, 1]")
    if kind == "size-mb" and not 0 < v <= MAX_SIZE_MB:  # NaN and infinity fail here too
        raise UsageError(f"--budget size-mb={value} must be a finite size above 0 and at most {MAX_SIZE_MB:,} MB")
    return kind, v


def candidate_recipes(d_model: int, light: int) -> list[str]:
    useful = (d_model * light) // (d_model + light)
    ranks = [r for r in (d_model // 8, d_model // 4, d_model // 2) if 1 <= r <= useful and r < light]
    recipes = ["none", "int8", "int4", "prune:0.5", "prune:0.5+int8", "prune:0.75+int4"]
    for r in ranks:
        recipes += [f"lowrank:{r}", f"lowrank:{r}+int8"]
    return recipes


@dataclass
class Candidate:
    heavy_ratio: float
    heavy: int
    recipe: str
    params: int
    flops: int  # weight multiply-adds per token
    nbytes: int
    error: float  # ||y' - y|| / ||y|| on the saved calibration inputs

    def cost(self, kind: str) -> int:
        return {"ffn-params": self.params, "flops": self.flops, "size-mb": self.nbytes}[kind]


def _ffn(ffn: FFNWeights, x: torch.Tensor) -> torch.Tensor:
    h = torch.nn.functional.linear(x, ffn.w_in, ffn.b_in)
    a = ffn.act(torch.nn.functional.linear(x, ffn.w_gate, ffn.b_gate)) * h if ffn.w_gate is not None else ffn.act(h)
    return torch.nn.functional.linear(a, ffn.w_out, ffn.b_out)


@torch.no_grad()
def layer_candidates(ffn: FFNWeights, profile: LayerProfile) -> list[Candidate]:
    assert profile.samples is not None, "profile with samples > 0 for budget mode"
    d_ff, d_model = ffn.w_in.shape
    x = profile.samples.float()
    ref = _ffn(ffn, x)
    norm = float(ref.norm()) or 1.0
    out = []
    seen = set()
    for ratio in HEAVY_RATIOS:
        try:
            k = heavy_count(d_ff, ratio)
        except UsageError:
            continue
        for recipe in candidate_recipes(d_model, d_ff - k):
            if (k, recipe) in seen:
                continue
            seen.add((k, recipe))
            res = split_layer(ffn, profile, k, parse_light(recipe))
            split = res.split
            weights = sum(m.weight.numel() for m in split.modules() if isinstance(m, torch.nn.Linear))
            bias = 0 if split.bias is None else split.bias.numel()
            out.append(Candidate(
                heavy_ratio=ratio, heavy=k, recipe=recipe, params=sum(p.numel() for p in split.parameters()),
                flops=weights, nbytes=res.nbytes("heavy") + res.nbytes("light") + 4 * bias,
                error=float((split(x) - ref).norm()) / norm,
            ))
    return out


def choose(candidates: list[list[Candidate]], kind: str, limit: float) -> list[int]:
    """One candidate per layer minimising the summed error with total cost <= limit (never above)."""
    if limit <= 0:
        raise UsageError(f"the {kind} budget leaves nothing for the FFNs: raise it")
    unit = limit / GRID
    best = np.full(GRID + 1, np.inf)
    best[0] = 0.0
    picks: list[np.ndarray] = []
    for cands in candidates:
        new = np.full(GRID + 1, np.inf)
        pick = np.full(GRID + 1, -1, dtype=np.int64)
        for j, c in enumerate(cands):
            if c.cost(kind) > limit:
                continue
            # rounded up, so a plan that fits the grid fits the budget (never above); a candidate that
            # alone meets the limit exactly fills the grid rather than falling off it by rounding
            steps = min(math.ceil(c.cost(kind) / unit), GRID)
            shifted = np.full(GRID + 1, np.inf)
            shifted[steps:] = best[: GRID + 1 - steps] + c.error
            better = shifted < new
            new[better], pick[better] = shifted[better], j
        picks.append(pick)
        best = new
    if not np.isfinite(best).any():
        cheapest = sum(min(c.cost(kind) for c in cands) for cands in candidates)
        raise UsageError(f"no plan fits the {kind} budget (the cheapest needs {cheapest:,}, the budget allows {limit:,.0f}): raise it")
    # Walk back from the cheapest state holding the least error.
    state = int(np.argmin(best))
    chosen = []
    for layer in range(len(candidates) - 1, -1, -1):
        j = int(picks[layer][state])
        chosen.append(j)
        state -= math.ceil(candidates[layer][j].cost(kind) / unit - 1e-9)
    return chosen[::-1]


def plan_budget(
    ffns: list[FFNWeights], profiles: list[LayerProfile], kind: str, value: float, *, other_bytes: int
) -> tuple[list[Candidate], Budget]:
    """The chosen candidate per layer and a summary for the manifest. ``other_bytes``: the model outside the FFNs."""
    candidates = [layer_candidates(f, p) for f, p in zip(ffns, profiles, strict=True)]
    base_params = sum(f.params() for f in ffns)
    base_flops = sum(f.macs() for f in ffns)
    if kind == "ffn-params":
        limit = value * base_params
    elif kind == "flops":
        limit = value * base_flops
    else:
        limit = value * 1e6 - other_bytes
    idx = choose(candidates, kind, limit)
    chosen = [c[i] for c, i in zip(candidates, idx, strict=True)]
    used = sum(c.cost(kind) for c in chosen)
    summary = Budget(
        kind=kind, value=value, limit=limit, used=used,
        used_fraction_of_limit=used / limit, total_error=sum(c.error for c in chosen),
        candidates_per_layer=tuple(len(c) for c in candidates),
        plan=tuple(BudgetLayer(layer=i, **asdict(c)) for i, c in enumerate(chosen)),
    )
    return chosen, summary
