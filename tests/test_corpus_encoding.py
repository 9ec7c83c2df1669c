"""Sharded, resumable corpus encoding (retrieval/shards.py) and the approximate indexes at a scale
where they matter: 2 processes == 1, an interrupted encode resumes to the same bytes, a plan for
another corpus is refused, IVF recall@100 >= 0.95 against exact search on a 50k-passage corpus."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from invar_rag_lib.integrity import IntegrityError
from invar_rag_lib.paths import HOME_ENV
from invar_rag_lib.retrieval.dense import DenseRetriever, exact_topk
from invar_rag_lib.retrieval.shards import encode_sharded, merge

SCRIPT = Path(__file__).with_name("encode_tiny_script.py")


def clustered(n: int, d: int = 64, centres: int = 500, seed: int = 0) -> np.ndarray:
    """Unit vectors around `centres` random directions: embeddings of real text are clustered."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fake_encoder(vectors: np.ndarray, ids: list[str], calls: list | None = None, fail_after: int | None = None):
    """An 'encoder' that returns the row of each text (texts are 'row:<i>'); it can fail mid-way."""
    def encode(texts):
        if calls is not None:
            calls.append(len(texts))
            if fail_after is not None and len(calls) > fail_after:
                raise KeyboardInterrupt("killed")
        return vectors[[int(t.split(":")[1]) for t in texts]]
    return encode


def texts_of(rows):
    return [f"row:{i}" for i in rows]


def test_an_interrupted_encode_resumes_to_the_same_bytes(tmp_path):
    vectors = clustered(1000)
    ids = [f"p{i}" for i in range(1000)]
    encode_sharded(tmp_path / "a", ids, texts_of, fake_encoder(vectors, ids), "k", 64, 32, log=lambda *a: None)
    whole = merge(tmp_path / "a", log=lambda *a: None)
    calls: list = []
    with pytest.raises(KeyboardInterrupt):
        encode_sharded(tmp_path / "b", ids, texts_of, fake_encoder(vectors, ids, calls, fail_after=11), "k", 64, 32,
                       log=lambda *a: None)
    written = sorted((tmp_path / "b").glob("shard-*.safetensors"))
    assert len(written) == 5  # 11 batches of 32 = 5 whole shards of 64, the 6th cut off
    # a damaged shard is encoded again, a sealed one is kept
    written[2].write_bytes(written[2].read_bytes()[:-4] + b"\0\0\0\0")
    said: list = []
    calls2: list = []
    encode_sharded(tmp_path / "b", ids, texts_of, fake_encoder(vectors, ids, calls2), "k", 64, 32, log=said.append)
    assert "4 of its 16 shards already encoded (resuming)" in said[0]
    assert len(calls2) == 2 * (16 - 4)
    resumed = merge(tmp_path / "b", log=lambda *a: None)
    assert resumed.dtype == np.float16 and resumed.shape == (1000, 64)
    assert np.array_equal(np.asarray(resumed), np.asarray(whole))
    np.testing.assert_allclose(np.asarray(resumed, dtype=np.float32), vectors, atol=1e-3)


def test_an_encoding_planned_for_another_corpus_or_encoder_is_refused(tmp_path):
    vectors = clustered(100)
    ids = [f"p{i}" for i in range(100)]
    encode_sharded(tmp_path, ids, texts_of, fake_encoder(vectors, ids), "k", 32, 16, log=lambda *a: None)
    with pytest.raises(ValueError, match=r"planned with other \['ids'"):
        encode_sharded(tmp_path, ids[::-1], texts_of, fake_encoder(vectors, ids), "k", 32, 16)
    with pytest.raises(ValueError, match=r"planned with other \['key'\]"):
        encode_sharded(tmp_path, ids, texts_of, fake_encoder(vectors, ids), "other", 32, 16)
    (tmp_path / "shard-000001.safetensors").unlink()
    (tmp_path / "reps.npy").unlink(missing_ok=True)
    with pytest.raises(IntegrityError, match="shard-000001"):
        merge(tmp_path)


def test_two_processes_encode_the_same_representations_as_one(tmp_path):
    """The tiny LLM retriever's corpus encoding under `accelerate launch --num_processes 2` (gloo on
    the CPU) writes the same merged bytes as one process."""
    outs = {}
    for n in (1, 2):
        env = {**os.environ, HOME_ENV: str(tmp_path / f"home{n}"), "PYTHONPATH": str(SCRIPT.parent)}
        out = tmp_path / f"reps{n}.npy"
        cmd = ([sys.executable, str(SCRIPT), str(out)] if n == 1 else
               [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--main_process_port", "29517", str(SCRIPT), str(out)])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[n] = np.load(out)
        shards = sorted((tmp_path / f"home{n}" / "data" / "cache" / "corpus-reps").glob("*/shard-*.safetensors"))
        assert len(shards) == 10  # 150 passages in shards of 16
        if n == 2:  # both processes did their share
            assert "process 0/2: 5 of 5 shards" in proc.stdout and "process 1/2: 5 of 5 shards" in proc.stdout
    assert outs[1].shape == (150, 64) and outs[1].dtype == np.float16
    assert np.array_equal(outs[1], outs[2])


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_index_recall_at_100_on_a_50k_corpus(tmp_path, kind):
    """50k passages stored as float16 shards and merged into a memory map; queries near passages;
    the approximate index's recall@100 against exact search is measured by the index itself."""
    pytest.importorskip("faiss")
    n = 50_000
    vectors = clustered(n, d=64, centres=500, seed=1)
    ids = [f"p{i}" for i in range(n)]
    if kind == "ivf":  # the path a real corpus takes: sharded float16 encode, merged memory map
        encode_sharded(tmp_path, ids, texts_of, fake_encoder(vectors, ids), "k", 4096, 1024, log=lambda *a: None)
        emb = merge(tmp_path, log=lambda *a: None)
        assert isinstance(emb, np.memmap) and emb.dtype == np.float16
    else:
        emb = vectors
    rng = np.random.default_rng(2)
    q = vectors[rng.integers(0, n, 200)] + 0.2 * rng.standard_normal((200, 64)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    index = DenseRetriever(ids, emb, index=kind, pq_m=16)
    ranked, _ = index.search_embeddings(q, 100)
    floor = 0.80 if kind == "ivfpq" else 0.95  # PQ codes of 16 bytes trade recall for 16x less memory
    assert index.recall >= floor, f"{kind}: recall@100 {index.recall:.3f}"
    print(f"{kind}: recall@100 {index.recall:.3f}")
    want = exact_topk(q, emb, 100, chunk=7000)  # chunked exact search == one-shot exact search
    one_shot = np.argsort(-(q @ np.asarray(emb, dtype=np.float32).T), axis=1, kind="stable")[:, :100]
    assert np.mean([len(set(a) & set(b)) / 100 for a, b in zip(want, one_shot)]) > 0.999


def test_full_search_reads_the_sharded_encoding_of_its_own_value(built_tiny, tmp_path):
    """After `encode_corpus` (what `invar-rag encode-corpus` runs), `search` ranks from the merged
    float32-stored encoding exactly as from reps computed in the process; another value (other
    adapter weights) does not pick it up."""
    from conftest import full_mode_profile

    from invar_rag_lib.llm.backbone import RETRIEVER, Backbone
    from invar_rag_lib.llm.retriever import LLMRetriever

    _, bench = built_tiny
    profile = full_mode_profile(tmp_path)
    said: list = []
    backbone = Backbone.from_profile(profile, log=said.append)
    stage = LLMRetriever.from_profile(backbone, profile, bench.passages(), weights=backbone.initial[RETRIEVER])
    qs = bench.eval_records("nq")
    in_process = stage.search(qs, 5)
    stage.encode_corpus(shard_size=7, dtype="float32", log=lambda *a: None)
    said.clear()
    assert stage.search(qs, 5) == in_process
    assert any("reading the corpus encoding" in s for s in said)
    other = stage.replace(weights=None, name="llm-zero")
    said.clear()
    other.search(qs, 5)
    assert not any("reading the corpus encoding" in s for s in said)


def test_the_coarse_stage_reads_minilms_sharded_encoding(built_tiny, tmp_path):
    """`invar-rag encode-corpus --variant minilm` (sharded like the LLM's) gives the coarse stage the
    same corpus embeddings and rankings as encoding in process."""
    from conftest import tiny_profile_dict

    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.retrieval.coarse import CoarseStage, encode_corpus_minilm

    _, bench = built_tiny
    values = tiny_profile_dict(tmp_path / "reports")
    values["retriever"] = {"encode_shard_size": 9, "rep_dtype": "float32"}
    profile = profile_from_dict(values)
    said: list = []
    before = CoarseStage(profile, bench, log=said.append)
    questions = [q["question"] for q in bench.eval_records("nq")]
    ranked = before.search("minilm", questions, 10)
    reps = encode_corpus_minilm(profile, bench, log=lambda *a: None)
    np.testing.assert_allclose(np.asarray(reps), before.corpus_emb, atol=1e-5)
    said.clear()
    after = CoarseStage(profile, bench, log=said.append)
    assert any("MiniLM: reading the corpus encoding" in s for s in said)
    assert after.search("minilm", questions, 10) == ranked


def test_a_corpus_too_large_for_one_process_is_refused_with_the_command_to_run(built_tiny, tmp_path, monkeypatch):
    from conftest import full_mode_profile, tiny_profile_dict

    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.llm.backbone import Backbone
    from invar_rag_lib.llm.retriever import LLMRetriever
    from invar_rag_lib.retrieval import coarse, shards

    _, bench = built_tiny
    monkeypatch.setattr(shards, "IN_PROCESS_MAX", 10)
    monkeypatch.setattr(coarse, "IN_PROCESS_MAX", 10)
    profile = profile_from_dict(tiny_profile_dict(tmp_path / "reports"))
    with pytest.raises(RuntimeError, match="encode-corpus --profile tiny --variant minilm"):
        coarse.CoarseStage(profile, bench, log=lambda *a: None)
    profile = full_mode_profile(tmp_path, {"lora_layers": 2})
    stage = LLMRetriever.from_profile(Backbone.from_profile(profile, log=lambda *a: None), profile, bench.passages(),
                                      name="invar")
    with pytest.raises(RuntimeError, match="encode-corpus --variant invar"):
        stage.search(bench.eval_records("nq"), 5)


def test_a_value_builds_its_search_index_once(built_tiny, tmp_path, monkeypatch):
    """Searching once per dataset and per rewrite must not re-train an approximate index of millions
    of passages each time: a value keeps the index its first search built (and logs its recall once)."""
    from conftest import full_mode_profile

    from invar_rag_lib.llm.backbone import Backbone
    from invar_rag_lib.llm.retriever import LLMRetriever
    from invar_rag_lib.retrieval import dense

    _, bench = built_tiny
    profile = full_mode_profile(tmp_path, {"index": "hnsw"})
    built = []
    real = dense.DenseRetriever.__init__

    def counting(self, *a, **k):
        built.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(dense.DenseRetriever, "__init__", counting)
    said: list = []
    stage = LLMRetriever.from_profile(Backbone.from_profile(profile, log=said.append), profile, bench.passages(),
                                      weights=None, name="llm-zero")
    runs = [stage.search(bench.eval_records(ds), 3) for ds in ("nq", "triviaqa", "nq")]
    assert len(built) == 1 and runs[0] == runs[2]
    assert sum("recall@" in s for s in said) == 1
    assert len(stage.replace(name="other")._search_index(None, False).ids) == len(bench.passages()) and len(built) == 2
