"""ffsplit.load: an artifact used from Python, on its own target, with sentence-transformers semantics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, run_cli, save_family_model

import ffsplit
from ffsplit import api
from ffsplit.errors import UsageError
from ffsplit.pooling import Pooling

TEXTS = ["a cat sat on the mat", "the weather is nice today", "an entirely different and much longer sentence " * 3]


def _sentence_transformers_folder(src: Path, dest: Path, pooling: dict[str, bool], normalize: bool) -> Path:
    """``src`` made into a sentence-transformers folder (Transformer -> Pooling [-> Normalize])."""
    shutil.copytree(src, dest)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (dest / "modules.json").write_text(json.dumps(modules))
    (dest / "1_Pooling").mkdir()
    (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return dest


@pytest.fixture(scope="module")
def st_artifact(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("st")
    src = _sentence_transformers_folder(tiny_bert_dir, root / "src", {"pooling_mode_mean_tokens": True}, normalize=True)
    api.export(str(src), root / "out", light="none", progress=False, **FAST)
    return src, root / "out"


def test_export_keeps_the_sentence_transformers_files(st_artifact: tuple[Path, Path]) -> None:
    _, out = st_artifact
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (out / name).is_file(), name
    assert "1_Pooling/config.json" in json.loads((out / "manifest.json").read_text())["files"]


def test_the_graph_carries_the_pooled_embedding(st_artifact: tuple[Path, Path]) -> None:
    """A sentence-transformers source gets a sentence_embedding output next to the token output, and the
    export's check proves it is the source's pooling of the graph's own token output."""
    import onnx

    _, out = st_artifact
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert [o.name for o in graph.output] == ["last_hidden_state", "sentence_embedding"]
    pooled = json.loads((out / "manifest.json").read_text())["parity"]["sentence_embedding"]
    assert pooled["passed"] and pooled["max_abs"] < 1e-5 and pooled["pooling"] == ["mean"] and pooled["normalize"]


def test_encode_equals_sentence_transformers(st_artifact: tuple[Path, Path]) -> None:
    """The exact artifact's embeddings are SentenceTransformer(source).encode's, pooling and Normalize included."""
    from sentence_transformers import SentenceTransformer

    src, out = st_artifact
    want = SentenceTransformer(str(src), device="cpu", local_files_only=True).encode(TEXTS, batch_size=2)
    with ffsplit.load(out) as model:
        got = model.encode(TEXTS, batch_size=2)
        assert model.pooling == Pooling(("mean",), normalize=True, max_seq_length=64)
    assert got.shape == want.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("modes", [("cls",), ("max",), ("mean_sqrt_len_tokens",), ("lasttoken",), ("cls", "max", "mean")])
def test_pooling_matches_sentence_transformers_pooling(modes: tuple[str, ...]) -> None:
    from sentence_transformers.models import Pooling as STPooling

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 8)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 1 + [0] * 6])
    st = STPooling(8, pooling_mode=modes)
    want = st({"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)})["sentence_embedding"]
    np.testing.assert_allclose(Pooling(modes)(hidden, mask), want.numpy(), atol=1e-5)


def test_a_plain_folder_gets_mean_pooling_and_the_wrong_verb_is_refused(tiny_none_artifact: Path) -> None:
    with ffsplit.load(tiny_none_artifact) as model:
        assert model.pooling.modes == ("mean",) and not model.pooling.normalize
        assert model.encode(TEXTS).shape == (3, 32)
        with pytest.raises(UsageError, match="exported for feature-extraction: use encode"):
            model.predict(TEXTS)
        with pytest.raises(UsageError, match="a list of strings"):
            model.encode("one string")


def test_a_pooling_path_outside_the_folder_is_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from ffsplit.pooling import sentence_files

    src = _sentence_transformers_folder(tiny_bert_dir, tmp_path / "src", {"pooling_mode_mean_tokens": True}, False)
    modules = json.loads((src / "modules.json").read_text())
    modules[1]["path"] = "../../etc"
    (src / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UsageError, match="not a plain folder name"):
        sentence_files(src)


def test_generate_runs_the_kv_cache_loop(family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    from ffsplit.loading import load_model
    from ffsplit.parity.generation import greedy_torch

    src = save_family_model("gpt2", family_root)
    api.export(str(src), tmp_path / "o", light="none", progress=False, calib_size=8, eval_size=16, max_length=16)
    from ffsplit.testing import assert_golden

    assert_golden(tmp_path / "o")  # last-position logits of a KV-cache graph, saved at export
    loaded = load_model(str(src), task="causal-lm-with-past")
    enc = loaded.tokenizer(["hello there", "a"], padding=True, return_tensors="np")
    want = greedy_torch(loaded.model, enc["input_ids"], enc["attention_mask"], 5)
    with ffsplit.load(tmp_path / "o") as model:
        assert model.eos_token_ids() == (json.loads((src / "config.json").read_text())["eos_token_id"],)
        got = model.generate(["hello there", "a"], max_new_tokens=5, stop_at_eos=False)
        assert [(t.rows, t.new_tokens) for t in model.generation_times] == [(2, 5)]
        with pytest.raises(UsageError, match="exported for causal-lm-with-past: use generate"):
            model.encode(["x"])
        # a continuation ends before the model's end-of-sequence token: here, as if it were row 0's third token
        stop = int(want[0, 2])
        model.eos_token_ids = lambda: (stop,)  # type: ignore[method-assign]
        stopped = model.generate(["hello there", "a"], max_new_tokens=5)
    assert got == loaded.tokenizer.batch_decode(want, skip_special_tokens=True)
    cut = [row[: list(row).index(stop)] if stop in row else row for row in want]
    assert stopped == loaded.tokenizer.batch_decode(cut, skip_special_tokens=True) and stopped[0] != got[0]


def test_both_pooling_config_forms_are_read(tmp_path: Path) -> None:
    """sentence-transformers writes ``pooling_mode`` now and ``pooling_mode_<x>: true`` before; both are read."""
    from ffsplit.pooling import _pooling_modes

    assert _pooling_modes({"pooling_mode": "cls"}, tmp_path) == ("cls",)
    assert _pooling_modes({"pooling_mode": ["max", "mean"]}, tmp_path) == ("max", "mean")
    assert _pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, tmp_path) == ("cls", "mean")
    with pytest.raises(UsageError, match="pooling weightedmean is not one ffsplit computes"):
        _pooling_modes({"pooling_mode_weightedmean_tokens": True, "pooling_mode_mean_tokens": False}, tmp_path)


def test_concatenated_pooling_in_the_graph(tiny_bert_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    """cls and max concatenated, no Normalize, in the current config form: graph, encode and
    sentence-transformers agree."""
    from sentence_transformers import SentenceTransformer

    src = _sentence_transformers_folder(tiny_bert_dir, tmp_path / "src", {"pooling_mode": ["cls", "max"]}, False)
    api.export(str(src), tmp_path / "out", light="none", progress=False, **FAST)
    want = SentenceTransformer(str(src), device="cpu", local_files_only=True).encode(TEXTS)
    with ffsplit.load(tmp_path / "out") as model:
        assert "sentence_embedding" in model.outputs
        np.testing.assert_allclose(model.encode(TEXTS), want, atol=1e-5)
    assert want.shape == (3, 64)
    r = run_cli("check", str(tmp_path / "out"), "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0 and json.loads((tmp_path / "c.json").read_text())["sentence_embedding"]["passed"]


def test_a_source_of_links_like_the_hub_cache_exports_regular_files(tiny_bert_dir: Path, tmp_path: Path,
                                                                     cache_dir: Path) -> None:
    """The Hugging Face cache links every file of a snapshot to a blob: read through the links, copy contents."""
    real = _sentence_transformers_folder(tiny_bert_dir, tmp_path / "blobs", {"pooling_mode_mean_tokens": True}, True)
    snap = tmp_path / "snapshot"
    (snap / "1_Pooling").mkdir(parents=True)
    for f in real.rglob("*"):
        if f.is_file():
            (snap / f.relative_to(real)).symlink_to(f)
    api.export(str(snap), tmp_path / "out", light="none", progress=False, **FAST)
    for rel in ("modules.json", "1_Pooling/config.json"):
        assert (tmp_path / "out" / rel).is_file() and not (tmp_path / "out" / rel).is_symlink()
    with ffsplit.load(tmp_path / "out") as model:
        assert model.pooling.normalize


ST_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json")
NOT_UTF8 = b'{"max_seq_length": 64, "name": "\xff\xfe\xc3"}'


@pytest.mark.parametrize("rel", ST_FILES)
def test_a_source_with_a_non_utf8_sentence_transformers_file_is_bad_input(rel: str, tiny_bert_dir: Path,
                                                                          tmp_path: Path) -> None:
    src = _sentence_transformers_folder(tiny_bert_dir, tmp_path / "src", {"pooling_mode_mean_tokens": True}, True)
    (src / rel).write_bytes(NOT_UTF8)
    r = run_cli("export", str(src), "--out", str(tmp_path / "o"), "--light", "none", "--calib-size", "8")
    assert r.returncode == 2 and "not UTF-8" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rel", ST_FILES)
def test_an_artifact_with_a_non_utf8_sentence_transformers_file_is_refused_by_every_reader(
        rel: str, st_artifact: tuple[Path, Path], tmp_path: Path) -> None:
    """Hashes recomputed, so only the readers can catch it: load, check and the Triton text front end."""
    from conftest import forge_manifest

    art = tmp_path / "art"
    shutil.copytree(st_artifact[1], art)
    (art / rel).write_bytes(NOT_UTF8)
    forge_manifest(art, lambda m: None)
    with pytest.raises(UsageError, match="not UTF-8"):
        ffsplit.load(art)
    for argv in (["check", str(art)], ["triton", str(art), "--repo", str(tmp_path / "repo"), "--backend", "text"]):
        r = run_cli(*argv)
        errors = [line for line in r.stderr.splitlines() if line.startswith("ffsplit:")]
        assert r.returncode == 2 and len(errors) == 1 and "not UTF-8" in errors[0], (argv, r.stderr)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
