"""The CLI's verbs as functions: export, check, bench, inspect, targets.

``cli.py`` only parses arguments and prints; everything a verb does is here,
so the Python API and the command line cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffsplit import __version__, bounds
from ffsplit.artifact import (
    MODEL_FILE,
    RUNTIME_DIR,
    SPLIT_WEIGHTS,
    LoadedArtifact,
    check_external_data,
    holds_folder,
    list_files,
    not_deployed,
    open_artifact,
    pack_artifact,
    remove_tree,
    require_built,
    require_unpacked,
    staged_output,
    write_manifest,
)
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.exporter.export import EXPORT_ADVICE
from ffsplit.manifest import FORMAT, Manifest
from ffsplit.runtimes.targets import Target, list_targets, require_supported
from ffsplit.stages.reload import load_source, rebuild, split_in_place

if TYPE_CHECKING:
    from ffsplit.loading import LoadedModel
    from ffsplit.parity.check import RecordedOutputs
    from ffsplit.plan import ExportPlan
    from ffsplit.split.ffn_adapter import FFNAdapter
    from ffsplit.split.profile import LayerProfile
    from ffsplit.stages.split import Split

PARITY_DIR = ".parity"  # in the staging folder: the recorded torch outputs parity compares with

__all__ = [
    "ExportResult", "LoadedArtifact", "bench", "build", "check", "debug", "export", "inspect_artifact", "open_artifact", "pack",
    "targets",
]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Stages:
    """When the run started, and the wall time and peak resident memory of each stage, in order."""

    created: str = field(default_factory=_now)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    per_stage: bool = True  # False where the kernel's peak cannot be reset: each figure is then the peak so far

    @contextmanager
    def stage(self, name: str, log: Any = None) -> Iterator[None]:
        from ffsplit import resources

        if log:
            log(f"{name} ...")
        self.per_stage = resources.reset_peak() and self.per_stage
        t0 = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 3)
        self.peak_mb[name] = round(resources.peak_bytes() / 1e6, 1)
        if log:
            log(f"{name} done in {self.seconds[name]:.1f} s, peak memory {self.peak_mb[name]:,.0f} MB")

    def record(self) -> dict[str, Any]:
        """What the manifest keeps about the run itself, in its one ``run`` record: when it was
        (``created``), ``timings`` (s) and ``memory`` (peak resident MB per stage)."""
        return {"run": {"created": self.created, "timings": self.seconds,
                        "memory": {"peak_mb": self.peak_mb, "per_stage": self.per_stage}}}


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


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]
    report: Any


def export(model: str, out: str | Path, *, log: Any = None, progress: bool = True, **options: Any) -> ExportResult:
    """Profile, split, export, build for the target and check parity; write the output folder.

    ``options`` are ExportOptions' fields (the CLI's options). Raises UsageError
    (exit 2) for bad input before anything is written, and CheckFailed (exit 1)
    when parity or the separation guard fails, in which case no output folder
    is left behind.
    """
    import torch

    from ffsplit.plan import ExportOptions, resolve

    try:
        opts = ExportOptions(model=model, out=out, **options)
    except TypeError as exc:  # a Python caller's misspelt option
        raise UsageError(f"export: {exc}") from None
    plan = resolve(opts)
    from ffsplit import resources

    resources.bound_heap()  # a layer's fp32 working copies go back to the OS when freed
    if log and Path(plan.given_out).expanduser().absolute() != plan.out:
        log(f"--out '{plan.given_out}' is the folder {plan.out}")
    torch.manual_seed(0)
    with staged_output(plan.out, force=opts.force, protected={"source model": plan.source_dir}) as stage:
        return _export_into(plan, stage, log=log, progress=progress)


def _export_into(plan: ExportPlan, stage: Path, *, log: Any, progress: bool) -> ExportResult:
    """The stages of one export, written into the staging folder ``stage``.

    One copy of the weights at a time: the original's outputs are recorded before it is split in place,
    the split's before it is captured, and the torch model is freed once the graph is saved, before the
    runtime is built (a retry with the next exporter loads and splits the source again).
    """
    from ffsplit import resources
    from ffsplit.runtimes.openvino_ir import build_ir, weight_storage
    from ffsplit.runtimes.shapes import clamp_shapes
    from ffsplit.split.modules import count_params
    from ffsplit.stages import capture, prepare, verify
    from ffsplit.stages import split as split_stage

    stages = Stages()
    with stages.stage("load", log):
        loaded, adapter, source = prepare.load(plan)
        # runtime shape ranges (TensorRT profiles, Triton) never reach past the model's positions
        shapes = clamp_shapes(plan.target.shapes, source["max_positions"], past=plan.task.past)
        if shapes != plan.target.shapes:
            plan.target = dataclasses.replace(plan.target, shapes=shapes)
    with stages.stage("profile", log):
        profiles = prepare.profile(plan, loaded, adapter, progress=progress)
    recorded = stage / PARITY_DIR  # removed before the manifest lists the folder's files
    record = partial(verify.record, texts=plan.eval_texts, max_length=plan.options.max_length,
                     max_positions=source["max_positions"], progress=progress)
    with stages.stage("original outputs", log):
        original = record(loaded.model, loaded=loaded, folder=recorded / "original", desc="original model")
    total_before = count_params(loaded.model)
    done, manifest = _split_and_save(plan, stage, loaded, adapter, source, profiles, stages, log, total_before)
    with stages.stage("split outputs", log):
        split_out = record(done.model, loaded=loaded, folder=recorded / "split", desc="split model")
    attempts: list[dict[str, str]] = []
    report = None
    for name in plan.exporters:  # try the next exporter when one cannot capture or misses fidelity
        if done is None:  # freed after the last attempt's capture: load and split the source again
            with stages.stage("reload", log):
                loaded = prepare.load(plan)[0]
                done = split_stage.split(plan, loaded, adapter, profiles)
        with stages.stage(f"export ({name})", log):
            captured = capture.capture(plan, done.model, loaded.tokenizer, name)
            if captured.model is not None:
                passes = capture.graph_passes(plan, done.plans, done.grids, done.act_absmax,
                                              store_weights=weight_storage(plan.target, done.model))
                opset = capture.save(captured.model, passes, manifest, stage / MODEL_FILE)
        if captured.model is None:
            attempts.append({"exporter": name, "failed": captured.failure})
            if log:
                log(f"the {name} exporter failed: {captured.failure}")
            continue
        captured = done = passes = None  # the graph is on disk: the torch model and the IR go before the runtime
        resources.drop_weights(loaded.model)
        loaded.model = None
        resources.release_memory()
        if log:
            log(f"torch model freed: {resources.current_bytes() / 1e6:,.0f} MB resident")
        if plan.nncf:
            with stages.stage(f"{'quantize' if plan.nncf == 'int8' else 'compress'} (NNCF {plan.nncf})", log):
                build_ir(stage / MODEL_FILE, plan.target, loaded.tokenizer, plan.texts, plan.options.max_length,
                         keep_heavy=plan.heavy == "fp32")
        report = _verify_into(plan, stage, loaded, (original, split_out), source, manifest, stages, log=log,
                              progress=progress)
        manifest["exporter"] = {"name": name, "opset": opset, "attempts": attempts}
        if report.comparisons["fidelity"]["passed"]:
            break
        attempts.append({"exporter": name, "failed": "parity: " + "; ".join(report.failures())})
        if log and name != plan.exporters[-1]:
            log(f"the {name} export missed fidelity; trying the next exporter")
    remove_tree(recorded)
    manifest.update(stages.record())
    if report is None:
        manifest["exporter"] = {"name": None, "attempts": attempts}
        raise CheckFailed(
            "every exporter failed, nothing written: "
            + "; ".join(f"{a['exporter']}: {a['failed']}" for a in attempts) + f". What you can do: {EXPORT_ADVICE}",
            details=manifest,
        )
    manifest["parity"] = report.to_json()
    if not report.passed:
        raise CheckFailed("parity failed, nothing written: " + "; ".join(report.failures()), details=manifest)
    return ExportResult(out=plan.out, manifest=write_manifest(stage, manifest), report=report)


def _split_and_save(
    plan: ExportPlan, stage: Path, loaded: LoadedModel, adapter: type[FFNAdapter], source: dict[str, Any],
    profiles: list[LayerProfile], stages: Stages,
    log: Any, total_before: int,
) -> tuple[Any, dict[str, Any]]:
    """Split the loaded model in place and write split.safetensors, the tokenizer, config and
    sentence-transformers files; the Split (its saved state dropped) and the manifest so far."""
    from safetensors.torch import save_file

    from ffsplit.pooling import sentence_files
    from ffsplit.stages import split

    with stages.stage("split", log):
        done = split.split(plan, loaded, adapter, profiles)
    manifest = _manifest(plan, loaded, adapter, source, profiles, done, total_before)
    with stages.stage("save split weights", log):
        save_file(done.state, str(stage / SPLIT_WEIGHTS))
        done.state = {}  # the int8 / int4 codes in it are held by the grids too; the rest are the model's
        loaded.tokenizer.save_pretrained(stage)
        loaded.model.config.save_pretrained(stage)
        for rel in sentence_files(plan.source_dir):  # pooling and normalisation stay with a sentence-transformers model
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plan.source_dir / rel, stage / rel)  # contents: the artifact holds no links
    return done, manifest


def _verify_into(
    plan: ExportPlan, stage: Path, loaded: LoadedModel, recorded: tuple[RecordedOutputs, RecordedOutputs],
    source: dict[str, Any], manifest: dict[str, Any],
    stages: Stages, *, log: Any, progress: bool,
) -> Any:
    """Build the runtime for the graph in ``stage``, guard it, run the three-way parity and save the golden
    outputs; the ParityReport. A deferred build checks parity on the target's CPU stand-in and leaves the
    guard to ``ffsplit build``; a failed guard raises CheckFailed."""
    from ffsplit.parity.golden import GOLDEN_FILE, GOLDEN_TEXTS, write_golden
    from ffsplit.runtimes.base import make_runner
    from ffsplit.split.calibration import encode_batches
    from ffsplit.stages import verify

    runtime_dir = stage / RUNTIME_DIR / plan.target.name
    with stages.stage("build" if not plan.deferred else "build (CPU stand-in)", log):
        runner = make_runner(stage / MODEL_FILE, plan.runner_target,
                             runtime_dir=None if plan.deferred else runtime_dir).activate(just_written=True)
        if plan.deferred:
            manifest["separation"] = {"graph": "none: the build is deferred", "passed": None}
            manifest["build"] = {"status": "deferred", "target": plan.target.name, "reason": plan.deferred,
                                 "checked_on": runner.name}
        else:
            manifest["build"] = {"status": "built", "target": plan.target.name}
            manifest["separation"] = verify.guard(runner, manifest["layers"])
            if not manifest["separation"]["passed"]:
                runner.deactivate()
                manifest.update(stages.record())
                raise CheckFailed(manifest["separation"]["failure"], details=manifest)
    with stages.stage("check", log):
        report = verify.parity(
            *recorded, runner, loaded.tokenizer, loaded.task, limits=plan.limits,
            texts=plan.eval_texts, max_length=plan.options.max_length,
            max_positions=source["max_positions"], progress=progress, pooling=plan.pooling,
        )
        # what `check --golden` re-runs later, without torch or the source model
        batch = next(encode_batches(loaded.tokenizer, plan.eval_texts[:GOLDEN_TEXTS], batch_size=GOLDEN_TEXTS,
                                    max_length=plan.options.max_length))
        write_golden(stage / GOLDEN_FILE, runner, {k: v.numpy() for k, v in batch.items()}, loaded.task)
        runner.deactivate()
    return report


def _manifest(
    plan: ExportPlan, loaded: LoadedModel, adapter: type[FFNAdapter], source: dict[str, Any],
    profiles: list[LayerProfile], done: Split, total_before: int,
) -> dict[str, Any]:
    """The manifest of one export before its graph exists (exporter, separation and parity come later)."""
    from ffsplit.artifact import versions
    from ffsplit.split.calibration import corpus_digest
    from ffsplit.split.modules import count_params

    o, budget = plan.options, done.budget is not None
    eval_texts = plan.eval_texts
    return {
        "format": FORMAT,
        "ffsplit_version": __version__,
        "source": source,
        "task": loaded.task.name,
        "adapter": adapter.family,
        # where the FFN layout came from: a family file, or what structural discovery found and proved
        "layout": getattr(adapter, "found", "") or f"family file {adapter.family}",
        "target": plan.target.to_json(),
        "budget": done.budget,
        "recipe": {
            "heavy_ratio": plan.heavy_ratio if not budget else "per layer (budget)",
            "heavy_selection": "top mean|a_j| * ||W_out[:, j]||_2 over calibration tokens",
            "light": {"recipe": str(plan.recipe), **plan.recipe.params()} if not budget else {"recipe": "per layer (budget)"},
            "heavy_precision": plan.heavy,
            "light_precision": (plan.recipe.quant or plan.planned_light) if not budget else "per layer (budget)",
            # How integer grids are stored and computed in the graph (QuantizeBranchWeightsPass).
            "graph_storage": plan.graph_storage if done.grids else "fp32",
            "int8_weight_max": plan.int8_qmax,
        },
        "calibration": {
            "source": str(o.calib) if o.calib else "bundled: Python standard library docstrings",
            "texts": len(plan.texts),
            "tokens": profiles[0].tokens,
            "max_length": o.max_length,
            "sha256": corpus_digest(plan.texts),
        },
        "evaluation": {
            "source": str(o.eval) if o.eval else "bundled: Python standard library docstrings (disjoint from calibration)",
            "texts": len(eval_texts),
            "sha256": corpus_digest(eval_texts),
        },
        # what `check` holds the artifact to, decided once in the plan (embedded in model.onnx with the rest)
        "checks": {"exact": plan.exact, "limits": plan.limits},
        "layers": done.plans,
        "params": _param_counts(done.plans, total_before, count_params(done.model)),
        "versions": versions(),
    }


@holds_folder
def check(
    folder: str | Path, *, eval_size: int | None = None, source: str | Path | None = None,
    limits: dict[str, float] | None = None, eval_file: str | Path | None = None, log: Any = None,
    progress: bool = False,
) -> Any:
    """Re-run the separation guard and the three-way parity of an artifact.

    Returns the ParityReport with the guard's record in ``separation``; ``passed`` is false when either
    failed. ``limits`` (metric -> value, as ``--limit``) replace the export's limits on what compression
    may cost (original vs split and vs runtime); fidelity is never relaxed. ``eval_file`` checks on the
    user's texts; without it, on what the export was checked on (its ``--eval`` file, which must be
    unchanged, or the bundled set).
    """
    from ffsplit import resources
    from ffsplit.limits import TASK_METRICS
    from ffsplit.plan import check_overrides
    from ffsplit.runtimes.base import make_runner
    from ffsplit.stages import verify

    resources.bound_heap()
    if eval_size is not None:
        bounds.require_int("--eval-size", eval_size, bounds.MIN_EVAL_TEXTS, bounds.MAX_TEXTS)
    check_overrides(dict(limits or {}))
    art = open_artifact(folder)
    require_unpacked(art, "check")
    require_supported(art.target)
    m = art.manifest
    wanted = {k: v for k, v in (limits or {}).items() if v is not None}
    missing = sorted(set(wanted) - set(TASK_METRICS[m.task]))
    if missing:
        raise UsageError(f"--limit {', '.join(missing)}: {m.task} does not measure it; use {', '.join(TASK_METRICS[m.task])}")
    applied = {name: {**lims, **(wanted if name != "fidelity" else {})} for name, lims in m.limits.items()}
    texts = _check_texts(m, eval_file, eval_size)
    if log:
        log("loading the source model ...")
    loaded = load_source(art, source)
    with tempfile.TemporaryDirectory(prefix="ffsplit-check-") as tmp:
        # one torch model at a time, as at export: the original's outputs, then the split's (rebuilt in place)
        record = partial(verify.record, loaded=loaded, texts=texts, max_length=m.max_length,
                         max_positions=m.source.max_positions, progress=progress)
        original = record(loaded.model, folder=Path(tmp) / "original", desc="original model")
        if log:
            log("rebuilding the split from split.safetensors ...")
        split_in_place(art, loaded)
        split = record(loaded.model, folder=Path(tmp) / "split", desc="split model")
        resources.drop_weights(loaded.model)
        loaded.model = None
        resources.release_memory()
        if log:
            log("building the runtime session and checking branch separation ...")
        with make_runner(art.folder / MODEL_FILE, art.target, runtime_dir=Path(tmp) / "runtime") as runner:
            separation = verify.guard(runner, m.layers)
            if log:
                log("running parity ...")
            report = verify.parity(
                original, split, runner, loaded.tokenizer, loaded.task, limits=applied,
                texts=texts, max_length=m.max_length, max_positions=m.source.max_positions, progress=progress,
                pooling=_graph_pooling(art),
            )
    report.separation = separation
    return report


def _graph_pooling(art: LoadedArtifact) -> Any:
    """The pooling behind an artifact's ``sentence_embedding`` output, or None when its graph has none."""
    from ffsplit.pooling import read_pooling
    from ffsplit.signature import SENTENCE_OUTPUT, onnx_signature

    if SENTENCE_OUTPUT not in onnx_signature(art.folder / MODEL_FILE)[1]:
        return None
    return read_pooling(art.folder, default_length=None)


def _check_texts(m: Manifest, eval_file: str | Path | None, eval_size: int | None) -> list[str]:
    """The evaluation texts of a check: ``eval_file``, else the export's own (its file must not have changed)."""
    from ffsplit.split.calibration import corpus_digest, eval_texts

    evaluation = m.evaluation
    limit, max_length, recorded = eval_size or evaluation.texts, m.max_length, evaluation.source
    if eval_file is not None or evaluation.bundled:
        return eval_texts(eval_file, limit=limit, max_length=max_length)
    if not Path(recorded).is_file():
        raise UsageError(f"the export was checked on '{recorded}', which is not there now: pass --eval FILE")
    texts = eval_texts(recorded, limit=limit, max_length=max_length)
    if eval_size is None and corpus_digest(texts) != evaluation.sha256:
        raise UsageError(f"'{recorded}' changed since the export was checked on it: pass --eval FILE to check on it as it is")
    return texts


@holds_folder
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
    require_unpacked(art, "debug")
    require_supported(art.target)
    m = art.manifest
    loaded, split = rebuild(art, source, log)
    tol = tolerance if tolerance is not None else float(m.limits["fidelity"].get("max_abs", 1e-4))
    texts = [t.text for t in evaluation_texts(batch)]
    enc = next(encode_batches(loaded.tokenizer, texts, batch_size=batch, max_length=m.max_length))
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
        split_modules={p["module"]: p["layer"] for p in m.layers}, prefix=WRAPPER_PREFIX, tolerance=tol,
    )


@holds_folder
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
    from ffsplit.bench.baseline import baseline_onnx
    from ffsplit.bench.harness import make_feed, summarise, time_interleaved
    from ffsplit.runtimes.base import make_runner
    from ffsplit.split.calibration import evaluation_texts

    bounds.require_int("--runs", runs, 1, bounds.MAX_RUNS)
    bounds.require_int("--warmup", warmup, 0, bounds.MAX_WARMUP)
    bounds.require_float("--min-seconds", min_seconds, 0.0, bounds.MAX_SECONDS)
    if not batches or not sequences:
        raise UsageError("--batch and --seq each need at least one size")
    art = open_artifact(folder)
    require_built(art, "bench")
    require_supported(art.target)
    max_pos = art.manifest.source.max_positions
    for b in batches:
        for s in sequences:
            bounds.require_shape(b, s, max_pos)
    loaded = load_source(art, source)
    baseline = baseline_onnx(art, loaded, log)
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


@holds_folder
def bench_accuracy(
    folder: str | Path, *, source: str | Path | None = None, log: Any = None
) -> dict[str, Any] | None:
    """Accuracy of ``bench``'s two models against the original torch model, on the export's evaluation texts,
    when ``bench``'s baseline is lossy too (NNCF int8 of the original); None when it is the original itself.

    Speed alone says little against a lossy baseline: this measures both on
    the same inputs. Returns ``baseline`` (what it is), ``texts`` and, per
    model (``original``, ``ffsplit``), the task's metrics.
    """
    from ffsplit.bench.baseline import baseline_onnx, lossy_baseline
    from ffsplit.parity.check import runtime_accuracy
    from ffsplit.runtimes.base import make_runner

    art = open_artifact(folder)
    lossy = lossy_baseline(art.target)
    if lossy is None:
        return None
    require_built(art, "bench")
    require_supported(art.target)
    m = art.manifest
    texts = _check_texts(m, None, None)
    loaded = load_source(art, source)
    baseline = baseline_onnx(art, loaded, log)
    if log:
        log(f"measuring both models' accuracy against the original on {len(texts)} evaluation texts ...")
    with make_runner(baseline, art.target) as orig, make_runner(art.folder / MODEL_FILE, art.target) as split:
        metrics = runtime_accuracy(loaded.model, {"original": orig, "ffsplit": split}, loaded.tokenizer, texts,
                                   loaded.task, batch_size=16, max_length=m.max_length)
    return {"baseline": lossy, "texts": len(texts), **metrics}


def build(folder: str | Path, *, target: str | None = None, tolerance: float | None = None, log: Any = None) -> dict[str, Any]:
    """Build an artifact's runtime on this machine, guard it and replay its golden outputs; the artifact is
    rewritten with the build recorded (``build``, ``separation``). Returns the new manifest.

    The natural use: export on a CPU machine for a GPU target (its build is deferred), then ``build`` on the
    GPU machine. ``target`` (a name or TOML file) may differ from the export's target only in how the
    graph is run (shapes, providers, builder options), never in what the graph holds. Raises UsageError
    when the target cannot run here or does not fit the graph, CheckFailed (nothing changed) when the guard
    or the golden outputs fail.
    """
    from ffsplit.parity.golden import replay_golden
    from ffsplit.runtimes.base import make_runner
    from ffsplit.runtimes.targets import load_target
    from ffsplit.stages import verify

    if tolerance is not None:
        bounds.require_float("--tolerance", tolerance, 0.0, 1e6)
    art = open_artifact(folder)
    exported = Target.from_json(art.manifest["target"])
    tgt = exported if target is None else load_target(target)
    differ = exported.graph_differences(tgt)
    if differ:
        raise UsageError(f"target '{tgt.name}' needs another graph than the one exported for '{exported.name}' "
                         f"({'; '.join(differ)}): re-run ffsplit export --target {target}")
    if tgt.ir_compression and tgt.name != exported.name:
        raise UsageError(f"the NNCF IR of this artifact belongs to '{exported.name}': build it under that name")
    require_supported(tgt)
    m = art.manifest
    mine = f"{RUNTIME_DIR}/{tgt.name}/"
    # the IR NNCF made at export is the graph the target runs; everything else there is rebuilt
    kept = [rel for rel in m.files if not rel.startswith(mine) or (tgt.ir_compression and not not_deployed(rel))]
    with staged_output(art.folder, force=True) as stage:
        for rel in kept:  # linked, not copied: nothing below writes into a kept file
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(art.folder / rel, stage / rel, copy=rel.startswith(mine))
        # the files as staged are the ones verified (the folder may have changed since it was opened)
        check_staged = {**m, "files": {rel: m.files[rel] for rel in kept}}
        from ffsplit.artifact import verify_files

        verify_files(stage, check_staged)
        if log:
            log(f"building for {tgt.name} and checking branch separation ...")
        with make_runner(stage / MODEL_FILE, tgt, runtime_dir=stage / RUNTIME_DIR / tgt.name) as runner:
            separation = verify.guard(runner, m.layers)
            if not separation["passed"]:
                raise CheckFailed(separation["failure"], details={"separation": separation})
            if log:
                log("replaying the golden outputs ...")
            golden = replay_golden(stage, runner, m, tolerance=tolerance)
        if not golden["passed"]:
            raise CheckFailed(
                f"{tgt.name} moved the golden {golden['output']} by {golden['max_abs']:.3g} (tolerance "
                f"{golden['tolerance']:.3g}), nothing changed: check the target's options, or `ffsplit check` "
                "the artifact on this machine to see its parity", details={"separation": separation, "golden": golden},
            )
        record: dict[str, Any] = {"status": "built", "target": tgt.name, "golden": golden,
                                  "created": _now()}
        if tgt.name != exported.name or tgt.to_json() != exported.to_json():
            record["runtime_target"] = tgt.to_json()
        manifest = {k: v for k, v in m.items() if k != "files"}
        manifest.update(build=record, separation=separation)
        return write_manifest(stage, manifest)


def _link_or_copy(src: Path, dst: Path, *, copy: bool) -> None:
    if not copy:
        try:
            os.link(src, dst, follow_symlinks=False)
            return
        except OSError:  # another file system, or links not allowed: a copy is the same file
            pass
    shutil.copyfile(src, dst, follow_symlinks=False)


def pack(folder: str | Path, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """A slim copy of a verified artifact holding only what its target runs, with the tokenizer, config,
    sentence-transformers files and golden outputs; its manifest lists what was left out. ``ffsplit.load``,
    ``check --golden``, ``bench``, ``triton`` and ``serve`` work on it; the three-way ``check`` needs the full one."""
    return pack_artifact(folder, out, force=force)


def inspect_artifact(folder: str | Path, *, graphs: bool = True) -> dict[str, Any]:
    """The manifest of an artifact, and per layer and branch the ops and precisions found in the
    exported graph and in each runtime's optimised graph (hashes are not verified: inspecting a
    broken folder is allowed)."""
    import onnx_ir as ir

    from ffsplit.graph_passes.precision import branch_summary, records_summary
    from ffsplit.runtimes.records import records_from_file

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
                    summary = records_summary(records_from_file(path))
                else:
                    check_external_data(path)  # never follow external data out of the folder
                    summary = branch_summary(ir.load(path))
                found[str(path.relative_to(art.folder))] = {str(k): v for k, v in summary.items()}  # as in JSON
            except Exception as exc:
                found[str(path.relative_to(art.folder))] = {"error": f"cannot read: {exc}"[:300]}
        info["graphs"] = found
    return info


def targets() -> list[tuple[Target, str | None]]:
    """Every shipped target and why it cannot run here (None when it can)."""
    return [(t, t.unavailable_reason()) for t in list_targets()]
