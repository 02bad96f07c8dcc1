"""Light-branch compressors, heavy-branch precision, and the recipe strings that name them.

A light recipe is ``none`` or a ``+``-joined combination of at most one
structural step and at most one quantiser:

* ``lowrank:R``: activation-aware truncated SVD of each light projection;
* ``prune:P``: drop the lowest-scoring fraction P of the light neurons;
* ``int8``: per-output-channel symmetric int8 weights;
* ``int4[:B][:sym|asym]``: blockwise int4 along the input dimension (block B, default 32).

Quantisers return the dequantised weights computed exactly as a runtime's
DequantizeLinear does (``(q - zero_point) * scale`` in fp32), together with
``q``, scales and zero points, so the torch model runs on the same grid the
runtime will, and the per-branch precision pass can store the same numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ffsplit.errors import UsageError
from ffsplit.precisions import HEAVY_PRECISIONS, INTEGERS

RECIPES_HELP = "none, lowrank:R, prune:P, int8, int4[:B][:sym|asym], or a structure+quantiser such as lowrank:128+int8"


@dataclass(frozen=True)
class LightRecipe:
    structure: str = "dense"  # dense | lowrank | prune
    rank: int | None = None
    prune: float | None = None
    quant: str | None = None  # None | int8 | int4
    block: int = 32
    symmetric: bool = True

    @property
    def kind(self) -> str:
        """``none`` for the exact recipe, else the structure (dense, lowrank, prune)."""
        return "none" if self.exact else self.structure

    @property
    def exact(self) -> bool:
        return self.structure == "dense" and self.quant is None

    def __str__(self) -> str:
        parts = []
        if self.structure == "lowrank":
            parts.append(f"lowrank:{self.rank}")
        elif self.structure == "prune":
            parts.append(f"prune:{self.prune:g}")
        if self.quant == "int8":
            parts.append("int8")
        elif self.quant == "int4":
            parts.append("int4" + (f":{self.block}" if self.block != 32 else "") + ("" if self.symmetric else ":asym"))
        return "+".join(parts) or "none"

    def params(self) -> dict[str, object]:
        out: dict[str, object] = {"structure": self.structure}
        if self.rank is not None:
            out["rank"] = self.rank
        if self.prune is not None:
            out["prune"] = self.prune
        if self.quant:
            out.update({"quant": self.quant, "symmetric": self.symmetric})
            if self.quant == "int4":
                out["block"] = self.block
        return out


def parse_light(spec: str) -> LightRecipe:
    spec = spec.strip().lower()
    if spec == "none":
        return LightRecipe()
    fields: dict[str, object] = {}
    for part in spec.split("+"):
        kind, _, arg = part.partition(":")
        if kind in ("lowrank", "prune") and "structure" in fields:
            raise UsageError(f"light recipe '{spec}' has two structural steps: use one of lowrank or prune")
        if kind in INTEGERS and "quant" in fields:
            raise UsageError(f"light recipe '{spec}' has two quantisers: use one of int8 or int4")
        if kind == "lowrank":
            if not arg.isdigit() or int(arg) < 1:
                raise UsageError(f"light recipe '{spec}' needs a positive rank: write lowrank:R, e.g. lowrank:128")
            fields.update(structure="lowrank", rank=int(arg))
        elif kind == "prune":
            try:
                p = float(arg)
            except ValueError:
                p = -1.0
            if not 0.0 < p < 1.0:
                raise UsageError(f"light recipe '{spec}': prune needs a fraction in (0, 1), e.g. prune:0.5")
            fields.update(structure="prune", prune=p)
        elif kind == "int8" and not arg:
            fields["quant"] = "int8"
        elif kind == "int4":
            fields["quant"] = "int4"
            for opt in filter(None, arg.split(":")):
                if opt.isdigit() and int(opt) >= 2 and int(opt) % 2 == 0:
                    fields["block"] = int(opt)
                elif opt in ("sym", "asym"):
                    fields["symmetric"] = opt == "sym"
                else:
                    raise UsageError(f"light recipe '{spec}': int4 takes an even block size and sym|asym, e.g. int4:32:asym")
        else:
            raise UsageError(f"unknown light recipe '{spec}': use one of {RECIPES_HELP}")
    return LightRecipe(**fields)  # type: ignore[arg-type]


def parse_heavy(spec: str) -> str:
    spec = spec.strip().lower()
    if spec not in HEAVY_PRECISIONS:
        raise UsageError(f"unknown heavy precision '{spec}': use one of {', '.join(HEAVY_PRECISIONS)}")
    return spec


def array_digest(a: np.ndarray) -> tuple[tuple[int, ...], str]:
    """The shape and SHA-256 of an fp32 array's values (-0.0 counted as 0.0: a grid dequantised from
    integer codes gives +0.0 where rounding a float gave -0.0)."""
    a = np.ascontiguousarray(a, dtype=np.float32) + np.float32(0.0)
    return a.shape, hashlib.sha256(a.tobytes()).hexdigest()


def onnx_digest(weight: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """What identifies a torch (out, in) weight in an ONNX graph, where a MatMul holds it as (in, out) fp32."""
    return array_digest(weight.detach().float().numpy().T)


@dataclass
class Quantized:
    """A weight on a quantisation grid: ``weight == (q - zero_point) * scale`` in fp32."""

    weight: torch.Tensor | None  # (out, in) fp32, dequantised; None once ``held`` (the digest stands for it)
    q: torch.Tensor  # (out, in) int8 (int4 values held in int8)
    scale: torch.Tensor  # (out,) or (out, blocks) fp32
    zero_point: torch.Tensor | None  # like scale, int8, asymmetric only
    bits: int
    block: int | None = None
    # activation smoothing: ``weight == grid / smooth`` per input channel, the input scaled by 1 / smooth
    smooth: torch.Tensor | None = None
    digest: tuple[tuple[int, ...], str] | None = None  # ``onnx_digest`` of ``weight``

    def held(self) -> Quantized:
        """This grid without its dequantised fp32 copy (4 bytes a weight), identified by its digest instead."""
        if self.weight is None:
            return self
        return dataclasses.replace(self, weight=None, digest=onnx_digest(self.weight))

    def nbytes(self) -> int:
        n = self.q.numel()
        data = n if self.bits == 8 else math.ceil(n / 2)
        zp = 0 if self.zero_point is None else (self.zero_point.numel() if self.bits == 8 else math.ceil(self.zero_point.numel() / 2))
        return data + 4 * self.scale.numel() + zp + (0 if self.smooth is None else 4 * self.smooth.numel())


# The int8 weight range that no x86 kernel can saturate: u8 x s8 multiplies on CPUs without VNNI
# (AVX2's vpmaddubsw) add two products into int16, and 2 x 255 x 64 = 32640 still fits.
INT8_QMAX = {"full": 127, "reduced": 64}


def quantize_int8(w: torch.Tensor, qmax: int = 127) -> Quantized:
    """Per-output-channel symmetric int8: scale = max|w_row| / qmax, round half to even."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / float(qmax)).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax).to(torch.int8)
    return Quantized(q.float() * scale[:, None], q, scale, None, 8)


def quantize_int4(w: torch.Tensor, block: int = 32, symmetric: bool = True) -> Quantized:
    """Blockwise int4 along the input dimension.

    Symmetric: scale = max|w| / 7, q in [-8, 7]. Asymmetric: the block's range
    (widened to include 0) over 15 steps, zero point in [0, 15], q in [0, 15].
    """
    w = w.float()
    out, n_in = w.shape
    blocks = math.ceil(n_in / block)
    padded = torch.zeros(out, blocks * block)
    padded[:, :n_in] = w
    b = padded.view(out, blocks, block)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = (b.abs().amax(dim=2) / 7.0).clamp_min(tiny)
        q = torch.clamp(torch.round(b / scale[..., None]), -8, 7)
        deq, zp = q * scale[..., None], None
    else:
        lo = b.amin(dim=2).clamp_max(0.0)
        hi = b.amax(dim=2).clamp_min(0.0)
        scale = ((hi - lo) / 15.0).clamp_min(tiny)
        zp = torch.clamp(torch.round(-lo / scale), 0, 15)
        q = torch.clamp(torch.round(b / scale[..., None]) + zp[..., None], 0, 15)
        deq = (q - zp[..., None]) * scale[..., None]
    return Quantized(
        deq.reshape(out, -1)[:, :n_in].contiguous(),
        q.reshape(out, -1)[:, :n_in].to(torch.int8).contiguous(),
        scale,
        None if zp is None else zp.to(torch.int8),
        4,
        block,
    )


def quantize_int4_grid(w: torch.Tensor, block: int = 32, symmetric: bool = True, rows: int = 1024) -> Quantized:
    """``quantize_int4``'s grid alone (no dequantised copy), ``rows`` output channels at a time: its
    temporaries are several times the weight, hundreds of MB for an LM head if taken whole."""
    parts = [quantize_int4(w[i : i + rows], block, symmetric) for i in range(0, w.shape[0], rows)]
    zero = None if symmetric else torch.cat([p.zero_point for p in parts])  # type: ignore[misc]
    return Quantized(None, torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), zero, 4, block)


def smooth_int8(w: torch.Tensor, input_absmax: torch.Tensor, alpha: float = 0.5, qmax: int = 127) -> Quantized:
    """int8 with SmoothQuant-style activation smoothing (Xiao et al., 2023) for one projection.

    Runtimes that quantise the activation per tensor at run time lose most on
    input channels with outliers (BERT's LayerNorm outputs have a few). Scaling
    input channel j by ``1 / s_j`` and the weight's column j by ``s_j``, with
    ``s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)``, evens the activation's
    channels out; the product is unchanged. The grid is that of ``W * s``;
    ``weight`` is the effective weight ``grid / s``, what the torch model runs.
    """
    w = w.float()
    a = input_absmax.float().clamp_min(1e-5)
    wm = w.abs().amax(dim=0).clamp_min(1e-5)
    s = (a**alpha / wm ** (1 - alpha)).clamp(1e-3, 1e3)
    qw = quantize_int8(w * s[None, :], qmax)
    return Quantized(qw.weight / s[None, :], qw.q, qw.scale, None, 8, smooth=s)


def quantize(w: torch.Tensor, recipe: LightRecipe, qmax: int = 127) -> Quantized | None:
    if recipe.quant == "int8":
        return quantize_int8(w, qmax)
    if recipe.quant == "int4":
        return quantize_int4(w, recipe.block, recipe.symmetric)
    return None


def heavy_weight(w: torch.Tensor, precision: str, qmax: int = 127) -> tuple[torch.Tensor, Quantized | None]:
    """The heavy branch's weight on its precision's grid (fp16 / bf16 values held in fp32)."""
    if precision == "fp16":
        return w.half().float(), None
    if precision == "bf16":
        return w.bfloat16().float(), None
    if precision == "int8":
        qw = quantize_int8(w, qmax)
        return qw.weight, qw
    return w, None


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
