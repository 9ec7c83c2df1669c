"""Stage 1 end to end: backbone + adapter, trunk cache, rewrites, LSR, training data, evaluation.

`RetrieverStage` holds one loaded backbone with its `retriever` adapter. Every expensive,
unchanging step is cached on disk under `data/cache/` (trunk states, rewrites, LSR scores), keyed by
content and model fingerprint, so a second run, another variant or the evaluation reuse them.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Sequence

import torch

from ..config import Profile
from ..data import Benchmark
from ..llm.backbone import load_backbone
from ..llm.encoder import (RETRIEVER_ADAPTER, add_retriever_adapter, format_passage, format_query, split_point,
                           tokenize, trunk_states)
from ..llm.quantize import quantize_trunk
from ..llm.trunk_cache import TrunkCache, hash_tensors, trunk_fingerprint
from ..paths import cache_dir
from .environments import environments
from .groups import Group
from .lsr import compute_lsr
from .rewrites import make_rewrites
from ..training import lora_state
from ..llm.retriever import TopEncoder
from .train import TrainingData


class RetrieverStage:
    def __init__(self, profile: Profile, bench: Benchmark, log=print):
        rc = profile.retriever
        self.profile, self.bench, self.log = profile, bench, log
        torch.manual_seed(profile.seed)
        base, self.tokenizer = load_backbone(rc.backbone, seed=profile.seed)
        self.split = split_point(base, rc.lora_layers)
        self.model = add_retriever_adapter(base, rc.lora_layers, rc.lora_r, rc.lora_alpha,
                                           rc.lora_dropout, rc.lora_targets)
        self.model.eval()
        self.initial_adapter = lora_state(self.model, RETRIEVER_ADAPTER)  # every variant starts from this init
        # Fingerprints of the float32 weights, tagged with the trunk's arithmetic (int8 states differ).
        arithmetic = "" if rc.trunk_quantization == "none" else f":{rc.trunk_quantization}"
        self.fingerprint = trunk_fingerprint(self.model, self.split, extra=rc.backbone + arithmetic)
        self.model_fingerprint = trunk_fingerprint(
            self.model, self.model.get_base_model().config.num_hidden_layers, extra=rc.backbone + ":full" + arithmetic)
        quantize_trunk(self.model, self.split, rc.trunk_quantization)
        self.trunk = TrunkCache(cache_dir() / "trunk", self.fingerprint, log=log, persist=self.split > 0)
        self.passages = {row["id"]: row for row in bench.corpus}
        self.envs = environments(profile)
        self.projection: torch.Tensor | None = None  # the ridge map into MiniLM's space, when in use
        self.rep_caches: dict[str, TrunkCache] = {}  # rep_key -> persisted passage reps (`passage_reps`)

    # --- representations -------------------------------------------------------------------
    def passage_text(self, pid: str) -> str:
        p = self.passages[pid]
        return format_passage(p["title"], p["text"], self.profile.retriever.passage_template)

    def query_text(self, question: str) -> str:
        return format_query(question, self.profile.retriever.query_template)

    def states(self, texts: Sequence[str], max_len: int) -> list[torch.Tensor]:
        rc = self.profile.retriever

        def compute(batch_texts):
            return trunk_states(self.model, tokenize(self.tokenizer, batch_texts, max_len, rc.padding_side),
                                self.split)

        return self.trunk.get_or_compute(texts, max_len, compute, rc.encode_batch_size, log=self.log)

    def encoder(self) -> TopEncoder:
        rc = self.profile.retriever
        return TopEncoder(self.model, self.split, rc.padding_side, rc.pooling, self.projection)

    def reset_adapter(self) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, self.initial_adapter, adapter_name="retriever")
        self.projection = None

    # --- training data ---------------------------------------------------------------------
    def rewrites(self, items: Sequence[dict]) -> dict[str, list[dict]]:
        s1 = self.profile.stage1
        path = cache_dir() / "rewrites" / f"{self.model_fingerprint}.json"
        with self.model.disable_adapter():
            return make_rewrites(items, s1.n_rewrites, s1.rewrite_method, path, self.model,
                                 self.tokenizer, s1.rewrite_batch_size, log=self.log)

    def lsr(self, groups: Sequence[Group], rewrites) -> torch.Tensor:
        s1 = self.profile.stage1
        path = cache_dir() / "lsr" / f"{self.model_fingerprint}.json"
        return compute_lsr(self.model, self.tokenizer, groups, self.envs, rewrites, self.passages,
                           s1.lsr_prompt, path, self.model_fingerprint, s1.lsr_batch_size, log=self.log)

    def training_data(self, groups: Sequence[Group], rewrites, lsr_ll: torch.Tensor | None) -> TrainingData:
        from .. import losses

        rc, s1 = self.profile.retriever, self.profile.stage1
        query_states = {0: self.states([self.query_text(g.question) for g in groups], rc.query_max_len)}
        for r in range(1, (s1.n_rewrites if rewrites else 0) + 1):
            query_states[r] = self.states([self.query_text(rewrites[g.question][r - 1]["text"])
                                           for g in groups], rc.query_max_len)
        passage_states = {}
        envs = self.envs if rewrites else self.envs[:1]
        for window in sorted({e.window for e in envs}):
            flat = self.states([self.passage_text(p) for g in groups for p in g.passage_ids], window)
            size = len(groups[0].passage_ids)
            passage_states[window] = [flat[i * size:(i + 1) * size] for i in range(len(groups))]
        mask = torch.ones(len(groups), len(groups[0].passage_ids), dtype=torch.bool)
        return TrainingData(
            query_states=query_states, passage_states=passage_states,
            coarse=torch.tensor([g.coarse_scores for g in groups]),
            lsr_logq=None if lsr_ll is None else losses.lsr_distribution(lsr_ll, mask, s1.beta),
            positive=torch.tensor([g.positive for g in groups]), envs=list(envs))

    @torch.no_grad()
    def fit_projection(self, groups: Sequence[Group], log=print) -> torch.Tensor:
        """W = argmin ||X W − Y||² + λ||W||²: X = the frozen model's pooled h(x) (no adapter, no
        projection) of every training question and group passage, Y = MiniLM's embeddings of the
        same texts. Closed form in float64; cached on disk by model, texts, pooling and λ."""
        from safetensors.torch import load, save

        from ..baselines import CoarseRetrievers
        from ..integrity import load_or_none, read_sealed, write_sealed
        from ..io_utils import sha256_text

        rc, s1 = self.profile.retriever, self.profile.stage1
        questions = list(dict.fromkeys(g.question for g in groups))
        pids = list(dict.fromkeys(p for g in groups for p in g.passage_ids))
        key = sha256_text(self.model_fingerprint, rc.pooling, str(rc.max_len), str(rc.query_max_len),
                          rc.query_template, rc.passage_template, str(s1.ridge_lambda), *questions, *pids)[:16]
        path = cache_dir() / "projection" / f"{key}.safetensors"
        cached = load_or_none(path, lambda p: load(read_sealed(p))["W"], "ridge projection", log)
        if cached is not None:
            return cached
        saved, self.projection = self.projection, None
        try:
            xq = self.query_reps([self.query_text(q) for q in questions], adapter=False)
            xp = self.passage_reps(pids, adapter=False)
        finally:
            self.projection = saved
        coarse = CoarseRetrievers(self.profile, self.bench, log=log)
        row = {pid: i for i, pid in enumerate(coarse.ids)}
        yq = torch.as_tensor(coarse.cache.get_or_encode(questions, coarse.encoder.encode, log=log))
        yp = torch.as_tensor(coarse.corpus_emb[[row[p] for p in pids]])
        x, y = torch.cat([xq, xp]).cpu().double(), torch.cat([yq, yp]).double()
        w = torch.linalg.solve(x.T @ x + s1.ridge_lambda * torch.eye(x.shape[1], dtype=torch.float64), x.T @ y)
        w = w.float().contiguous()
        write_sealed(path, save({"W": w}))
        log(f"ridge projection {tuple(w.shape)} fitted on {len(questions)} questions and {len(pids)} passages")
        return w

    # --- evaluation --------------------------------------------------------------------------
    def rep_key(self, adapter: bool) -> str:
        """Everything a pooled representation h(d) depends on besides its text and window: the base
        weights (and the trunk's arithmetic), the `retriever` adapter's weights as they are now (or
        "off"), its scaling, the pooling, the padding side, the template and the ridge map."""
        from ..io_utils import sha256_text
        from ..training import lora_state

        rc, h = self.profile.retriever, hashlib.sha256()
        none = torch.zeros(0)
        hash_tensors(h, sorted(lora_state(self.model, RETRIEVER_ADAPTER).items()) if adapter else [("adapter off", none)])
        hash_tensors(h, [("projection", none if self.projection is None else self.projection)])
        return sha256_text(self.model_fingerprint, str(self.split), rc.pooling, rc.padding_side, rc.passage_template,
                           f"r={rc.lora_r};alpha={rc.lora_alpha}", h.hexdigest())[:24]

    @torch.no_grad()
    def passage_reps(self, pids: Sequence[str], memo: dict | None = None, adapter: bool = True,
                     persist: bool = False) -> torch.Tensor:
        """h(d) for `pids` with the adapter as it is now, as float32 on the CPU; `memo` (pid -> rep)
        avoids re-encoding a passage for every dataset and environment of one evaluation. With
        `persist`, reps are also kept on disk under `rep_key` (data/cache/reps/), so scoring the same
        weights again (notebook 07's `invar`, the generator's retriever run) reads them back,
        bit for bit, instead of running the top layers over every candidate again."""
        rc = self.profile.retriever
        memo = {} if memo is None else memo
        todo = [p for p in dict.fromkeys(pids) if p not in memo]
        if todo:
            enc = self.encoder().eval()

            def compute(texts: list[str]) -> list[torch.Tensor]:
                with (self.model.disable_adapter() if not adapter else contextlib.nullcontext()):
                    states = self.states(texts, rc.max_len)
                    reps = torch.cat([enc.encode(chunk).float().cpu() for chunk in _chunks(states, rc.score_batch_size)])
                return [r.clone() for r in reps]  # one storage each: safetensors refuses shared ones

            texts = [self.passage_text(p) for p in todo]
            if persist:
                key = self.rep_key(adapter)
                if key not in self.rep_caches:  # one per weights: its shards are read from disk once
                    self.rep_caches[key] = TrunkCache(cache_dir() / "reps", key, log=self.log, label="passage reps")
                reps = self.rep_caches[key].get_or_compute(texts, rc.max_len, compute, batch_size=None)
            else:
                reps = compute(texts)
            memo.update(zip(todo, reps))
        return torch.stack([memo[p] for p in pids])

    @torch.no_grad()
    def query_reps(self, texts: Sequence[str], adapter: bool = True) -> torch.Tensor:
        """h(q) for already formatted query `texts`, with the adapter as it is now (or switched off),
        as float32 on the CPU, where passage reps live."""
        enc = self.encoder().eval()
        with (self.model.disable_adapter() if not adapter else contextlib.nullcontext()):
            states = self.states(list(texts), self.profile.retriever.query_max_len)
            return torch.cat([enc.encode(chunk).float().cpu()
                              for chunk in _chunks(states, self.profile.retriever.score_batch_size)])

    @torch.no_grad()
    def rerank(self, questions: Sequence[dict], candidates: dict[str, list[str]], depth: int,
               query_texts: dict[str, str] | None = None, adapter: bool = True,
               memo: dict | None = None, persist: bool = False) -> dict[str, list[str]]:
        """Rerank each question's first `depth` candidates by s_θ(q, d); returns qid -> ranked ids.
        Pass the same `memo` to every call made with the same adapter weights; `persist` as for
        `passage_reps`."""
        pool = list(dict.fromkeys(p for q in questions for p in candidates[q["id"]][:depth]))
        p_reps = self.passage_reps(pool, memo, adapter, persist)
        q_reps = self.query_reps([self.query_text((query_texts or {}).get(q["id"], q["question"]))
                                  for q in questions], adapter)
        row = {p: i for i, p in enumerate(pool)}
        run = {}
        for q, qr in zip(questions, q_reps):
            cands = candidates[q["id"]][:depth]
            scores = p_reps[[row[p] for p in cands]] @ qr
            order = torch.argsort(scores, descending=True, stable=True).tolist()
            run[q["id"]] = [cands[i] for i in order]
        return run

    @torch.no_grad()
    def search(self, questions: Sequence[dict], k: int, query_texts: dict[str, str] | None = None,
               adapter: bool = True, memo: dict | None = None, persist: bool = False) -> dict[str, list[str]]:
        """Full retrieval: every corpus passage scored by s_θ(q, d), the top `k` per question (exact
        inner product, `DenseRetriever`); returns qid -> ranked ids. `memo`, `persist` as for `rerank`."""
        from ..retrieval.dense import DenseRetriever

        pids = list(self.passages)
        index = DenseRetriever(pids, self.passage_reps(pids, memo, adapter, persist))
        q_reps = self.query_reps([self.query_text((query_texts or {}).get(q["id"], q["question"]))
                                  for q in questions], adapter)
        ranked, _ = index.search_embeddings(q_reps, k)
        return {q["id"]: r for q, r in zip(questions, ranked)}


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
