"""The CLI's verbs as functions: export, check, bench, inspect, targets.

``cli.py`` only parses arguments and prints; everything a verb does is here,
so the Python API and the command line cannot drift apart.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffsplit import bounds
from ffsplit.artifact import (
    MODEL_FILE,
    RUNTIME_DIR,
    check_external_data,
    holds_folder,
    link_or_copy,
    list_files,
    not_deployed,
    staged_output,
    write_manifest,
)
from ffsplit.artifact.opened import Artifact
from ffsplit.artifact.pack import pack_artifact
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.manifest import Build, GoldenReplay, Manifest, ParityReport
from ffsplit.stages.reload import load_source, rebuild, split_in_place
from ffsplit.stages.run import ExportResult, run_export, utc_now
from ffsplit.targets import Target, list_targets, require_supported

if TYPE_CHECKING:
    from ffsplit.bench.harness import Timing
    from ffsplit.parity.layers import ProbeResult
    from ffsplit.pooling import Pooling

__all__ = [
    "Artifact", "ExportResult", "Inspection", "LoadedArtifact", "bench", "build", "check", "check_golden", "debug",
    "export", "inspect_artifact", "open_artifact", "pack", "targets",
]

# the names ffsplit.api has always had for an opened output folder
LoadedArtifact = Artifact
open_artifact = Artifact.open


def export(model: str, out: str | Path, *, log: Callable[[str], None] | None = None, progress: bool = True, **options: Any) -> ExportResult:
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
        return run_export(plan, stage, log=log, progress=progress)


@holds_folder
def check(
    folder: str | Path, *, eval_size: int | None = None, source: str | Path | None = None,
    limits: dict[str, float] | None = None, eval_file: str | Path | None = None, log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> ParityReport:
    """Re-run the separation guard and the three-way parity of an artifact.

    Returns the ParityReport with the guard's record in ``separation``; ``passed`` is false when either
    failed. ``limits`` (metric -> value, as ``--limit``) replace the export's limits on what compression
    may cost (original vs split and vs runtime); fidelity is never relaxed. ``eval_file`` checks on the
    user's texts; without it, on what the export was checked on (its ``--eval`` file, which must be
    unchanged, or the bundled set).
    """
    from ffsplit import resources
    from ffsplit.plan import applied_limits, check_overrides
    from ffsplit.stages import verify

    resources.bound_heap()
    if eval_size is not None:
        bounds.require_int("--eval-size", eval_size, bounds.MIN_EVAL_TEXTS, bounds.MAX_TEXTS)
    check_overrides(dict(limits or {}))
    art = Artifact.open(folder).require_unpacked("check")
    require_supported(art.target)
    m = art.manifest
    applied = applied_limits(m.task, m.limits, limits)
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
        verify.free_model(loaded)
        if log:
            log("building the runtime session and checking branch separation ...")
        with art.runner(runtime_dir=Path(tmp) / "runtime") as runner:
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


@holds_folder
def check_golden(folder: str | Path, *, tolerance: float | None = None) -> GoldenReplay:
    """``check --golden``: re-run the golden inputs saved at export on the artifact's target, ``passed`` false
    when the output moved beyond ``tolerance`` (default: the artifact's fidelity ``max_abs``); CheckFailed
    when its shape changed. Needs neither torch nor the source model."""
    from ffsplit.parity.golden import replay_golden

    if tolerance is not None:  # the Python API takes the CLI's bounds: an infinite tolerance checks nothing
        bounds.require_float("tolerance", tolerance, 0.0, 1e6)
    art = Artifact.open(folder).require_built("check --golden")
    require_supported(art.target)
    with art.runner() as runner:
        return replay_golden(art.folder, runner, art.manifest, tolerance=tolerance)


def _graph_pooling(art: Artifact) -> Pooling | None:
    """The pooling behind an artifact's ``sentence_embedding`` output, or None when its graph has none."""
    from ffsplit.pooling import read_pooling
    from ffsplit.signature import SENTENCE_OUTPUT, onnx_signature

    if SENTENCE_OUTPUT not in onnx_signature(art.model_path)[1]:
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
    log: Callable[[str], None] | None = None,
) -> list[ProbeResult]:
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
    art = Artifact.open(folder).require_unpacked("debug")
    require_supported(art.target)
    m = art.manifest
    loaded, split = rebuild(art, source, log)
    tol = tolerance if tolerance is not None else float(m.limits["fidelity"].get("max_abs", 1e-4))
    texts = [t.text for t in evaluation_texts(batch)]
    enc = next(encode_batches(loaded.tokenizer, texts, batch_size=batch, max_length=m.max_length))
    try:
        model = ir.load(art.model_path)
    except Exception as exc:
        raise UsageError(f"cannot read {art.model_path} ({type(exc).__name__}): re-run ffsplit export") from None
    if log:
        log("running split torch and the runtime with every FFN module's output exposed ...")
    graph_inputs = {v.name for v in model.graph.inputs}
    return compare_layers(
        split, model, lambda path: make_runner(path, art.target).activate(), enc,
        lambda mod, b: torch_output(mod, b, loaded.task, graph_inputs),
        split_modules={p.module: p.layer for p in m.layers}, prefix=WRAPPER_PREFIX, tolerance=tol,
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
    log: Callable[[str], None] | None = None,
) -> list[Timing]:
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
    art = Artifact.open(folder).require_built("bench")
    require_supported(art.target)
    max_pos = art.manifest.source.max_positions
    for b in batches:
        for s in sequences:
            bounds.require_shape(b, s, max_pos)
    loaded = load_source(art, source)
    baseline = baseline_onnx(art.manifest, art.target, loaded, log)
    texts = [t.text for t in evaluation_texts(64)]
    rows = []
    with make_runner(baseline, art.target, timing=True) as orig, \
            art.runner(timing=True) as split:
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
    folder: str | Path, *, source: str | Path | None = None, log: Callable[[str], None] | None = None
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

    art = Artifact.open(folder)
    lossy = lossy_baseline(art.target)
    if lossy is None:
        return None
    art.require_built("bench")
    require_supported(art.target)
    m = art.manifest
    texts = _check_texts(m, None, None)
    loaded = load_source(art, source)
    baseline = baseline_onnx(art.manifest, art.target, loaded, log)
    if log:
        log(f"measuring both models' accuracy against the original on {len(texts)} evaluation texts ...")
    with make_runner(baseline, art.target) as orig, art.runner() as split:
        metrics = runtime_accuracy(loaded.model, {"original": orig, "ffsplit": split}, loaded.tokenizer, texts,
                                   loaded.task, batch_size=16, max_length=m.max_length)
    return {"baseline": lossy, "texts": len(texts), **metrics}


def build(folder: str | Path, *, target: str | None = None, tolerance: float | None = None, log: Callable[[str], None] | None = None) -> Manifest:
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
    from ffsplit.stages import verify

    if tolerance is not None:
        bounds.require_float("--tolerance", tolerance, 0.0, 1e6)
    art = Artifact.open(folder)
    exported = Target.from_json(art.manifest.target)  # the graph's target (art.target: what a build ran)
    tgt = exported.built_as(target)
    m = art.manifest
    mine = f"{RUNTIME_DIR}/{tgt.name}/"
    # the IR NNCF made at export is the graph the target runs; everything else there is rebuilt
    kept = [rel for rel in m.files if not rel.startswith(mine) or (tgt.ir_compression and not not_deployed(rel))]
    with staged_output(art.folder, force=True) as stage:
        for rel in kept:  # linked, not copied: nothing below writes into a kept file
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(art.folder / rel, stage / rel, copy=rel.startswith(mine))
        # the files as staged are the ones verified (the folder may have changed since it was opened)
        from ffsplit.artifact import verify_files

        verify_files(stage, {rel: m.files[rel] for rel in kept})
        if log:
            log(f"building for {tgt.name} and checking branch separation ...")
        with make_runner(stage / MODEL_FILE, tgt, runtime_dir=stage / RUNTIME_DIR / tgt.name) as runner:
            separation = verify.guard(runner, m.layers)
            if not separation.passed:
                raise CheckFailed(str(separation.failure), details={"separation": separation.to_json()})
            if log:
                log("replaying the golden outputs ...")
            golden = replay_golden(stage, runner, m, tolerance=tolerance)
        if not golden.passed:
            raise CheckFailed(
                f"{tgt.name} moved the golden {golden.output} by {golden.max_abs:.3g} (tolerance "
                f"{golden.tolerance:.3g}), nothing changed: check the target's options, or `ffsplit check` "
                "the artifact on this machine to see its parity",
                details={"separation": separation.to_json(), "golden": golden.to_json()},
            )
        same = tgt.name == exported.name and tgt.to_json() == exported.to_json()
        record = Build(status="built", target=tgt.name, golden=golden, created=utc_now(),
                       runtime_target=None if same else tgt.to_json())
        return write_manifest(stage, m.replace(build=record, separation=separation))


def pack(folder: str | Path, out: str | Path, *, force: bool = False) -> Manifest:
    """A slim copy of a verified artifact holding only what its target runs, with the tokenizer, config,
    sentence-transformers files and golden outputs; its manifest lists what was left out. ``ffsplit.load``,
    ``check --golden``, ``bench``, ``triton`` and ``serve`` work on it; the three-way ``check`` needs the full one."""
    return pack_artifact(folder, out, force=force)


@dataclass(frozen=True)
class Inspection:
    """What ``inspect`` found: the manifest, and per graph file its layers' ops and precisions (or why it could
    not be read)."""

    manifest: Manifest
    graphs: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.manifest.to_json(), "graphs": self.graphs}


def inspect_artifact(folder: str | Path, *, graphs: bool = True) -> Inspection:
    """The manifest of an artifact, and per layer and branch the ops and precisions found in the
    exported graph and in each runtime's optimised graph (hashes are not verified: inspecting a
    broken folder is allowed)."""
    import onnx_ir as ir

    from ffsplit.artifact import LAYERS_FILE, OPTIMIZED_GRAPH
    from ffsplit.graph_passes.precision import branch_summary, records_summary
    from ffsplit.runtimes.records import records_from_file

    art = Artifact.open(folder, verify=False)
    found: dict[str, Any] = {}
    if graphs:
        present, _links = list_files(art.folder)  # regular files only: never follow a link out of the folder
        paths = [present[MODEL_FILE]] if MODEL_FILE in present else []
        for suffix in (f"/{OPTIMIZED_GRAPH}", f"/{LAYERS_FILE}"):
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
    return Inspection(art.manifest, found)


def targets() -> list[tuple[Target, str | None]]:
    """Every shipped target and why it cannot run here (None when it can)."""
    return [(t, t.unavailable_reason()) for t in list_targets()]
