"""Triton Inference Server: model repositories for artifacts, and a local server to serve one.

``write_repository`` lays out a Triton model repository for an artifact: the
onnxruntime backend for ONNX Runtime and OpenVINO targets, the tensorrt backend
for engines, with ``config.pbtxt`` built from the model's signature, dynamic
batching with preferred sizes from the target's batch range, an instance group
per target kind, and sequence batching (one sequence per instance, in order)
for KV-cache models. ``python_repository`` writes a Python-backend model that
runs the artifact through ONNX Runtime, which is what the ``tritonserver``
binary shipped in the ``nvidia-pytriton`` wheel can run (it has no onnxruntime
backend inside). ``text_repository`` writes a Python-backend model that takes
strings and returns what ``ffsplit.load`` gives (embeddings or logits), the
slim artifact inside.

``serve`` starts that binary. It needs the wheel's files, installed without
its Python dependencies (they pin numpy below 2) into a folder of their own:
``pip install --no-deps --target DIR nvidia-pytriton``, found through
``$FFSPLIT_TRITON_HOME`` or ``<venv>/ffsplit-triton``, with numpy 1 for the
wheel's backend stub in its ``stub-numpy`` folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffsplit.artifact import MODEL_FILE, RUNTIME_DIR, holds_folder, remove_tree, signals_held, staged_output
from ffsplit.errors import UsageError
from ffsplit.jsonio import dumps
from ffsplit.signature import ELEMENT_TYPES, onnx_signature
from ffsplit.tasks import TASKS


@dataclass
class Tensor:
    name: str
    data_type: str
    dims: list[int]  # without the batch dimension; -1 where dynamic


@dataclass
class Signature:
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


def signature(model_path: Path) -> Signature:
    """Inputs and outputs of an ONNX model, batch dimension dropped (Triton adds it with max_batch_size)."""
    inputs, outputs = onnx_signature(model_path)

    def tensors(values: dict[str, tuple[int, list[int | str]]]) -> list[Tensor]:
        return [
            Tensor(name, ELEMENT_TYPES.get(t, ("", "TYPE_FP32"))[1], [d if isinstance(d, int) and d > 0 else -1 for d in dims][1:])
            for name, (t, dims) in values.items()
        ]

    return Signature(tensors(inputs), tensors(outputs))


def model_config(
    name: str, sig: Signature, *, platform: str | None, backend: str | None, shapes: dict[str, list[int]],
    kind: str, sequence: bool, parameters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The model configuration as a dict shaped like Triton's ModelConfig message."""
    batch = shapes.get("batch", [1, 8, 32])
    cfg: dict[str, Any] = {"name": name}
    if platform:
        cfg["platform"] = platform
    if backend:
        cfg["backend"] = backend
    cfg["max_batch_size"] = int(batch[2])
    cfg["input"] = [{"name": t.name, "data_type": t.data_type, "dims": t.dims} for t in sig.inputs]
    cfg["output"] = [{"name": t.name, "data_type": t.data_type, "dims": t.dims} for t in sig.outputs]
    preferred = sorted({b for b in (batch[1], batch[2]) if b > 1})
    if sequence:
        # one KV-cache sequence stays on one instance and its requests run in order
        cfg["sequence_batching"] = {
            "max_sequence_idle_microseconds": 5_000_000,
            "oldest": {"max_candidate_sequences": int(batch[2]), "preferred_batch_size": preferred,
                       "max_queue_delay_microseconds": 1000},
        }
    else:
        cfg["dynamic_batching"] = {"preferred_batch_size": preferred, "max_queue_delay_microseconds": 1000}
    cfg["instance_group"] = [{"count": 1, "kind": kind}]
    if parameters:
        cfg["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in parameters.items()]
    return cfg


_ENUMS = re.compile(r"^(TYPE_[A-Z0-9]+|KIND_[A-Z]+)$")


def to_pbtxt(cfg: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text format for a ModelConfig dict (enums are bare words, strings quoted)."""
    pad = "  " * indent
    lines = []
    for key, value in cfg.items():
        items = value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]
        for item in items:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{\n{to_pbtxt(item, indent + 1)}{pad}}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in item)}]")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return "".join(line + "\n" for line in lines)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str) and _ENUMS.match(v):
        return v
    return dumps(str(v))


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)|("(?:[^"\\]|\\.)*")|(-?[0-9.eE+-]+)|([{}\[\]:,]))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """Parse the protobuf text format back into a dict (repeated fields become lists); for checking configs."""
    tokens = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"unexpected text at {pos}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group(1):
            continue
        tokens.append(m.group(0).strip())
    tokens = [t for t in tokens if t]
    i = 0

    def value(tok: str) -> Any:
        if tok.startswith('"'):
            return json.loads(tok)
        if tok in ("true", "false"):
            return tok == "true"
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        try:
            return float(tok)
        except ValueError:
            return tok

    def message(end: str | None) -> dict[str, Any]:
        nonlocal i
        out: dict[str, Any] = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "{":
                i += 1
                item: Any = message("}")
                i += 1
            elif tokens[i] == "[":
                i += 1
                item = []
                while tokens[i] != "]":
                    if tokens[i] != ",":
                        item.append(value(tokens[i]))
                    i += 1
                i += 1
            else:
                item = value(tokens[i])
                i += 1
            if key in out:
                out[key] = (out[key] if isinstance(out[key], list) and isinstance(item, dict) else [out[key]]) + [item]
            else:
                out[key] = item
        return out

    return message(None)


# What ffsplit accepts as a Triton model name: one plain path component inside the repository.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _model_name(manifest: dict[str, Any]) -> str:
    base = Path(str(manifest["source"]["spec"])).name or "model"
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"ffsplit-{base}-{manifest['target']['name']}")[:128]


def _model_dir(repo: Path, name: str, artifact: Path) -> Path:
    """``repo/name`` for a validated model name; the folder must not exist yet, nor lie inside ``artifact``."""
    from ffsplit.artifact import refuse_inside

    refuse_inside(repo, {"artifact": artifact}, "--repo")
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise UsageError(
            f"--name '{name[:60]}' is not a Triton model name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit (no '/' or '..')"
        )
    if repo.exists() and not repo.is_dir():
        raise UsageError(f"--repo '{repo}' is a file: pass a folder for the model repository")
    model_dir = repo / name
    if model_dir.exists() or model_dir.is_symlink():
        raise UsageError(f"'{model_dir}' already exists: choose another --name or --repo, or remove it")
    return model_dir


@holds_folder
def write_repository(artifact: Path, repo: Path, *, name: str | None = None) -> Path:
    """A Triton model repository serving ``artifact`` with Triton's own backend for its target."""
    from ffsplit.artifact import open_artifact, require_built

    art = open_artifact(artifact)
    require_built(art, "triton")
    model_dir = _model_dir(repo, name or _model_name(art.manifest), art.folder)
    name = model_dir.name
    target = art.target
    if target.ir_compression:
        raise UsageError(
            f"'{artifact}' runs an OpenVINO IR (target {target.name}: runtime/{target.name}/model.xml), which "
            "ffsplit triton does not write (it writes ONNX Runtime and TensorRT models, and model.onnx is not the "
            "graph that was checked): serve the IR with Triton's OpenVINO backend, or ffsplit.load in Python"
        )
    sig = signature(art.folder / MODEL_FILE)
    if target.runtime == "tensorrt":
        plan = art.folder / RUNTIME_DIR / target.name / "model.plan"
        if not plan.is_file():
            raise UsageError(f"'{artifact}' has no TensorRT engine ({plan}): export it for the target on a GPU first")
        platform, files = "tensorrt_plan", [(plan, "model.plan")]
    else:
        platform = "onnxruntime_onnx"
        files = [(p, p.name) for p in [art.folder / MODEL_FILE, *art.folder.glob(MODEL_FILE + ".data")]]
    cfg = model_config(
        name, sig, platform=platform, backend=None, shapes=target.shapes,
        kind="KIND_GPU" if target.on_gpu else "KIND_CPU", sequence=TASKS[art.manifest.task].past,
    )
    # staged beside the repository's other models and renamed in when whole (a full disk leaves nothing)
    with staged_output(model_dir, force=False) as stage:
        (stage / "1").mkdir()
        for src, dst in files:
            shutil.copy2(src, stage / "1" / dst)
        (stage / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
    return model_dir


# Both generated models move arrays across the backend stub alike.
_ARRAY_HELPERS = '''# The stub (its C++) is built against numpy 1's C API. With numpy 1 on its path (what ``ffsplit serve`` gives
# it) arrays cross as they are; with numpy 2 they cross wrongly, so numeric tensors go through DLPack.
NUMPY1 = int(np.__version__.split(".")[0]) < 2


def from_triton(tensor):
    return tensor.as_numpy() if NUMPY1 else np.from_dlpack(tensor)


def to_triton(name, array):
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor(name, array) if NUMPY1 else pb_utils.Tensor.from_dlpack(name, array)
'''

PYTHON_MODEL = '''"""Triton Python-backend model generated by ffsplit: runs one artifact through ONNX Runtime."""

import json
import os
import sys

# ``ffsplit serve`` names the environment it runs in (the backend stub starts with the system
# interpreter's paths); on another server, onnxruntime must be importable there
sys.path[:0] = [p for p in os.environ.get("FFSPLIT_SITE_PACKAGES", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# ARRAY HELPERS


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        params = {p: v["string_value"] for p, v in cfg.get("parameters", {}).items()}
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        for key, value in json.loads(params.get("session_config", "{}")).items():
            so.add_session_config_entry(key, value)
        # the graph sits beside this file, in the model's version folder: the repository holds no absolute path
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {n: from_triton(pb_utils.get_input_tensor_by_name(request, n)) for n in self.inputs}
            results = self.session.run(self.outputs, feed)
            responses.append(pb_utils.InferenceResponse([to_triton(n, r) for n, r in zip(self.outputs, results)]))
        return responses
'''.replace("# ARRAY HELPERS\n", _ARRAY_HELPERS)


TEXT_MODEL = '''"""Triton Python-backend model generated by ffsplit: text in, the artifact's embeddings or logits out.

It runs ``ffsplit.load`` on the slim artifact in its version folder: the artifact's own tokenizer, runner and
(for a sentence-transformers source) pooling and normalisation, as ``encode`` / ``predict`` give them in Python.
"""

import json
import os
import site
import sys

# ``ffsplit serve`` names the environment it runs in, first; addsitedir also reads its .pth files (an
# editable install). On another server, ffsplit must be installed where the backend stub's Python finds it.
paths = [p for p in os.environ.get("FFSPLIT_SITE_PACKAGES", "").split(os.pathsep) if p]
sys.path[:0] = [p for p in paths if p not in sys.path]
for path in paths:
    site.addsitedir(path)

import numpy as np
import triton_python_backend_utils as pb_utils

import ffsplit

# ARRAY HELPERS


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.output = cfg["output"][0]["name"]
        self.model = ffsplit.load(os.path.join(args["model_repository"], args["model_version"], "artifact"))

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            out = self.model.encode(texts) if self.output == "sentence_embedding" else self.model.predict(texts)
            responses.append(pb_utils.InferenceResponse([to_triton(self.output, out.astype(np.float32))]))
        return responses
'''.replace("# ARRAY HELPERS\n", _ARRAY_HELPERS)


@holds_folder
def text_repository(artifact: Path, repo: Path, *, name: str | None = None) -> Path:
    """A Python-backend model that takes text (``text``, one string per row) and returns what ``ffsplit.load``
    gives: ``sentence_embedding`` (feature-extraction: the source's pooling and normalisation, or mean
    pooling) or ``logits`` (text-classification). The slim artifact (``pack``) sits in its version folder."""
    from ffsplit.artifact import open_artifact, pack_artifact, require_built
    from ffsplit.pooling import read_pooling
    from ffsplit.signature import SENTENCE_OUTPUT

    art = open_artifact(artifact)
    require_built(art, "triton --text")
    task = art.manifest.task
    if task not in TEXT_TASKS:
        raise UsageError(f"a text front end serves embeddings or class logits; '{artifact}' is {task}: "
                         "serve its tensors (without --text)")
    if TASKS[task].pooled:  # the pooling the served model will read, refused here if it is unreadable
        read_pooling(art.folder, default_length=None)
    _, outputs = onnx_signature(art.folder / MODEL_FILE)
    source = SENTENCE_OUTPUT if SENTENCE_OUTPUT in outputs else art_output(task)
    width = outputs[source][1][-1]
    if not isinstance(width, int):
        raise UsageError(f"'{artifact}': output {source} has no fixed width ({width}): re-run ffsplit export")
    out_name = SENTENCE_OUTPUT if TASKS[task].pooled else TASKS[task].output
    sig = Signature([Tensor("text", "TYPE_STRING", [1])], [Tensor(out_name, "TYPE_FP32", [width])])
    model_dir = _model_dir(repo, name or _model_name(art.manifest) + "-text", art.folder)
    cfg = model_config(model_dir.name, sig, platform=None, backend="python", shapes=art.target.shapes,
                       kind="KIND_CPU", sequence=False)
    with staged_output(model_dir, force=False) as stage:
        (stage / "1").mkdir()
        (stage / "1" / "model.py").write_text(TEXT_MODEL, encoding="utf-8")
        if art.manifest.packed:  # already slim (and verified)
            shutil.copytree(art.folder, stage / "1" / "artifact", symlinks=True)
        else:
            pack_artifact(art.folder, stage / "1" / "artifact")
        (stage / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
    return model_dir


def art_output(task: str) -> str:
    return TASKS[task].output


def text_served(artifact: Path) -> bool:
    """Whether ``serve`` adds a text front end: embedding and classification artifacts."""
    from ffsplit.artifact import read_manifest

    return read_manifest(artifact).task in TEXT_TASKS


def python_repository(artifact: Path, repo: Path, *, name: str | None = None) -> Path:
    """A Python-backend model running ``artifact`` with ONNX Runtime (what the pytriton server can run)."""
    from ffsplit.artifact import open_artifact, require_built

    art = open_artifact(artifact)
    require_built(art, "serve")
    if art.target.runtime != "onnxruntime" or art.target.on_gpu:
        raise UsageError(f"ffsplit serve runs ONNX Runtime CPU artifacts; '{artifact}' targets {art.target.name}")
    return python_model(
        art.folder / MODEL_FILE, repo, name=name or _model_name(art.manifest), shapes=art.target.shapes,
        session_config=art.target.session_config, sequence=TASKS[art.manifest.task].past,
    )


def python_model(
    model_path: Path, repo: Path, *, name: str, shapes: dict[str, list[int]] | None = None,
    session_config: dict[str, str] | None = None, sequence: bool = False,
) -> Path:
    """A Python-backend model over any ONNX file (an artifact's, or the original model's for comparison)."""
    model_dir = _model_dir(repo, name, model_path.parent)
    cfg = model_config(
        name, signature(model_path), platform=None, backend="python", shapes=shapes or {}, kind="KIND_CPU",
        sequence=sequence, parameters={"session_config": dumps(session_config or {})},
    )
    with staged_output(model_dir, force=False) as stage:
        (stage / "1").mkdir()
        (stage / "1" / "model.py").write_text(PYTHON_MODEL, encoding="utf-8")
        for src in [Path(model_path), *Path(model_path).parent.glob(Path(model_path).name + ".data")]:
            shutil.copy2(src, stage / "1" / ("model.onnx" + src.name[len(Path(model_path).name):]))
        (stage / "config.pbtxt").write_text(to_pbtxt(cfg), encoding="utf-8")
    return model_dir


STUB_NUMPY = "stub-numpy"
TEXT_TASKS = tuple(name for name, task in TASKS.items() if not task.decoder)


def site_packages() -> str:
    """This environment's package folders, for the Python backend stub of a server ``ffsplit serve`` starts."""
    return os.pathsep.join(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))


def triton_home() -> Path:
    """Where the nvidia-pytriton wheel's files are (its ``pytriton/tritonserver`` folder inside)."""
    candidates = []
    if os.environ.get("FFSPLIT_TRITON_HOME"):
        candidates.append(Path(os.environ["FFSPLIT_TRITON_HOME"]))
    candidates.append(Path(sys.prefix) / "ffsplit-triton")
    for c in candidates:
        if (c / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
            return c
    raise UsageError(
        "no tritonserver found: pip install --no-deps --target "
        f"{Path(sys.prefix) / 'ffsplit-triton'} nvidia-pytriton tritonclient (or set FFSPLIT_TRITON_HOME)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    model: str
    workdir: Path
    text_model: str | None = None  # the text-in front end, for embedding and classification artifacts

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def log_errors(self) -> list[str]:
        """The error lines of the server's log so far."""
        text = (self.workdir / "server.log").read_text(errors="replace")
        if os.environ.get("FFSPLIT_TRITON_DEBUG"):
            print(text, file=sys.stderr)
        return [line for line in text.splitlines() if line.startswith("E") or "error" in line.lower()]

    def how_it_ended(self) -> str:
        """How the server process ended, with the last errors of its log (call once it has)."""
        code = self.process.returncode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        errors = self.log_errors()
        return how + (": " + " | ".join(errors[-3:])[:600] if errors else "")

    def stop(self) -> None:
        """Stop the server and remove its folder; a second Ctrl-C meanwhile cannot cut this short."""
        with signals_held():
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_server(artifact: Path | None = None, *, models: dict[str, Path] | None = None, http_port: int = 0,
                 grpc_port: int = 0, timeout: float = 120.0, log: Any = None) -> Server:
    """Start tritonserver on loopback serving ``artifact`` (Python backend + ONNX Runtime); wait until ready.

    ``models`` (name -> ONNX file) serves plain ONNX files as well, e.g. the original model beside the split one.
    """
    home = triton_home()
    server_dir = home / "pytriton" / "tritonserver"
    stub = server_dir / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise UsageError(f"the pytriton wheel has no Python backend stub for Python {sys.version_info.major}.{sys.version_info.minor}")
    for flag, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        if port and not _port_free(port):
            raise UsageError(f"port {port} on 127.0.0.1 is in use: pass {flag} with a free port, or {flag} 0 for any")
    server: Server | None = None
    work = Path(tempfile.mkdtemp(prefix="ffsplit-triton-"))
    try:
        backends = work / "backends" / "python"
        backends.mkdir(parents=True)
        for f in (server_dir / "backends" / "python").iterdir():
            if f.is_file():
                shutil.copy2(f, backends / f.name)
        shutil.copy2(stub, backends / stub.name)  # the stub for this interpreter's Python version
        # the wheel's backend stub is built against numpy 1's C API: with numpy 2 first on its path, string
        # (BYTES) inputs arrive as garbage, so the stub gets the numpy 1 that `make` puts beside the wheel
        stub = [str(home / STUB_NUMPY)] if (home / STUB_NUMPY / "numpy").is_dir() else []
        names = []
        text_model = None
        if artifact is not None:
            names.append(python_repository(artifact, work / "repo").name)
            if text_served(artifact) and stub:
                text_model = text_repository(artifact, work / "repo").name
                names.append(text_model)
            elif text_served(artifact) and log:
                log(f"no text front end: its string inputs need numpy 1 for the server's Python stub: "
                    f"pip install --no-deps --target {home / STUB_NUMPY} numpy==1.26.4 ml_dtypes==0.5.4")
        for extra_name, path in (models or {}).items():
            names.append(python_model(path, work / "repo", name=extra_name).name)
        http_port = http_port or _free_port()
        grpc_port = grpc_port or _free_port()
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(home / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH")])),
            "PYTHONPATH": os.pathsep.join(filter(None, [*stub, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])),
            "FFSPLIT_SITE_PACKAGES": os.pathsep.join([*stub, site_packages()]),
        }
        cmd = [
            str(server_dir / "bin" / "tritonserver"), f"--model-repository={work / 'repo'}",
            f"--backend-directory={work / 'backends'}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--allow-metrics=false", "--log-verbose=0",
        ]
        with open(work / "server.log", "wb") as log_file:  # the child keeps its own descriptor
            # its own session, so a Ctrl-C in the terminal reaches ffsplit, which stops it in order
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = Server(proc, http_port, grpc_port, names[0], work, text_model)
        _wait_ready(server, names, timeout)
        return server
    except BaseException:
        # an error or an interrupt during start-up: the server (in a session of its own, so no
        # signal reaches it) is stopped here, and the temporary folder goes with it
        if server is not None:
            server.stop()
        remove_tree(work)
        raise


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ready(server: Server, names: list[str], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.process.poll() is not None:
            errors = server.log_errors()
            hint = " (a port in use? pass --http-port / --grpc-port 0)" if any("address" in e.lower() for e in errors) else ""
            raise UsageError(f"tritonserver ended while starting ({server.how_it_ended()})" + hint)
        try:
            ready = 0
            for model_name in names:
                with urllib.request.urlopen(f"http://{server.url}/v2/models/{model_name}/ready", timeout=2) as r:
                    ready += r.status == 200
            if ready == len(names):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise UsageError(f"tritonserver did not become ready in {timeout:.0f} s")
