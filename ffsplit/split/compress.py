"""Light-branch compressors and the recipe strings that name them.

A recipe is ``none`` (the light branch kept exact) or ``lowrank:R``
(activation-aware truncated SVD of each light projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ffsplit.errors import UsageError

RECIPES_HELP = "none, lowrank:R (e.g. lowrank:128)"


@dataclass(frozen=True)
class LightRecipe:
    kind: str
    rank: int | None = None

    def __str__(self) -> str:
        return self.kind if self.rank is None else f"{self.kind}:{self.rank}"

    def params(self) -> dict[str, object]:
        return {"compressor": self.kind, **({"rank": self.rank} if self.rank is not None else {})}


def parse_light(spec: str) -> LightRecipe:
    spec = spec.strip().lower()
    if spec == "none":
        return LightRecipe("none")
    kind, _, arg = spec.partition(":")
    if kind == "lowrank":
        if not arg.isdigit() or int(arg) < 1:
            raise UsageError(f"light recipe '{spec}' needs a positive rank: write lowrank:R, e.g. lowrank:128")
        return LightRecipe("lowrank", int(arg))
    raise UsageError(f"unknown light recipe '{spec}': use one of {RECIPES_HELP}")


def _whitener(moment: torch.Tensor, damp: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S^-1) with ``S S^T = moment`` (damped so rare directions cannot blow up S^-1)."""
    m = moment.double()
    m = 0.5 * (m + m.T)
    evals, evecs = torch.linalg.eigh(m)
    floor = damp * max(float(evals.max()), 1e-30)
    evals = evals.clamp_min(floor)
    root = evals.sqrt()
    return evecs * root, (evecs / root).T


def lowrank_factors(
    w: torch.Tensor, rank: int, moment: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors ``(down, up)`` with ``up @ down ~ w`` for w of shape (out, in).

    With ``moment = E[x x^T]`` of the layer's real input, minimises the error on
    actual activations, ``E||(w - up @ down) x||^2``: the SVD is taken of
    ``w S`` (``S S^T = moment``) and mapped back by ``S^-1``. Without it, plain
    truncated SVD of ``w``.
    """
    w64 = w.double()
    if moment is None:
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        rs = s[:rank].sqrt()
        return (rs[:, None] * vh[:rank]).to(w.dtype), (u[:, :rank] * rs).to(w.dtype)
    s_mat, s_inv = _whitener(moment)
    u, s, vh = torch.linalg.svd(w64 @ s_mat, full_matrices=False)
    rs = s[:rank].sqrt()
    down = (rs[:, None] * vh[:rank]) @ s_inv
    up = u[:, :rank] * rs
    return down.to(w.dtype), up.to(w.dtype)


def activation_error(w: torch.Tensor, w_hat: torch.Tensor, moment: torch.Tensor) -> float:
    """sqrt(E||(w - w_hat) x||^2) for inputs with second moment ``moment``."""
    d = (w - w_hat).double()
    return float(torch.einsum("oi,ij,oj->", d, moment.double(), d).clamp_min(0).sqrt())
