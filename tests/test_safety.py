"""Safety, one class of harm per section: data loss, writes outside the folder, integrity, interrupts,
crashes on bad input, resource bounds. Tried as a careful attacker and as a clumsy user would."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import onnx
import pytest
from conftest import forge_manifest, run_cli, triton_installed
from conftest import main_in_process as _main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ffsplit import api
from ffsplit.artifact import MANIFEST, output_lock, resolve_out, staged_output, write_manifest_json
from ffsplit.errors import FFSplitError, UsageError
from ffsplit.targets import load_target

FAST_ARGS = ["--calib-size", "8", "--eval-size", "16", "--max-length", "16"]


def _one_line_error(code: int, err: str, fragment: str = "", exit_code: int = 2) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[ffsplit] ")]
    assert code == exit_code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its content (None for folders and links): a snapshot to compare."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            out[str(p.relative_to(folder))] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- data loss: a clean-up removes only what its own run created and still holds


def test_a_failed_run_keeps_what_others_put_in_the_parent_it_created(tmp_path: Path) -> None:
    """``--out new/a`` creates ``new/``; a run that fails afterwards removes ``new/`` only while it is empty."""
    out = tmp_path / "new" / "deeper" / "a"
    with pytest.raises(RuntimeError), staged_output(out, force=False) as stage:
        (stage / "model.onnx").write_bytes(b"half")
        (tmp_path / "new" / "notes.txt").write_text("the user's")  # saved there during the run
        with staged_output(tmp_path / "new" / "deeper" / "b", force=False) as other:  # a second export completes
            (other / "f").write_text("complete")
        raise RuntimeError("parity failed")
    assert (tmp_path / "new" / "notes.txt").read_text() == "the user's"
    assert (tmp_path / "new" / "deeper" / "b" / "f").read_text() == "complete"
    assert sorted(p.name for p in (tmp_path / "new" / "deeper").iterdir()) == ["b"]  # no stage, no lock, no a
    # with nothing put there meanwhile, every folder the run created goes
    with pytest.raises(RuntimeError), staged_output(tmp_path / "x" / "y" / "a", force=False):
        raise RuntimeError("parity failed")
    assert not (tmp_path / "x").exists()


def test_an_interrupted_export_keeps_a_file_saved_beside_it(tiny_bert_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from ffsplit.stages import verify

    def interrupted(*_a: object, **_k: object) -> None:
        (tmp_path / "new" / "keep.txt").write_text("saved during the run")
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "parity", interrupted)
    code, err = _main("export", str(tiny_bert_dir), "--out", str(tmp_path / "new" / "a"), "--light", "none", *FAST_ARGS)
    assert code == 130, err
    assert _tree(tmp_path / "new") == {"keep.txt": b"saved during the run"}


@pytest.mark.parametrize("args", [
    ["export", "M", "--out", "A", "--force", "--json", "A/model.onnx"],
    ["export", "M", "--out", "A", "--force", "--json", "A/new.json"],
    ["export", "M", "--out", "A", "--force", "--json", "A"],
    ["check", "A", "--golden", "--json", "A/manifest.json"],
    ["check", "A", "--json", "A/sub/../manifest.json"],
    ["check", "A", "--golden", "--json", "P/.art.ffsplit-lock"],
    ["bench", "A", "--report", "A/report.md"],
    ["debug", "A", "--json", "A/runtime/x.json"],
    ["build", "A", "--json", "A/manifest.json"],
    ["inspect", "A", "--json", "A/model.onnx"],
    ["triton", "A", "--repo", "A"],
    ["triton", "A", "--repo", "A/repo"],
])
def test_side_outputs_inside_an_artifact_are_refused(args: list[str], tiny_none_artifact: Path, tiny_bert_dir: Path,
                                                     tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    before = _tree(tmp_path)
    subst = {"M": str(tiny_bert_dir), "A": str(art), "P": str(tmp_path)}
    code, err = _main(*[subst.get(a) or a.replace("A/", f"{art}/").replace("P/", f"{tmp_path}/") for a in args])
    _one_line_error(code, err, "whose files ffsplit owns")
    assert _tree(tmp_path) == before


def test_a_planted_link_on_the_temporary_name_is_never_followed(tmp_path: Path) -> None:
    from ffsplit.artifact import write_text_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "d"
    dest.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # every name the old scheme could have picked
        (dest / f".r.json.ffsplit-tmp-{pid}").symlink_to(victim)
    write_text_atomic(dest / "r.json", "{}")
    assert victim.read_text() == "precious"
    assert (dest / "r.json").is_file() and not (dest / "r.json").is_symlink()
    assert (dest / "r.json").read_text() == "{}"
    assert sorted(p.name for p in dest.iterdir() if not p.is_symlink()) == ["r.json"]  # no temporary left


def test_non_finite_numbers_never_reach_a_json_file(tmp_path: Path) -> None:
    from ffsplit.jsonio import dumps

    with pytest.raises(ValueError):  # a record other verbs read back: a bug, never written
        write_manifest_json(tmp_path, {"format": 3, "x": math.inf})
    assert not (tmp_path / MANIFEST).exists()
    assert json.loads(dumps({"a": [1.0, math.nan, -math.inf], "b": {"c": math.inf}})) == {"a": [1.0, None, None],
                                                                                         "b": {"c": None}}


# -- data loss: --force replaces only ffsplit's own outputs, never the source model


@pytest.mark.parametrize("where", ["user-folder", "source", "source-parent", "inside-source", "dot"])
def test_force_never_destroys_what_is_not_ours(where: str, tiny_bert_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    source = _copy(tiny_bert_dir, home / "models" / "bert")
    project = home / "thesis"
    (project / ".git").mkdir(parents=True)
    (project / "chapter1.tex").write_text("years of work")
    out = {"user-folder": project, "source": source, "source-parent": source.parent,
           "inside-source": source / "exports" / "o", "dot": Path(".")}[where]
    monkeypatch.chdir(project)
    before = _tree(home)
    code, err = _main("export", str(source), "--out", str(out), "--force", "--light", "none", *FAST_ARGS)
    _one_line_error(code, err, "overlaps the source model" if "source" in where else "is not an ffsplit output folder")
    assert _tree(home) == before


def test_force_refuses_an_ffsplit_output_holding_the_users_files(tiny_none_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    (art / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"holds files ffsplit did not write \(notes.txt\)"), \
            staged_output(art, force=True):
        pass
    assert (art / "notes.txt").read_text() == "mine"


def test_out_through_a_link_is_its_real_folder(tiny_none_artifact: Path, tmp_path: Path) -> None:
    real = _copy(tiny_none_artifact, tmp_path / "elsewhere" / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert resolve_out(link) == real.resolve()
    with staged_output(link, force=True) as stage:
        write_manifest_json(stage, {"format": 2})
    assert link.is_symlink() and set(os.listdir(real)) == {MANIFEST}  # the real folder was replaced, the link kept
    plain = tmp_path / "plain"
    plain.mkdir()
    link.unlink()
    link.symlink_to(plain)
    with pytest.raises(UsageError, match="is not an ffsplit output folder"), staged_output(link, force=True):
        pass


@pytest.mark.parametrize("out", ["/", "file"])
def test_out_that_cannot_be_a_folder_suggests_no_force(out: str, tiny_bert_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("x")
    code, err = _main("export", str(tiny_bert_dir), "--out", "/" if out == "/" else str(target), *FAST_ARGS)
    _one_line_error(code, err, "root" if out == "/" else "is a file")
    assert "--force" not in err and target.read_text() == "x"


# -- writes outside the folder


@pytest.mark.parametrize(("section", "key", "value"), [
    ("session_config", "session.optimized_model_external_initializers_file_name", "../../evil.bin"),
    ("session_config", "ep.context_file_path", "x.onnx"),
    ("session_config", "session.debug_layout_transformation", "1"),
    ("provider_options.CPUExecutionProvider", "trt_engine_cache_path", "/tmp/x"),
    ("provider_options.CPUExecutionProvider", "arena_extend_strategy", "../up"),
])
def test_target_options_that_name_files_are_refused(section: str, key: str, value: str, tmp_path: Path) -> None:
    text = Path(load_target("cpu").source).read_text()
    text = text.replace("[session_config]", f"[{section}]\n\"{key}\" = \"{value}\"\n\n[session_config]"
                        if section != "session_config" else f"[session_config]\n\"{key}\" = \"{value}\"")
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match="(names a file or folder|not one ffsplit passes|plain file name|path-like)"):
        load_target(str(path))


def test_openvino_cache_dir_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ov.toml"
    path.write_text(Path(load_target("openvino").source).read_text().replace(
        'config = { INFERENCE_PRECISION_HINT = "f32" }', 'config = { INFERENCE_PRECISION_HINT = "f32", CACHE_DIR = "x" }'))
    with pytest.raises(UsageError, match="'openvino.config.CACHE_DIR' names a file or folder"):
        load_target(str(path))


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    return victim


def test_a_tampered_manifest_never_writes_outside(tiny_none_artifact: Path, tmp_path: Path) -> None:
    victim = _outside(tmp_path)
    art = _copy(tiny_none_artifact, tmp_path / "a" / "b" / "art")
    key = "session.optimized_model_external_initializers_file_name"

    def evil(m: dict) -> None:
        m["target"]["session_config"][key] = "../../../victim.txt"

    # manifest.json alone edited: it no longer agrees with the copy inside model.onnx
    m = json.loads((art / MANIFEST).read_text())
    evil(m)
    (art / MANIFEST).write_text(json.dumps(m))
    code, err = _main("check", str(art))
    _one_line_error(code, err, "disagrees with the manifest embedded in model.onnx (target)", exit_code=1)
    # edited everywhere, hashes recomputed: the target itself is refused
    shutil.rmtree(art)
    _copy(tiny_none_artifact, art)
    forge_manifest(art, evil)
    for verb in ("check", "bench", "debug"):
        code, err = _main(verb, str(art))
        _one_line_error(code, err, "plain file name")
    assert victim.read_text() == "do not overwrite"


def test_external_data_of_the_runtime_graph_is_confined_too(tiny_none_artifact: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    art = _copy(tiny_none_artifact, tmp_path / "art")
    path = next(art.glob("runtime/*/optimized.onnx"))
    model = onnx.load(str(path))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../../secret.bin")
    onnx.save(model, str(path))
    write_manifest_json(art, {k: v for k, v in json.loads((art / MANIFEST).read_text()).items() if k != "files"})
    before = secret.stat().st_atime_ns
    code, err = _main("check", str(art))
    _one_line_error(code, err, "points outside the model's folder ('../../secret.bin')")
    assert secret.stat().st_atime_ns == before


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "..", ".hidden", "x" * 200])
def test_triton_names_stay_inside_the_repository(name: str, tiny_none_artifact: Path, tmp_path: Path) -> None:
    repo = tmp_path / "deep" / "repo"
    code, err = _main("triton", str(tiny_none_artifact), "--repo", str(repo), "--name", name)
    _one_line_error(code, err, "is not a Triton model name")
    assert not (tmp_path / "deep").exists() and not Path("/tmp/abs").exists()


# -- integrity: the file list is complete both ways; the model is the one exported


@pytest.mark.parametrize("case", ["entry-removed", "files-emptied", "extra-file", "link-inside", "link-loop"])
def test_the_file_list_is_checked_both_ways(case: str, tiny_none_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    m = json.loads((art / MANIFEST).read_text())
    expect = {"entry-removed": "config.json is not listed", "files-emptied": "is not listed",
              "extra-file": "notes.txt is not listed", "link-inside": "tokenizer.json is a symbolic link",
              "link-loop": "model.onnx is a symbolic link"}[case]
    if case == "entry-removed":
        (art / "config.json").write_text("{}")
        del m["files"]["config.json"]
    elif case == "files-emptied":
        m["files"] = {}
    elif case == "extra-file":
        (art / "notes.txt").write_text("x")
    elif case == "link-inside":
        (art / "tokenizer.json").unlink()
        (art / "tokenizer.json").symlink_to(tiny_none_artifact / "tokenizer.json")
    else:
        (art / "model.onnx").unlink()
        (art / "model.onnx").symlink_to(art / "model.onnx")
    (art / MANIFEST).write_text(json.dumps(m))
    for verb in ("check", "bench"):
        code, err = _main(verb, str(art))
        _one_line_error(code, err, expect)


def test_a_swapped_model_fails_the_check(tiny_none_artifact: Path, tiny_lowrank_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    shutil.copy(tiny_lowrank_artifact / "model.onnx", art / "model.onnx")  # another valid export
    write_manifest_json(art, {k: v for k, v in json.loads((art / MANIFEST).read_text()).items() if k != "files"})
    code, err = _main("check", str(art))
    _one_line_error(code, err, "disagrees with the manifest embedded in model.onnx", exit_code=1)
    plain = onnx.load(str(art / "model.onnx"))
    del plain.metadata_props[:]
    onnx.save(plain, str(art / "model.onnx"))
    write_manifest_json(art, {k: v for k, v in json.loads((art / MANIFEST).read_text()).items() if k != "files"})
    code, err = _main("check", str(art))
    _one_line_error(code, err, "carries no ffsplit manifest", exit_code=1)


# -- interrupts and leftovers: what a signal or a kill leaves, the code (or the next run) removes

_RUN = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from ffsplit.artifact import staged_output
    out, mode = Path(sys.argv[1]), sys.argv[2]
    real_rmtree = shutil.rmtree
    def rmtree_under_fire(path, *a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        if mode == "double":
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rmtree(path, *a, **k)
    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        with staged_output(out, force=True) as stage:
            (stage / "manifest.json").write_text('{"format": 2, "files": {"f": "0"}}')
            (stage / "f").write_bytes(b"x" * 100000)
            shutil.rmtree = rmtree_under_fire
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "double":
                raise RuntimeError("failed while writing")
    except (KeyboardInterrupt, RuntimeError) as exc:
        print(type(exc).__name__)
""")


def _previous(out: Path) -> None:
    out.mkdir()
    (out / "old").write_bytes(b"o" * 100000)
    write_manifest_json(out, {"format": 2})


@pytest.mark.parametrize("mode", ["after-swap", "double", "kill"])
def test_signals_never_leave_half_written_folders(mode: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _previous(out)
    proc = subprocess.run([sys.executable, "-c", _RUN, str(out), mode], capture_output=True, text=True, timeout=120)
    names = sorted(p.name for p in tmp_path.iterdir())
    if mode == "after-swap":  # SIGTERM while the old folder is removed: removal finishes, then the interrupt lands
        assert proc.stdout.strip() == "KeyboardInterrupt", proc.stderr
        assert names == ["out"] and sorted(os.listdir(out)) == ["f", "manifest.json"]
    elif mode == "double":  # two SIGTERMs during the clean-up after a failure: the stage still goes
        assert proc.stdout.strip() in ("KeyboardInterrupt", "RuntimeError"), proc.stderr
        assert names == ["out"] and (out / "old").is_file()
    else:  # SIGKILL: the staging folder is left; the next run over the same --out removes it
        assert proc.returncode == -signal.SIGKILL
        assert any(".ffsplit-tmp-" in n for n in names)
        with staged_output(out, force=True) as stage:
            write_manifest_json(stage, {"format": 2})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_killed_between_the_renames_gets_its_folder_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _previous(out)
    os.replace(out, tmp_path / ".out.ffsplit-old-999999")  # killed after the first rename
    (tmp_path / ".out.ffsplit-tmp-999999").mkdir()
    with pytest.raises(UsageError, match="already exists"), staged_output(out, force=False):
        pass
    assert (out / "old").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_locks_survive_garbage_and_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    (tmp_path / ".o.ffsplit-lock").write_text("99999999999999999999999999")  # a dead run's, or garbage
    with output_lock(out):
        pass
    assert list(tmp_path.iterdir()) == []

    def full(*_a: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError), output_lock(out):
        pass
    assert list(tmp_path.iterdir()) == []


def test_json_into_a_folder_is_refused_before_work(tiny_none_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    for args in (["check", str(tiny_none_artifact), "--json", str(tmp_path / "dir")],
                 ["bench", str(tiny_none_artifact), "--report", str(tmp_path / "nope" / "r.md")]):
        code, err = _main(*args)
        _one_line_error(code, err, "is a folder" if "--json" in args else "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"] and list((tmp_path / "dir").iterdir()) == []


def test_triton_on_a_full_disk_leaves_nothing(tiny_none_artifact: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import ffsplit.serve.triton as triton

    real_copy = shutil.copy2

    def full(src: object, dst: object, **_k: object) -> None:
        Path(str(dst)).write_bytes(b"trunc")
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(triton.shutil, "copy2", full)
    (tmp_path / "repo").mkdir()  # the user's repository, kept
    code, err = _main("triton", str(tiny_none_artifact), "--repo", str(tmp_path / "repo"), "--name", "m")
    _one_line_error(code, err, "free some space")
    assert list((tmp_path / "repo").iterdir()) == []
    monkeypatch.setattr(triton.shutil, "copy2", real_copy)
    code, err = _main("triton", str(tiny_none_artifact), "--repo", str(tmp_path / "repo"), "--name", "m")
    assert code == 0, err  # the re-run is not blocked


@pytest.mark.skipif(not triton_installed(), reason="the nvidia-pytriton wheel is not installed (make test installs it)")
def test_serve_interrupted_while_starting_stops_its_server(tiny_none_artifact: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import ffsplit.serve.server as server

    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def sleeper(cmd: list[str], **kw: object) -> subprocess.Popen[bytes]:
        started.append(real_popen([sys.executable, "-c", "import time; time.sleep(120)"], **kw))  # type: ignore[arg-type]
        return started[-1]

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(server.subprocess, "Popen", sleeper)
    monkeypatch.setattr(server, "_wait_ready", interrupted)
    workdirs_before = set(Path(tempfile.gettempdir()).glob("ffsplit-triton-*"))
    with pytest.raises(KeyboardInterrupt):
        server.start_server(tiny_none_artifact)
    assert started and started[0].poll() is not None  # stopped, though it ran in a session of its own
    assert set(Path(tempfile.gettempdir()).glob("ffsplit-triton-*")) == workdirs_before


@pytest.mark.skipif(not triton_installed(), reason="the nvidia-pytriton wheel is not installed (make test installs it)")
def test_serve_names_a_busy_port(tiny_none_artifact: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = _main("serve", str(tiny_none_artifact), "--http-port", str(port))
    _one_line_error(code, err, f"port {port} on 127.0.0.1 is in use: pass --http-port with a free port")


# -- bad input is exit 2 with one line, never a crash


@pytest.mark.parametrize("damage", ["empty", "truncated", "huge-header", "wrong-tensors"])
def test_damaged_split_weights(damage: str, tiny_none_artifact: Path, tmp_path: Path) -> None:
    import struct

    art = _copy(tiny_none_artifact, tmp_path / "art")
    path = art / "split.safetensors"
    data = path.read_bytes()
    if damage == "empty":
        data = b""
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "huge-header":
        header = json.dumps({"x": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
        data = struct.pack("<Q", len(header)) + header
    else:
        import torch
        from safetensors.torch import save_file

        save_file({"nothing": torch.zeros(2)}, str(path))
        data = path.read_bytes()
    path.write_bytes(data)
    write_manifest_json(art, {k: v for k, v in json.loads((art / MANIFEST).read_text()).items() if k != "files"})
    code, err = _main("check", str(art))
    _one_line_error(code, err, "split.safetensors")


@pytest.mark.parametrize("case", ["params-empty", "nan", "huge-number", "missing-section", "wrong-type"])
def test_damaged_manifest_sections(case: str, tiny_none_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    mutate = {
        "params-empty": lambda m: m.update(params={}),
        "nan": lambda m: m["calibration"].update(max_length=math.nan),
        "huge-number": lambda m: m["layers"][0].update(heavy=1e30),
        "missing-section": lambda m: m.pop("layers"),
        "wrong-type": lambda m: m.update(source=["not", "an", "object"]),
    }[case]
    forge_manifest(art, mutate)
    for verb in ("check", "inspect"):
        code, err = _main(verb, str(art))
        _one_line_error(code, err, "manifest.json")


# Claims about the model, re-signed (hashes and the embedded copy agree): only the model can refute them.
# Each of these passed a full check before.
@pytest.mark.parametrize("claim", [
    ("d_ff", 16_777_216), ("d_model", 4096), ("light", 1), ("gated", True), ("ffn_params_before", 10**9),
    ("heavy_params", 0), ("ffn_params_after", 7), ("params.total_before", 10**12), ("params.ffn_after", 3),
])
def test_a_manifest_describing_another_model_fails_the_check(claim: tuple[str, object], tiny_none_artifact: Path,
                                                            tmp_path: Path) -> None:
    key, value = claim
    art = _copy(tiny_none_artifact, tmp_path / "art")
    if key.startswith("params."):
        forge_manifest(art, lambda m: m["params"].update({key[7:]: value}))
    else:
        forge_manifest(art, lambda m: m["layers"][-1].update({key: value}))
    code, err = _main("check", str(art))
    errors = [line for line in err.splitlines() if line.startswith("ffsplit:")]
    assert code == 1 and len(errors) == 1 and "describes another model" in errors[0], err
    assert key.rpartition(".")[2] in errors[0]


def test_manifest_nested_100000_deep(tiny_none_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    (art / MANIFEST).write_text('{"format": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for verb in ("check", "inspect"):
        code, err = _main(verb, str(art))
        _one_line_error(code, err, "nested too deeply")


@pytest.mark.parametrize("case", ["truncated-weights", "sizes-contradict-config", "config-is-a-list", "decoy-safetensors"])
def test_damaged_source_models(case: str, tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_bert_dir, tmp_path / "model")
    expect = "cannot load"
    if case == "truncated-weights":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "sizes-contradict-config":
        cfg = json.loads((model / "config.json").read_text())
        cfg["intermediate_size"] = 96
        (model / "config.json").write_text(json.dumps(cfg))
    elif case == "config-is-a-list":
        (model / "config.json").write_text("[1, 2]")
        expect = "is not a JSON object"
    else:
        (model / "model.safetensors").rename(model / "adapter.safetensors")
        (model / "pytorch_model.bin").write_bytes(b"not really a pickle")
        expect = "has only pickle weights (pytorch_model.bin)"
    code, err = _main("export", str(model), "--out", str(tmp_path / "o"), "--light", "none", *FAST_ARGS)
    _one_line_error(code, err, expect)
    assert not (tmp_path / "o").exists()


def test_a_moved_source_is_found_with_source(tiny_none_artifact: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    moved = tmp_path / "moved"
    forge_manifest(art, lambda m: m["source"].update(path=str(tmp_path / "gone"), spec=str(tmp_path / "gone")))
    code, err = _main("check", str(art))
    _one_line_error(code, err, "pass --source PATH")
    _copy(tiny_bert_dir, moved)
    code, err = _main("check", str(art), "--source", str(moved))
    assert code == 0, err


# -- resource bounds: checked before any work


@pytest.mark.parametrize(("args", "fragment"), [
    (["export", "M", "--out", "O", "--calib-size", "-3"], "--calib-size -3: pass a whole number from 1"),
    (["export", "M", "--out", "O", "--calib-size", "0", "--calib", "C"], "--calib-size 0"),
    (["export", "M", "--out", "O", "--eval-size", "5"], "--eval-size 5"),
    (["export", "M", "--out", "O", "--limit", "cosine_min=nan"], "--limit cosine_min nan: pass a finite number"),
    (["export", "M", "--out", "O", "--budget", "size-mb=inf"], "--budget size-mb=inf must be a finite size"),
    (["export", "M", "--out", "O", "--budget", "size-mb=1e308"], "--budget size-mb=1e308 must be a finite size"),
    (["export", "M", "--out", "O", "--budget", "size-mb=nan"], "--budget size-mb=nan must be a finite size"),
    (["bench", "A", "--batch", "100000"], "--batch 100000: pass a whole number from 1 to 1,024"),
    (["bench", "A", "--min-seconds", "inf"], "--min-seconds inf: pass a finite number"),
    (["bench", "A", "--runs", "0"], "--runs 0"),
    (["debug", "A", "--tolerance", "nan"], "--tolerance nan"),
    (["debug", "A", "--tolerance", "-1"], "--tolerance -1"),
    (["check", "A", "--eval-size", "-1"], "--eval-size -1"),
])
def test_numbers_are_bounded_before_work(args: list[str], fragment: str, tiny_bert_dir: Path,
                                         tiny_none_artifact: Path, tmp_path: Path) -> None:
    calib = tmp_path / "c.txt"
    calib.write_text("some text\n")
    subst = {"M": str(tiny_bert_dir), "O": str(tmp_path / "o"), "A": str(tiny_none_artifact), "C": str(calib)}
    code, err = _main(*[subst.get(a, a) for a in args])
    _one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_a_huge_calibration_line_is_cut_before_tokenizing(tmp_path: Path) -> None:
    import tracemalloc

    from ffsplit.split.calibration import calibration_texts

    path = tmp_path / "one-line.txt"
    with open(path, "wb") as f:
        for _ in range(40):
            f.write(b"word " * 200_000)  # 40 MB, no newline
        f.write(b"\nsecond text\n")
    tracemalloc.start()
    try:
        texts = calibration_texts(path, limit=10, max_length=128)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(texts[0]) <= 4096 and texts[1] == "second text"
    assert peak < 8 << 20  # bytes: chunks of the line, never the whole 40 MB


# -- hypothesis: a forger's manifest mutations end in exit 1 or 2, never 3, never a write outside

_VALUES = st.sampled_from([None, True, -1, 0, 1e30, -1e30, math.nan, math.inf, "x", "../../escape", [], {}, [[[]]]])


def _paths(obj: object, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    out = [prefix] if prefix else []
    if depth < 3 and isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k), depth + 1)
    elif depth < 3 and isinstance(obj, list) and obj:
        out += _paths(obj[0], (*prefix, 0), depth + 1)
    return out


@pytest.fixture(scope="module")
def manifest_paths(tiny_none_artifact: Path) -> list[tuple]:
    m = json.loads((tiny_none_artifact / MANIFEST).read_text())
    return [p for p in _paths(m) if p[0] not in ("files", "versions", "run", "graph_passes")]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_mutations_never_crash_or_escape(data: st.DataObject, manifest_paths: list[tuple],
                                                  tiny_none_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("mut")
    art = _copy(tiny_none_artifact, root / "art")
    path = data.draw(st.sampled_from(manifest_paths))
    delete = data.draw(st.booleans())
    value = data.draw(_VALUES)

    def mutate(m: dict) -> None:
        parent = m
        for k in path[:-1]:
            parent = parent[k]
        if delete and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = value

    forge_manifest(art, mutate)
    outside = {k: v for k, v in _tree(root).items() if not k.startswith("art")}
    for verb in ("inspect", "check"):
        code, err = _main(verb, str(art))
        assert code in (0, 1, 2), (path, value, err)
        assert "Traceback" not in err, (path, value, err)
    assert {k: v for k, v in _tree(root).items() if not k.startswith("art")} == outside
    with contextlib.suppress(FFSplitError):
        api.open_artifact(art)


def _rehash(folder: Path) -> None:
    """Make manifest.json list the folder's files with their current hashes, touching nothing else
    (model.onnx may no longer parse)."""
    from ffsplit.artifact import list_files, sha256_file

    manifest = json.loads((folder / MANIFEST).read_text())
    files, _ = list_files(folder)
    manifest["files"] = {rel: sha256_file(p) for rel, p in sorted(files.items()) if rel != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=True) + "\n")


_ARRAYS = st.sampled_from(["int64", "int32", "float32", "float16", "bool", "U3", "M8[s]", "O"])
_NUMBERS = st.sampled_from([0, -1, 1, 10**9, 2**62, math.nan, math.inf])
_JUNK = st.one_of(_VALUES, st.binary(max_size=64), st.text(max_size=40))


def _mutate_golden(data: st.DataObject, art: Path) -> None:
    import numpy as np

    with np.load(art / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = data.draw(st.sampled_from(sorted(arrays)), label="array")
    old = arrays[key]
    shape = data.draw(st.sampled_from([old.shape, (0, *old.shape[1:]), old.shape[:1], (*old.shape, 2), ()]))
    dtype = data.draw(_ARRAYS, label="dtype")
    fill = data.draw(_NUMBERS, label="fill")
    try:
        arrays[key] = np.full(shape, fill).astype(dtype)
    except (ValueError, OverflowError, TypeError):
        arrays[key] = np.zeros(shape, dtype=dtype)
    np.savez(art / "golden.npz", allow_pickle=True, **arrays)


def _mutate_sentence_files(data: st.DataObject, art: Path) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    files = {"modules.json": modules, "1_Pooling/config.json": {"pooling_mode_mean_tokens": True},
             "sentence_bert_config.json": {"max_seq_length": 64}}
    (art / "1_Pooling").mkdir()
    broken = data.draw(st.sampled_from(sorted(files)), label="file")
    for rel, content in files.items():
        if rel == broken:
            junk = data.draw(_JUNK, label="content")
            text = junk if isinstance(junk, bytes) else json.dumps(junk, allow_nan=True).encode()
            (art / rel).write_bytes(text)
        else:
            (art / rel).write_text(json.dumps(content))


def _mutate_graph(data: st.DataObject, art: Path) -> None:
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    nodes = model.graph.node
    i = data.draw(st.integers(0, len(nodes) - 1), label="node")
    how = data.draw(st.sampled_from(["drop", "op_type", "branch", "input", "flip"]), label="how")
    if how == "drop":
        del nodes[i]
    elif how == "op_type":
        nodes[i].op_type = data.draw(st.sampled_from(["MatMul", "Add", "Nope", "", "\x1b[2J"]))
    elif how == "branch":
        nodes[i].metadata_props.add(key="pkg.ffsplit.branch", value=data.draw(st.sampled_from(["heavy", "light", "", "\u202e"])))
    elif how == "input" and nodes[i].input:
        nodes[i].input[0] = data.draw(st.sampled_from(["", "missing", nodes[-1].output[0]]))
    raw = bytearray(model.SerializeToString())
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 0xFF
    (art / "model.onnx").write_bytes(bytes(raw))


# Files other than the manifest, changed and re-signed (every hash recomputed): the readers must refuse or
# fail the check in one line, never crash, never write outside, never pass a raw control character on.
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_artifact_file_mutations_never_crash_or_escape(data: st.DataObject, tiny_none_artifact: Path,
                                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("mutfile")
    art = _copy(tiny_none_artifact, root / "art")
    kind = data.draw(st.sampled_from(["golden", "sentence-transformers", "graph"]), label="kind")
    {"golden": _mutate_golden, "sentence-transformers": _mutate_sentence_files, "graph": _mutate_graph}[kind](data, art)
    _rehash(art)
    outside = {k: v for k, v in _tree(root).items() if not k.startswith("art")}
    for argv in (["inspect", str(art)], ["check", str(art), "--golden"], ["check", str(art)]):
        code, err = _main(*argv)
        assert code in (0, 1, 2) and "Traceback" not in err, (kind, argv, err)
        assert all(c.isprintable() for line in err.splitlines() for c in line), (kind, argv, err)
    assert {k: v for k, v in _tree(root).items() if not k.startswith("art")} == outside


# -- round three: crashes and raw terminal output


@pytest.mark.parametrize("key", ["\x1b[31mred", "a\x0bb", "a\x0cb", "a\x85b", "a\u2028b", "a\u202eb", "x" * 5_000_000])
def test_control_characters_never_reach_the_terminal(key: str, tiny_none_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_none_artifact, tmp_path / "art")
    m = json.loads((art / MANIFEST).read_text())  # "files" is not embedded in model.onnx: no forging needed
    m["files"][key] = "0" * 64
    (art / MANIFEST).write_text(json.dumps(m))
    code, err = _main("check", str(art), "--golden")
    assert code in (1, 2) and "Traceback" not in err
    # the whole of stderr, not its last "line": VT, FF, NEL and U+2028 are line breaks to splitlines()
    assert all(c.isprintable() or c == "\n" for c in err) and len(err) < 10_000, repr(err[:300])


def test_inspect_reads_an_in_error_without_an_out_error(tiny_lowrank_artifact: Path, tmp_path: Path) -> None:
    art = _copy(tiny_lowrank_artifact, tmp_path / "art")
    forge_manifest(art, lambda m: m["layers"][0].update(light_in_error=0.5, light_out_error=None))
    code, out = _main("inspect", str(art))[0], run_cli("inspect", str(art)).stdout
    assert code == 0 and "0.5/-" in out


@pytest.mark.parametrize("archs", ["[1]", "5", '"LlamaForCausalLM"', "[null]"])
def test_architectures_of_the_wrong_type_are_bad_input(archs: str, tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = _copy(tiny_bert_dir, tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(cfg)[:-1] + f', "architectures": {archs}}}')
    code, err = _main("export", str(model), "--out", str(tmp_path / "o"), *FAST_ARGS)
    _one_line_error(code, err, "architectures")
    assert not (tmp_path / "o").exists()


def test_an_out_name_the_terminal_cannot_encode_is_escaped(tiny_bert_dir: Path, tiny_none_artifact: Path,
                                                          tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii:strict"}
    out = tmp_path / "caf\u00e9"  # written by pack, which prints it as export does (one stdout for every verb)
    r = subprocess.run([sys.executable, "-m", "ffsplit", "pack", str(tiny_none_artifact), "--out", str(out)],
                       capture_output=True, env=env, check=False, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"wrote " in r.stdout and b"caf\\xe9" in r.stdout and out.is_dir()  # escaped, after success
    # a name that is not UTF-8 at all (tokenizers and JSON cannot hold it): refused before any work
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff"
    r = subprocess.run([sys.executable, "-m", "ffsplit", "export", str(tiny_bert_dir), "--out", raw, *FAST_ARGS],
                       capture_output=True, env=env, check=False, timeout=600)
    assert r.returncode == 2 and b"UTF-8" in r.stderr and b"Traceback" not in r.stderr, r.stderr[-2000:]
    assert not os.path.exists(raw)


def test_runtimes_write_nothing_into_home(tiny_none_artifact: Path, tmp_path: Path) -> None:
    """ONNX Runtime's telemetry (~/.cache/Microsoft/...) and OpenVINO's (~/intel/) stay off: a throw-away
    HOME is empty after a check and after loading OpenVINO and NNCF the way ffsplit does."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    r = subprocess.run([sys.executable, "-m", "ffsplit", "check", str(tiny_none_artifact), "--golden"],
                       capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []  # ONNX Runtime's
    code = ("from ffsplit.runtimes.base import runner_class; runner_class('openvino'); "
            "from ffsplit.loading import no_telemetry; no_telemetry(); import nncf, openvino; "
            "from ffsplit.runtimes.base import runner_class as again; again('onnxruntime')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False, timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def _golden(art: Path, **change: object) -> None:
    """Rewrite golden.npz with some arrays changed, and every hash made to agree (a careful forger)."""
    import numpy as np

    with np.load(art / "golden.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(change)  # type: ignore[arg-type]
    with open(art / "golden.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    forge_manifest(art, lambda m: None)


@pytest.mark.parametrize("case", ["id-1e9", "too-long", "strings", "datetimes", "inflates", "no-rows"])
def test_a_tampered_golden_file_is_bad_input_or_a_failed_check(case: str, tiny_none_artifact: Path, tmp_path: Path) -> None:
    import numpy as np

    from ffsplit.errors import CheckFailed

    art = _copy(tiny_none_artifact, tmp_path / "art")
    with np.load(art / "golden.npz", allow_pickle=False) as data:
        ids, out = data["in.input_ids"], next(data[k] for k in data.files if k.startswith("out."))
        out_key = next(k for k in data.files if k.startswith("out."))
    ids = ids.copy()
    change: dict[str, object] = {
        "id-1e9": {"in.input_ids": np.where(ids > 0, 10**9, ids)},
        "too-long": {k: np.repeat(v, 200, axis=1) for k, v in np.load(art / "golden.npz").items() if k.startswith("in.")},
        "strings": {out_key: np.array(["x"] * len(out))},
        "datetimes": {out_key: np.array(["2020-01-01"] * len(out), dtype="datetime64[D]")},
        "inflates": {"in.padding": np.zeros((40_000, 1_000), dtype=np.float64)},  # 320 MB of zeros, a few KB zipped
        "no-rows": {k: v[:0] for k, v in np.load(art / "golden.npz").items()},
    }[case]
    _golden(art, **change)
    code, err = _main("check", str(art), "--golden")
    expected = 1 if case == "no-rows" else 2
    _one_line_error(code, err, "golden" if case != "no-rows" else "nothing was compared", exit_code=expected)
    from ffsplit.testing import assert_golden

    with pytest.raises(UsageError if expected == 2 else CheckFailed):
        assert_golden(art)


def test_the_python_api_takes_the_clis_tolerance_bounds(tiny_none_artifact: Path) -> None:
    from ffsplit.testing import assert_golden

    for bad in (math.inf, math.nan, -1.0):
        with pytest.raises(UsageError, match="tolerance"):
            assert_golden(tiny_none_artifact, tolerance=bad)


@pytest.mark.parametrize("body", ["a = " + "[" * 200_000 + "]" * 200_000, "x = 1\n" + "[t]\n" * 1 + "y = " + "[" * 40 + "]" * 40,
                                  "# " + "x" * (2 << 20)])
def test_a_hostile_target_file_is_one_line_of_bad_input(body: str, tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(body)
    with pytest.raises(UsageError, match="nests tables|larger than"):
        load_target(str(path))
    code, err = _main("export", "M", "--out", str(tmp_path / "o"), "--target", str(path))
    _one_line_error(code, err, "target file")
