"""Stage 2 as notebooks 05–06 run it.

`GenerationStage` holds the backbone with the `generator` adapter. It (1) reads the frozen retriever's
saved run for the evaluation, generator-training and validation questions
(`data/runs/<profile>/<variant>.json`; stage 1's entry point `stage1.runs.retriever_run` makes it once
when it is missing), (2) trains the `generator` adapter on cached trunk states and measures it before
and after (`diagnostics`: EM on validation and training questions, the base model's loss on the same
examples), and (3) scores the generation rows of docs/method.md §2 (`evaluate_row`, `summarize`).
Generated answers are cached on disk, keyed by the model, the adapter weights and the exact prompt.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from ..baselines import load_run
from ..config import Profile
from ..data import Benchmark
from ..integrity import load_or_none, read_sealed_json, write_sealed_json
from ..io_utils import sha256_text
from ..llm.backbone import GENERATOR, Backbone, generator_shape
from ..llm.decode import DecodeStats, Prompt
from ..llm.decode_readers import decode_readers
from ..llm.retriever import weights_digest
from ..metrics import bootstrap_ci, exact_match, f1, has_answer, paired_bootstrap_pvalue, substring_acc
from ..paths import cache_dir, data_dir
from . import ADAPTER_ROWS, ROWS
from .examples import Example, generator_questions, shown_answer, training_examples
from .prompts import PassageWindows, build_prompt, prefix_text, select_demonstrations
from .train import GeneratorData, mean_answer_loss, train_generator

METRICS = ("em", "f1", "acc")
LOSS_SAMPLE = 64  # training examples on which the base model's and the trained adapter's loss are compared
N_EXAMPLES = 8  # example answers, before and after the adapter, kept in the results


class GenerationStage:
    def __init__(self, profile: Profile, bench: Benchmark, backbone: Backbone | None = None, log=print):
        self.profile, self.bench, self.log = profile, bench, log
        self.timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.backbone = backbone or Backbone.from_profile(profile, log=log)
        self.backbone.add_adapter(GENERATOR, generator_shape(profile), replace=backbone is not None)
        self.model, self.tokenizer = self.backbone.model, self.backbone.tokenizer
        self.timings["load_backbone_s"] = time.perf_counter() - t0
        g = profile.generator
        self.passages = bench.passages()
        self.demos = select_demonstrations(bench, g, profile.seed)
        self.base_prefix = prefix_text(g, self.demos)
        self.adapter_prefix = self.base_prefix if g.adapter_prompt == "same" else g.instruction
        self.windows = PassageWindows(self.tokenizer, self.passages, g)
        self.questions = {ds: bench.eval_records(ds) for ds in bench.eval}
        self.train_questions, self.val_questions = generator_questions(profile, bench, self.demos)

    # --- (1) the frozen retriever's run --------------------------------------------------------
    def retriever_run(self) -> dict:
        """The retriever variant's ranking for every evaluation, generator-training and validation
        question, read from its saved run (made by stage 1's entry point when missing)."""
        from ..stage1.runs import retriever_run

        splits = {**self.questions, "train": self.train_questions, "val": self.val_questions}
        run = retriever_run(self.profile, self.bench, self.backbone, splits, log=self.log)
        if run["made_now"]:
            self.timings.update(run["timings_s"])
        return run

    # --- (2) the generator adapter ---------------------------------------------------------------
    def prompt(self, question: str, passage_ids: Sequence[str], adapter: bool = False) -> Prompt:
        """The base rows' prompt, or the adapter's (`generator.adapter_prompt`)."""
        return build_prompt(self.profile.generator, self.adapter_prefix if adapter else self.base_prefix, question,
                            passage_ids, self.windows)

    def training_examples(self, run: dict) -> tuple[list[Example], dict]:
        return training_examples(self.profile, self.train_questions, run["runs"]["train"], self.windows,
                                 lambda q, pids: self.prompt(q, pids, adapter=True))

    def train_generator(self, run: dict, reuse: bool = True, loss_sample: bool = True) -> dict:
        """Train the `generator` adapter (or reuse its finished checkpoint). With `loss_sample`, also the
        base model's and the generator's answer loss on the first training examples (notebook 05's
        diagnostic; notebook 06, which only needs the adapter, skips it)."""
        examples, counts = self.training_examples(run)
        data = GeneratorData(self.backbone, examples, self.backbone.split(GENERATOR),
                             self.profile.generator.trunk_batch_size)
        t0 = time.perf_counter()
        out = data_dir() / "checkpoints" / self.profile.name / "generator"
        result = train_generator(self.backbone, data, self.profile, out, reuse=reuse,
                                 data_key=sha256_text(data.key(), data.trunk_cache.dir.name)[:16], log=self.log)
        # trunk states are read or computed inside train_generator (not at all when reused)
        self.timings["generator_trunk_s"] = result.get("trunk_s", 0.0)
        self.timings["generator_train_s"] = time.perf_counter() - t0 - self.timings["generator_trunk_s"]
        if loss_sample:
            sample = list(range(min(LOSS_SAMPLE, len(data))))
            t0 = time.perf_counter()
            result["loss_on_sample"] = {"examples": len(sample),
                                        "base model": mean_answer_loss(self.backbone, data, None, sample),
                                        "generator": mean_answer_loss(self.backbone, data, GENERATOR, sample)}
            self.timings["loss_sample_s"] = time.perf_counter() - t0
        result["counts"] = counts
        result["n_examples"] = len(data)
        result["tokens_per_example"] = float(np.mean([len(data.prefix_ids) + len(i) for i in data.ids]))
        result["prefix_tokens"] = len(data.prefix_ids)
        return result

    def diagnostics(self, run: dict) -> dict:
        """EM of the base model (base prompt) and of the generator (its prompt) on the same
        validation questions and on the first `diagnostic_questions` training questions, with the
        frozen retriever's passages: is the adapter learning, and does it generalise?"""
        g, out = self.profile.generator, {}
        t0 = time.perf_counter()
        for split, qs in (("val", self.val_questions), ("train", self.train_questions[: g.diagnostic_questions])):
            if not qs:
                continue
            ranked = run["runs"][split]
            shown = [shown_answer(self.windows, ranked[q["id"]], q["golden_answers"], g.k) for q in qs]
            out[split] = {"n": len(qs), "answer_in_shown_windows": float(np.mean(shown))}
            base = [self.prompt(q["question"], ranked[q["id"]]) for q in qs]
            tuned = [self.prompt(q["question"], ranked[q["id"]], adapter=True) for q in qs]
            if [p.text for p in base] == [p.text for p in tuned]:  # one decode for both readers
                preds = dict(zip(("base model", "generator"), self.answers(base, [None, GENERATOR])))
            else:
                preds = {"base model": self.answer(base, None), "generator": self.answer(tuned, GENERATOR)}
            for who in ("base model", "generator"):
                em = [exact_match(p, q["golden_answers"]) for p, q in zip(preds[who], qs)]
                out[split][who] = {"em": float(np.mean(em)),
                                   "extraction": float(np.mean([e for e, s in zip(em, shown) if s])) if any(shown) else None}
        self.timings["diagnostics_s"] = time.perf_counter() - t0
        return out

    # --- (3) generation rows ---------------------------------------------------------------------
    def passages_for(self, row: str, run: dict) -> dict[str, dict[str, list[str]]]:
        if row == "closed-book":
            return {ds: {q["id"]: [] for q in qs} for ds, qs in self.questions.items()}
        source = {"bm25-rag": "bm25", "minilm-rag": "minilm", "minilm-rag+generator": "minilm"}.get(row)
        if source:
            return load_run(self.profile.name, source, self.bench)["runs"]
        return {ds: run["runs"][ds] for ds in self.questions}

    def answers(self, prompts: Sequence[Prompt], adapters: Sequence[str | None],
                stats: Sequence[DecodeStats] | None = None) -> list[list[str]]:
        """Greedy answers to the same `prompts` by each of `adapters` (None: the base model), cached
        on disk per model, adapter weights and prompt. Readers that still need answers decode together,
        sharing the prefill below the generator's first LoRA layer (`llm/decode_readers.py`)."""
        g = self.profile.generator
        stats = list(stats) if stats is not None else [DecodeStats() for _ in adapters]
        keys = [sha256_text(p.text)[:32] for p in prompts]
        stores, todo = [], []
        for adapter in adapters:
            weights = "base" if adapter is None else weights_digest(self.backbone.adapter_state(adapter))[:16]
            path = cache_dir() / "generations" / f"{sha256_text(self.backbone.model_fingerprint, weights, str(g.max_new_tokens))[:16]}.json"
            store = load_or_none(path, read_sealed_json, "generations", self.log) or {}
            stores.append((path, store))
            todo.append({k for k in keys if k not in store})
        need = [j for j, t in enumerate(todo) if t]
        if need:
            union = sorted(set().union(*(todo[j] for j in need)))
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            batch = [prompts[first[k]] for k in union]
            outs = decode_readers(self.model, self.tokenizer, batch,
                                  [lambda a=adapters[j]: self.backbone.adapter(a) for j in need],
                                  split=self.backbone.split(GENERATOR), trunk=lambda: self.backbone.adapter(None),
                                  max_new_tokens=g.max_new_tokens, batch_size=g.generate_batch_size,
                                  stats=[stats[j] for j in need], attn_implementation=g.decode_attention)
            for j, answers in zip(need, outs):
                path, store = stores[j]
                store.update(zip(union, answers))
                write_sealed_json(path, store)
        return [[store[k] for k in keys] for _, store in stores]

    def answer(self, prompts: Sequence[Prompt], adapter: str | None, stats: DecodeStats | None = None) -> list[str]:
        """Greedy answers of one reader (`answers` with one adapter)."""
        return self.answers(prompts, [adapter], None if stats is None else [stats])[0]

    def row_prompts(self, row: str, run: dict) -> tuple[dict, list[Prompt]]:
        """(the passages of `row` per dataset and question, its prompts over every dataset in order)."""
        passages, adapter = self.passages_for(row, run), row in ADAPTER_ROWS
        return passages, [self.prompt(q["question"], passages[ds][q["id"]], adapter)
                          for ds, qs in self.questions.items() for q in qs]

    def evaluate_rows(self, rows: Sequence[str], run: dict) -> dict:
        """Generation rows on every dataset: predictions, EM / F1 / acc, what the prompts showed
        (`context_hit`: an answer in the top-k whole passages; `window_hit`: in the shown windows) and
        the extraction rate (EM among the questions whose shown windows hold an answer). Rows that
        read the same prompts (a row and its generator row, with the `same` adapter prompt) decode
        together."""
        groups: dict[tuple, list[str]] = {}
        prompts_of = {}
        for row in rows:
            passages, prompts = self.row_prompts(row, run)
            prompts_of[row] = (passages, prompts)
            groups.setdefault(tuple(p.text for p in prompts), []).append(row)
        out = {}
        for members in groups.values():
            t0 = time.perf_counter()
            stats = [DecodeStats() for _ in members]
            preds = self.answers(prompts_of[members[0]][1], [GENERATOR if r in ADAPTER_ROWS else None for r in members],
                                 stats)
            seconds = (time.perf_counter() - t0) / len(members)
            for row, p, st in zip(members, preds, stats):
                out[row] = {"results": self._score(prompts_of[row][0], p), "seconds": round(seconds, 1),
                            "decode_speed": st.as_dict() if st.prompts else None}
                self.log(f"{row}: " + ", ".join(f"{ds} EM {r['metrics']['em']['mean']:.2f}"
                                                for ds, r in out[row]["results"].items()))
        return {row: out[row] for row in rows}

    def evaluate_row(self, row: str, run: dict) -> dict:
        return self.evaluate_rows([row], run)[row]

    def _score(self, passages: dict, predictions: list[str]) -> dict:
        cfg = self.profile
        n_boot, k = cfg.retrieval.bootstrap_resamples, cfg.generator.k
        out, at = {}, 0
        for ds, qs in self.questions.items():
            preds = predictions[at:at + len(qs)]
            at += len(qs)
            per_q = {"ids": [q["id"] for q in qs], "prediction": preds,
                     "em": [exact_match(p, q["golden_answers"]) for p, q in zip(preds, qs)],
                     "f1": [f1(p, q["golden_answers"]) for p, q in zip(preds, qs)],
                     "acc": [substring_acc(p, q["golden_answers"]) for p, q in zip(preds, qs)],
                     "context_hit": [float(any(has_answer(self.passages[pid]["text"], q["golden_answers"])
                                               for pid in passages[ds][q["id"]][:k])) for q in qs],
                     "window_hit": [float(shown_answer(self.windows, passages[ds][q["id"]], q["golden_answers"], k))
                                    for q in qs]}
            metrics = {m: bootstrap_ci(per_q[m], n_boot, cfg.seed) for m in (*METRICS, "context_hit", "window_hit")}
            shown = [e for e, w in zip(per_q["em"], per_q["window_hit"]) if w]
            if shown:
                metrics["extraction"] = bootstrap_ci(shown, n_boot, cfg.seed)
            out[ds] = {"metrics": metrics, "per_question": per_q}
        return out

    def summarize(self, rows: dict, run: dict) -> dict:
        """Notebook 06's results from its rows (`evaluate_row` outputs): paired p-values, how many
        answers each adapter row changes against its base row, and a few examples."""
        cfg = self.profile
        n_boot = cfg.retrieval.bootstrap_resamples
        results = {row: r["results"] for row, r in rows.items()}
        # Every row against minilm-rag; each adapter row against the base model on the same passages
        # (the adapter's own effect); invar-rag against minilm-rag + generator (the retriever's, both read).
        pairs = [(row, "minilm-rag") for row in results if row != "minilm-rag"]
        pairs += [(row, base) for row, base in ADAPTER_ROWS.items()] + [("invar-rag", "minilm-rag+generator")]
        pvalues = {}
        for row, base in dict.fromkeys(pairs):
            if row not in results or base not in results:
                continue
            for ds in self.questions:
                pvalues[f"{row}_vs_{base}/{ds}"] = {
                    m: paired_bootstrap_pvalue(results[row][ds]["per_question"][m],
                                               results[base][ds]["per_question"][m], n_boot, cfg.seed)
                    for m in METRICS}
        return {"rows": results, "paired_pvalues": pvalues, "changed": self.changed(results),
                "examples": self.examples(results), "timings_s": {f"{row}_s": r["seconds"] for row, r in rows.items()},
                "decode_speed": {row: r["decode_speed"] for row, r in rows.items() if r["decode_speed"]},
                "k": cfg.generator.k, "n_shot": cfg.generator.n_shot, "adapter_prompt": cfg.generator.adapter_prompt,
                "retriever_mode": run["mode"], "demonstrations": self.demos}

    def evaluate_all(self, run: dict, rows: Sequence[str] = ROWS) -> dict:
        """Every row, then `summarize`: notebook 06 in one call."""
        return self.summarize(self.evaluate_rows(rows, run), run)

    def changed(self, results: dict) -> dict:
        """For each adapter row against the base model on the same passages: answers that differ,
        and questions whose EM the adapter turns 0 → 1 and 1 → 0."""
        out = {}
        for row, base in ADAPTER_ROWS.items():
            if row not in results or base not in results:
                continue
            out[row] = {}
            for ds in self.questions:
                a, b = results[row][ds]["per_question"], results[base][ds]["per_question"]
                out[row][ds] = {"vs": base, "n": len(a["em"]),
                                "answer_changed": sum(x != y for x, y in zip(a["prediction"], b["prediction"])),
                                "em_gained": sum(x > y for x, y in zip(a["em"], b["em"])),
                                "em_lost": sum(x < y for x, y in zip(a["em"], b["em"]))}
        return out

    def examples(self, results: dict, n: int = N_EXAMPLES) -> list[dict]:
        """The first `n` questions (datasets in order) on which `invar-rag` answers otherwise than the
        base model reading the same passages (`invar-retrieval`)."""
        if "invar-rag" not in results or "invar-retrieval" not in results:
            return []
        out = []
        for ds, qs in self.questions.items():
            after, before = results["invar-rag"][ds]["per_question"], results["invar-retrieval"][ds]["per_question"]
            for i, q in enumerate(qs):
                if len(out) < n and after["prediction"][i] != before["prediction"][i]:
                    out.append({"dataset": ds, "question": q["question"], "gold": q["golden_answers"][:3],
                                "answer in shown windows": bool(after["window_hit"][i]),
                                "base model (invar-retrieval)": before["prediction"][i],
                                "generator (invar-rag)": after["prediction"][i]})
        return out
