"""Nothing silent: every damaged artifact is detected (and rebuilt, or refused), every bad input
gets one clear line naming the file, field or path. One test per case of the reliability issue."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from invar_rag_lib import reproduce
from invar_rag_lib.cli import main
from invar_rag_lib.config import ConfigError, load_profile
from invar_rag_lib.integrity import (CheckpointError, IntegrityError, load_or_none, read_sealed,
                                     read_sealed_json, seal_dir, write_sealed_json)

from test_cli import no_execution, write_notebook  # noqa: F401 - a fixture


def _same_size_other_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


# ----------------------------------------------------------------------------- the mechanism
@pytest.mark.parametrize("damage", [_same_size_other_bytes, _truncate, lambda p: Path(str(p) + ".sha256").unlink()])
def test_a_sealed_file_that_changed_is_reported_with_its_path(tmp_path, damage):
    path = write_sealed_json(tmp_path / "cache.json", {"a": 1, "b": list(range(50))})
    assert read_sealed_json(path) == {"a": 1, "b": list(range(50))}
    damage(path)
    with pytest.raises(IntegrityError, match=str(path)):
        read_sealed(path)
    messages = []
    assert load_or_none(path, read_sealed_json, "test", messages.append) is None
    assert str(path) in messages[0] and "rebuilding" in messages[0] and not path.exists()


def _sealed_bm25_folder(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "w.bin").write_bytes(b"\x00" * 100)
    for name in ("settings.json", "ids.json", "params.index.json"):
        (d / name).write_text("{}")
    seal_dir(d, "bm25")
    return d


def test_a_sealed_folder_names_the_damaged_file(tmp_path):
    from invar_rag_lib.integrity import check_dir

    d = _sealed_bm25_folder(tmp_path)
    check_dir(d, "bm25")
    _same_size_other_bytes(d / "sub" / "w.bin")
    with pytest.raises(IntegrityError, match="w.bin"):
        check_dir(d, "bm25")


@pytest.mark.parametrize("case", ["deleted", "emptied", "cut", "random bytes", "garbled line", "old format",
                                  "other kind", "unlisted file", "required file unlisted"])
def test_a_folder_manifest_cannot_lie(tmp_path, case):
    """Issue 25: a folder is valid only if its manifest is present, parses, is sealed, is of the folder's
    kind and lists every file the folder holds and its kind requires."""
    from invar_rag_lib.integrity import MANIFEST, check_dir

    d = _sealed_bm25_folder(tmp_path)
    m = d / MANIFEST
    lines = m.read_text().splitlines()
    if case == "deleted":
        m.unlink()
    elif case == "emptied":
        m.write_text("")
    elif case == "cut":
        m.write_text("\n".join(lines[:-1]) + "\n")
    elif case == "random bytes":
        m.write_bytes(bytes(range(256)) * 4)
    elif case == "garbled line":
        m.write_text("\n".join([lines[0], "not a manifest line", *lines[2:]]) + "\n")
    elif case == "old format":
        m.write_text("\n".join(lines[1:]) + "\n")  # the pre-seal format: digests without a header
    elif case == "other kind":
        m.write_text(m.read_text().replace("kind=bm25", "kind=model"))
    elif case == "unlisted file":
        (d / "extra.bin").write_bytes(b"x")
    elif case == "required file unlisted":
        (d / "ids.json").unlink()
        seal_dir(d, "bm25")  # a properly sealed folder that lacks a file its kind needs
    with pytest.raises(IntegrityError) as info:
        check_dir(d, "bm25")
    assert str(d) in str(info.value)  # names the folder (or the file in it)


def test_a_forged_empty_manifest_still_fails_on_the_files_it_hides(tmp_path):
    """Even a correctly re-sealed empty manifest is refused: the folder's files are not listed."""
    from invar_rag_lib.integrity import MANIFEST, _body_digest, check_dir

    d = _sealed_bm25_folder(tmp_path)
    (d / MANIFEST).write_text(f"# invar-rag manifest v1 kind=bm25 files=0 sha256={_body_digest([])}\n")
    with pytest.raises(IntegrityError, match="does not list it"):
        check_dir(d, "bm25")


# ----------------------------------------------------------------------------- each cache kind
def test_embeddings_replaced_by_same_shaped_wrong_values_are_reencoded(tmp_path):
    from invar_rag_lib.retrieval.dense import EmbeddingCache

    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.stack([np.full(4, float(len(t)), dtype=np.float32) for t in texts])

    cache = EmbeddingCache(tmp_path, "fp")
    good = cache.get_or_encode(["a", "bb", "ccc"], encode, log=lambda *a: None)
    with np.load(cache.path) as z:  # the attack of the issue: same keys, same shape, other values
        keys, emb = z["keys"], z["emb"]
    import io
    buf = io.BytesIO()
    np.savez(buf, keys=keys, emb=np.zeros_like(emb))
    cache.path.write_bytes(buf.getvalue())
    messages = []
    again = EmbeddingCache(tmp_path, "fp")
    assert again.matrix is None  # not loaded
    out = again.get_or_encode(["a", "bb", "ccc"], encode, log=messages.append)
    np.testing.assert_array_equal(out, good)
    assert calls == [3, 3]


def test_truncated_embeddings_are_reported_and_reencoded(tmp_path, capsys):
    from invar_rag_lib.retrieval.dense import EmbeddingCache

    cache = EmbeddingCache(tmp_path, "fp")
    cache.get_or_encode(["a", "bb"], lambda t: np.ones((len(t), 2), np.float32), log=lambda *a: None)
    _truncate(cache.path)
    assert EmbeddingCache(tmp_path, "fp").matrix is None
    assert f"embeddings cache {cache.path} is damaged" in capsys.readouterr().out


def test_damaged_trunk_shard_is_dropped_and_recomputed(tmp_path):
    from invar_rag_lib.llm.trunk_cache import TrunkCache

    def compute(texts):
        return [torch.full((len(t), 3), float(len(t))) for t in texts]

    TrunkCache(tmp_path, "fp").get_or_compute(["ab", "cde"], 8, compute)
    shard = next((tmp_path / "fp").glob("shard-*.safetensors"))
    _same_size_other_bytes(shard)
    messages = []
    cache = TrunkCache(tmp_path, "fp", log=messages.append)
    states = cache.get_or_compute(["ab", "cde"], 8, compute, log=messages.append)
    assert torch.equal(states[1], torch.full((3, 3), 3.0))
    assert any("trunk states shard" in m and str(shard) in m for m in messages)
    assert any("computing 2 new texts" in m for m in messages)


def test_damaged_bm25_index_is_rebuilt(tmp_path):
    from invar_rag_lib.retrieval.bm25 import BM25Retriever

    settings = {"k1": 0.9, "b": 0.4, "method": "lucene", "stopwords": "en", "stemmer": None}
    ids, texts = ["p1", "p2"], ["the river nile flows north", "paris is the capital of france"]
    BM25Retriever.build_or_load(ids, texts, settings, tmp_path, log=lambda *a: None)
    index = next(tmp_path.glob("bm25-*"))
    victim = max((p for p in index.iterdir() if p.name != "MANIFEST.sha256"), key=lambda p: p.stat().st_size)
    _same_size_other_bytes(victim)
    messages = []
    retriever = BM25Retriever.build_or_load(ids, texts, settings, tmp_path, log=messages.append)
    assert any("BM25 index cache" in m and "damaged" in m for m in messages)
    assert retriever.search(["capital of france"], 1)[0] == [["p2"]]


def test_damaged_benchmark_names_the_file_and_how_to_rebuild(built_tiny, tmp_path):
    import shutil

    from invar_rag_lib.data import load_benchmark

    copy = tmp_path / "bench"
    shutil.copytree(built_tiny[1].path, copy)
    arrow = next(copy.rglob("*.arrow"))
    _same_size_other_bytes(arrow)
    with pytest.raises(IntegrityError, match=rf"{arrow.name}.*--force"):
        load_benchmark("tiny", copy)


def test_broken_baseline_run_is_refused_with_its_path(isolated_home):
    from invar_rag_lib.baselines import load_run
    from invar_rag_lib.paths import runs_dir

    path = write_sealed_json(runs_dir("tiny") / "bm25.json", {"runs": {}})
    _same_size_other_bytes(path)
    with pytest.raises(IntegrityError, match=rf"{path}.*notebook 01"):
        load_run("tiny", "bm25")


def test_broken_results_json_names_its_path(tiny_profile):
    from invar_rag_lib.report.writer import Reports

    reports = Reports(tiny_profile)
    path = reports.results_path("04_retriever/retrieval")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"rows": [1, 2')
    with pytest.raises(IntegrityError, match=rf"{path}: no digest.*rerun notebook 04"):
        reports.read_results("04_retriever/retrieval")


def test_results_are_sealed_an_edited_number_is_refused_and_a_wrong_shape_named(tiny_profile, capsys):
    """A results file is sealed like a cache: one whose numbers were edited after the run is refused
    (never re-tabled), and a sealed file of the wrong shape is named with its path, in one line."""
    from invar_rag_lib.cli import main
    from invar_rag_lib.report.artifacts import build
    from invar_rag_lib.report.writer import Reports

    reports = Reports(tiny_profile)
    path = reports.write_results("06_generation/generation", {"rows": {}, "k": 3})
    assert reports.read_results("06_generation/generation")["k"] == 3
    path.write_text(path.read_text().replace('"k": 3', '"k": 4'))
    with pytest.raises(IntegrityError, match=rf"{path}: content does not match.*rerun notebook 06"):
        reports.read_results("06_generation/generation")
    reports.write_results("06_generation/generation", {})  # sealed, but not what notebook 06 writes
    with pytest.raises(ValueError, match=r"06_generation/generation.json: not the shape 06_generation reads"):
        build(reports, "06_generation")


# ----------------------------------------------------------------------------- checkpoints
def _tiny_checkpoint(out_dir: Path, config: dict):
    from invar_rag_lib.llm.weights import tiny_llama
    from invar_rag_lib.llm.encoder import add_retriever_adapter
    from invar_rag_lib.training import checkpoint_path, save_checkpoint

    model = add_retriever_adapter(tiny_llama(seed=0), 2, 4, 8, 0.0, ["q_proj", "v_proj"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    save_checkpoint(checkpoint_path(out_dir), model, opt, config["total_steps"], config, [], "retriever")
    return model


def test_swapped_finished_adapter_is_refused_not_reused(tmp_path):
    from invar_rag_lib.training import checkpoint_path, finished_checkpoint

    config = {"total_steps": 3, "lr": 0.1}
    _tiny_checkpoint(tmp_path, config)
    assert finished_checkpoint(tmp_path, config)["step"] == 3
    _same_size_other_bytes(checkpoint_path(tmp_path) / "adapter.safetensors")
    with pytest.raises(CheckpointError, match="adapter.safetensors.*delete that folder"):
        finished_checkpoint(tmp_path, config)


def test_leftover_checkpoint_writes_are_cleaned(tmp_path):
    from invar_rag_lib.training import clean_leftovers

    (tmp_path / ".checkpoint-latest.tmp-abc123").mkdir()
    messages = []
    assert clean_leftovers(tmp_path, messages.append) == 1
    assert not list(tmp_path.glob(".checkpoint-latest.tmp-*")) and "interrupted" in messages[0]


# ----------------------------------------------------------------------------- bad profile values
@pytest.mark.parametrize("field,value", [
    ("stage1.checkpoint_every", 0), ("stage1.epochs", 0), ("stage1.lr", 0.0), ("stage1.batch_size", 0),
    ("retriever.tau_r", 0.0), ("retriever.lora_r", 0), ("generator.checkpoint_every", 0),
    ("generator.lr", -1.0), ("retrieval.bootstrap_resamples", 0)])
def test_impossible_profile_values_are_refused_naming_the_field(field, value):
    section, key = field.split(".")
    with pytest.raises(ConfigError, match=rf"{section}.*{key}"):
        load_profile("smoke", overrides={field: value})


# ----------------------------------------------------------------------------- the command line
def test_profile_parameter_contradicting_profile_is_an_error(capsys, isolated_home, no_execution):  # noqa: F811
    write_notebook(isolated_home / "notebooks" / "00_x.ipynb", 'profile = "smoke"', "x = 1")
    assert main(["reproduce", "--profile", "smoke", "--only", "00", "-p", "profile=cpu"]) == 2
    err = capsys.readouterr().err
    assert "-p profile='cpu' contradicts --profile 'smoke'" in err and not no_execution


def test_notebook_parameter_of_the_wrong_type_is_refused_before_running(tmp_path, capsys, isolated_home,
                                                                       no_execution):  # noqa: F811
    write_notebook(isolated_home / "notebooks" / "00_x.ipynb", 'profile = "smoke"\nn_examples = 4', "x = 1")
    assert main(["reproduce", "--profile", "smoke", "-p", "n_examples=abc"]) == 2
    err = capsys.readouterr().err
    assert "00_x.ipynb: parameter n_examples must be int" in err and "'abc'" in err and not no_execution


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(capsys):
    assert main(["report", "--profile", "no-such-profile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown profile")
    with pytest.raises(ConfigError):
        main(["--debug", "report", "--profile", "no-such-profile"])


def test_second_run_of_a_profile_is_refused_while_one_holds_the_lock(isolated_home):
    with reproduce.RunLock("smoke"):
        with pytest.raises(RuntimeError, match=rf"in progress \(pid {os.getpid()}"):
            with reproduce.RunLock("smoke"):
                pass
    with reproduce.RunLock("smoke"):  # released: the next run may start
        pass


def test_unwritable_reports_folder_is_named(tmp_path, isolated_home, monkeypatch, no_execution):  # noqa: F811
    write_notebook(isolated_home / "notebooks" / "00_x.ipynb", 'profile = "smoke"', "x = 1")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "p"\nreports_dir = "{blocker}/reports"\n')
    with pytest.raises(PermissionError, match=rf"cannot write the executed notebooks to {blocker}"):
        reproduce.run_notebooks(str(profile), log=lambda *a: None)


def test_leftovers_of_an_interrupted_reproduce_are_removed(tmp_path):
    out = tmp_path / "executed"
    out.mkdir()
    (out / ".running.00_x.ipynb").write_text("{}")
    (out / "00_x.failed.ipynb").write_text("{}")
    (out / "01_y.failed.ipynb").write_text("{}")
    reproduce.clean_leftovers(out, [Path("00_x.ipynb")], log=lambda *a: None)
    assert sorted(p.name for p in out.iterdir()) == ["01_y.failed.ipynb"]


def test_the_suite_itself_is_offline():
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert os.environ.get(var) == "1"
    import huggingface_hub.constants as c

    assert c.HF_HUB_OFFLINE


# ----------------------------------------------------------------------------- one line naming the path (issue 25)
def _tiny_training(out_dir, resume=False, log=print):
    from invar_rag_lib.llm.encoder import add_retriever_adapter
    from invar_rag_lib.llm.weights import tiny_llama
    from invar_rag_lib.training import Schedule, train_adapter

    model = add_retriever_adapter(tiny_llama(seed=0), 2, 4, 8, 0.0, ["q_proj", "v_proj"])
    ids = torch.arange(8).reshape(2, 4) % 50

    def batch_loss(module, idx, micro):
        loss = module(input_ids=ids[: len(idx)]).logits.float().pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    schedule = Schedule(lr=1e-3, weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0, batch_size=2, grad_accum=1,
                        epochs=1, checkpoint_every=10)
    return train_adapter(model, model, "retriever", 4, batch_loss, schedule, 0, out_dir, {"x": 1}, resume=resume,
                         log=log)


def test_resume_without_a_checkpoint_says_it_starts_at_step_0(tmp_path):
    said = []
    result = _tiny_training(tmp_path / "run", resume=True, log=said.append)
    assert len(result["history"]) == 2
    assert any("--resume: no checkpoint in" in s and "starting at step 0" in s for s in said)


def test_a_second_training_into_the_same_folder_is_refused(tmp_path):
    from invar_rag_lib.io_utils import ExclusiveLock

    with ExclusiveLock(tmp_path / "run" / ".training.lock", "held by {pid}"):
        with pytest.raises(RuntimeError, match=rf"another training \(pid {os.getpid()}\) is writing"):
            _tiny_training(tmp_path / "run")
    assert len(_tiny_training(tmp_path / "run")["history"]) == 2  # released: it trains


def test_disk_full_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from invar_rag_lib.io_utils import DiskFull, atomic_write_text

    path = tmp_path / "cache" / "x.json"
    atomic_write_text(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull, match=rf"no space left on the disk while writing {path} \(\d+ MB free\)"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_disk_full_during_a_checkpoint_names_the_checkpoint(tmp_path, monkeypatch):
    import errno

    from invar_rag_lib import training
    from invar_rag_lib.io_utils import DiskFull

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training, "seal_dir", full)
    with pytest.raises(DiskFull, match=r"checkpoint-latest \(\d+ MB free\)"):
        _tiny_checkpoint(tmp_path, {"total_steps": 1})
    assert not list(tmp_path.glob(".checkpoint-latest.tmp-*"))  # the half write is gone


def test_an_unreadable_timings_file_is_named_and_set_aside(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text('{"00_data": {"wall_s": 1')
    said = []
    assert reproduce.read_timings(path, said.append) == {}
    assert str(path) in said[0] and "ignoring it" in said[0]


def test_a_damaged_notebook_is_named(capsys, isolated_home, no_execution):  # noqa: F811
    nb = isolated_home / "notebooks" / "00_x.ipynb"
    nb.parent.mkdir(parents=True, exist_ok=True)
    nb.write_text("{ not json")
    assert main(["reproduce", "--profile", "smoke", "--only", "00"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "00_x.ipynb: not a readable notebook" in err[0] and "git checkout" in err[0]


def test_a_relative_profile_path_is_read_from_where_it_was_typed(tmp_path, monkeypatch):
    from invar_rag_lib import cli

    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    seen = []
    monkeypatch.setattr(cli, "_run", lambda args: seen.append(args.profile) or 0)
    assert main(["report", "--profile", "../mine.toml"]) == 0
    assert seen == [str(tmp_path / "mine.toml")]
