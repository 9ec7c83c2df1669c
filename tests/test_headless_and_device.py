"""The pieces a GPU machine without papermill or faiss runs on (benchmarks/device_check.sh):
the headless notebook runner, the device rule, the torch exact search, full-corpus LLM search."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from invar_rag_lib import headless
from invar_rag_lib.llm.device import compute_device
from invar_rag_lib.llm.trunk_cache import TrunkCache
from invar_rag_lib.reproduce import NotebookFailed
from invar_rag_lib.retrieval.dense import DenseRetriever


def _notebook(path, *cells):
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": tags}, "source": src, "outputs": []}
                    for tags, src in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_headless_overrides_parameters_and_prints_the_last_expression(tmp_path, capsys):
    nb = _notebook(tmp_path / "00_t.ipynb", (["parameters"], "x = 1\nname = 'a'"),
                   ([], "y = x * 2\nprint('y is', y)"), ([], "name + '!'"), ([], "None"))
    headless.run_notebook(nb, {"x": 5})
    assert capsys.readouterr().out.splitlines() == ["y is 10", "a!"]


def test_headless_refuses_an_undeclared_parameter(tmp_path):
    nb = _notebook(tmp_path / "00_t.ipynb", (["parameters"], "x = 1"), ([], "x"))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['profil'\]; its parameters are \['x'\]"):
        headless.run_notebook(nb, {"profil": "cpu"})


def test_headless_names_the_failing_cell(tmp_path):
    nb = _notebook(tmp_path / "03_t.ipynb", (["parameters"], "x = 1"), ([], "z = 2"), ([], "1 / (x - 1)"))
    with pytest.raises(NotebookFailed, match=r"03_t.ipynb failed in code cell #3 \(starting '1 / \(x - 1\)'\): "
                                             r"ZeroDivisionError"):
        headless.run_notebook(nb, {})


def test_headless_points_ipython_imports_at_its_stand_ins():
    src = "import pandas as pd\nfrom IPython.display import Markdown, display\n"
    out = headless.without_ipython(src)
    assert "IPython" not in out and "from invar_rag_lib.report.display import Markdown, display" in out
    ns: dict = {}
    exec(out, ns)
    assert repr(ns["Markdown"]("**x**")) == "**x**"


def test_headless_needs_a_fixed_hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "random")
    with pytest.raises(RuntimeError, match="PYTHONHASHSEED=0"):
        headless.run_headless("smoke")


def test_device_rule(monkeypatch):
    monkeypatch.setenv("INVAR_RAG_DEVICE", "cpu")
    assert compute_device().type == "cpu"
    monkeypatch.setenv("INVAR_RAG_DEVICE", "tpu")
    with pytest.raises(ValueError, match="INVAR_RAG_DEVICE='tpu': use auto, cpu or cuda"):
        compute_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("INVAR_RAG_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="torch sees no GPU"):
            compute_device()
        monkeypatch.delenv("INVAR_RAG_DEVICE")
        assert compute_device().type == "cpu"


def test_torch_search_equals_faiss_search():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(300, 24)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.normal(size=(37, 24)).astype(np.float32)
    ids = [f"p{i}" for i in range(300)]
    DenseRetriever.QUERY_CHUNK = 10  # several chunks
    a_ids, a_scores = DenseRetriever(ids, emb, backend="faiss").search_embeddings(queries, 20)
    b_ids, b_scores = DenseRetriever(ids, torch.from_numpy(emb), backend="torch").search_embeddings(
        torch.from_numpy(queries), 20)
    assert a_ids == b_ids
    np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown search backend 'annoy'"):
        DenseRetriever(ids, emb, backend="annoy")


def test_in_memory_trunk_cache_writes_nothing(tmp_path):
    cache = TrunkCache(tmp_path / "trunk", "fp", persist=False)
    out = cache.get_or_compute(["a", "bb"], 8, lambda texts: [torch.ones(len(t), 3) for t in texts])
    assert [tuple(s.shape) for s in out] == [(1, 3), (2, 3)]
    assert not (tmp_path / "trunk").exists()
    assert len(cache) == 2


def test_full_search_equals_a_rerank_of_the_whole_corpus(built_tiny, tmp_path):
    """`LLMRetriever.search` (the gpu profile's retrieval) ranks as `rerank` over every passage."""
    from conftest import full_mode_profile

    from invar_rag_lib.llm.backbone import RETRIEVER, Backbone
    from invar_rag_lib.llm.retriever import LLMRetriever

    _, bench = built_tiny
    profile = full_mode_profile(tmp_path)
    backbone = Backbone.from_profile(profile, log=lambda *a: None)
    stage = LLMRetriever.from_profile(backbone, profile, bench.passages(), weights=backbone.initial[RETRIEVER])
    qs = bench.eval_records("nq")
    everything = {q["id"]: list(stage.passages) for q in qs}
    reranked = stage.rerank(qs, everything, len(stage.passages))
    searched = stage.search(qs, 5)
    assert searched == {qid: r[:5] for qid, r in reranked.items()}


def test_stage2_retriever_run_in_full_mode_searches_the_whole_corpus(built_tiny, tmp_path):
    """The gpu profile's stage 2: the frozen retriever ranks every corpus passage (no MiniLM run
    needed), and keeps k + margin ids per question for every split."""
    from conftest import tiny_profile_dict

    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.llm.retriever import LLMRetriever
    from invar_rag_lib.stage1.runs import RUN_MARGIN
    from invar_rag_lib.stage2.experiment import GenerationStage

    _, bench = built_tiny
    values = tiny_profile_dict(tmp_path / "reports")
    values["retriever"] = {"backbone": "tiny-random", "max_len": 24, "query_max_len": 16, "lora_layers": 0,
                           "mode": "full"}
    values["stage1"] = {"train_questions": 8, "val_questions": 2, "coarse_candidates": 6, "group_size": 3,
                        "env_questions": 4, "env_group_size": 2, "env_batch_size": 2, "rewrite_method": "rules",
                        "windows": [12], "epochs": 1, "batch_size": 2, "warmup_steps": 1}
    values["generator"] = {"k": 2, "train_questions": 4, "n_shot": 1, "passage_tokens": 8,
                           "retriever_variant": "llm-zero"}
    profile = profile_from_dict(values)
    gs = GenerationStage(profile, bench, log=lambda *a: None)
    run = gs.retriever_run()
    assert run["mode"].startswith("full") and run["depth"] == len(gs.passages)
    keep = min(2 + RUN_MARGIN, len(gs.passages))
    assert set(run["runs"]) == {*bench.eval, "train", "val"}
    assert len(run["runs"]["val"]) == len(gs.val_questions)  # none in this tiny split: an empty run, not an error
    for split, by_q in run["runs"].items():
        assert by_q or split == "val"
        assert all(len(ids) == keep and len(set(ids)) == keep for ids in by_q.values())
    qs = bench.eval_records("nq")
    assert run["runs"]["nq"] == LLMRetriever.from_profile(gs.backbone, profile, gs.passages).search(qs, keep)
    assert not gs.retriever_run()["made_now"]  # the second time, the saved run is read


def test_device_smoke_profile_is_smoke_with_the_gpu_code_path():
    """benchmarks/device_smoke.toml is a copy of smoke.toml (TOML has no include): it may differ
    only where the gpu profile's code path and its own name and reports folder need it."""
    from pathlib import Path

    from invar_rag_lib.config import load_profile

    smoke = load_profile("smoke").to_dict()
    device = load_profile(Path(__file__).resolve().parents[1] / "benchmarks" / "device_smoke.toml").to_dict()
    assert (device["retriever"]["lora_layers"], device["retriever"]["mode"]) == (0, "full")
    assert device["generator"]["lora_layers"] == 0
    for d in (smoke, device):
        del d["name"], d["reports_dir"], d["retriever"]["lora_layers"], d["retriever"]["mode"]
        del d["generator"]["lora_layers"]
    assert device == smoke
