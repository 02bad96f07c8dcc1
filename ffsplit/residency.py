"""Weights held as the source stores them, computed in fp32.

A bf16 or fp16 checkpoint stays in its stored dtype in memory (half the bytes of
fp32); each module's half parameters are widened to fp32 for the length of its
own call, so every forward computes what the fp32 model computes, bit for bit
(widening a half float is exact). Quantised split weights (``GridLinear``) are
held as their integer codes and dequantised at each call the same way.

For the export, ``placeholders`` puts an fp32 tensor that is never written (so
never resident) in place of every parameter while torch.onnx traces, and hands
back, per parameter path, how to compute its fp32 value: the graph's weights are
then produced one at a time as they are written to disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HALF = (torch.bfloat16, torch.float16)
_WIDEN = "_ffsplit_widen"  # the attribute that marks a parameter computed in fp32
_hooks: list[RemovableHandle] = []


def hold_as_stored(model: nn.Module) -> bool:
    """Mark ``model``'s half-precision parameters to be computed in fp32 (installing the process-wide
    hooks once); any other non-fp32 float parameter becomes fp32. True when some parameter is half."""
    found = False
    for p in model.parameters():
        if p.dtype in HALF:
            setattr(p, _WIDEN, True)
            found = True
        elif p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    for module in model.modules():
        for name, b in module._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != torch.float32:
                module._buffers[name] = b.float()
    if found and not _hooks:
        _hooks.append(nn.modules.module.register_module_forward_pre_hook(_widen))
        _hooks.append(nn.modules.module.register_module_forward_hook(_narrow, always_call=True))
    return found


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built within get their parameters on the meta device (no memory) and their buffers for real."""
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def computed_buffers_in_fp32(model: nn.Module) -> int:
    """Give ``model`` the fp32 values of the buffers it computes when built (not loaded from the checkpoint):
    loading in bf16 builds them in bf16 (Gemma's embedding scale), where the fp32 model has exact values.
    The model is built again with its parameters on the meta device, for those buffers alone; the number
    replaced."""
    import copy

    persistent = set(model.state_dict())
    torch_default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with _parameters_on_meta(), torch.device("cpu"):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception:  # noqa: BLE001  a class that cannot be built from its config alone keeps what it loaded
        return 0
    finally:
        torch.set_default_dtype(torch_default)
    mine = dict(model.named_buffers())
    replaced = 0
    for name, value in fresh.named_buffers():
        held = mine.get(name)
        if name in persistent or held is None or not value.is_floating_point() or value.shape != held.shape:
            continue
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = value.float()
        replaced += 1
    return replaced


def _widen(module: nn.Module, args: Any) -> None:
    for p in module._parameters.values():
        if p is not None and getattr(p, _WIDEN, False) and p.dtype in HALF:
            stored = p.data
            p.data = stored.float()
            p._ffsplit_stored = stored  # type: ignore[attr-defined]


def _narrow(module: nn.Module, args: Any, output: Any) -> None:
    for p in module._parameters.values():
        stored = getattr(p, "_ffsplit_stored", None) if p is not None else None
        if stored is not None:
            p.data = stored  # type: ignore[union-attr]
            del p._ffsplit_stored  # type: ignore[union-attr]


def fp32_value(module: nn.Module, name: str) -> torch.Tensor:
    """Parameter ``name`` of ``module`` as fp32, as its forward computes with it."""
    dequantised = getattr(module, "dequantised", None)
    p = module._parameters[name]
    assert p is not None
    if name == "weight" and dequantised is not None and not p.is_floating_point():
        return dequantised()
    return p.detach().float() if p.dtype != torch.float32 else p.detach()


def half_storage(model: nn.Module) -> str | None:
    """"bf16" / "fp16" when every float weight matrix of ``model`` is held in that type (as a checkpoint
    loaded in its stored dtype is), else None."""
    kinds = {p.dtype for p in model.parameters() if p.is_floating_point() and p.dim() >= 2}
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(kinds.pop()) if len(kinds) == 1 else None


class Placeholders(dict[str, Callable[[], torch.Tensor]]):
    """Parameter path -> its real fp32 value; ``addresses``: where the placeholders' (unwritten) memory is,
    so a graph weight still pointing there is caught before it is saved."""

    def __init__(self) -> None:
        super().__init__()
        self.addresses: set[int] = set()

    def unbound(self, tensor: object) -> bool:
        """Whether ``tensor`` (a graph weight's torch tensor) is a placeholder no value was given for."""
        return isinstance(tensor, torch.Tensor) and tensor.numel() > 0 and tensor.data_ptr() in self.addresses


@contextlib.contextmanager
def placeholders(model: nn.Module, *, prefix: str = "") -> Iterator[Placeholders]:
    """Within the block every parameter of ``model`` is an fp32 placeholder of its shape (allocated, never
    touched); yields ``prefix + path -> fn`` giving each one's real fp32 value. A parameter shared by two
    modules (tied embeddings) gets one placeholder, and each of its paths the same fn: torch.export
    names it by one of them."""
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    seen: dict[int, tuple[nn.Parameter, Callable[[], torch.Tensor]]] = {}
    values = Placeholders()
    try:
        for mname, module in model.named_modules(remove_duplicate=False):
            for pname, p in list(module._parameters.items()):
                if p is None:
                    continue
                if id(p) not in seen:
                    placeholder = nn.Parameter(torch.empty(p.shape, dtype=torch.float32), requires_grad=False)
                    seen[id(p)] = (placeholder, _value_of(module, pname, p))
                    if placeholder.numel():
                        values.addresses.add(placeholder.data_ptr())
                values[f"{prefix}{mname}.{pname}" if mname else f"{prefix}{pname}"] = seen[id(p)][1]
                module._parameters[pname] = seen[id(p)][0]
                swapped.append((module, pname, p))
        yield values
    finally:
        for module, pname, p in reversed(swapped):
            module._parameters[pname] = p


def _value_of(module: nn.Module, name: str, p: nn.Parameter) -> Callable[[], torch.Tensor]:
    def value() -> torch.Tensor:
        held = module._parameters[name]
        module._parameters[name] = p
        try:
            return fp32_value(module, name)
        finally:
            module._parameters[name] = held  # type: ignore[assignment]

    return value


@contextlib.contextmanager
def materialised(model: nn.Module) -> Iterator[None]:
    """Within the block every parameter of ``model`` is a real fp32 tensor (for an exporter that writes
    weights itself: the TorchScript fallback); the stored forms come back after."""
    with placeholders(model) as values:
        real: dict[int, nn.Parameter] = {}
        for mname, module in model.named_modules(remove_duplicate=False):
            for pname, held in list(module._parameters.items()):
                if held is None:
                    continue
                if id(held) not in real:
                    real[id(held)] = nn.Parameter(values[f"{mname}.{pname}" if mname else pname](), requires_grad=False)
                module._parameters[pname] = real[id(held)]
        yield
