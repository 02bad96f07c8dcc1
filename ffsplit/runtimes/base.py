"""The one runner interface every runtime implements, and the factory that picks one for a target.

Runners follow Polygraphy's shape: ``activate`` builds or loads (a session,
a compiled model, an engine), ``infer`` runs one feed, ``deactivate`` frees
it, and a runner is a context manager. Inputs are checked against the
model's signature (names, ranks, dtypes) before they reach the runtime, so a
wrong feed is one clear error, not a runtime's stack trace. ``layer_records``
gives the separation guard the graph the runtime really executes.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from ffsplit.errors import UsageError

if TYPE_CHECKING:
    from typing import Self

    from ffsplit.graph_passes import LayerRecord
    from ffsplit.runtimes.targets import Target

# ONNX type strings -> numpy dtypes for inputs we know how to cast.
INPUT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
                "tensor(float16)": np.float16}


_ONNX_TYPES = {1: "tensor(float)", 6: "tensor(int32)", 7: "tensor(int64)", 10: "tensor(float16)", 9: "tensor(bool)"}


def onnx_inputs(model_path: Path) -> dict[str, tuple[str, list[Any]]]:
    """name -> (type string, dims with symbolic names) of an ONNX file's inputs, without loading its weights."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    init = {i.name for i in proto.graph.initializer}
    return {
        i.name: (
            _ONNX_TYPES.get(i.type.tensor_type.elem_type, "tensor(?)"),
            [d.dim_param if d.dim_param else d.dim_value for d in i.type.tensor_type.shape.dim],
        )
        for i in proto.graph.input if i.name not in init
    }


class Runner:
    """Runs one ONNX model for a target. Subclasses implement the ``_``-prefixed methods."""

    def __init__(
        self, model_path: Path, target: Target, *, runtime_dir: Path | None = None, timing: bool = False
    ) -> None:
        self.model_path = Path(model_path)
        self.target = target
        # timed side by side with other runners in one process: no busy-waiting worker threads
        self.timing = timing
        # where the runtime keeps what it built (optimised graph, engine, layer list), if anywhere
        self.runtime_dir = runtime_dir
        self.active = False

    @property
    def name(self) -> str:
        return f"{self.target.runtime}[{self.target.name}]:{self.model_path.name}"

    def activate(self) -> Self:
        reason = self.target.unavailable_reason()
        if reason:
            raise UsageError(f"target '{self.target.name}' cannot run here: {reason}")
        if self.runtime_dir is not None:
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._activate()
        except (UsageError, OSError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a truncated or foreign file: the runtime's own error, on one line
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

    def input_shapes(self) -> dict[str, tuple[str, list[int | str | None]]]:
        """name -> (ONNX type string, shape with symbolic dims as strings or None)."""
        assert self.active, "activate() the runner first"
        return self._input_shapes()

    def input_signature(self) -> dict[str, tuple[str, int]]:
        return {name: (typ, len(shape)) for name, (typ, shape) in self.input_shapes().items()}

    def feed_from(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from a tokenised batch; a KV-cache graph gets an empty past (prefill)."""
        feed = {}
        rows = len(batch["input_ids"])
        for name, (_typ, shape) in self.input_shapes().items():
            if name.startswith("past_key_values."):
                heads, dim = shape[1], shape[3]
                if not isinstance(heads, int) or not isinstance(dim, int):
                    raise UsageError(f"input '{name}' has no static head shape ({shape}); re-export the model")
                feed[name] = np.zeros((rows, heads, 0, dim), dtype=np.float32)
            elif name in batch:
                feed[name] = batch[name]
        return feed

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
    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _input_shapes(self) -> dict[str, tuple[str, list[Any]]]:
        """By default the ONNX file's own signature (read once); a runtime with its own view overrides this."""
        if getattr(self, "_onnx_inputs", None) is None:
            self._onnx_inputs = onnx_inputs(self.model_path)
        return self._onnx_inputs

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _layer_records(self) -> list[LayerRecord]:
        raise NotImplementedError


def make_runner(
    model_path: Path, target: Target, *, runtime_dir: Path | None = None, timing: bool = False
) -> Runner:
    """The runner for ``target``'s runtime (not yet activated); ``timing`` for side-by-side benchmarks."""
    if target.runtime == "onnxruntime":
        from ffsplit.runtimes.onnxruntime import OrtRunner

        return OrtRunner(model_path, target, runtime_dir=runtime_dir, timing=timing)
    if target.runtime == "openvino":
        from ffsplit.runtimes.openvino import OpenVinoRunner

        return OpenVinoRunner(model_path, target, runtime_dir=runtime_dir, timing=timing)
    if target.runtime == "tensorrt":
        from ffsplit.runtimes.tensorrt import TrtRunner

        return TrtRunner(model_path, target, runtime_dir=runtime_dir, timing=timing)
    raise UsageError(f"target '{target.name}': unknown runtime '{target.runtime}'")
