"""Tiny tagged FFN graphs built in the tests: one layer, heavy and light branches, torch-made grids."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from ffsplit.graph_passes.precision import WeightGrid
from ffsplit.split.compress import Quantized, quantize_int4, quantize_int8

D_MODEL, HEAVY, LIGHT = 32, 16, 48


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """(out, in) weights, as torch's Linear holds them."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "heavy.fc_in": (HEAVY, D_MODEL), "heavy.fc_out": (D_MODEL, HEAVY),
        "light.fc_in": (LIGHT, D_MODEL), "light.fc_out": (D_MODEL, LIGHT),
    }
    return {k: (torch.randn(*s, generator=g) * 0.2).numpy() for k, s in shapes.items()}


def quantized(ws: dict[str, np.ndarray], branch: str, how: str, qmax: int = 127) -> dict[str, Quantized]:
    """Put one branch's weights on a grid: ``int8`` (largest magnitude ``qmax``) or ``int4:B[:asym]``."""
    out = {}
    for name, w in ws.items():
        if not name.startswith(branch):
            continue
        t = torch.from_numpy(w)
        if how == "int8":
            out[name] = quantize_int8(t, qmax)
        else:
            parts = how.split(":")
            out[name] = quantize_int4(t, int(parts[1]), symmetric="asym" not in parts)
        ws[name] = out[name].weight.numpy()
    return out


def grids(qs: dict[str, Quantized]) -> dict[str, WeightGrid]:
    return {name: WeightGrid.from_quantized(name, q) for name, q in qs.items()}


def ffn_model(ws: dict[str, np.ndarray], *, layer: int = 0) -> onnx.ModelProto:
    """``y = heavy(x) + light(x)``, each branch ``MatMul -> Gelu -> MatMul``, nodes tagged by name."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", D_MODEL])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", D_MODEL])
    nodes, inits = [], []
    for branch in ("heavy", "light"):
        tag = f"ffsplit/L{layer}/{branch}"
        for fc in ("fc_in", "fc_out"):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(ws[f"{branch}.{fc}"].T), f"w_{branch}_{fc}"))
        nodes += [
            helper.make_node("MatMul", ["x", f"w_{branch}_fc_in"], [f"{branch}_h"], name=f"{tag}/fc_in"),
            helper.make_node("Gelu", [f"{branch}_h"], [f"{branch}_a"], name=f"{tag}/act"),
            helper.make_node("MatMul", [f"{branch}_a", f"w_{branch}_fc_out"], [f"{branch}_y"], name=f"{tag}/fc_out"),
        ]
    nodes.append(helper.make_node("Add", ["heavy_y", "light_y"], ["y"], name=f"ffsplit/L{layer}/merge/add"))
    graph = helper.make_graph(nodes, "ffn", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model)  # exported graphs carry types; so do these


def run(model: onnx.ModelProto | ir.Model, x: np.ndarray, **config: str) -> np.ndarray:
    """The first output of a one-input graph on ``x``, in ONNX Runtime (``config``: session entries)."""
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def exported_mlp(x: torch.Tensor, **options: object) -> ir.Model:
    """Linear(8, 16) -> GELU -> Linear(16, 8) through torch.onnx's dynamo exporter (``options`` passed on),
    as a fresh IR model."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).eval()
    program = torch.onnx.export(module, (x,), dynamo=True, verbose=False, **options)
    return ir.from_proto(ir.to_proto(program.model))


def inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 5, D_MODEL)).astype(np.float32)


def check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
