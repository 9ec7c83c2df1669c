"""BM25, MiniLM dense retrieval, the embedding cache and the evaluation harness."""
from __future__ import annotations

import numpy as np
import pytest

from invar_rag_lib.retrieval.bm25 import BM25Retriever
from invar_rag_lib.retrieval.dense import DenseRetriever, EmbeddingCache
from invar_rag_lib.retrieval.harness import evaluate_run, first_hit_ranks, paired_pvalue_at_k

SETTINGS = {"k1": 0.9, "b": 0.4, "method": "lucene", "stemmer": "english", "stopwords": "en"}
IDS = ["d-dog", "d-cat", "d-stock", "d-rome"]
TEXTS = [
    "The dog runs quickly through the park every morning",
    "A cat sleeps on the warm sofa all afternoon",
    "Stock prices fell sharply on Monday after the announcement",
    "Rome is the capital city of Italy and home of the Colosseum",
]
QUIET = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def bm25():
    return BM25Retriever.build(IDS, TEXTS, SETTINGS)


# ----------------------------------------------------------------------------- BM25
def test_bm25_stemming_matches_inflections(bm25):
    ranked, scores = bm25.search(["running"], k=4)
    assert ranked[0][0] == "d-dog"
    assert scores[0][0] > 0 and np.all(scores[0][1:] == 0)
    ranked, _ = bm25.search(["sleeping cats", "stocks falling"], k=1)
    assert ranked == [["d-cat"], ["d-stock"]]


def test_bm25_without_stemmer_does_not_match_inflections():
    plain = BM25Retriever.build(IDS, TEXTS, {**SETTINGS, "stemmer": None})
    _, scores = plain.search(["running"], k=4)
    assert np.all(scores == 0)


def test_bm25_stop_words_alone_score_zero(bm25):
    _, scores = bm25.search(["the and of a on"], k=4)
    assert scores.shape == (1, 4)
    assert np.all(scores == 0)
    _, unseen = bm25.search(["zyzzyva quux"], k=4)
    assert np.all(unseen == 0)


def test_bm25_k_is_capped_at_corpus_size(bm25):
    ranked, scores = bm25.search(["capital of Italy"], k=100)
    assert len(ranked[0]) == len(IDS) and scores.shape == (1, len(IDS))
    assert ranked[0][0] == "d-rome"
    assert sorted(ranked[0]) == sorted(IDS)
    assert list(scores[0]) == sorted(scores[0], reverse=True)


def test_bm25_save_load_gives_identical_results(bm25, tmp_path):
    queries = ["running dog", "capital of Italy", "warm sofa", "the"]
    before_ids, before_scores = bm25.search(queries, k=3)
    bm25.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "ids.json").is_file()
    loaded = BM25Retriever.load(tmp_path / "idx")
    assert loaded.ids == IDS and loaded.settings == SETTINGS
    after_ids, after_scores = loaded.search(queries, k=3)
    assert after_ids == before_ids
    np.testing.assert_array_equal(after_scores, before_scores)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_bm25_build_or_load_reuses_the_index(tmp_path, monkeypatch):
    first = BM25Retriever.build_or_load(IDS, TEXTS, SETTINGS, tmp_path, log=QUIET)
    assert len(list(tmp_path.glob("bm25-*"))) == 1

    def no_build(*a, **k):
        raise AssertionError("re-indexed although an index exists")

    monkeypatch.setattr(BM25Retriever, "build", classmethod(no_build))
    messages = []
    second = BM25Retriever.build_or_load(IDS, TEXTS, SETTINGS, tmp_path, log=messages.append)
    assert any("loading index" in m for m in messages)
    assert second.search(["running"], 4)[0] == first.search(["running"], 4)[0]
    # A different corpus or different settings must not reuse it.
    with pytest.raises(AssertionError, match="re-indexed"):
        BM25Retriever.build_or_load(IDS, TEXTS[:-1] + ["changed"], SETTINGS, tmp_path, log=QUIET)
    with pytest.raises(AssertionError, match="re-indexed"):
        BM25Retriever.build_or_load(IDS, TEXTS, {**SETTINGS, "k1": 1.2}, tmp_path, log=QUIET)


def test_bm25_incomplete_index_is_rebuilt(tmp_path):
    key = BM25Retriever.index_key(IDS, TEXTS, SETTINGS)
    (tmp_path / f"bm25-{key}").mkdir()  # a crash before ids.json was written
    r = BM25Retriever.build_or_load(IDS, TEXTS, SETTINGS, tmp_path, log=QUIET)
    assert r.search(["running"], 1)[0] == [["d-dog"]]
    assert (tmp_path / f"bm25-{key}" / "ids.json").is_file()


def test_bm25_index_key_depends_on_content_settings_and_ids():
    k = BM25Retriever.index_key(IDS, TEXTS, SETTINGS)
    assert k == BM25Retriever.index_key(list(IDS), list(TEXTS), dict(reversed(SETTINGS.items())))
    assert k != BM25Retriever.index_key(IDS, TEXTS, {**SETTINGS, "b": 0.75})
    assert k != BM25Retriever.index_key(IDS[::-1], TEXTS, SETTINGS)
    assert k != BM25Retriever.index_key(IDS, TEXTS[::-1], SETTINGS)


def test_bm25_keeps_jax_off_the_gpu_and_never_uses_it(tmp_path):
    """bm25s imports JAX when it is installed; JAX on a GPU takes 75% of its memory (the OOM of the
    first gpu-profile run). A stand-in `jax` records the platform it was imported under and fails
    if bm25s ever asks it for a top-k."""
    import json
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "jax"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(tmp_path / 'seen.json')!r}).write_text("
        "__import__('json').dumps({k: os.environ.get(k) for k in "
        "('JAX_PLATFORMS', 'XLA_PYTHON_CLIENT_PREALLOCATE')}))\n")
    (fake / "lax.py").write_text(
        "import numpy as np\n"
        "CALLS = 0\n"
        "def top_k(x, k):\n"
        "    global CALLS\n"
        "    CALLS += 1\n"
        "    if CALLS > 1: raise RuntimeError('bm25s used the jax top-k')\n"
        "    x = np.asarray(x); i = np.argsort(-x)[:k]; return x[i], i\n")
    code = ("from invar_rag_lib.retrieval.bm25 import BM25Retriever\n"
            f"r = BM25Retriever.build({IDS!r}, {TEXTS!r}, {SETTINGS!r})\n"
            "print(r.search(['running'], 2)[0])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), os.getcwd(), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "d-dog" in out.stdout
    seen = json.loads((tmp_path / "seen.json").read_text())  # bm25s did import the stand-in
    assert seen == {"JAX_PLATFORMS": "cpu", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


# ----------------------------------------------------------------------------- MiniLM
def test_minilm_paraphrase_ranks_its_passage_first(minilm):
    passages = ["A small kitten was napping on the couch in the living room.",
                "The central bank raised interest rates by half a percentage point.",
                "Heavy rain caused flooding in several coastal towns.",
                "The striker scored twice in the second half of the match."]
    emb = minilm.encode(passages)
    assert emb.shape == (4, minilm.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    dense = DenseRetriever(["cat", "bank", "rain", "football"], emb)
    queries = ["a young cat sleeping on a sofa", "monetary policy tightening by the central bank",
               "storm water inundated seaside villages", "a footballer netted two goals"]
    ranked, scores = dense.search_embeddings(minilm.encode(queries), k=10)
    assert [r[0] for r in ranked] == ["cat", "bank", "rain", "football"]
    assert all(len(r) == 4 for r in ranked)  # k capped at corpus size
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_minilm_fingerprint_depends_on_settings(minilm):
    from invar_rag_lib.retrieval.dense import MiniLMEncoder

    assert len(minilm.fingerprint) == 16
    assert MiniLMEncoder(max_seq_length=128).fingerprint != minilm.fingerprint


# ----------------------------------------------------------------------------- EmbeddingCache
class FakeEncoder:
    """Deterministic 3-d 'embeddings' and a log of what was asked."""

    def __init__(self):
        self.calls: list[list[str]] = []

    @staticmethod
    def vec(text: str) -> np.ndarray:
        return np.array([len(text), sum(map(ord, text)) % 97, text.count("a")], dtype=np.float32)

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.stack([self.vec(t) for t in texts])


def test_cache_encodes_only_missing_texts_and_keeps_order(tmp_path):
    enc = FakeEncoder()
    cache = EmbeddingCache(tmp_path, "fp")
    out = cache.get_or_encode(["alpha", "beta", "alpha", "gamma"], enc, log=QUIET)
    assert enc.calls == [["alpha", "beta", "gamma"]]  # duplicates encoded once
    np.testing.assert_array_equal(out, np.stack([enc.vec(t) for t in ["alpha", "beta", "alpha", "gamma"]]))
    assert (tmp_path / "fp.npz").is_file()

    again = cache.get_or_encode(["gamma", "alpha"], enc, log=QUIET)
    assert len(enc.calls) == 1  # all cached: the encoder is not called
    np.testing.assert_array_equal(again, np.stack([enc.vec("gamma"), enc.vec("alpha")]))

    mixed = cache.get_or_encode(["delta", "beta", "delta", "epsilon"], enc, log=QUIET)
    assert enc.calls[1] == ["delta", "epsilon"]
    np.testing.assert_array_equal(mixed, np.stack([enc.vec(t) for t in ["delta", "beta", "delta", "epsilon"]]))


def test_cache_reloads_from_disk(tmp_path):
    enc = FakeEncoder()
    texts = ["one", "two", "three"]
    EmbeddingCache(tmp_path, "fp").get_or_encode(texts, enc, log=QUIET)
    EmbeddingCache(tmp_path, "fp").get_or_encode(["four"], enc, log=QUIET)
    fresh = EmbeddingCache(tmp_path, "fp")
    enc2 = FakeEncoder()
    out = fresh.get_or_encode(["four", "two", "one", "three", "two"], enc2, log=QUIET)
    assert enc2.calls == []
    np.testing.assert_array_equal(out, np.stack([FakeEncoder.vec(t) for t in ["four", "two", "one", "three", "two"]]))
    # Another fingerprint (another model or setting) has its own cache.
    other = EmbeddingCache(tmp_path, "fp2")
    other.get_or_encode(["one"], enc2, log=QUIET)
    assert enc2.calls == [["one"]]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cache_with_the_real_encoder(tmp_path, minilm):
    cache = EmbeddingCache(tmp_path, minilm.fingerprint)
    texts = ["Paris is the capital of France.", "Water boils at 100 degrees Celsius."]
    first = cache.get_or_encode(texts, minilm.encode, log=QUIET)
    np.testing.assert_allclose(first, minilm.encode(texts), atol=1e-5)
    second = EmbeddingCache(tmp_path, minilm.fingerprint).get_or_encode(
        texts[::-1], lambda t: pytest.fail("re-encoded"), log=QUIET)
    np.testing.assert_array_equal(second, first[::-1])


# ----------------------------------------------------------------------------- harness
PASSAGES = {
    "p1": "Paris is the capital and largest city of France.",
    "p2": "Berlin is the capital of Germany.",
    "p3": "Madrid is the capital of Spain.",
    "p4": "The Eiffel Tower was built for the 1889 World's Fair.",
}
QUESTIONS = [
    {"id": "q1", "golden_answers": ["Paris"]},
    {"id": "q2", "golden_answers": ["Berlin"]},
    {"id": "q3", "golden_answers": ["Tokyo"]},
    {"id": "q4", "golden_answers": ["1889", "eighteen eighty-nine"]},
]
RUN = {"q1": ["p2", "p1", "p3"], "q2": ["p2", "p3", "p4"], "q3": ["p1", "p2", "p3"],
       "q4": ["p1", "p2", "p4"]}


def test_first_hit_ranks():
    assert first_hit_ranks(RUN, QUESTIONS, PASSAGES) == [2, 1, None, 3]


def test_evaluate_run_known_values():
    res = evaluate_run(RUN, QUESTIONS, PASSAGES, ks=(1, 2, 3), n_resamples=200, seed=0)
    assert res["n"] == 4
    assert res["per_question"] == {"ids": ["q1", "q2", "q3", "q4"], "first_hit_rank": [2, 1, None, 3],
                                   "top_ids": [RUN[q] for q in ("q1", "q2", "q3", "q4")]}
    assert set(res["metrics"]) == {"acc@1", "acc@2", "acc@3"}
    assert res["metrics"]["acc@1"]["mean"] == pytest.approx(0.25)
    assert res["metrics"]["acc@2"]["mean"] == pytest.approx(0.5)
    assert res["metrics"]["acc@3"]["mean"] == pytest.approx(0.75)
    for m in res["metrics"].values():
        assert m["n"] == 4 and 0.0 <= m["low"] <= m["mean"] <= m["high"] <= 1.0
    again = evaluate_run(RUN, QUESTIONS, PASSAGES, ks=(1, 2, 3), n_resamples=200, seed=0)
    assert again == res  # deterministic for a seed


def test_saved_rankings_recheck_the_result_and_catch_an_edit():
    from invar_rag_lib.retrieval.harness import recheck

    res = evaluate_run(RUN, QUESTIONS, PASSAGES, ks=(1, 2, 3), n_resamples=50)
    assert recheck(res, QUESTIONS, PASSAGES) == []
    res["per_question"]["first_hit_rank"][2] = 1  # a result claiming a hit its ranking does not hold
    assert recheck(res, QUESTIONS, PASSAGES) == ["q3"]


def test_committed_cpu_results_recheck_against_the_corpus():
    """Every committed retrieval result that saved its rankings agrees with has_answer on the
    corpus (skipped where the cpu benchmark has not been built on this machine)."""
    import json
    from pathlib import Path

    from invar_rag_lib.data import load_benchmark
    from invar_rag_lib.retrieval.harness import recheck

    root = Path(__file__).resolve().parent.parent
    real = root / "data" / "processed" / "cpu"
    if not (real / "manifest.json").exists():
        pytest.skip(f"no cpu benchmark at {real} (built by notebook 00)")
    bench = load_benchmark("cpu", real)
    text = {row["id"]: row["text"] for row in bench.corpus}
    questions = [q for ds in bench.eval for q in bench.eval_records(ds)]
    checked = 0
    for path in (root / "reports" / "results").glob("0[14]_*/retrieval.json"):
        for by_dataset in json.loads(path.read_text())["retrievers"].values():
            for res in by_dataset.values():
                if "top_ids" in res.get("per_question", {}):
                    assert recheck(res, questions, text) == []
                    checked += 1
    if not checked:
        pytest.skip("the committed results predate saved rankings")


def test_evaluate_run_deeper_than_the_run_raises():
    with pytest.raises(ValueError, match=r"only 3 passages per question; cannot score acc@\[5\]"):
        evaluate_run(RUN, QUESTIONS, PASSAGES, ks=(1, 5))
    short = {**RUN, "q2": ["p2"]}
    with pytest.raises(ValueError, match="only 1 passages"):
        evaluate_run(short, QUESTIONS, PASSAGES, ks=(2,))


def test_paired_pvalue():
    from invar_rag_lib.metrics import paired_bootstrap_pvalue

    a = evaluate_run(RUN, QUESTIONS, PASSAGES, ks=(1, 3), n_resamples=100)
    assert paired_pvalue_at_k(a, a, 1) == 1.0
    better = {"q1": ["p1", "p2", "p3"], "q2": ["p2", "p1", "p3"], "q3": ["p1", "p2", "p3"],
              "q4": ["p4", "p1", "p2"]}
    b = evaluate_run(better, QUESTIONS, PASSAGES, ks=(1, 3), n_resamples=100)
    assert b["per_question"]["first_hit_rank"] == [1, 1, None, 1]
    # acc@1 per question: b = [1, 1, 0, 1], a = [0, 1, 0, 0]
    p = paired_pvalue_at_k(b, a, 1, n_resamples=500, seed=1)
    assert p == paired_bootstrap_pvalue([1, 1, 0, 1], [0, 1, 0, 0], n_resamples=500, seed=1)
    assert 0.0 < p < 1.0
    # acc@3: b = [1, 1, 0, 1] and a = [1, 1, 0, 1] -> no difference at all
    assert paired_pvalue_at_k(b, a, 3, n_resamples=500, seed=1) == 1.0


def test_paired_pvalue_rejects_mismatched_questions():
    a = evaluate_run(RUN, QUESTIONS, PASSAGES, ks=(1,), n_resamples=50)
    b = evaluate_run({k: RUN[k] for k in ("q1", "q2", "q3")}, QUESTIONS[:3], PASSAGES, ks=(1,), n_resamples=50)
    with pytest.raises(ValueError, match="not on the same questions"):
        paired_pvalue_at_k(a, b, 1)
    reordered = evaluate_run(RUN, QUESTIONS[::-1], PASSAGES, ks=(1,), n_resamples=50)
    with pytest.raises(ValueError, match="not on the same questions"):
        paired_pvalue_at_k(a, reordered, 1)
