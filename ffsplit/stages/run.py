"""One export, stage by stage, into a staging folder: load, profile, record the original's outputs, split,
capture (the next exporter when one cannot capture or misses fidelity), NNCF, build, guard and parity, and
the manifest that records it all, with the wall time and peak memory of each stage."""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.artifact import MODEL_FILE, RUNTIME_DIR, SPLIT_WEIGHTS, remove_tree, write_manifest
from ffsplit.errors import CheckFailed
from ffsplit.manifest import (
    Attempt,
    Build,
    Calibration,
    Checks,
    Evaluation,
    Exporter,
    LayerPlan,
    Limits,
    Manifest,
    Memory,
    Params,
    Recipe,
    Run,
    Separation,
    Source,
    layer_totals,
)
from ffsplit.version import __version__

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ffsplit.loading import LoadedModel
    from ffsplit.parity.check import ParityReport, RecordedOutputs
    from ffsplit.plan import ExportPlan
    from ffsplit.split.ffn_adapter import FFNAdapter
    from ffsplit.split.profile import LayerProfile
    from ffsplit.stages.split import Split


PARITY_DIR = ".parity"  # in the staging folder: the recorded torch outputs parity compares with


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Stages:
    """When the run started, and the wall time and peak resident memory of each stage, in order."""

    created: str = field(default_factory=utc_now)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    per_stage: bool = True  # False where the kernel's peak cannot be reset: each figure is then the peak so far

    @contextmanager
    def stage(self, name: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
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

    def record(self) -> Run:
        """What the manifest keeps about the run itself: when it was, the time (s) and the peak resident
        memory (MB) of each stage."""
        return Run(created=self.created, timings=dict(self.seconds),
                   memory=Memory(peak_mb=dict(self.peak_mb), per_stage=self.per_stage))


def _param_counts(plans: list[LayerPlan], total_before: int, total_after: int) -> Params:
    totals = layer_totals(plans)
    before, after = totals["ffn_before"], totals["ffn_after"]
    bytes_before, bytes_after = totals["ffn_bytes_before"], totals["ffn_bytes_after"]
    return Params(
        ffn_before=before, ffn_after=after, ffn_reduction=round(1 - after / before, 4),
        total_before=total_before, total_after=total_after, total_reduction=round(1 - total_after / total_before, 4),
        ffn_bytes_before=bytes_before, ffn_bytes_after=bytes_after,
        ffn_bytes_reduction=round(1 - bytes_after / bytes_before, 4),
    )


@dataclass
class ExportResult:
    out: Path
    manifest: Manifest  # as written into the output folder
    report: ParityReport


def run_export(plan: ExportPlan, stage: Path, *, log: Callable[[str], None] | None, progress: bool) -> ExportResult:
    """The stages of one export, written into the staging folder ``stage``.

    One copy of the weights at a time: the original's outputs are recorded before it is split in place,
    the split's before it is captured, and the torch model is freed once the graph is saved, before the
    runtime is built (a retry with the next exporter loads and splits the source again).
    """
    from ffsplit.runtimes.openvino_ir import build_ir
    from ffsplit.split.modules import count_params
    from ffsplit.stages import prepare, verify
    from ffsplit.stages import split as split_stage

    stages = Stages()
    with stages.stage("load", log):
        loaded, adapter, source = prepare.load(plan)
        plan = prepare.fit(plan, source)
    with stages.stage("profile", log):
        profiles = prepare.profile(plan, loaded, adapter, progress=progress)
    recorded = stage / PARITY_DIR  # removed before the manifest lists the folder's files
    record = partial(verify.record, texts=plan.eval_texts, max_length=plan.options.max_length,
                     max_positions=source.max_positions, progress=progress)
    with stages.stage("original outputs", log):
        original = record(loaded.model, loaded=loaded, folder=recorded / "original", desc="original model")
    total_before = count_params(loaded.model)
    done, manifest = _split_and_save(plan, stage, loaded, adapter, source, profiles, stages, log, total_before)
    layers = done.plans  # what the manifest's layers record, kept for the guard after the model is freed
    with stages.stage("split outputs", log):
        split_out = record(done.model, loaded=loaded, folder=recorded / "split", desc="split model")
    attempts: list[Attempt] = []
    for name in plan.exporters:  # try the next exporter when one cannot capture or misses fidelity
        if done is None:  # freed after the last attempt's capture: load and split the source again
            with stages.stage("reload", log):
                loaded = prepare.load(plan)[0]
                done = split_stage.split(plan, loaded, adapter, profiles)
        with stages.stage(f"export ({name})", log):
            failure, saved = _capture_and_save(plan, done, loaded.tokenizer, name, manifest, stage)
        if saved is None:
            attempts.append(Attempt(exporter=name, failed=str(failure)))
            if log:
                log(f"the {name} exporter failed: {failure}")
            continue
        manifest, opset = saved
        done = None  # the graph is on disk: the torch model goes before the runtime
        verify.free_model(loaded, log)
        if plan.nncf:
            with stages.stage(f"{'quantize' if plan.nncf == 'int8' else 'compress'} (NNCF {plan.nncf})", log):
                build_ir(stage / MODEL_FILE, plan.target, loaded.tokenizer, plan.texts, plan.options.max_length,
                         keep_heavy=plan.heavy == "fp32")
        manifest = manifest.replace(exporter=Exporter(name=name, opset=opset, attempts=tuple(attempts)))
        manifest = _verify_into(plan, stage, loaded, (original, split_out), manifest, layers, stages,
                                log=log, progress=progress)
        report = manifest.parity
        assert report is not None
        if report.comparisons["fidelity"].passed:
            break
        attempts.append(Attempt(exporter=name, failed="parity: " + "; ".join(report.failures())))
        if log and name != plan.exporters[-1]:
            log(f"the {name} export missed fidelity; trying the next exporter")
    remove_tree(recorded)
    return _finish(plan, stage, manifest.replace(run=stages.record()), attempts)


def _finish(plan: ExportPlan, stage: Path, manifest: Manifest, attempts: list[Attempt]) -> ExportResult:
    """The manifest written into ``stage`` when parity passed; CheckFailed (with the manifest so far) when every
    exporter failed or parity did not pass, and nothing is written."""
    from ffsplit.exporter.export import EXPORT_ADVICE

    report = manifest.parity
    if report is None:
        manifest = manifest.replace(exporter=Exporter(name=None, attempts=tuple(attempts)))
        raise CheckFailed(
            "every exporter failed, nothing written: "
            + "; ".join(f"{a.exporter}: {a.failed}" for a in attempts) + f". What you can do: {EXPORT_ADVICE}",
            details=manifest.to_json(),
        )
    if not report.passed:  # every attempt, the last one's missed fidelity included
        assert manifest.exporter is not None  # recorded with the graph parity ran on
        manifest = manifest.replace(exporter=replace(manifest.exporter, attempts=tuple(attempts)))
        raise CheckFailed("parity failed, nothing written: " + "; ".join(report.failures()), details=manifest.to_json())
    return ExportResult(out=plan.out, manifest=write_manifest(stage, manifest), report=report)


def _capture_and_save(plan: ExportPlan, done: Split, tokenizer: PreTrainedTokenizerBase, exporter: str,
                      manifest: Manifest, stage: Path) -> tuple[str | None, tuple[Manifest, int | None] | None]:
    """Capture the split model with ``exporter``, run the target's passes and save model.onnx into ``stage``:
    (None, (the manifest with the passes recorded, the graph's opset)), or (why the exporter could not capture
    it, None)."""
    from ffsplit.runtimes.openvino_ir import weight_storage
    from ffsplit.stages import capture

    captured = capture.capture(plan, done.model, tokenizer, exporter)
    if captured.model is None:
        return captured.failure, None
    passes = capture.graph_passes(plan, done.plans, done.grids, done.act_absmax,
                                  store_weights=weight_storage(plan.target, done.model))
    return None, capture.save(captured.model, passes, manifest, stage / MODEL_FILE)


def _split_and_save(
    plan: ExportPlan, stage: Path, loaded: LoadedModel, adapter: type[FFNAdapter], source: Source,
    profiles: list[LayerProfile], stages: Stages,
    log: Callable[[str], None] | None, total_before: int,
) -> tuple[Split, Manifest]:
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
    manifest: Manifest, layers: list[LayerPlan], stages: Stages, *, log: Callable[[str], None] | None, progress: bool,
) -> Manifest:
    """Build the runtime for the graph in ``stage``, guard it, run the three-way parity and save the golden
    outputs; the manifest with the build, the guard's record and the parity report. A deferred build checks
    parity on the target's CPU stand-in and leaves the guard to ``ffsplit build``; a failed guard raises
    CheckFailed."""
    from ffsplit.parity.golden import GOLDEN_FILE, GOLDEN_TEXTS, write_golden
    from ffsplit.runtimes.base import make_runner
    from ffsplit.split.calibration import encode_batches
    from ffsplit.stages import verify

    runtime_dir = stage / RUNTIME_DIR / plan.target.name
    with stages.stage("build" if not plan.deferred else "build (CPU stand-in)", log):
        runner = make_runner(stage / MODEL_FILE, plan.runner_target,
                             runtime_dir=None if plan.deferred else runtime_dir).activate(just_written=True)
        if plan.deferred:
            manifest = manifest.replace(
                separation=Separation(passed=None, graph="none: the build is deferred"),
                build=Build(status="deferred", target=plan.target.name, reason=plan.deferred, checked_on=runner.name))
        else:
            manifest = manifest.replace(build=Build(status="built", target=plan.target.name),
                                        separation=verify.guard(runner, layers))
            assert manifest.separation is not None
            if not manifest.separation.passed:
                runner.deactivate()
                raise CheckFailed(str(manifest.separation.failure),
                                  details=manifest.replace(run=stages.record()).to_json())
    with stages.stage("check", log):
        report = verify.parity(
            *recorded, runner, loaded.tokenizer, loaded.task, limits=plan.limits,
            texts=plan.eval_texts, max_length=plan.options.max_length,
            max_positions=manifest.source.max_positions, progress=progress, pooling=plan.pooling,
        )
        # what `check --golden` re-runs later, without torch or the source model
        batch = next(encode_batches(loaded.tokenizer, plan.eval_texts[:GOLDEN_TEXTS], batch_size=GOLDEN_TEXTS,
                                    max_length=plan.options.max_length))
        write_golden(stage / GOLDEN_FILE, runner, {k: v.numpy() for k, v in batch.items()}, loaded.task)
        runner.deactivate()
    return manifest.replace(parity=report)


def _manifest(
    plan: ExportPlan, loaded: LoadedModel, adapter: type[FFNAdapter], source: Source,
    profiles: list[LayerProfile], done: Split, total_before: int,
) -> Manifest:
    """The manifest of one export before its graph exists (exporter, separation and parity come later)."""
    from ffsplit.split.calibration import corpus_digest
    from ffsplit.split.modules import count_params
    from ffsplit.version import versions

    o, budget = plan.options, done.budget is not None
    per_layer = "per layer (budget)"
    return Manifest(
        ffsplit_version=__version__, source=source, task=loaded.task.name, adapter=adapter.family,
        layout=getattr(adapter, "found", "") or f"family file {adapter.family}", target=plan.target.to_json(),
        budget=done.budget,
        recipe=Recipe(
            heavy_ratio=plan.heavy_ratio if not budget else per_layer,
            heavy_selection="top mean|a_j| * ||W_out[:, j]||_2 over calibration tokens",
            light={"recipe": str(plan.recipe), **plan.recipe.params()} if not budget else {"recipe": per_layer},
            heavy_precision=plan.heavy,
            light_precision=(plan.recipe.quant or plan.planned_light) if not budget else per_layer,
            # how integer grids are stored and computed in the graph (QuantizeBranchWeightsPass)
            graph_storage=plan.graph_storage if done.grids else "fp32", int8_weight_max=plan.int8_qmax,
        ),
        calibration=Calibration(
            source=str(o.calib) if o.calib else "bundled: Python standard library docstrings",
            texts=len(plan.texts), tokens=profiles[0].tokens, max_length=o.max_length,
            sha256=corpus_digest(plan.texts),
        ),
        evaluation=Evaluation(
            source=str(o.eval) if o.eval else "bundled: Python standard library docstrings (disjoint from calibration)",
            texts=len(plan.eval_texts), sha256=corpus_digest(plan.eval_texts),
        ),
        # what `check` holds the artifact to, decided once in the plan (embedded in model.onnx with the rest)
        checks=Checks(exact=plan.exact, limits=Limits(**plan.limits)),
        layers=tuple(done.plans), params=_param_counts(done.plans, total_before, count_params(done.model)),
        versions=versions(),
    )
