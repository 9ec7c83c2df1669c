"""What the generator trains and is validated on (docs/method.md §2): its questions, the passages each
prompt shows, and the target answer.

Questions come from stage 1's split (`splits.training_split`): training questions from the retriever's
training part, validation questions from its held-out part, demonstrations excluded from both. The
passages are the frozen retriever's top k; `generator.context_mix` decides which examples enter
(every one, only those whose shown windows hold an answer, or every one with an answer-bearing
passage swapped in where none is shown), and `generator.target_answer` which gold answer is the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ..config import Profile
from ..data import Benchmark
from ..llm.decode import Prompt
from ..metrics import has_answer
from ..splits import balanced_head, training_split
from .prompts import PassageWindows, target_answer


@dataclass
class Example:
    prompt: Prompt
    answer: str


def generator_questions(profile: Profile, bench: Benchmark, demos: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(training questions, validation questions) of the generator: the first `train_questions` of
    stage 1's training questions and the first `val_questions` of its held-out ones, sources in
    turn, demonstrations left out."""
    g = profile.generator
    train, val = training_split(profile, bench)
    skip = {d["id"] for d in demos}
    return balanced_head(train, g.train_questions, skip), balanced_head(val, g.val_questions, skip)


def shown_answer(windows: PassageWindows, pids: Sequence[str], answers: Sequence[str], k: int) -> bool:
    """Whether a gold answer is in the windows the prompt shows (title + first tokens of each of
    the first k passages): what the reader can read."""
    return any(has_answer(windows(pid), answers) for pid in list(pids)[:k])


def context_for(question: dict, ranked: Sequence[str], windows: PassageWindows, mix: str, k: int) -> list[str] | None:
    """The passages of one training prompt under `mix`, or None when the example is left out."""
    shown = list(ranked[:k])
    if shown_answer(windows, shown, question["golden_answers"], k) or mix == "retrieved":
        return shown
    if mix == "answer_only":
        return None
    # "oracle": the first answer-bearing passage whose window shows the answer, in place of the k-th
    meta = question.get("metadata", {})
    for pid in [*meta.get("gold_ids", []), *meta.get("answer_passage_ids", [])]:
        if pid in windows.passages and pid not in shown and has_answer(windows(pid), question["golden_answers"]):
            return shown[:k - 1] + [pid] if k else []
    return shown


def training_examples(profile: Profile, questions: Sequence[dict], ranked: Mapping[str, Sequence[str]],
                      windows: PassageWindows, prompt) -> tuple[list[Example], dict]:
    """The generator's training examples and their counts (how many questions, how many kept, how
    many show an answer). `prompt(question, passage_ids)` builds the adapter's prompt."""
    g = profile.generator
    examples, shown_hits, swapped = [], 0, 0
    for q in questions:
        pids = context_for(q, ranked[q["id"]], windows, g.context_mix, g.k)
        if pids is None:
            continue
        swapped += pids != list(ranked[q["id"]][:g.k])
        hit = shown_answer(windows, pids, q["golden_answers"], g.k)
        shown_hits += hit
        texts = [windows.passages[p]["text"] for p in pids]
        target = target_answer(q["golden_answers"], texts, g.target_answer, [windows(p) for p in pids])
        examples.append(Example(prompt(q["question"], pids), target))
    counts = {"questions": len(questions), "examples": len(examples), "answer_in_shown_windows": shown_hits,
              "answer_passage_swapped_in": swapped, "context_mix": g.context_mix, "target_answer": g.target_answer}
    if not examples:
        raise ValueError(f"no generator training examples: of {len(questions)} training questions (generator."
                         f"train_questions) none is kept by generator.context_mix = {g.context_mix!r}"
                         + (" (no question's shown windows hold an answer; use 'oracle' or 'retrieved', or more "
                            "questions)" if g.context_mix == "answer_only" else ""))
    return examples, counts
