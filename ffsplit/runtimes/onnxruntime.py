"""ONNX Runtime: session building and the runner that check and bench share.

Runners follow one interface (activate / infer / deactivate, and a context
manager). Inputs are validated against the model's signature before they
reach the session, so a wrong feed is a clear error, not an ORT stack trace.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np
import onnxruntime as ort

from ffsplit.errors import UsageError
from ffsplit.runtimes.targets import Target

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def session_options(target: Target, *, optimized_model_path: Path | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[target.graph_optimization]
    so.log_severity_level = 3
    for key, value in target.session_config.items():
        so.add_session_config_entry(key, value)
    if optimized_model_path is not None:
        so.optimized_model_filepath = str(optimized_model_path)
    return so


class OrtRunner:
    """Runs one ONNX model in ONNX Runtime for a target."""

    def __init__(self, model_path: Path, target: Target, *, optimized_model_path: Path | None = None) -> None:
        self.model_path = Path(model_path)
        self.target = target
        self.optimized_model_path = optimized_model_path
        self.session: ort.InferenceSession | None = None

    @property
    def name(self) -> str:
        return f"onnxruntime[{','.join(self.target.providers)}]:{self.model_path.name}"

    def activate(self) -> OrtRunner:
        reason = self.target.unavailable_reason()
        if reason:
            raise UsageError(f"target '{self.target.name}' cannot run here: {reason}")
        opts = session_options(self.target, optimized_model_path=self.optimized_model_path)
        self.session = ort.InferenceSession(str(self.model_path), opts, providers=list(self.target.providers))
        return self

    def deactivate(self) -> None:
        self.session = None

    def __enter__(self) -> OrtRunner:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    def input_signature(self) -> dict[str, tuple[str, int]]:
        assert self.session is not None, "activate() the runner first"
        return {i.name: (i.type, len(i.shape)) for i in self.session.get_inputs()}

    def input_shapes(self) -> dict[str, list[int | str | None]]:
        assert self.session is not None, "activate() the runner first"
        return {i.name: list(i.shape) for i in self.session.get_inputs()}

    def feed_from(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs from a tokenised batch; a KV-cache graph gets an empty past (prefill)."""
        feed = {}
        rows = len(batch["input_ids"])
        for name, shape in self.input_shapes().items():
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
            want = _DTYPES.get(typ)
            if want is not None and arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind"):
                    raise UsageError(f"input '{name}' is {arr.dtype}, the model takes {typ}")
                arr = arr.astype(want)
            out[name] = arr
        return out

    def infer(self, feed: dict[str, np.ndarray], *, check: bool = True) -> dict[str, np.ndarray]:
        assert self.session is not None, "activate() the runner first"
        if check:
            feed = self.validate(feed)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed), strict=True))
