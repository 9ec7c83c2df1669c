"""The LLM retriever (docs/method.md §1): the trainable top (`TopEncoder`), the group scores, and
`LLMRetriever`, the immutable value that every evaluation, rerank and search goes through.

`TopEncoder` turns trunk states into h(x) (layers above the cached trunk, final norm, pooling, the
optional map into MiniLM's space); training and evaluation both call it, so what is trained is exactly
what is evaluated. `LLMRetriever` is a value in the manner of tevatron's encoder: a backbone, the
`retriever` adapter's weights (or none: the frozen model), pooling, projection, τ_r, padding side and
windows. A variant or an ablation is another value, never a mutation of a shared object; its cache
key (`key`) is computed from its own fields. The adapter weights are put into the backbone's slot
only when another value's weights are there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import torch

from .backbone import RETRIEVER, Backbone
from .encoder import encode_hidden, format_passage, format_query
from .padding import pad_states
from .trunk_cache import hash_tensors


class TopEncoder(torch.nn.Module):
    """The trainable part: decoder layers [split, N) + norm + pooling, fed trunk states; with a
    `projection` W ([D, D']), h(x) = normalize(W^T h_pooled(x)) (a fixed map, not trained)."""

    def __init__(self, model, split: int, padding_side: str, pooling: str, projection: torch.Tensor | None = None):
        super().__init__()
        self.model, self.split, self.padding_side, self.pooling = model, split, padding_side, pooling
        self.projection = projection

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rep = encode_hidden(self.model, hidden, mask, self.split, self.pooling)
        if self.projection is None:
            return rep
        return torch.nn.functional.normalize(rep @ self.projection.to(rep.device), dim=-1)

    def encode(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        return encode_states(self, states, self.padding_side)


def encode_states(encoder, states: Sequence[torch.Tensor], padding_side: str) -> torch.Tensor:
    """Pad and run through `encoder.__call__`, so a DDP wrapper sees the forward (and syncs grads)."""
    hidden, mask = pad_states(states, padding_side)
    return encoder(hidden, mask)


def group_scores(q_reps: torch.Tensor, p_reps: torch.Tensor, tau_r: float) -> torch.Tensor:
    """s_θ(q, d) for each query's own group: q_reps [B, D], p_reps [B*G, D] (grouped) -> [B, G]."""
    return torch.einsum("bd,bgd->bg", q_reps, p_reps.view(q_reps.shape[0], -1, q_reps.shape[1])) / tau_r


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def weights_digest(weights: Mapping[str, torch.Tensor] | None) -> str:
    """The digest of adapter weights (or of "adapter off")."""
    h = hashlib.sha256()
    hash_tensors(h, sorted(weights.items()) if weights is not None else [("adapter off", torch.zeros(0))])
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class LLMRetriever:
    """One LLM retriever: the frozen backbone read through `weights` of the `retriever` adapter (None:
    the base model, `llm-zero`), pooled, optionally mapped into MiniLM's space by `projection`."""
    backbone: Backbone
    passages: Mapping[str, dict]  # corpus id -> {"title", "text"}
    pooling: str
    tau_r: float
    padding_side: str
    max_len: int
    query_max_len: int
    query_template: str
    passage_template: str
    score_batch_size: int
    weights: Mapping[str, torch.Tensor] | None = None
    projection: torch.Tensor | None = None
    name: str = "llm-zero"
    index: str = "flat"  # full retrieval's index (retrieval/dense.py): flat (exact) | ivf | hnsw
    index_nlist: int = 0
    index_nprobe: int = 32
    index_pq_m: int = 64
    index_gpus: bool = True

    @classmethod
    def from_profile(cls, backbone: Backbone, profile, passages: Mapping[str, dict], **fields) -> "LLMRetriever":
        """The profile's retriever fields; `fields` override any of them (pooling, weights, ...)."""
        rc = profile.retriever
        values = dict(pooling=rc.pooling, tau_r=rc.tau_r, padding_side=rc.padding_side, max_len=rc.max_len,
                      query_max_len=rc.query_max_len, query_template=rc.query_template,
                      passage_template=rc.passage_template, score_batch_size=rc.score_batch_size,
                      index=rc.index, index_nlist=rc.index_nlist, index_nprobe=rc.index_nprobe,
                      index_pq_m=rc.index_pq_m, index_gpus=rc.index_gpus)
        return cls(backbone, passages, **{**values, **fields})

    def replace(self, **fields) -> "LLMRetriever":
        return dataclasses.replace(self, **fields)

    # --- identity -----------------------------------------------------------------------------
    @cached_property
    def digest(self) -> str:
        return weights_digest(self.weights)

    @cached_property
    def key(self) -> str:
        """Everything a pooled representation h(d) depends on besides its text and window: the base
        weights (and the trunk's arithmetic), the adapter weights (or "off"), its shape, the pooling,
        the padding side, the template and the projection."""
        from ..io_utils import sha256_text

        h = hashlib.sha256()
        hash_tensors(h, sorted(self.weights.items()) if self.weights is not None
                     else [("adapter off", torch.zeros(0))])
        hash_tensors(h, [("projection", torch.zeros(0) if self.projection is None else self.projection)])
        shape = self.backbone.adapters[RETRIEVER]
        return sha256_text(self.backbone.model_fingerprint, str(self.split), self.pooling, self.padding_side,
                           self.passage_template, f"r={shape.r};alpha={shape.alpha}", h.hexdigest())[:24]

    @property
    def split(self) -> int:
        return self.backbone.split(RETRIEVER)

    @contextlib.contextmanager
    def active(self):
        """The backbone as this value reads it: its adapter weights in the `retriever` slot (loaded
        only if another value's are there), that adapter active; or every adapter off."""
        if self.weights is None:
            with self.backbone.adapter(None):
                yield
            return
        if self.backbone.loaded.get(RETRIEVER) != self.digest:
            self.backbone.load_adapter_state(RETRIEVER, dict(self.weights), self.digest)
        with self.backbone.adapter(RETRIEVER):
            yield

    # --- representations ------------------------------------------------------------------------
    def encoder(self) -> TopEncoder:
        return TopEncoder(self.backbone.model, self.split, self.padding_side, self.pooling, self.projection)

    def passage_text(self, pid: str) -> str:
        p = self.passages[pid]
        return format_passage(p["title"], p["text"], self.passage_template)

    def query_text(self, question: str) -> str:
        return format_query(question, self.query_template)

    def score(self, q_reps: torch.Tensor, p_reps: torch.Tensor) -> torch.Tensor:
        """s_θ(q, d) = h(q)·h(d) / τ_r for every pair: [Q, D] x [P, D] -> [Q, P]."""
        return q_reps @ p_reps.T / self.tau_r

    def _top(self, enc: TopEncoder, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """h(x) of trunk `states` through the top layers, `score_batch_size` at a time, float32 on the CPU."""
        return torch.cat([enc.encode(chunk).float().cpu() for chunk in _chunks(list(states), self.score_batch_size)])

    @torch.no_grad()
    def query_reps(self, texts: Sequence[str]) -> torch.Tensor:
        """h(q) for already formatted query `texts`, as float32 on the CPU, where passage reps live."""
        enc = self.encoder().eval()
        with self.active():
            states = self.backbone.states(list(texts), self.query_max_len)
            return self._top(enc, states)

    @torch.no_grad()
    def passage_reps(self, pids: Sequence[str], memo: dict | None = None, persist: bool = False) -> torch.Tensor:
        """h(d) for `pids`, as float32 on the CPU; `memo` (pid -> rep) avoids re-encoding a passage for
        every dataset and environment of one evaluation. With `persist`, reps are also kept on disk
        under `key` (data/cache/reps/), so scoring the same value again (notebook 07's `invar`, the
        generator's retriever run) reads them back, bit for bit, instead of running the top layers."""
        memo = {} if memo is None else memo
        todo = [p for p in dict.fromkeys(pids) if p not in memo]
        if todo:
            enc = self.encoder().eval()

            def compute(texts: list[str]) -> list[torch.Tensor]:
                with self.active():
                    states = self.backbone.states(texts, self.max_len)
                    reps = self._top(enc, states)
                return [r.clone() for r in reps]  # one storage each: safetensors refuses shared ones

            texts = [self.passage_text(p) for p in todo]
            reps = (self.backbone.rep_store(self.key).get_or_compute(texts, self.max_len, compute, batch_size=None)
                    if persist else compute(texts))
            memo.update(zip(todo, reps))
        return torch.stack([memo[p] for p in pids])

    def encoding_dir(self):
        """Where `invar-rag encode-corpus` keeps this value's sharded corpus encoding."""
        from ..paths import cache_dir

        return cache_dir() / "corpus-reps" / self.key

    def encode_corpus(self, shard_size: int = 4096, dtype: str = "float16", log=print):
        """h(d) of every corpus passage, sharded over the processes of an `accelerate launch` and
        resumable (retrieval/shards.py); returns the merged array (a memory map)."""
        from ..retrieval.shards import encode_sharded, merge

        pids, bb = list(self.passages), self.backbone
        enc = self.encoder().eval()

        @torch.no_grad()
        def encode(texts):
            states = bb.states(texts, self.max_len, cache=False)  # encoded once: no trunk cache
            with self.active():
                return self._top(enc, states).numpy()

        encode_sharded(self.encoding_dir(), pids, lambda rows: [self.passage_text(pids[i]) for i in rows], encode,
                       self.key, shard_size=shard_size, batch_size=bb.encode_batch_size, dtype=dtype, log=log)
        self.__dict__.pop("_index_cache", None)  # the next search reads the encoding
        return merge(self.encoding_dir(), log=log)

    def corpus_reps(self, pids: Sequence[str], memo: dict | None = None, persist: bool = False):
        """Every passage's h(d) for full search: the merged sharded encoding when `encode-corpus` made
        one for this value and corpus, else `passage_reps` (in this process)."""
        from ..retrieval.shards import IN_PROCESS_MAX, read_encoding

        encoded = read_encoding(self.encoding_dir(), pids, self.key,
                                log=lambda m: self.backbone.log(f"{self.name}: {m}"))
        if encoded is not None:
            return encoded
        if len(pids) > IN_PROCESS_MAX:
            raise RuntimeError(f"{self.name}: {len(pids):,} passages are encoded only by `invar-rag encode-corpus "
                               f"--variant {self.name}` (sharded over processes, resumable), not inside this process; "
                               "run it, then this step again")
        return self.passage_reps(pids, memo, persist)

    # --- retrieval ------------------------------------------------------------------------------
    def _query_reps_for(self, questions: Sequence[dict], query_texts: Mapping[str, str] | None) -> torch.Tensor:
        return self.query_reps([self.query_text((query_texts or {}).get(q["id"], q["question"])) for q in questions])

    @torch.no_grad()
    def rerank(self, questions: Sequence[dict], candidates: Mapping[str, Sequence[str]], depth: int,
               query_texts: Mapping[str, str] | None = None, memo: dict | None = None,
               persist: bool = False) -> dict[str, list[str]]:
        """Rerank each question's first `depth` candidates by s_θ(q, d); returns qid -> ranked ids.
        `query_texts` (qid -> text) replaces a question's text (its rewrites); pass one `memo` to
        every call of one value; `persist` as for `passage_reps`."""
        if not questions:
            return {}
        pool = list(dict.fromkeys(p for q in questions for p in candidates[q["id"]][:depth]))
        p_reps = self.passage_reps(pool, memo, persist)
        q_reps = self._query_reps_for(questions, query_texts)
        row = {p: i for i, p in enumerate(pool)}
        run = {}
        for q, qr in zip(questions, q_reps):
            cands = list(candidates[q["id"]][:depth])
            scores = p_reps[[row[p] for p in cands]] @ qr
            order = torch.argsort(scores, descending=True, stable=True).tolist()
            run[q["id"]] = [cands[i] for i in order]
        return run

    @torch.no_grad()
    def search(self, questions: Sequence[dict], k: int, query_texts: Mapping[str, str] | None = None,
               memo: dict | None = None, persist: bool = False) -> dict[str, list[str]]:
        """Full retrieval: every corpus passage scored by s_θ(q, d), the top `k` per question (exact
        inner product, `DenseRetriever`); returns qid -> ranked ids."""
        if not questions:
            return {}
        index = self._search_index(memo, persist)
        first = index.recall is None
        ranked, _ = index.search_embeddings(self._query_reps_for(questions, query_texts), k)
        if first and index.recall is not None:
            self.backbone.log(f"{self.name}: {self.index} index over {len(index.ids)} passages, recall@"
                              f"{min(k, len(index.ids))} against exact search {index.recall:.3f} (on "
                              f"{min(len(questions), index.RECALL_SAMPLE)} queries)")
        return {q["id"]: r for q, r in zip(questions, ranked)}

    def _search_index(self, memo: dict | None, persist: bool):
        """The index over every passage, built on this value's first search and kept with it (a value's
        representations never change; an approximate index of millions of passages takes minutes to
        train and fill, and a run searches once per dataset and per query rewrite)."""
        from ..retrieval.dense import DenseRetriever

        index = self.__dict__.get("_index_cache")
        if index is None:
            pids = list(self.passages)
            index = DenseRetriever(pids, self.corpus_reps(pids, memo, persist), index=self.index,
                                   nlist=self.index_nlist, nprobe=self.index_nprobe, pq_m=self.index_pq_m,
                                   gpus=self.index_gpus)
            self.__dict__["_index_cache"] = index  # a frozen dataclass: kept as functools.cached_property does
        return index
