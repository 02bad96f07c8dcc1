"""A local Triton Inference Server for an artifact: the ``tritonserver`` binary of the ``nvidia-pytriton``
wheel, installed without its Python dependencies (they pin numpy below 2) into a folder of their own
(``pip install --no-deps --target DIR nvidia-pytriton``, found through ``$FFSPLIT_TRITON_HOME`` or
``<venv>/ffsplit-triton``), with numpy 1 for the wheel's backend stub in its ``stub-numpy`` folder; started on
loopback with the artifact's Python-backend models, stopped in order."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ffsplit.artifact import remove_tree, signals_held
from ffsplit.errors import UsageError
from ffsplit.serve.triton import python_model, python_repository, text_repository, text_served

STUB_NUMPY = "stub-numpy"


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
                 grpc_port: int = 0, timeout: float = 120.0, log: Callable[[str], None] | None = None) -> Server:
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
        _python_backend(server_dir, stub, work / "backends" / "python")
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


def _python_backend(server_dir: Path, stub: Path, backends: Path) -> None:
    """The wheel's Python backend, with the stub built for this interpreter's Python version, in ``backends``."""
    backends.mkdir(parents=True)
    for f in (server_dir / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, backends / f.name)
    shutil.copy2(stub, backends / stub.name)


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
