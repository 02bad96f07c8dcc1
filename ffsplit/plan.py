"""The export plan: the CLI's options as a dataclass, resolved once into every decision an export makes.

``resolve(options)`` runs every pre-flight check that needs no model loaded
(target, recipes, precisions, limits, numbers, the calibration text, the
source folder and task) and decides, once, what later stages and ``check``
read instead of re-deriving: whether the artifact must be exact, the float
precision of each branch, smoothing, the graph storage forms and the limits.
Bad input raises UsageError here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit import bounds
from ffsplit.errors import UsageError
from ffsplit.limits import COMPRESSION_METRICS, METRICS
from ffsplit.precisions import HALF_FLOATS, INTEGERS
from ffsplit.targets import Target, load_target, require_supported

if TYPE_CHECKING:
    from ffsplit.pooling import Pooling
    from ffsplit.split.compress import LightRecipe
    from ffsplit.tasks import TaskSpec

DEFAULT_LIGHT = "lowrank:256"
# the heavy share when neither --heavy-ratio nor the target says
DEFAULT_HEAVY_RATIO = 0.1
SMOOTH_ALPHA = 0.5


@dataclass(frozen=True)
class ExportOptions:
    """What ``ffsplit export`` takes, as Python users pass it to ``api.export``."""

    model: str
    out: str | Path
    target: str = "cpu"
    heavy_ratio: float | None = None
    light: str | None = None
    heavy: str | None = None
    budget: str | None = None
    calib: str | None = None
    eval: str | None = None  # evaluation text file (one text per line); the bundled set when None
    calib_size: int = 256
    eval_size: int = 256
    max_length: int = 128
    min_cosine: float | None = None
    min_retrieval: float | None = None
    limits: dict[str, float] | None = None
    force: bool = False
    trust_remote_code: bool = False
    task: str = "auto"
    exporter: str = "auto"


@dataclass(frozen=True)
class ExportPlan:
    """Every decision of one export, made before the model is loaded (``stages.prepare.fit`` makes the one
    change the loaded model asks for, as a new plan)."""

    options: ExportOptions
    target: Target
    recipe: LightRecipe  # or the int4 candidate when a budget picks per layer
    heavy: str  # heavy branch precision
    heavy_ratio: float
    budget: tuple[str, float] | None
    nncf: str | None  # what NNCF makes of the light branch in the OpenVINO IR: int8 or int4 (else None)
    light_float: str  # float precision of a light branch without an integer recipe
    planned_light: str  # what the guard holds the light branch to
    exact: bool  # the artifact must equal the original to fp32 rounding
    smooth_alpha: float | None  # SmoothQuant-style smoothing of int8 light input projections
    int8_qmax: int
    overrides: dict[str, float | None]
    exporters: tuple[str, ...]
    texts: list[str]  # calibration texts
    eval_texts: list[str]  # what parity is checked on
    pooling: Pooling | None  # of a sentence-transformers source (a pooled task), else None
    source_dir: Path
    task: TaskSpec
    limits: dict[str, dict[str, float]]
    out: Path
    given_out: str | Path
    # why the target cannot run here (a GPU target on a machine without one): the export checks its graph
    # on the target's CPU stand-in and leaves the build, guard included, to `ffsplit build`
    deferred: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def graph_storage(self) -> dict[str, str]:
        return {"int8": self.target.int8_compute, "int4": self.target.int4_compute}

    @property
    def runner_target(self) -> Target:
        """What the export's parity runs on: the target, or its CPU stand-in when the build is deferred."""
        return self.target.stand_in() if self.deferred else self.target


def require_precisions(target: Target, heavy: str, recipes: list[LightRecipe]) -> None:
    """Refuse, before any work, a precision the target's runtime would not realise."""
    from ffsplit.graph_passes.quantize_branch_weights_pass import matmulnbits_block_ok

    if heavy in HALF_FLOATS and not target.on_gpu:
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


def check_overrides(overrides: dict[str, float | None]) -> None:
    for name, v in overrides.items():
        if name not in COMPRESSION_METRICS:
            raise UsageError(f"unknown limit '{name}': use one of {', '.join(COMPRESSION_METRICS)}")
        if v is None:
            continue
        bounds.require_float(f"--limit {name}", v, METRICS[name].lo, METRICS[name].hi)


def _check_numbers(o: ExportOptions) -> None:
    bounds.require_int("--calib-size", o.calib_size, 1, bounds.MAX_TEXTS)
    bounds.require_int("--eval-size", o.eval_size, bounds.MIN_EVAL_TEXTS, bounds.MAX_TEXTS, "(retrieval@10 needs 11)")
    bounds.require_int("--max-length", o.max_length, 2, bounds.MAX_LENGTH)


def applied_limits(task: str, exported: dict[str, dict[str, float]], limits: dict[str, float] | None,
                   ) -> dict[str, dict[str, float]]:
    """What ``check`` holds an artifact to: the limits it was exported with, the user's ``--limit`` values in
    place of its limits on what compression may cost (fidelity is never relaxed); UsageError for a metric the
    task does not measure."""
    from ffsplit.limits import TASK_METRICS

    wanted = {k: v for k, v in (limits or {}).items() if v is not None}
    missing = sorted(set(wanted) - set(TASK_METRICS[task]))
    if missing:
        raise UsageError(f"--limit {', '.join(missing)}: {task} does not measure it; use {', '.join(TASK_METRICS[task])}")
    return {name: {**lims, **(wanted if name != "fidelity" else {})} for name, lims in exported.items()}


def resolve(o: ExportOptions) -> ExportPlan:
    """The plan for ``o``; UsageError for anything wrong that can be found without loading the model."""
    from ffsplit.artifact import resolve_out
    from ffsplit.exporter.export import EXPORTERS
    from ffsplit.limits import limits_for
    from ffsplit.split.calibration import calibration_texts, eval_texts
    from ffsplit.split.compress import INT8_QMAX, parse_light

    tgt = load_target(o.target)
    deferred = tgt.unavailable_reason()
    if deferred and not tgt.on_gpu:  # a CPU runtime missing here is an install step, not a build for elsewhere
        require_supported(tgt)
    recipe, heavy, heavy_ratio, budget = _recipe(o, tgt)
    nncf = tgt.ir_compression
    # A float light precision (GPU targets) applies to recipes without a quantiser of their own.
    light_float = tgt.light_precision if tgt.light_precision in HALF_FLOATS and not recipe.quant else "fp32"
    require_precisions(tgt, heavy, [recipe] if budget is None else [parse_light("int4")])
    # exact only if nothing else in the graph is quantised either (cpu-int8-full's attention projections)
    exact = recipe.exact and heavy == "fp32" and budget is None and tgt.other_matmuls == "fp32" and not nncf
    overrides = {"cosine_mean": o.min_cosine, "retrieval_at10": o.min_retrieval, **(o.limits or {})}
    check_overrides(overrides)
    if o.exporter not in ("auto", *EXPORTERS):
        raise UsageError(f"unknown exporter '{o.exporter}': use auto, {' or '.join(EXPORTERS)}")
    _check_numbers(o)
    texts = calibration_texts(o.calib, limit=o.calib_size, max_length=o.max_length)
    evaluation = eval_texts(o.eval, limit=o.eval_size, max_length=o.max_length)
    source_dir, spec, pooling, exporters = _source(o, tgt)
    return ExportPlan(
        options=o, target=tgt, recipe=recipe, heavy=heavy, heavy_ratio=heavy_ratio, budget=budget, nncf=nncf,
        light_float=light_float, planned_light=nncf or light_float, exact=exact,
        # runtimes that round activations to int8 get the light input projections smoothed
        smooth_alpha=SMOOTH_ALPHA if tgt.int8_compute in ("dynamic", "qdq") else None,
        int8_qmax=INT8_QMAX[tgt.int8_weight_range], overrides=overrides, exporters=exporters, texts=texts,
        eval_texts=evaluation, pooling=pooling,
        source_dir=source_dir, task=spec, limits=limits_for(tgt, spec.name, exact=exact, overrides=overrides),
        out=resolve_out(o.out), given_out=o.out, deferred=deferred,
    )


def _recipe(o: ExportOptions, tgt: Target) -> tuple[LightRecipe, str, float, tuple[str, float] | None]:
    """The light recipe, heavy precision, heavy ratio and budget the options and the target make; UsageError
    for a combination the target cannot run."""
    from ffsplit.split.apply import heavy_count
    from ffsplit.split.budget import parse_budget
    from ffsplit.split.compress import parse_heavy, parse_light

    budget = None
    if o.budget is not None:
        if o.light is not None or o.heavy_ratio is not None:
            raise UsageError("--budget chooses the light recipe and heavy ratio per layer: drop --light and --heavy-ratio")
        budget = parse_budget(o.budget)
    nncf = tgt.ir_compression
    light = o.light
    if light is None:  # a target that asks for an integer light branch makes it the default recipe
        light = "none" if nncf else tgt.light_precision if tgt.light_precision in INTEGERS else DEFAULT_LIGHT
    heavy_ratio = o.heavy_ratio if o.heavy_ratio is not None else tgt.heavy_ratio or DEFAULT_HEAVY_RATIO
    recipe = parse_light(light)
    if nncf and (recipe.quant or budget is not None):
        raise UsageError(
            f"target '{tgt.name}' makes the light branch {nncf} with NNCF: drop the quantiser from --light "
            f"('{light}'; none, lowrank:R or prune:P are fine) and --budget"
        )
    heavy = parse_heavy(o.heavy or tgt.heavy_precision)
    if nncf and heavy not in ("fp32", "int8"):
        raise UsageError(
            f"--heavy {heavy}: target '{tgt.name}' runs the heavy branch fp32 (NNCF's ignored scope) or int8 "
            f"({'with activation scales of its own' if nncf == 'int8' else 'weights per channel'}): "
            "use --heavy fp32 or --heavy int8"
        )
    heavy_count(1 << 20, heavy_ratio)  # range check only
    return recipe, heavy, heavy_ratio, budget


def _source(o: ExportOptions, tgt: Target) -> tuple[Path, TaskSpec, Pooling | None, tuple[str, ...]]:
    """The source model's folder, its task, a sentence-transformers source's pooling and the exporters to try;
    UsageError for an unknown task, or a task the target is not for."""
    from ffsplit.exporter.export import EXPORTERS, STRATEGIES
    from ffsplit.loading import read_config, resolve_model
    from ffsplit.tasks import get_task

    source_dir = resolve_model(o.model)
    spec = get_task(o.task, read_config(source_dir))  # an unknown task fails before any work
    if tgt.ir_compression == "int4" and spec.name == "feature-extraction":
        # NNCF keeps a model's last multiply int8 (for a decoder, its LM head): in an encoder's token output
        # that is the last layer's light branch, which the guard would then find at int8, not int4
        raise UsageError(
            f"target '{tgt.name}' is for decoders: NNCF keeps the last multiply int8, which in a "
            "feature-extraction graph is the last FFN's light branch; use openvino-int8 or cpu-int4"
        )
    pooling = None
    if spec.pooled and (source_dir / "modules.json").is_file():
        from ffsplit.pooling import read_pooling

        pooling = read_pooling(source_dir, default_length=None)  # its sentence_embedding goes in the graph
    # dynamo first; TorchScript only when dynamo fails to export or misses fidelity. No TorchScript
    # path for a KV cache: dynamo's own error is the useful one.
    exporters = EXPORTERS if o.exporter == "auto" else (o.exporter,)
    if spec.past and o.exporter == "auto":  # only the strategies that capture a KV cache
        exporters = tuple(name for name in EXPORTERS if STRATEGIES[name].kv_cache)
    return source_dir, spec, pooling, exporters
