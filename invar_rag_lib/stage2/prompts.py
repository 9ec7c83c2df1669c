"""Generation prompts (docs/method.md §2): instruction + n-shot demonstrations + top-k passages + question.

A prompt is kept as two token lists, `prefix` (instruction and demonstrations, the same for every
question) and `suffix` (passages and question), tokenized separately and concatenated. Training,
evaluation with the shared-prefix cache and evaluation without it therefore all see exactly the
same tokens.
"""
from __future__ import annotations

import random
from typing import Mapping, Sequence

from ..config import GeneratorConfig
from ..data import Benchmark
from ..llm.decode import Prompt




def select_demonstrations(bench: Benchmark, cfg: GeneratorConfig, seed: int) -> list[dict]:
    """`n_shot` (question, first answer) pairs from `demo_sources`, fixed by `seed`: short
    questions (≤ 25 words) with short ASCII answers (≤ 5 words), as short-answer QA demonstrations
    need (TriviaQA lists answers in other scripts and some questions run to paragraphs)."""
    pool = [r for s in cfg.demo_sources for r in bench.train_records(s)
            if len(r["golden_answers"][0].split()) <= 5 and r["golden_answers"][0].isascii()
            and len(r["question"].split()) <= 25]
    if len(pool) < cfg.n_shot:
        raise ValueError(f"only {len(pool)} short-answer training questions for {cfg.n_shot} demonstrations: "
                         f"lower generator.n_shot or add generator.demo_sources")
    rng = random.Random(f"{seed}:demonstrations")
    return [{"question": r["question"], "answer": r["golden_answers"][0], "id": r["id"]}
            for r in rng.sample(pool, cfg.n_shot)]


def prefix_text(cfg: GeneratorConfig, demos: Sequence[dict]) -> str:
    return cfg.instruction + "".join(cfg.demo_template.format(q=d["question"], a=d["answer"]) for d in demos)


class PassageWindows:
    """Each passage cut to its first `passage_tokens` tokens (memoised: passages recur)."""

    def __init__(self, tokenizer, passages: Mapping[str, dict], cfg: GeneratorConfig):
        self.tokenizer, self.passages, self.cfg, self.memo = tokenizer, passages, cfg, {}

    def __call__(self, pid: str) -> str:
        if pid not in self.memo:
            p = self.passages[pid]
            ids = self.tokenizer(p["text"], add_special_tokens=False)["input_ids"][: self.cfg.passage_tokens]
            text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
            title = p["title"].strip()
            self.memo[pid] = self.cfg.passage_template.format(passage=f"{title}. {text}" if title else text)
        return self.memo[pid]


def build_prompt(cfg: GeneratorConfig, prefix: str, question: str, passage_ids: Sequence[str],
                 windows: PassageWindows | None) -> Prompt:
    """The first `cfg.k` of `passage_ids` (none for closed-book: pass an empty list)."""
    shown = "".join(windows(pid) for pid in list(passage_ids)[: cfg.k]) if passage_ids else ""
    return Prompt(prefix, shown + cfg.question_template.format(q=question))


def target_answer(answers: Sequence[str], passage_texts: Sequence[str], rule: str,
                  shown_texts: Sequence[str] = ()) -> str:
    """The training target, its whitespace collapsed (NQ's answers carry non-breaking spaces).

    "first": the first gold answer (docs/method.md). "in_context": the first gold answer that the
    shown windows contain (what the reader can copy), else the first that the whole passages
    contain, else the shortest (fewest words, then characters): TriviaQA lists aliases in no order,
    and its first is often no answer a reader would give ('Beech woods' for the genus Fagus,
    "I'm not a crook" for the president of CREEP)."""
    if rule == "in_context":
        from ..metrics import has_answer

        for texts in (shown_texts, passage_texts):
            for a in answers:
                if any(has_answer(t, [a]) for t in texts):
                    return " ".join(a.split())
        return " ".join(min(answers, key=lambda a: (len(a.split()), len(a))).split())
    return " ".join(answers[0].split())
