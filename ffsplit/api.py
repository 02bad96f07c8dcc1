"""The CLI's verbs as functions: export, check, bench, inspect, targets.

``cli.py`` only parses arguments and prints; everything a verb does is here,
so the Python API and the command line cannot drift apart.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffsplit import __version__, bounds
from ffsplit.artifact import (
    FORMAT,
    MODEL_FILE,
    RUNTIME_DIR,
    SPLIT_WEIGHTS,
    check_external_data,
    list_files,
    parse_json,
    read_manifest,
    resolve_out,
    sha256_files,
    staged_output,
    verify_artifact,
    write_manifest,
)
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.runtimes.targets import Target, list_targets, load_target

__all__ = ["MODEL_FILE", "SPLIT_WEIGHTS", "bench", "check", "debug", "export", "inspect_artifact", "open_artifact", "targets"]
DEFAULT_LIGHT = "lowrank:256"
SMOOTH_ALPHA = 0.5
# Limits a user may set on what a lossy recipe costs (original vs split and vs runtime).
COMPRESSION_METRICS = (
    "cosine_mean", "cosine_min", "retrieval_at10", "label_agreement", "top1_agreement", "top5_agreement",
    "perplexity_ratio",
)


@dataclass
class Stages:
    """Wall time of each stage, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, log: Any = None) -> Iterator[None]:
        if log:
            log(f"{name} ...")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        if log:
            log(f"{name} done in {self.seconds[name]:.1f} s")


def _versions() -> dict[str, str]:
    import onnx
    import onnx_ir
    import onnxruntime
    import torch
    import transformers

    return {
        "ffsplit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _require_supported(target: Target) -> None:
    reason = target.unavailable_reason()
    if reason:
        raise UsageError(f"target '{target.name}' cannot run on this machine: {reason}")


def _require_precisions(target: Target, heavy: str, recipes: list[Any]) -> None:
    """Refuse, before any work, a precision the target's runtime would not realise."""
    from ffsplit.graph_passes.quantize_branch_weights_pass import matmulnbits_block_ok

    if heavy in ("fp16", "bf16") and not target.on_gpu:
        raise UsageError(
            f"--heavy {heavy}: target '{target.name}' runs on the CPU, which has no {heavy} MatMul here and would "
            "compute the heavy branch in fp32; use fp32 or int8 on CPU targets, or a GPU target such as cuda-fp16"
        )
    for recipe in recipes:
        if recipe.quant == "int4" and target.int4_compute == "matmulnbits" and not matmulnbits_block_ok(recipe.block):
            raise UsageError(
                f"light recipe '{recipe}': int4 block {recipe.block} cannot be stored as MatMulNBits; "
                "use a power of two from 16, e.g. int4:32"
            )


def _source_record(loaded: Any) -> dict[str, Any]:
    from ffsplit.loading import model_files, usable_positions

    files = model_files(loaded.path)
    cfg = loaded.model.config
    return {
        "spec": loaded.spec,
        "path": str(loaded.path),
        "model_type": cfg.model_type,
        "architecture": type(loaded.model).__name__,
        "sha256": sha256_files(files, loaded.path),
        "max_positions": usable_positions(loaded.model, past=loaded.task.past),
    }


def _param_counts(plans: list[dict[str, Any]], total_before: int, total_after: int) -> dict[str, Any]:
    before = sum(p["ffn_params_before"] for p in plans)
    after = sum(p["ffn_params_after"] for p in plans)
    bytes_before = sum(p["ffn_bytes_before"] for p in plans)
    bytes_after = sum(p["ffn_bytes_after"] for p in plans)
    return {
        "ffn_bytes_before": bytes_before,
        "ffn_bytes_after": bytes_after,
        "ffn_bytes_reduction": round(1 - bytes_after / bytes_before, 4),
        "ffn_before": before,
        "ffn_after": after,
        "ffn_reduction": round(1 - after / before, 4),
        "total_before": total_before,
        "total_after": total_after,
        "total_reduction": round(1 - total_after / total_before, 4),
    }


def _guard(runner: Any, plans: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the separation guard on what the runtime executes; CheckFailed names the layers."""
    from ffsplit.graph_passes import check_separation, expected_matmuls, expected_precisions

    found, realized, findings = check_separation(
        runner.layer_records(), expected_matmuls(plans), expected_precisions(plans)
    )
    if findings:
        raise CheckFailed(f"branch separation failed in what {runner.target.runtime} runs: " + "; ".join(findings))
    return {
        "passed": True, "graph": runner.runtime_graph, "matmuls": {str(k): v for k, v in found.items()},
        "precisions": {str(k): {b: sorted(set(v)) for b, v in br.items()} for k, br in realized.items()},
    }


def _parity(
    original: Any, split: Any, runner: Any, tokenizer: Any, task: Any, *,
    limits: dict[str, dict[str, float]], eval_size: int, max_length: int, batch_size: int = 16,
    max_positions: int | None = None,
) -> Any:
    from ffsplit.parity.check import compare_three, evaluate
    from ffsplit.split.calibration import evaluation_texts

    texts = [t.text for t in evaluation_texts(eval_size)]
    if len(texts) < bounds.MIN_EVAL_TEXTS:
        raise UsageError(f"--eval-size {eval_size}: only {len(texts)} evaluation texts here, retrieval@10 needs 11")
    metrics = compare_three(
        original, split, runner, tokenizer, texts, task, batch_size=batch_size, max_length=max_length,
        max_positions=max_positions,
    )
    return evaluate(metrics, limits, task=task, texts=len(texts))


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    report: Any


def export(
    model: str,
    out: str | Path,
    *,
    target: str = "cpu",
    heavy_ratio: float | None = None,
    light: str | None = None,
    heavy: str | None = None,
    budget: str | None = None,
    calib: str | None = None,
    calib_size: int = 256,
    eval_size: int = 256,
    max_length: int = 128,
    min_cosine: float | None = None,
    min_retrieval: float | None = None,
    limits: dict[str, float] | None = None,
    force: bool = False,
    trust_remote_code: bool = False,
    task: str = "auto",
    exporter: str = "auto",
    log: Any = None,
    progress: bool = True,
) -> ExportResult:
    """Profile, split, export, build for ``target`` and check parity; write the output folder.

    Raises UsageError (exit 2) for bad input before anything is written, and
    CheckFailed (exit 1) when parity or the separation guard fails, in which
    case no output folder is left behind.
    """
    import torch
    from safetensors.torch import save_file

    from ffsplit.exporter import export_program, save_model
    from ffsplit.exporter.export import EXPORT_ADVICE, EXPORTERS, WRAPPER_PREFIX, describe_failure
    from ffsplit.graph_passes import EmbedManifestPass
    from ffsplit.graph_passes.pipeline import PassFailed, run_passes, target_passes
    from ffsplit.graph_passes.precision import WeightGrid
    from ffsplit.loading import load_model, read_config, resolve_model
    from ffsplit.parity.check import limits_for
    from ffsplit.runtimes.base import make_runner
    from ffsplit.runtimes.shapes import clamp_shapes
    from ffsplit.split.adapters import find_adapter
    from ffsplit.split.apply import heavy_count, split_model, split_state, validate_recipe
    from ffsplit.split.budget import parse_budget, plan_budget
    from ffsplit.split.calibration import calibration_texts, corpus_digest, evaluation_texts
    from ffsplit.split.compress import INT8_QMAX, parse_heavy, parse_light
    from ffsplit.split.modules import count_params
    from ffsplit.split.profile import input_absmax, profile_model
    from ffsplit.tasks import get_task

    # Everything that can be checked without loading the model, first.
    tgt = load_target(target)
    _require_supported(tgt)
    if budget is not None:
        if light is not None or heavy_ratio is not None:
            raise UsageError("--budget chooses the light recipe and heavy ratio per layer: drop --light and --heavy-ratio")
        budget_kind, budget_value = parse_budget(budget)
    nncf = tgt.int8_compute == "nncf"  # NNCF quantises the light branch itself, in the OpenVINO IR
    if light is None:  # a target that asks for an integer light branch makes it the default recipe
        light = "none" if nncf else tgt.light_precision if tgt.light_precision in ("int8", "int4") else DEFAULT_LIGHT
    heavy_ratio = 0.1 if heavy_ratio is None else heavy_ratio
    recipe = parse_light(light)
    if nncf and (recipe.quant or budget is not None):
        raise UsageError(
            f"target '{tgt.name}' quantises the light branch with NNCF: drop the quantiser from --light "
            f"('{light}'; none, lowrank:R or prune:P are fine) and --budget"
        )
    heavy = parse_heavy(heavy or tgt.heavy_precision)
    if nncf and heavy != "fp32":
        raise UsageError(
            f"--heavy {heavy}: target '{tgt.name}' keeps the heavy branch out of NNCF's int8 (its ignored scope); "
            "use --heavy fp32, or cpu-int8-full for an int8 heavy branch"
        )
    # A float light precision (GPU targets) applies to recipes without a quantiser of their own.
    light_float = tgt.light_precision if tgt.light_precision in ("fp16", "bf16") and not recipe.quant else "fp32"
    _require_precisions(tgt, heavy, [recipe] if budget is None else [parse_light("int4")])
    # exact only if nothing else in the graph is quantised either (cpu-int8-full's attention projections)
    exact = recipe.exact and heavy == "fp32" and budget is None and tgt.other_matmuls == "fp32" and not nncf
    planned_light = "int8" if nncf else light_float  # what the guard holds the light branch to
    heavy_count(1 << 20, heavy_ratio)  # range check only
    overrides = {"cosine_mean": min_cosine, "retrieval_at10": min_retrieval, **(limits or {})}
    for name, v in overrides.items():
        if name not in COMPRESSION_METRICS:
            raise UsageError(f"unknown limit '{name}': use one of {', '.join(COMPRESSION_METRICS)}")
        if v is None:
            continue
        if name == "perplexity_ratio":  # a ceiling on ppl / original ppl
            bounds.require_float(f"--limit {name}", v, 1.0, 1e6)
        else:
            bounds.require_float(f"--limit {name}", v, 0.0, 1.0)
    if exporter not in ("auto", *EXPORTERS):
        raise UsageError(f"unknown exporter '{exporter}': use auto, {' or '.join(EXPORTERS)}")
    bounds.require_int("--calib-size", calib_size, 1, bounds.MAX_TEXTS)
    bounds.require_int("--eval-size", eval_size, bounds.MIN_EVAL_TEXTS, bounds.MAX_TEXTS, "(retrieval@10 needs 11)")
    bounds.require_int("--max-length", max_length, 2, bounds.MAX_LENGTH)
    if len(evaluation_texts(eval_size)) < bounds.MIN_EVAL_TEXTS:
        raise UsageError("fewer than 11 bundled evaluation texts were found on this machine (retrieval@10 needs 11)")
    texts = calibration_texts(calib, limit=calib_size, max_length=max_length)
    source_dir = resolve_model(model)
    get_task(task, read_config(source_dir))  # an unknown task fails before any work
    given, out = out, resolve_out(out)
    if log and Path(given).expanduser().absolute() != out:
        log(f"--out '{given}' is the folder {out}")
    stages = Stages()
    torch.manual_seed(0)

    with staged_output(out, force=force, protected={"source model": source_dir}) as stage:
        with stages.stage("load", log):
            loaded = load_model(model, task=task, trust_remote_code=trust_remote_code)
            spec = loaded.task
            adapter = find_adapter(loaded.model)
            if spec.name not in adapter.tasks:
                raise UsageError(
                    f"task {spec.name} is not supported for the {adapter.family} family: use --task "
                    f"{' or '.join(adapter.tasks)}"
                )
            if budget is None:
                validate_recipe(adapter, loaded.model, heavy_ratio, recipe)
            source = _source_record(loaded)
            if source["max_positions"] and max_length > source["max_positions"]:
                raise UsageError(
                    f"--max-length {max_length} is longer than the {source['max_positions']} positions the model "
                    f"computes: pass --max-length <= {source['max_positions']}"
                )
            # runtime shape ranges (TensorRT profiles, Triton) never reach past the model's positions
            shapes = clamp_shapes(tgt.shapes, source["max_positions"], past=spec.past)
            if shapes != tgt.shapes:
                tgt = dataclasses.replace(tgt, shapes=shapes)
        with stages.stage("profile", log):
            profiles = profile_model(
                loaded.model, adapter, loaded.tokenizer, texts,
                max_length=max_length, moments=not exact, progress=progress,
                position_ids=spec.position_ids, samples=512 if budget else 0,
            )
        budget_summary = None
        per_layer = None
        if budget is not None:
            with stages.stage("budget", log):
                ffns = [adapter.weights(layer) for layer in adapter.layer_modules(loaded.model)]
                ffn_params = sum(f.params() for f in ffns)
                other_bytes = 4 * (count_params(loaded.model) - ffn_params)
                chosen, budget_summary = plan_budget(ffns, profiles, budget_kind, budget_value, other_bytes=other_bytes)
                per_layer = [(c.heavy, parse_light(c.recipe)) for c in chosen]
        with stages.stage("split", log):
            original = loaded.model
            split = copy.deepcopy(original)
            plan_objs, indices, quantized = split_model(
                split, adapter, profiles, heavy_ratio=heavy_ratio, recipe=recipe,
                heavy_precision=heavy, light_precision=planned_light, per_layer=per_layer,
                # runtimes that round activations to int8 get the light input projections smoothed
                smooth_alpha=SMOOTH_ALPHA if tgt.int8_compute in ("dynamic", "qdq") else None,
                int8_qmax=INT8_QMAX[tgt.int8_weight_range],
            )
            if budget_summary is not None:
                for plan_obj, row in zip(plan_objs, budget_summary["plan"], strict=True):  # type: ignore[arg-type]
                    plan_obj.calib_error = row["error"]
            if nncf:  # the light weights ship as int8 in the IR (per-channel scales aside)
                for p in plan_objs:
                    p.ffn_bytes_after += p.light_params - p.light_bytes
                    p.light_bytes = p.light_params
            plans = [p.to_json() for p in plan_objs]
            grids = {path: WeightGrid.from_quantized(path, qw) for path, qw in quantized.items()}
            act_absmax = None
            if tgt.int8_compute == "qdq" and any(g.bits == 8 for g in grids.values()):
                # static activation scales: each int8 multiply's input range over the calibration text
                absmax = input_absmax(
                    split, [p.removesuffix(".weight") for p, g in grids.items() if g.bits == 8], loaded.tokenizer, texts,
                    max_length=max_length, position_ids=spec.position_ids,
                )
                act_absmax = {f"{k}.weight": v for k, v in absmax.items()}
            state = split_state(split, plan_objs)
            state.update({f"heavy_index.{k}": v.to(torch.int64) for k, v in indices.items()})
            # The grid of every quantised weight, for the per-branch precision pass to store exactly.
            for path, qw in quantized.items():
                if qw.smooth is not None:
                    state[f"quant.{path}.smooth"] = qw.smooth.contiguous()
                state[f"quant.{path}.q"] = qw.q
                state[f"quant.{path}.scale"] = qw.scale.contiguous()
                if qw.zero_point is not None:
                    state[f"quant.{path}.zero_point"] = qw.zero_point.contiguous()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "ffsplit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source,
            "task": spec.name,
            "adapter": adapter.family,
            "target": tgt.to_json(),
            "budget": budget_summary,
            "recipe": {
                "heavy_ratio": heavy_ratio if budget is None else "per layer (budget)",
                "heavy_selection": "top mean|a_j| * ||W_out[:, j]||_2 over calibration tokens",
                "light": {"recipe": str(recipe), **recipe.params()} if budget is None else {"recipe": "per layer (budget)"},
                "heavy_precision": heavy,
                "light_precision": (recipe.quant or planned_light) if budget is None else "per layer (budget)",
                # How integer grids are stored and computed in the graph (QuantizeBranchWeightsPass).
                "graph_storage": {"int8": tgt.int8_compute, "int4": tgt.int4_compute} if quantized else "fp32",
                "int8_weight_max": INT8_QMAX[tgt.int8_weight_range],
            },
            "calibration": {
                "source": str(calib) if calib else "bundled: Python standard library docstrings",
                "texts": len(texts),
                "tokens": profiles[0].tokens,
                "max_length": max_length,
                "sha256": corpus_digest(texts),
            },
            "evaluation": {
                "source": "bundled: Python standard library docstrings (disjoint from calibration)",
                "texts": len(evaluation_texts(eval_size)),
                "sha256": corpus_digest([t.text for t in evaluation_texts(eval_size)]),
            },
            # what `check` holds the artifact to, decided once here (embedded in model.onnx with the rest)
            "checks": {"exact": exact, "limits": limits_for(tgt, spec.name, exact=exact, overrides=overrides)},
            "layers": plans,
            "params": _param_counts(plans, count_params(original), count_params(split)),
            "versions": _versions(),
        }
        save_file(state, str(stage / SPLIT_WEIGHTS))
        loaded.tokenizer.save_pretrained(stage)
        original.config.save_pretrained(stage)
        runtime_dir = stage / "runtime" / tgt.name
        # dynamo first; the TorchScript exporter only when dynamo fails to export or misses
        # export fidelity, and only behind the very same parity check.
        order = EXPORTERS if exporter == "auto" else (exporter,)
        if spec.past and exporter == "auto":
            order = ("dynamo",)  # no TorchScript path for a KV cache: dynamo's own error is the useful one
        attempts: list[dict[str, str]] = []
        report = None
        for name in order:
            try:
                with stages.stage(f"export ({name})", log):
                    program = export_program(split, loaded.tokenizer, spec, exporter=name)
                    passes = target_passes(
                        split_modules={p["module"]: p["layer"] for p in plans}, prefix=WRAPPER_PREFIX,
                        grids=grids, int8_form=tgt.int8_compute, int4_form=tgt.int4_compute,
                        # TensorRT realises float precisions in the engine builder, not in the graph
                        heavy_precision=heavy if tgt.runtime != "tensorrt" else "fp32",
                        light_precision=light_float if tgt.runtime != "tensorrt" else "fp32",
                        act_absmax=act_absmax, other_matmuls=tgt.other_matmuls,
                        int8_qmax=INT8_QMAX[tgt.int8_weight_range], fusions=tgt.fusions,
                    )
                    program, manifest["graph_passes"] = run_passes(program, passes)
                    EmbedManifestPass(manifest=manifest)(program)
                    opset = program.opset_imports.get("", None)
                    save_model(program, stage / MODEL_FILE)
                if nncf:
                    with stages.stage("quantize (NNCF)", log):
                        _nncf_ir(stage / MODEL_FILE, tgt, loaded.tokenizer, texts, max_length)
            except (UsageError, OSError, PassFailed):  # bad input, the machine (a full disk), or a bug in a pass
                raise
            except Exception as exc:  # an exporter failure is a reason to try the next one
                attempts.append({"exporter": name, "failed": f"export: {describe_failure(exc)}"})
                if log:
                    log(f"the {name} exporter failed: {attempts[-1]['failed']}")
                continue
            with stages.stage("build", log):
                runner = make_runner(stage / MODEL_FILE, tgt, runtime_dir=runtime_dir).activate()
                manifest["separation"] = _guard(runner, plans)
            with stages.stage("check", log):
                report = _parity(
                    original, split, runner, loaded.tokenizer, spec, limits=manifest["checks"]["limits"],
                    eval_size=eval_size, max_length=max_length, max_positions=source["max_positions"],
                )
                runner.deactivate()
            manifest["exporter"] = {"name": name, "opset": opset, "attempts": attempts}
            if report.comparisons["fidelity"]["passed"]:
                break
            attempts.append({"exporter": name, "failed": "parity: " + "; ".join(report.failures())})
            if log and name != order[-1]:
                log(f"the {name} export missed fidelity; trying the next exporter")
        if report is None:
            raise CheckFailed(
                "every exporter failed, nothing written: "
                + "; ".join(f"{a['exporter']}: {a['failed']}" for a in attempts) + f". What you can do: {EXPORT_ADVICE}"
            )
        manifest["parity"] = report.to_json()
        manifest["timings"] = stages.seconds
        if not report.passed:
            raise CheckFailed("parity failed, nothing written: " + "; ".join(report.failures()))
        manifest = write_manifest(stage, manifest)
    return ExportResult(out=out, manifest=manifest, report=report)


@dataclass
class LoadedArtifact:
    folder: Path
    manifest: dict[str, Any]
    target: Target


def open_artifact(folder: str | Path, *, verify: bool = True) -> LoadedArtifact:
    """An output folder with its manifest (schema-checked) and target (checked like a target file).

    ``verify`` (everything but ``inspect``) also checks the files against the
    manifest both ways, external data of every ONNX file, and the manifest
    against the copy embedded in model.onnx.
    """
    from ffsplit.parity.check import TASK_METRICS

    folder = Path(folder)
    manifest = read_manifest(folder)
    if verify:
        verify_artifact(folder, manifest)
    target = Target.from_json(manifest["target"], where=str(folder / "manifest.json"))
    unknown = {
        k for limits in manifest["checks"]["limits"].values() for k in limits
    } - set(TASK_METRICS[manifest["task"]])
    if unknown:
        raise UsageError(
            f"{folder / 'manifest.json'} is damaged (limits on {', '.join(sorted(unknown))}, which "
            f"{manifest['task']} does not measure): re-run ffsplit export"
        )
    return LoadedArtifact(folder, manifest, target)


def _load_source(art: LoadedArtifact, source: str | Path | None = None, trust_remote_code: bool = False) -> Any:
    """The source model of an artifact (the recorded one, or ``source``), refused if it changed since the export."""
    from ffsplit.loading import load_model

    src = art.manifest["source"]
    if source is not None:
        spec = str(source)
    elif Path(src["path"]).is_dir():
        spec = src["path"]
    else:
        from ffsplit.loading import ALIASES

        if src["spec"] not in ALIASES:
            raise UsageError(
                f"the source model this folder was exported from is no longer at '{src['path']}': "
                "pass --source PATH to where it is now"
            )
        spec = src["spec"]
    loaded = load_model(spec, task=art.manifest["task"], trust_remote_code=trust_remote_code)
    if _source_record(loaded)["sha256"] != src["sha256"]:
        raise UsageError(
            f"source model at '{loaded.path}' is not the one exported (its hash differs): pass --source with the "
            "exact model the export used, or re-run ffsplit export"
        )
    return loaded


def _rebuild(art: LoadedArtifact, source: str | Path | None = None, log: Any = None) -> tuple[Any, Any]:
    """The artifact's source model (hash-checked) and its split torch model, rebuilt from split.safetensors."""
    from ffsplit.split.adapters import find_adapter
    from ffsplit.split.apply import rebuild_split

    if log:
        log("loading the source model and rebuilding the split ...")
    loaded = _load_source(art, source)
    adapter = find_adapter(loaded.model)
    split = copy.deepcopy(loaded.model)
    state = _split_state(art.folder / SPLIT_WEIGHTS)
    try:
        rebuild_split(split, adapter, art.manifest["layers"], state)
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{art.folder / SPLIT_WEIGHTS} does not fit the manifest's layers ({type(exc).__name__}: {first}): "
            "re-run ffsplit export"
        ) from None
    return loaded, split


def _split_state(path: Path) -> dict[str, Any]:
    """The SplitFFN weights in split.safetensors, refused in one line if the file is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if not k.startswith(("heavy_index.", "quant."))}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"{path} is damaged ({type(exc).__name__}: {first}): re-run ffsplit export") from None


def check(
    folder: str | Path, *, eval_size: int | None = None, source: str | Path | None = None, log: Any = None
) -> Any:
    """Re-run the separation guard and the three-way parity of an artifact; CheckFailed when either fails."""
    from ffsplit.runtimes.base import make_runner

    if eval_size is not None:
        bounds.require_int("--eval-size", eval_size, bounds.MIN_EVAL_TEXTS, bounds.MAX_TEXTS)
    art = open_artifact(folder)
    _require_supported(art.target)
    m = art.manifest
    loaded, split = _rebuild(art, source, log)
    with tempfile.TemporaryDirectory(prefix="ffsplit-check-") as tmp:
        if log:
            log("building the runtime session and checking branch separation ...")
        with make_runner(art.folder / MODEL_FILE, art.target, runtime_dir=Path(tmp)) as runner:
            _guard(runner, m["layers"])
            if log:
                log("running parity ...")
            report = _parity(
                loaded.model, split, runner, loaded.tokenizer, loaded.task, limits=m["checks"]["limits"],
                eval_size=eval_size or m["evaluation"]["texts"], max_length=m["calibration"]["max_length"],
                max_positions=m["source"].get("max_positions"),
            )
    return report


def debug(
    folder: str | Path, *, batch: int = 8, tolerance: float | None = None, source: str | Path | None = None,
    log: Any = None,
) -> list[Any]:
    """Compare every module inside every SplitFFN between split torch and the runtime, in graph order.

    The tolerance (default: the target's fidelity ``max_abs``) scales with the
    module output's magnitude: ``tolerance * max(1, max|torch output|)``.
    """
    import onnx_ir as ir

    from ffsplit.exporter.export import WRAPPER_PREFIX
    from ffsplit.parity.check import torch_output
    from ffsplit.parity.layers import compare_layers
    from ffsplit.runtimes.base import make_runner
    from ffsplit.split.calibration import encode_batches, evaluation_texts

    bounds.require_int("--batch", batch, 1, bounds.MAX_BATCH)
    if tolerance is not None:
        bounds.require_float("--tolerance", tolerance, 0.0, 1e6, lo_open=True)
    art = open_artifact(folder)
    _require_supported(art.target)
    m = art.manifest
    loaded, split = _rebuild(art, source, log)
    tol = tolerance if tolerance is not None else float(art.target.parity.get("fidelity", {}).get("max_abs", 1e-4))
    texts = [t.text for t in evaluation_texts(batch)]
    enc = next(encode_batches(loaded.tokenizer, texts, batch_size=batch, max_length=m["calibration"]["max_length"]))
    try:
        model = ir.load(art.folder / MODEL_FILE)
    except Exception as exc:
        raise UsageError(f"cannot read {art.folder / MODEL_FILE} ({type(exc).__name__}): re-run ffsplit export") from None
    if log:
        log("running split torch and the runtime with every FFN module's output exposed ...")
    graph_inputs = {v.name for v in model.graph.inputs}
    return compare_layers(
        split, model, lambda path: make_runner(path, art.target).activate(), enc,
        lambda mod, b: torch_output(mod, b, loaded.task, graph_inputs),
        split_modules={p["module"]: p["layer"] for p in m["layers"]}, prefix=WRAPPER_PREFIX, tolerance=tol,
    )


def _nncf_ir(onnx_path: Path, target: Target, tokenizer: Any, texts: list[str], max_length: int) -> Path:
    """The target's OpenVINO IR for ``onnx_path``: NNCF static int8 calibrated on ``texts``."""
    from ffsplit.runtimes.base import onnx_inputs
    from ffsplit.runtimes.openvino import quantize_ir
    from ffsplit.split.calibration import calibration_feeds

    feeds = calibration_feeds(tokenizer, texts, max_length=max_length, names=set(onnx_inputs(onnx_path)))
    return quantize_ir(onnx_path, target, feeds)


def _baseline_onnx(art: LoadedArtifact, loaded: Any, log: Any = None) -> Path:
    """The original model exported the same way as the split one, cached by source hash and versions.

    For an NNCF target the original also gets NNCF's static int8 (nothing ignored, calibrated on as
    many bundled calibration texts as the export used): the strongest recipe on that runtime.
    """
    from ffsplit.exporter import export_program, save_model
    from ffsplit.graph_passes.pipeline import generic_passes, run_passes
    from ffsplit.split.calibration import calibration_texts

    v = _versions()
    # the graph gets the same target-independent passes as the split one (cleanup, NaN guards, fusions)
    fusions = art.target.fusions
    nncf = art.target.int8_compute == "nncf"
    calib = art.manifest["calibration"]
    key = (f"{art.manifest['source']['sha256'][:16]}-torch{v['torch']}-tf{v['transformers']}-ffsplit{v['ffsplit']}"
           f"-g3-{fusions}" + (f"-nncf-{art.target.int8_weight_range}-{calib['texts']}x{calib['max_length']}" if nncf else ""))
    root = Path(os.environ.get("FFSPLIT_CACHE", Path.home() / ".cache" / "ffsplit")) / "baseline" / key
    path = root / MODEL_FILE
    if path.is_file():
        return path
    if log:
        log("exporting the original model once for comparison (cached) ...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
    try:
        program = export_program(loaded.model, loaded.tokenizer, loaded.task)
        program, _ = run_passes(program, generic_passes(fusions=fusions))
        save_model(program, tmp / MODEL_FILE)
        if nncf:
            if log:
                log("quantising the original with NNCF for comparison (cached) ...")
            texts = calibration_texts(limit=calib["texts"], max_length=calib["max_length"])
            _nncf_ir(tmp / MODEL_FILE, art.target, loaded.tokenizer, texts, calib["max_length"])
        with contextlib.suppress(OSError):  # another process cached it first
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def bench(
    folder: str | Path,
    *,
    batches: tuple[int, ...] = (1, 8),
    sequences: tuple[int, ...] = (128,),
    warmup: int = 5,
    runs: int = 30,
    min_seconds: float = 2.0,
    source: str | Path | None = None,
    log: Any = None,
) -> list[Any]:
    """Time the original and the split ONNX side by side in the artifact's runtime."""
    from ffsplit.bench.harness import make_feed, summarise, time_interleaved
    from ffsplit.runtimes.base import make_runner
    from ffsplit.split.calibration import evaluation_texts

    bounds.require_int("--runs", runs, 1, bounds.MAX_RUNS)
    bounds.require_int("--warmup", warmup, 0, bounds.MAX_WARMUP)
    bounds.require_float("--min-seconds", min_seconds, 0.0, bounds.MAX_SECONDS)
    if not batches or not sequences:
        raise UsageError("--batch and --seq each need at least one size")
    art = open_artifact(folder)
    _require_supported(art.target)
    max_pos = art.manifest["source"].get("max_positions")
    for b in batches:
        for s in sequences:
            bounds.require_shape(b, s, max_pos)
    loaded = _load_source(art, source)
    baseline = _baseline_onnx(art, loaded, log)
    texts = [t.text for t in evaluation_texts(64)]
    rows = []
    with make_runner(baseline, art.target, timing=True) as orig, \
            make_runner(art.folder / MODEL_FILE, art.target, timing=True) as split:
        names = list(split.input_signature())
        for b in batches:
            for s in sequences:
                if log:
                    log(f"timing batch {b} x sequence {s} ...")
                # A KV-cache graph is timed on its prefill (empty past) over the full sequence.
                feed = split.feed_from(make_feed(loaded.tokenizer, texts, names, batch=b, sequence=s))
                times = time_interleaved({"original": orig, "ffsplit": split}, feed, warmup=warmup, runs=runs, min_seconds=min_seconds)
                rows.extend(summarise(times, batch=b, sequence=s, reference="original"))
    return rows


def inspect_artifact(folder: str | Path, *, graphs: bool = True) -> dict[str, Any]:
    """The manifest of an artifact, and per layer and branch the ops and precisions found in the
    exported graph and in each runtime's optimised graph (hashes are not verified: inspecting a
    broken folder is allowed)."""
    import onnx_ir as ir

    from ffsplit.graph_passes.precision import branch_summary, records_summary

    art = open_artifact(folder, verify=False)
    info = dict(art.manifest)
    if graphs:
        found: dict[str, Any] = {}
        present, _links = list_files(art.folder)  # regular files only: never follow a link out of the folder
        paths = [present[MODEL_FILE]] if MODEL_FILE in present else []
        for suffix in ("/optimized.onnx", "/layers.json"):
            paths += [p for rel, p in sorted(present.items()) if rel.startswith(f"{RUNTIME_DIR}/") and rel.endswith(suffix)]
        for path in paths:
            try:
                if path.suffix == ".json":  # a runtime's executed layer list (OpenVINO, TensorRT)
                    summary = records_summary(_layer_file_records(path))
                else:
                    check_external_data(path)  # never follow external data out of the folder
                    summary = branch_summary(ir.load(path))
                found[str(path.relative_to(art.folder))] = {str(k): v for k, v in summary.items()}  # as in JSON
            except Exception as exc:
                found[str(path.relative_to(art.folder))] = {"error": f"cannot read: {exc}"[:300]}
        info["graphs"] = found
    return info


def _layer_file_records(path: Path) -> list[Any]:
    """Guard records from a runtime's saved layer list: OpenVINO's rows or TensorRT's inspector JSON."""
    if path.stat().st_size > 256 << 20:
        raise UsageError(f"{path} is larger than any layer list ffsplit writes")
    data = parse_json(path.read_text(encoding="utf-8"), str(path))
    if isinstance(data, dict):
        from ffsplit.runtimes.tensorrt import records_from_inspector

        return records_from_inspector(data)
    from ffsplit.runtimes.openvino import records_from_layers

    return records_from_layers(data)


def targets() -> list[tuple[Target, str | None]]:
    """Every shipped target and why it cannot run here (None when it can)."""
    return [(t, t.unavailable_reason()) for t in list_targets()]
