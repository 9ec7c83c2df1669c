"""Generation prompts: passage windows, closed-book, demonstrations and the training target."""
import pytest

from invar_rag_lib.config import GeneratorConfig, load_profile, ConfigError
from invar_rag_lib.llm.weights import tiny_tokenizer
from invar_rag_lib.stage2.prompts import PassageWindows, build_prompt, prefix_text, target_answer

PASSAGES = {"a": {"title": "Mars", "text": "Mars is often called the Red Planet because of its colour."},
            "b": {"title": "", "text": "It is the great extensor muscle of the knee."},
            "c": {"title": "Rome", "text": "The Colosseum is in Rome."}}


def test_prompt_has_prefix_k_passages_and_question():
    cfg = GeneratorConfig(k=2, passage_tokens=1000, n_shot=1)
    prefix = prefix_text(cfg, [{"question": "capital of peru", "answer": "Lima"}])
    assert prefix.endswith("Question: capital of peru\nAnswer: Lima\n\n")
    p = build_prompt(cfg, prefix, "which planet is red", ["a", "b", "c"], PassageWindows(tiny_tokenizer(), PASSAGES, cfg))
    assert p.prefix == prefix
    assert p.suffix == ("Passage: Mars. Mars is often called the Red Planet because of its colour.\n"
                        "Passage: It is the great extensor muscle of the knee.\n"
                        "Question: which planet is red\nAnswer:")


def test_closed_book_has_no_passages_and_windows_cut_passages():
    cfg = GeneratorConfig(k=3, passage_tokens=3)
    tok = tiny_tokenizer()
    windows = PassageWindows(tok, PASSAGES, cfg)
    assert build_prompt(cfg, "P\n", "q?", [], windows).suffix == "Question: q?\nAnswer:"
    shown = windows("a")
    assert shown.startswith("Passage: Mars. ") and "colour" not in shown
    body = shown[len("Passage: Mars. "):].strip()
    assert len(tok(body, add_special_tokens=False)["input_ids"]) <= 3


def test_target_answer_prefers_an_answer_the_reader_is_shown():
    answers = ["Yellowest", "Yellow (colour)", "Yellow"]
    assert target_answer(answers, ["the digger is painted yellow"], "in_context") == "Yellow"
    assert target_answer(answers, ["the digger is painted yellow"], "first") == "Yellowest"
    # the shown windows first, then the whole passages, then the shortest alias
    crook = ["I'm not a crook", "Richard Nixon", "Nixon"]
    assert target_answer(crook, ["Richard Nixon ran again"], "in_context", ["... Nixon's committee"]) == "Nixon"
    assert target_answer(crook, ["Richard Nixon ran again"], "in_context", ["nothing here"]) == "Richard Nixon"
    assert target_answer(crook, ["no name here"], "in_context") == "Nixon"
    assert target_answer(["October\xa012,\xa02017"], [], "first") == "October 12, 2017"  # whitespace collapsed


def test_generator_config_is_validated():
    with pytest.raises(ConfigError, match="generator.target_answer"):
        load_profile("smoke", {"generator.target_answer": "best"})
    with pytest.raises(ConfigError, match="generator.demo_sources"):
        load_profile("smoke", {"generator.demo_sources": ["msmarco"]})
    with pytest.raises(ConfigError, match="ablations"):
        load_profile("smoke", {"ablations.lams": [-1.0]})
    assert load_profile("smoke", {"ablations.lams": [0, 1]}).ablations.lams == (0.0, 1.0)
