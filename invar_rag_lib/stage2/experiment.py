"""Stage 2 as notebooks 05–06 run it.

`GenerationStage` holds the backbone with the `generator` adapter. It (1) reads the frozen retriever's
saved run for the evaluation and generator-training questions (`data/runs/<profile>/<variant>.json`;
stage 1's entry point `stage1.runs.retriever_run` makes it once when it is missing), (2) trains the
`generator` adapter on cached trunk states, and (3) scores the generation rows of docs/method.md §2.
Generated answers are cached on disk, keyed by the model, the adapter weights and the exact prompt.
"""
from __future__ import annotations

import hashlib
import random
import time
from typing import Sequence

import numpy as np
import torch

from ..baselines import load_run
from ..config import Profile
from ..data import Benchmark
from ..integrity import load_or_none, read_sealed_json, write_sealed_json
from ..io_utils import sha256_text
from ..llm.backbone import GENERATOR, Backbone, generator_shape
from ..llm.decode import DecodeStats, Prompt, greedy_decode
from ..metrics import bootstrap_ci, exact_match, f1, has_answer, paired_bootstrap_pvalue, substring_acc
from ..paths import cache_dir, data_dir
from . import ROWS
from .prompts import PassageWindows, build_prompt, prefix_text, select_demonstrations, target_answer
from .train import Example, GeneratorData, train_generator

METRICS = ("em", "f1", "acc")


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
    def __init__(self, profile: Profile, bench: Benchmark, backbone: Backbone | None = None, log=print):
        self.profile, self.bench, self.log = profile, bench, log
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.backbone = backbone or Backbone.from_profile(profile, log=log)
        self.backbone.add_adapter(GENERATOR, generator_shape(profile))
        self.model, self.tokenizer = self.backbone.model, self.backbone.tokenizer
        self.timings["load_backbone_s"] = time.perf_counter() - t0
        g = profile.generator
        self.passages = bench.passages()
        self.demos = select_demonstrations(bench, g, profile.seed)
        self.prefix = prefix_text(g, self.demos)
        self.windows = PassageWindows(self.tokenizer, self.passages, g)
        self.questions = {ds: bench.eval_records(ds) for ds in bench.eval}
        self.train_questions = select_generator_questions(bench, profile, {d["id"] for d in self.demos})

    # --- (1) the frozen retriever's run --------------------------------------------------------
    def retriever_run(self) -> dict:
        """The retriever variant's ranking for every evaluation and generator-training question,
        read from its saved run (made by stage 1's entry point when missing)."""
        from ..stage1.runs import retriever_run

        run = retriever_run(self.profile, self.bench, self.backbone, {**self.questions, "train": self.train_questions},
                            log=self.log)
        if run["made_now"]:
            self.timings.update(run["timings_s"])
        return run

    # --- (2) the generator adapter ---------------------------------------------------------------
    def prompt(self, question: str, passage_ids: Sequence[str]) -> Prompt:
        return build_prompt(self.profile.generator, self.prefix, question, passage_ids, self.windows)

    def training_examples(self, run: dict) -> list[Example]:
        g, train = self.profile.generator, run["runs"]["train"]
        return [Example(self.prompt(q["question"], train[q["id"]]),
                        target_answer(q["golden_answers"], [self.passages[p]["text"] for p in train[q["id"]][:g.k]],
                                      g.target_answer))
                for q in self.train_questions]

    def train_generator(self, run: dict, reuse: bool = True) -> dict:
        data = GeneratorData(self.backbone, self.training_examples(run), self.backbone.split(GENERATOR),
                             self.profile.generator.trunk_batch_size)
        t0 = time.perf_counter()
        out = data_dir() / "checkpoints" / self.profile.name / "generator"
        result = train_generator(self.backbone, data, self.profile, out, reuse=reuse,
                                 data_key=sha256_text(data.key(), data.trunk_cache.dir.name)[:16], log=self.log)
        # trunk states are read or computed inside train_generator (not at all when reused)
        self.timings["generator_trunk_s"] = result.get("trunk_s", 0.0)
        self.timings["generator_train_s"] = time.perf_counter() - t0 - self.timings["generator_trunk_s"]
        result["n_examples"] = len(data)
        result["tokens_per_example"] = float(np.mean([len(i) for i in data.ids]))
        return result

    # --- (3) generation rows ---------------------------------------------------------------------
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
        weights = "base" if adapter is None else _state_hash(self.backbone.adapter_state(adapter))
        tag = sha256_text(self.backbone.model_fingerprint, weights, str(g.max_new_tokens))[:16]
        path = cache_dir() / "generations" / f"{tag}.json"
        cache = load_or_none(path, read_sealed_json, "generations", self.log) or {}
        keys = [sha256_text(p.text)[:32] for p in prompts]
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = [i for k, i in first.items() if k not in cache]
        if todo:
            with self.backbone.adapter(adapter):
                outs = greedy_decode(self.model, self.tokenizer, [prompts[i] for i in todo], g.max_new_tokens,
                                     g.generate_batch_size, share_prefix=True, stats=stats,
                                     attn_implementation=g.decode_attention)
            cache.update({keys[i]: o for i, o in zip(todo, outs)})
            write_sealed_json(path, cache)
        return [cache[k] for k in keys]

    def evaluate_rows(self, run: dict, rows: Sequence[str] = ROWS) -> dict:
        cfg = self.profile
        n_boot = cfg.retrieval.bootstrap_resamples
        text = {pid: p["text"] for pid, p in self.passages.items()}
        results, timings, speed = {}, {}, {}
        for row in rows:
            t0 = time.perf_counter()
            passages = self.passages_for(row, run)
            adapter = GENERATOR if row == "invar-rag" else None
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
