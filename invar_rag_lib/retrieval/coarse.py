"""The coarse stage c(x) of docs/method.md §0: MiniLM (dense, exact inner product) and BM25 over the
benchmark corpus, built or loaded from cache once.

It gives the candidate pool K(q) of stage 1 (positives, hard negatives, the rerank candidates), the
coarse scores s_c of the alignment loss and the ridge map's targets, and the passages of the
`bm25-rag` / `minilm-rag` rows (notebook 01 saves its runs: `baselines.run_baselines`).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..config import Profile
from ..data import Benchmark
from ..llm.device import compute_device
from ..paths import cache_dir
from .bm25 import BM25Retriever
from .dense import DenseRetriever, EmbeddingCache, MiniLMEncoder
from .shards import IN_PROCESS_MAX, read_encoding


def passage_strings(bench: Benchmark, fmt: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Corpus ids, what the retrievers read (`fmt` of title and text), and text alone (for has_answer)."""
    ids, shown, text = [], [], {}
    for row in bench.corpus:
        ids.append(row["id"])
        shown.append(fmt.format(title=row["title"], text=row["text"]).strip())
        text[row["id"]] = row["text"]
    return ids, shown, text


def minilm_encoding_dir(encoder: MiniLMEncoder):
    """Where `invar-rag encode-corpus --variant minilm` keeps MiniLM's sharded corpus encoding."""
    return cache_dir() / "corpus-reps" / f"minilm-{encoder.fingerprint}"


def encode_corpus_minilm(profile: Profile, bench: Benchmark, log=print):
    """c(d) of every corpus passage, sharded over the processes of an `accelerate launch` and
    resumable (retrieval/shards.py), as the LLM retriever's `encode_corpus`; returns the merged array."""
    from .shards import encode_sharded, merge

    cfg = profile.retrieval
    ids, shown, _ = passage_strings(bench, cfg.passage_format)
    encoder = MiniLMEncoder(cfg.minilm_max_seq_length, cfg.minilm_batch_size, str(compute_device()))
    root = minilm_encoding_dir(encoder)
    encode_sharded(root, ids, lambda rows: [shown[i] for i in rows], encoder.encode, encoder.fingerprint,
                   shard_size=profile.retriever.encode_shard_size, batch_size=cfg.minilm_batch_size,
                   dtype=profile.retriever.rep_dtype, log=log)
    return merge(root, log=log)


class CoarseStage:
    """BM25 and MiniLM over the benchmark corpus: `search(name, texts, depth)`, and MiniLM's
    embeddings c(x) of the corpus (`corpus_emb`, in `ids` order) and of any query (`encode_queries`)."""

    def __init__(self, profile: Profile, bench: Benchmark, log=print):
        cfg = profile.retrieval
        self.ids, shown, self.text = passage_strings(bench, cfg.passage_format)
        self.timings = {}
        t0 = time.perf_counter()
        self.bm25 = BM25Retriever.build_or_load(
            self.ids, shown, {"k1": cfg.bm25_k1, "b": cfg.bm25_b, "method": cfg.bm25_method,
                              "stemmer": cfg.bm25_stemmer, "stopwords": cfg.bm25_stopwords},
            cache_dir() / "indexes", log=log)
        self.timings["bm25_index_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.encoder = MiniLMEncoder(cfg.minilm_max_seq_length, cfg.minilm_batch_size, str(compute_device()))
        self.cache = EmbeddingCache(cache_dir() / "embeddings", self.encoder.fingerprint)
        encoded = read_encoding(minilm_encoding_dir(self.encoder), self.ids, self.encoder.fingerprint,
                                log=lambda m: log(f"MiniLM: {m}"))
        if encoded is None and len(self.ids) > IN_PROCESS_MAX:
            raise RuntimeError(f"MiniLM: {len(self.ids):,} passages are encoded only by `invar-rag encode-corpus "
                               f"--profile {profile.name} --variant minilm` (sharded, resumable); run it first")
        self.corpus_emb = encoded if encoded is not None else self.cache.get_or_encode(shown, self.encoder.encode, log=log)
        self.timings["minilm_corpus_encode_s"] = time.perf_counter() - t0
        self.dense = DenseRetriever(self.ids, self.corpus_emb)
        self.log = log

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """c(q) for `texts` (cached by text)."""
        return self.cache.get_or_encode(list(texts), self.encoder.encode, log=self.log)

    def search(self, name: str, texts: Sequence[str], depth: int) -> list[list[str]]:
        if name == "bm25":
            return self.bm25.search(list(texts), depth)[0]
        if name == "minilm":
            return self.dense.search_embeddings(self.encode_queries(texts), depth)[0]
        raise ValueError(f"unknown coarse retriever {name!r}; use 'bm25' or 'minilm'")
