"""What the generator trains and is validated on: stage 1's split, demonstrations left out, balanced
sources, and the three context mixes; and that stage 2 imports nothing of stage 1's preparation or
training (it reads the frozen retriever's saved run)."""
import ast
from pathlib import Path

import pytest

from invar_rag_lib.config import profile_from_dict
from invar_rag_lib.llm.decode import Prompt
from invar_rag_lib.llm.weights import tiny_tokenizer
from invar_rag_lib.splits import balanced_head, training_split
from invar_rag_lib.stage2.examples import context_for, generator_questions, shown_answer, training_examples
from invar_rag_lib.stage2.prompts import PassageWindows

from conftest import tiny_profile_dict

PASSAGES = {"a": {"title": "Mars", "text": "Mars is called the Red Planet."},
            "b": {"title": "Venus", "text": "Venus is the second planet."},
            "c": {"title": "Rome", "text": "The Colosseum is in Rome."},
            "gold": {"title": "Saturn", "text": "Saturn has rings of ice."}}


def _profile(tmp_path, **generator):
    values = tiny_profile_dict(tmp_path / "reports")
    values["stage1"] = {"train_questions": 8, "val_questions": 4}
    values["generator"] = {"k": 2, "passage_tokens": 32, **generator}
    return profile_from_dict(values)


def test_generator_questions_are_stage_ones_split_without_demonstrations(built_tiny, tmp_path):
    _, bench = built_tiny
    values = tiny_profile_dict(tmp_path / "reports")
    values["stage1"] = {"train_questions": 2, "val_questions": 2}
    values["generator"] = {"train_questions": 2, "val_questions": 2}
    profile = profile_from_dict(values)
    train1, val1 = training_split(profile, bench)
    assert train1 and val1
    demos = [{"id": train1[0]["id"]}]
    train, val = generator_questions(profile, bench, demos)
    assert [q["id"] for q in train] == [q["id"] for q in train1[1:]]  # the demonstration left out
    assert [q["id"] for q in val] == [q["id"] for q in val1]
    assert not {q["id"] for q in train} & {q["id"] for q in val}
    eval_questions = {q["question"] for ds in bench.eval for q in bench.eval_records(ds)}
    assert not {q["question"] for q in train + val} & eval_questions


def test_balanced_head_takes_the_sources_in_turn():
    qs = [{"id": f"tqa_dev/{i}"} for i in range(5)] + [{"id": f"nq_gold/{i}"} for i in range(5)]
    head = balanced_head(qs, 4)
    assert [q["id"] for q in head] == ["tqa_dev/0", "nq_gold/0", "tqa_dev/1", "nq_gold/1"]
    assert [q["id"] for q in balanced_head(qs, 3, exclude={"tqa_dev/0"})] == ["tqa_dev/1", "nq_gold/0", "tqa_dev/2"]


@pytest.mark.parametrize("mix, expected", [("retrieved", ["b", "c"]), ("answer_only", None), ("oracle", ["b", "gold"])])
def test_context_mix_of_an_example_whose_windows_show_no_answer(mix, expected, tmp_path):
    profile = _profile(tmp_path, context_mix=mix)
    windows = PassageWindows(tiny_tokenizer(), PASSAGES, profile.generator)
    q = {"id": "q", "question": "what has rings?", "golden_answers": ["rings of ice"],
         "metadata": {"gold_ids": ["gold"], "answer_passage_ids": []}}
    assert not shown_answer(windows, ["b", "c"], q["golden_answers"], 2)
    assert context_for(q, ["b", "c", "a"], windows, mix, 2) == expected
    hit = {**q, "golden_answers": ["Red Planet"]}
    assert context_for(hit, ["a", "b"], windows, mix, 2) == ["a", "b"]  # an answer is shown: kept as retrieved


def test_training_examples_count_what_they_show(tmp_path):
    profile = _profile(tmp_path, context_mix="answer_only", target_answer="in_context")
    windows = PassageWindows(tiny_tokenizer(), PASSAGES, profile.generator)
    qs = [{"id": "1", "question": "red planet?", "golden_answers": ["the Red One", "Red Planet"], "metadata": {}},
          {"id": "2", "question": "rings?", "golden_answers": ["rings of ice"], "metadata": {}}]
    ranked = {"1": ["a", "b"], "2": ["b", "c"]}
    examples, counts = training_examples(profile, qs, ranked, windows, lambda q, pids: Prompt("P\n", q + str(pids)))
    assert len(examples) == 1 and examples[0].answer == "Red Planet"  # the answer the windows show
    assert counts == {"questions": 2, "examples": 1, "answer_in_shown_windows": 1, "answer_passage_swapped_in": 0,
                      "context_mix": "answer_only", "target_answer": "in_context"}


def test_stage2_imports_nothing_of_stage1s_preparation_or_training():
    """Stage 2 loads the backbone and reads the frozen retriever's saved run; only stage 1's entry
    point (`stage1.runs`) may be imported, to make that run when it is missing."""
    forbidden = {"experiment", "pipeline", "train", "prepare", "ablations", "groups", "lsr", "rewrites"}
    root = Path(__file__).resolve().parents[1] / "invar_rag_lib" / "stage2"
    seen = []
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.lstrip(".").startswith("stage1"):
                parts = node.module.lstrip(".").split(".")
                modules = parts[1:2] or [a.name for a in node.names]
                seen += modules
                assert not set(modules) & forbidden, (path.name, node.module)
    assert seen == ["runs"]  # the one entry point, and the check saw it
