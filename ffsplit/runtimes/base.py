"""The one runner interface every runtime implements, and the factory that picks one for a target.

Runners follow Polygraphy's shape: a runner is composed with a loader, a
frozen record of what to build from that builds it when called
(``onnxruntime.SessionFromOnnx``, ``openvino.CompiledFromFile``,
``tensorrt.EngineFromOnnx``: what the runtime runs, and the files the guard
reads). ``activate`` calls the loader and takes what it built, ``infer`` runs
one feed, ``deactivate`` frees it, and a runner is a context manager.
``make_runner`` composes the two for a target (``Artifact.runner()`` for an
opened artifact's). Inputs are checked against the
model's signature (names, ranks, dtypes) before they reach the runtime, so a
wrong feed is one clear error, not a runtime's stack trace. ``layer_records``
gives the separation guard the graph the runtime really executes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from ffsplit.errors import UsageError
from ffsplit.runtimes.specs import RUNTIME_SPECS
from ffsplit.signature import ELEMENT_TYPES, Dim, is_past, onnx_signature

if TYPE_CHECKING:
    from typing import Self

    from ffsplit.graph_passes import LayerRecord
    from ffsplit.targets import Target

Built = TypeVar("Built")

# ONNX type strings -> numpy dtypes for inputs we know how to cast.
INPUT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                "tensor(float16)": np.float16}


def onnx_inputs(model_path: Path) -> dict[str, tuple[str, list[Dim]]]:
    """name -> (type string, dims with symbolic names) of an ONNX file's inputs, without loading its weights."""
    inputs, _ = onnx_signature(model_path)
    return {name: (ELEMENT_TYPES.get(t, ("tensor(?)", ""))[0], dims) for name, (t, dims) in inputs.items()}


def empty_past(inputs: dict[str, tuple[str, list[Dim]]], rows: int) -> dict[str, np.ndarray]:
    """An empty KV cache (past length 0: the prefill) of ``rows`` rows for each past input of a graph whose
    inputs are ``inputs`` (name -> (type, dims)); its head count and width must be static."""
    out = {}
    for name, (_typ, shape) in inputs.items():
        if is_past(name):
            heads, dim = shape[1], shape[3]
            if not isinstance(heads, int) or not isinstance(dim, int):
                raise UsageError(f"input '{name}' has no static head shape ({shape}); re-export the model")
            out[name] = np.zeros((rows, heads, 0, dim), dtype=np.float32)
    return out


@dataclass(frozen=True)
class Loader(Generic[Built]):
    """What a runtime builds for a runner, and from what: called, it builds it (a session, a compiled model, an
    engine), saving in ``runtime_dir`` what the guard reads. Subclasses implement ``__call__``."""

    model_path: Path
    target: Target
    # where the runtime keeps what it built (optimised graph, engine, layer list), if anywhere
    runtime_dir: Path | None = None
    # timed side by side with other runners in one process: no busy-waiting worker threads
    timing: bool = False

    def __post_init__(self) -> None:  # a caller's string paths, as Path
        object.__setattr__(self, "model_path", Path(self.model_path))
        if self.runtime_dir is not None:
            object.__setattr__(self, "runtime_dir", Path(self.runtime_dir))

    def __call__(self) -> Built:
        raise NotImplementedError


class Runner(Generic[Built]):
    """Runs what its loader builds for a target. Subclasses name their ``loader_class`` and implement the
    ``_``-prefixed methods."""

    loader_class: ClassVar[type[Loader[Any]]]

    def __init__(self, loader: Loader[Built]) -> None:
        self.loader = loader
        self.active = False

    @property
    def model_path(self) -> Path:
        return self.loader.model_path

    @property
    def target(self) -> Target:
        return self.loader.target

    @property
    def name(self) -> str:
        return f"{self.target.runtime}[{self.target.name}]:{self.model_path.name}"

    def activate(self, *, just_written: bool = False) -> Self:
        """Build or load. A runtime's error on a file read from disk means the file is damaged (UsageError:
        re-export); on a graph ``just_written`` by this export it is a bug, raised as it is."""
        reason = self.target.unavailable_reason()
        if reason:
            raise UsageError(f"target '{self.target.name}' cannot run here: {reason}")
        if self.loader.runtime_dir is not None:
            self.loader.runtime_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._activate(self.loader())
        except (UsageError, OSError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a truncated or foreign file: the runtime's own error, on one line
            if just_written:
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UsageError(
                f"{self.target.runtime} cannot load '{self.model_path}' ({type(exc).__name__}: {first}): "
                "re-run ffsplit export"
            ) from None
        self.active = True
        return self

    def deactivate(self) -> None:
        self._deactivate()
        self.active = False

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    def input_shapes(self) -> dict[str, tuple[str, list[Dim]]]:
        """name -> (ONNX type string, shape with symbolic dims as strings or None)."""
        assert self.active, "activate() the runner first"
        return self._input_shapes()

    def input_signature(self) -> dict[str, tuple[str, int]]:
        return {name: (typ, len(shape)) for name, (typ, shape) in self.input_shapes().items()}

    def feed_from(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from a tokenised batch; a KV-cache graph gets an empty past (prefill)."""
        shapes = self.input_shapes()
        past = empty_past(shapes, len(batch["input_ids"]))
        return {name: past[name] if name in past else batch[name] for name in shapes if name in past or name in batch}

    def validate(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sig = self.input_signature()
        missing = sorted(set(sig) - set(feed))
        extra = sorted(set(feed) - set(sig))
        if missing or extra:
            raise UsageError(
                f"inputs do not match the model: missing {missing or 'none'}, unexpected {extra or 'none'}; "
                f"the model takes {sorted(sig)}"
            )
        out = {}
        for name, (typ, rank) in sig.items():
            arr = np.asarray(feed[name])
            if arr.ndim != rank:
                raise UsageError(f"input '{name}' has rank {arr.ndim}, the model takes rank {rank}")
            want = INPUT_DTYPES.get(typ)
            if want is not None and arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind"):
                    raise UsageError(f"input '{name}' is {arr.dtype}, the model takes {typ}")
                arr = arr.astype(want)
            out[name] = arr
        return out

    def infer(self, feed: dict[str, np.ndarray], *, check: bool = True) -> dict[str, np.ndarray]:
        assert self.active, "activate() the runner first"
        return self._infer(self.validate(feed) if check else feed)

    def layer_records(self) -> list[LayerRecord]:
        """The tagged matrix multiplies of what the runtime executes (for the separation guard)."""
        assert self.active, "activate() the runner first"
        return self._layer_records()

    @property
    def runtime_graph(self) -> str:
        """What ``layer_records`` was read from, for the manifest."""
        return "runtime graph"

    # -- what each runtime provides
    def _activate(self, built: Built) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _input_shapes(self) -> dict[str, tuple[str, list[Dim]]]:
        """By default the ONNX file's own signature (read once); a runtime with its own view overrides this."""
        if getattr(self, "_onnx_inputs", None) is None:
            self._onnx_inputs = onnx_inputs(self.model_path)
        return self._onnx_inputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _layer_records(self) -> list[LayerRecord]:
        raise NotImplementedError


# a runtime's runner module (RUNTIME_SPECS) is imported on first use, so an optional runtime's package
# (openvino, tensorrt) is only needed by the targets that use it
_RUNNERS: dict[str, type[Runner[Any]]] = {}
R = TypeVar("R", bound="type[Runner[Any]]")


def register_runtime(name: str) -> Callable[[R], R]:
    """Class decorator: the runner for targets whose ``runtime`` is ``name``."""

    def add(cls: R) -> R:
        if name in _RUNNERS and _RUNNERS[name] is not cls:
            raise ValueError(f"runtime {name!r} registered twice")
        _RUNNERS[name] = cls
        return cls

    return add


def runner_class(runtime: str) -> type[Runner[Any]]:
    from ffsplit.loading import no_telemetry

    no_telemetry()  # before the runtime's library loads
    if runtime not in _RUNNERS and runtime in RUNTIME_SPECS:
        importlib.import_module(RUNTIME_SPECS[runtime].runner_module)
    if runtime not in _RUNNERS:
        raise UsageError(f"unknown runtime '{runtime}': use {', '.join(RUNTIME_SPECS)}")
    return _RUNNERS[runtime]


def make_runner(
    model_path: Path, target: Target, *, runtime_dir: Path | None = None, timing: bool = False
) -> Runner[Any]:
    """The runner for ``target``'s runtime, composed with its loader (not yet activated); ``timing`` for
    side-by-side benchmarks."""
    cls = runner_class(target.runtime)
    return cls(cls.loader_class(model_path, target, runtime_dir=runtime_dir, timing=timing))

