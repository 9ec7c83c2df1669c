"""Stage 2 as notebooks 05–06 run it.

`GenerationStage` holds the backbone with both adapters. It (1) loads the frozen retriever variant
(notebook 04's checkpoint when its config and data match, else trains it the same way), (2) ranks
MiniLM's candidates with it for the evaluation and generator-training questions once and saves that
run (`data/runs/<profile>/<variant>.json`), (3) trains the `generator` adapter on cached trunk
states, and (4) scores the generation rows of docs/method.md §2. Generated answers are cached on disk,
keyed by the model, the adapter weights and the exact prompt.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from typing import Sequence

import numpy as np
import torch

from ..baselines import CoarseRetrievers, load_run
from ..config import Profile
from ..data import Benchmark
from ..integrity import load_or_none, read_sealed_json, write_sealed_json
from ..io_utils import sha256_text
from ..llm.trunk_cache import TrunkCache
from ..metrics import bootstrap_ci, exact_match, f1, has_answer, paired_bootstrap_pvalue, substring_acc
from ..paths import cache_dir, data_dir, runs_dir
from ..stage1.experiment import data_key, prepare, train_variant
from ..stage1.train import variant_objectives
from ..training import lora_state
from . import ROWS
from ..llm.decode import DecodeStats, Prompt, greedy_decode
from .prompts import PassageWindows, build_prompt, prefix_text, select_demonstrations, target_answer
from .train import GENERATOR_ADAPTER, Example, GeneratorData, add_generator_adapter, train_generator

METRICS = ("em", "f1", "acc")

# The saved retriever run keeps k passages per question plus this margin (for inspection and for a
# later k up to k + RUN_MARGIN without rerunning the retriever).
RUN_MARGIN = 20


def select_generator_questions(bench: Benchmark, profile: Profile, exclude: set[str]) -> list[dict]:
    """`generator.train_questions` drawn evenly (seeded) from `generator.train_sources`."""
    g = profile.generator
    per_source = -(-g.train_questions // len(g.train_sources))
    chosen = []
    for source in g.train_sources:
        records = [r for r in bench.train_records(source) if r["id"] not in exclude]
        random.Random(f"{profile.seed}:stage2:{source}").shuffle(records)
        chosen += [{**r, "source": source} for r in records[:per_source]]
    return chosen[: g.train_questions]


class GenerationStage:
    def __init__(self, profile: Profile, bench: Benchmark, log=print):
        self.profile, self.bench, self.log = profile, bench, log
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.prepared = prepare(profile, bench, log=log)  # cached: groups, rewrites, LSR, trunk states
        self.stage = self.prepared.stage
        self.model, self.tokenizer = self.stage.model, self.stage.tokenizer
        self.timings["prepare_s"] = time.perf_counter() - t0
        g = profile.generator
        self.demos = select_demonstrations(bench, g, profile.seed)
        self.prefix = prefix_text(g, self.demos)
        self.windows = PassageWindows(self.tokenizer, self.stage.passages, g)
        self.questions = {ds: bench.eval_records(ds) for ds in bench.eval}
        self.train_questions = select_generator_questions(bench, profile, {d["id"] for d in self.demos})

    # --- (1)+(2) the frozen retriever and its run ------------------------------------------------
    def retriever_run(self) -> dict:
        """The retriever variant's ranking of MiniLM's top `rerank_depth` for every evaluation and
        generator-training question, computed once and saved beside the BM25 / MiniLM runs."""
        name = self.profile.generator.retriever_variant
        path = runs_dir(self.profile.name) / f"{name}.json"
        key = self._run_key()
        saved = load_or_none(path, read_sealed_json, f"{name} run", self.log)
        if saved is not None:
            if saved.get("key") == key:
                self.log(f"{name} run: reusing {path.name}")
                return saved
        t0 = time.perf_counter()
        objective = variant_objectives(self.profile).get(name) if name != "llm-zero" else None
        if name != "llm-zero" and objective is None:
            raise ValueError(f"generator.retriever_variant {name!r} is not a retriever variant; "
                             f"valid are {['llm-zero', *variant_objectives(self.profile)]}")
        record = train_variant(self.profile, self.bench, self.prepared, name, objective, reuse=True, log=self.log)
        self.timings["retriever_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        keep = self.profile.generator.k + RUN_MARGIN
        full = self.profile.retriever.mode == "full"
        depth = len(self.stage.passages) if full else self.profile.retriever.rerank_depth
        runs = {}
        memo: dict = {}
        splits = {**self.questions, "train": self.train_questions}
        if full:  # every corpus passage scored, as notebook 04 evaluates in this mode
            for split, qs in splits.items():
                runs[split] = self.stage.search(qs, keep, adapter=objective is not None, memo=memo,
                                                persist=True)
        else:
            minilm = load_run(self.profile.name, "minilm", self.bench)["runs"]
            coarse = CoarseRetrievers(self.profile, self.bench, log=self.log)
            train_cands = coarse.search("minilm", [q["question"] for q in self.train_questions], depth)
            cands = {**minilm, "train": {q["id"]: c for q, c in zip(self.train_questions, train_cands)}}
            for split, qs in splits.items():
                ranked = self.stage.rerank(qs, cands[split], depth, adapter=objective is not None, memo=memo,
                                           persist=True)
                runs[split] = {qid: r[:keep] for qid, r in ranked.items()}
        self.stage.reset_adapter()
        self.timings["retriever_run_s"] = time.perf_counter() - t0
        saved = {"retriever": name, "depth": depth, "runs": runs, "key": key,
                 "training_reused": bool(record and record.get("reused")),
                 "mode": "full corpus (exact inner product)" if full else f"rerank of MiniLM's top {depth}",
                 "benchmark_build_key": self.bench.manifest["build_key"]}
        write_sealed_json(path, saved)
        return saved

    def _run_key(self) -> str:
        qids = [q["id"] for q in self.train_questions]
        return sha256_text(data_key(self.bench, self.prepared), json.dumps(self.profile.to_dict()["stage1"]),
                           json.dumps(self.profile.to_dict()["retriever"]), self.profile.generator.retriever_variant,
                           json.dumps(qids))[:16]

    # --- (3) the generator adapter ---------------------------------------------------------------
    def prompt(self, question: str, passage_ids: Sequence[str]) -> Prompt:
        return build_prompt(self.profile.generator, self.prefix, question, passage_ids, self.windows)

    def training_examples(self, run: dict) -> list[Example]:
        g, train = self.profile.generator, run["runs"]["train"]
        return [Example(self.prompt(q["question"], train[q["id"]]),
                        target_answer(q["golden_answers"], [self.stage.passages[p]["text"] for p in train[q["id"]][:g.k]],
                                      g.target_answer))
                for q in self.train_questions]

    def train_generator(self, run: dict, reuse: bool = True) -> dict:
        add_generator_adapter(self.model, self.profile)
        trunk = TrunkCache(cache_dir() / "trunk-generator", self.stage.fingerprint, log=self.log,
                           persist=self.stage.split > 0)
        data = GeneratorData(self.stage, self.training_examples(run), trunk, self.profile.generator.trunk_batch_size)
        t0 = time.perf_counter()
        out = data_dir() / "checkpoints" / self.profile.name / "generator"
        result = train_generator(self.model, self.stage.split, data, self.profile, out, reuse=reuse,
                                 data_key=sha256_text(data.key(), self.stage.fingerprint)[:16], log=self.log)
        self.model.set_adapter("retriever")  # the default active adapter; the generator is opted into
        self.model.eval()
        # trunk states are read or computed inside train_generator (not at all when reused)
        self.timings["generator_trunk_s"] = result.get("trunk_s", 0.0)
        self.timings["generator_train_s"] = time.perf_counter() - t0 - self.timings["generator_trunk_s"]
        result["n_examples"] = len(data)
        result["tokens_per_example"] = float(np.mean([len(i) for i in data.ids]))
        return result

    # --- (4) generation rows ---------------------------------------------------------------------
    def passages_for(self, row: str, run: dict) -> dict[str, dict[str, list[str]]]:
        if row == "closed-book":
            return {ds: {q["id"]: [] for q in qs} for ds, qs in self.questions.items()}
        source = {"bm25-rag": "bm25", "minilm-rag": "minilm"}.get(row)
        if source:
            return load_run(self.profile.name, source, self.bench)["runs"]
        return {ds: run["runs"][ds] for ds in self.questions}

    def answer(self, prompts: Sequence[Prompt], adapter: str | None, stats: DecodeStats) -> list[str]:
        """Greedy answers, with the `generator` adapter or the base model (adapter None); cached."""
        g = self.profile.generator
        weights = "base" if adapter is None else _state_hash(lora_state(self.model, adapter))
        tag = sha256_text(self.stage.model_fingerprint, weights, str(g.max_new_tokens))[:16]
        path = cache_dir() / "generations" / f"{tag}.json"
        cache = load_or_none(path, read_sealed_json, "generations", self.log) or {}
        keys = [sha256_text(p.text)[:32] for p in prompts]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = [i for k, i in first.items() if k not in cache]
        if todo:
            if adapter is None:
                ctx = self.model.disable_adapter()
            else:
                self.model.set_adapter(adapter)
                ctx = contextlib.nullcontext()
            try:
                with ctx:
                    outs = greedy_decode(self.model, self.tokenizer, [prompts[i] for i in todo], g.max_new_tokens,
                                         g.generate_batch_size, share_prefix=True, stats=stats,
                                         attn_implementation=g.decode_attention)
            finally:
                self.model.set_adapter("retriever")
            cache.update({keys[i]: o for i, o in zip(todo, outs)})
            write_sealed_json(path, cache)
        return [cache[k] for k in keys]

    def evaluate_rows(self, run: dict, rows: Sequence[str] = ROWS) -> dict:
        cfg = self.profile
        n_boot = cfg.retrieval.bootstrap_resamples
        text = {pid: p["text"] for pid, p in self.stage.passages.items()}
        results, timings, speed = {}, {}, {}
        for row in rows:
            t0 = time.perf_counter()
            passages = self.passages_for(row, run)
            adapter = GENERATOR_ADAPTER if row == "invar-rag" else None
            stats = DecodeStats()
            results[row] = {}
            for ds, qs in self.questions.items():
                prompts = [self.prompt(q["question"], passages[ds][q["id"]]) for q in qs]
                preds = self.answer(prompts, adapter, stats)
                per_q = {"ids": [q["id"] for q in qs], "prediction": preds,
                         "em": [exact_match(p, q["golden_answers"]) for p, q in zip(preds, qs)],
                         "f1": [f1(p, q["golden_answers"]) for p, q in zip(preds, qs)],
                         "acc": [substring_acc(p, q["golden_answers"]) for p, q in zip(preds, qs)],
                         "context_hit": [float(any(has_answer(text[pid], q["golden_answers"])
                                                   for pid in passages[ds][q["id"]][: cfg.generator.k]))
                                         for q in qs],
                         # what the generator is shown: each passage's title + first passage_tokens tokens
                         "window_hit": [float(any(has_answer(self.windows(pid), q["golden_answers"])
                                                  for pid in passages[ds][q["id"]][: cfg.generator.k]))
                                        for q in qs]}
                results[row][ds] = {"metrics": {m: bootstrap_ci(per_q[m], n_boot, cfg.seed)
                                                for m in (*METRICS, "context_hit", "window_hit")},
                                    "per_question": per_q}
            timings[f"{row}_s"] = round(time.perf_counter() - t0, 1)
            if stats.prompts:
                speed[row] = stats.as_dict()
            self.log(f"{row}: " + ", ".join(f"{ds} EM {r['metrics']['em']['mean']:.2f}" for ds, r in results[row].items()))
        # Every row against minilm-rag; and invar-rag against invar-retrieval (same passages, so the
        # difference is the generator adapter's own effect).
        pairs = [(row, "minilm-rag") for row in rows if row != "minilm-rag"] + [("invar-rag", "invar-retrieval")]
        pvalues = {}
        for row, base in pairs:
            if row not in results or base not in results:
                continue
            for ds in self.questions:
                pvalues[f"{row}_vs_{base}/{ds}"] = {
                    m: paired_bootstrap_pvalue(results[row][ds]["per_question"][m],
                                               results[base][ds]["per_question"][m], n_boot, cfg.seed)
                    for m in METRICS}
        return {"rows": results, "paired_pvalues": pvalues, "timings_s": timings, "decode_speed": speed,
                "k": cfg.generator.k, "n_shot": cfg.generator.n_shot, "retriever_mode": run["mode"],
                "demonstrations": self.demos}


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
