"""Query rewrites: validation rules, the rule-based fallback, the shared-prefix prompt and the cache."""
from __future__ import annotations

import pytest

from invar_rag_lib.integrity import read_sealed_json
from invar_rag_lib.llm.weights import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.decode import prompt_ids
from invar_rag_lib.stage1 import rewrites as R

Q = "who wrote the novel moby dick"


@pytest.mark.parametrize("text,ok", [
    ("which author is the writer of moby dick?", True),
    ("who wrote the novel moby dick?", False),  # the question itself
    ("Herman Melville wrote moby dick?", False),  # contains the answer
    ("which author wrote it", False),  # not a question
    ("what is this?", False),  # lost the question's content words
])
def test_valid_rewrite(text, ok):
    assert R.valid_rewrite(text, Q, ["Herman Melville"]) is ok


def test_clean_generation_strips_preambles_and_arrows():
    assert R.clean_generation("Rewrite: 'which author wrote moby dick?'") == "which author wrote moby dick?"
    assert R.clean_generation("'who wrote x' -> 'which writer wrote x?'") == "which writer wrote x?"


def test_rule_rewrites_differ_per_variant_and_keep_the_question():
    forms = {R.rule_rewrite("Who wrote Moby Dick?", v) for v in (1, 2, 3)}
    assert len(forms) == 3 and all("who wrote Moby Dick?" in f for f in forms)


def test_prompt_shares_its_prefix_and_tokenizes_like_the_whole_text():
    tok = tiny_tokenizer()
    a, b = (R.rewrite_prompt(tok, R.INSTRUCTIONS[0], q) for q in (Q, "capital of france"))
    assert a.prefix == b.prefix and Q in a.suffix and "capital of france" not in b.prefix
    prefix, suffix = prompt_ids(tok, a)
    assert prefix + suffix == tok(a.text)["input_ids"]


def test_make_rewrites_falls_back_to_rules_and_caches(tmp_path, monkeypatch):
    model, tok = tiny_llama(seed=3).eval(), tiny_tokenizer()
    items = [{"question": Q, "golden_answers": ["Herman Melville"]},
             {"question": "capital of france?", "golden_answers": ["Paris"]}]
    path = tmp_path / "rewrites.json"
    out = R.make_rewrites(items, 2, "llm", path, model, tok, log=lambda *a: None)
    assert set(out) == {it["question"] for it in items} and all(len(v) == 2 for v in out.values())
    for it in items:  # a random tiny model writes nonsense: every rewrite falls back to a rule
        for r, entry in enumerate(out[it["question"]], start=1):
            assert entry == {"text": R.rule_rewrite(it["question"], r), "source": "rule"}
    assert len(read_sealed_json(path)) == 2  # one entry per instruction, sealed

    import invar_rag_lib.llm.decode as decode
    monkeypatch.setattr(decode, "greedy_decode", lambda *a, **k: pytest.fail("decoded again"))
    assert R.make_rewrites(items, 2, "llm", path, model, tok, log=lambda *a: None) == out


def test_make_rewrites_handles_a_repeated_question_once(tmp_path, monkeypatch):
    import invar_rag_lib.llm.decode as decode

    calls = []

    def fake_decode(model, tok, prompts, max_new, batch_size, **kw):
        calls.append((len(prompts), batch_size))
        return ["which author is the writer of moby dick?"] * len(prompts)

    monkeypatch.setattr(decode, "greedy_decode", fake_decode)
    tok, path, logs = tiny_tokenizer(), tmp_path / "rewrites.json", []
    first = [{"question": Q, "golden_answers": ["Herman Melville"]}]
    R.make_rewrites(first, 1, "llm", path, object(), tok, batch_size=7, log=logs.append)
    again = first * 2 + [{"question": "who wrote the novel ulysses", "golden_answers": ["Joyce"]}]
    out = R.make_rewrites(again, 1, "llm", path, object(), tok, batch_size=7, log=logs.append)
    assert calls == [(1, 7), (1, 7)]  # the repeated question is neither decoded twice nor counted as cached
    assert logs[-1] == "generating rewrite 1 for 1 questions (1 cached)"
    assert out[Q] == [{"text": "which author is the writer of moby dick?", "source": "llm"}]  # one per rewrite
    twice = [{"question": Q, "golden_answers": ["Ahab"]}, {"question": Q, "golden_answers": ["moby dick"]}]
    out = R.make_rewrites(twice, 1, "llm", path, object(), tok, batch_size=7, log=logs.append)
    assert out[Q] == [{"text": R.rule_rewrite(Q, 1), "source": "rule"}]  # it leaks the second copy's answer
