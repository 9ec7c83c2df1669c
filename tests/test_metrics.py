"""Golden tests for invar_rag_lib.metrics.

Expected values are written out by hand (not computed with the code under
test), so a change in semantics makes these tests fail.
"""

import unicodedata

import numpy as np
import pytest

from invar_rag_lib.metrics import (
    AnswerIndex,
    acc_at_k,
    bootstrap_ci,
    dpr_tokens,
    exact_match,
    f1,
    has_answer,
    normalize_answer,
    paired_bootstrap_pvalue,
    substring_acc,
)

NFC = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
NFD = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731


# --------------------------------------------------------------- tokenisation

def test_dpr_tokens_golden():
    # Alnum runs are one token; every other non-space character is its own token.
    assert dpr_tokens("U.S.A. it's 3.5% COVID-19") == [
        "u", ".", "s", ".", "a", ".", "it", "'", "s", "3", ".", "5", "%", "covid", "-", "19",
    ]
    assert dpr_tokens("  \n\t ") == []


def test_dpr_tokens_nfd_keeps_combining_mark_in_token():
    assert dpr_tokens(NFC("Röntgen")) == [NFD("röntgen")]
    assert dpr_tokens(NFC("Röntgen")) == dpr_tokens(NFD("Röntgen"))


# ----------------------------------------------------------------- has_answer

@pytest.mark.parametrize(
    "text, answers, expected",
    [
        # punctuation is split off, so adjacent punctuation does not block a match
        ("He was born in Washington, D.C. in 1900.", ["Washington"], True),
        ("He was born in Washington, D.C. in 1900.", ["D.C."], True),
        ("the U.S. army", ["U.S."], True),
        ("The U.S.A. team", ["USA"], False),  # "usa" is not the token run u . s . a
        ("the value is 35", ["3.5"], False),
        ("Covid - 19 cases", ["COVID-19"], True),
        # case-insensitive
        ("THE BEATLES played", ["the beatles"], True),
        ("paris is nice", ["PARIS"], True),
        # contiguity of multi-token answers
        ("born in New York City", ["New York"], True),
        ("New Delhi and York", ["New York"], False),
        ("York New", ["New York"], False),
        # answer inside a longer word must not match
        ("functions concatenate strings", ["cat"], False),
        ("a symphony by Mozart", ["art"], False),
        ("a cat sat", ["cat"], True),
        # any of several answers
        ("Lennon and McCartney", ["Harrison", "McCartney"], True),
        ("Lennon and McCartney", [], False),
        # empty / whitespace-only answers never match
        ("anything at all", ["", "   "], False),
        ("", ["x"], False),
    ],
)
def test_has_answer_golden(text, answers, expected):
    assert has_answer(text, answers) is expected


def test_has_answer_unicode_accents():
    assert has_answer("Wilhelm Conrad Röntgen", ["Röntgen"])
    # NFC text vs NFD answer and vice versa: both are NFD-normalised first.
    assert has_answer(NFC("Wilhelm Conrad Röntgen"), [NFD("Röntgen")])
    assert has_answer(NFD("Wilhelm Conrad Röntgen"), [NFC("röntgen")])
    # DPR semantics: after NFD, "ö" becomes "o" + U+0308 (a \p{M} mark) which
    # stays inside the alnum token, so the token is "ro\u0308ntgen" and never
    # equals "rontgen". Accents are NOT stripped, in either direction.
    assert not has_answer("Wilhelm Conrad Röntgen", ["Rontgen"])
    assert not has_answer("Wilhelm Conrad Rontgen", ["Röntgen"])


def test_has_answer_rejects_plain_string():
    with pytest.raises(ValueError, match="single str"):
        has_answer("Paris is in France", "Paris")


# ---------------------------------------------------------------- AnswerIndex

TRICKY_TEXTS = [
    "Wilhelm Conrad Röntgen discovered X-rays.",
    NFD("Röntgen was German."),
    "born in New York City",
    "New Delhi and York",
    "functions concatenate strings",
    "a symphony by Mozart",
    "a cat sat on the U.S. flag",
    "",
]

TRICKY_ANSWERS = [
    ["Röntgen"], ["Rontgen"], ["New York"], ["cat"], ["art"], ["U.S."], ["x-rays"],
    ["York", "Mozart"], ["nothing here"], [""], [],
]


@pytest.mark.parametrize("answers", TRICKY_ANSWERS)
def test_answer_index_agrees_with_has_answer(answers):
    index = AnswerIndex(TRICKY_TEXTS)
    expected = [i for i, t in enumerate(TRICKY_TEXTS) if has_answer(t, answers)]
    assert index.passages_with_answer(answers) == expected
    assert index.any_passage_has_answer(answers) is bool(expected)


def test_answer_index_golden():
    index = AnswerIndex(TRICKY_TEXTS)
    assert len(index) == len(TRICKY_TEXTS)
    assert index.passages_with_answer(["Röntgen"]) == [0, 1]
    assert index.passages_with_answer(["New York"]) == [2]
    assert index.passages_with_answer(["York", "cat"]) == [2, 3, 6]
    assert index.passages_with_answer(["Rontgen"]) == []
    with pytest.raises(ValueError):
        index.passages_with_answer("York")


def test_answer_index_checks_order_and_repeats_beyond_the_shared_tokens():
    """A passage with every token of the answer is only a candidate: order and repeats still count."""
    texts = ["york new jersey", "new new york city", "new york", "the new yorker", "york"]
    index = AnswerIndex(texts)
    for answers in (["New York"], ["New New York"], ["York New"], ["York"], ["New York", "Jersey"]):
        expected = [i for i, t in enumerate(texts) if has_answer(t, answers)]
        assert index.passages_with_answer(answers) == expected, answers
    assert index.passages_with_answer(["New New York"]) == [1]
    assert index.passages_with_answer(["York New"]) == [0]


def test_answer_index_agrees_on_random_corpus():
    rng = np.random.default_rng(1)
    vocab = ["a", "b", "c", "ab", ",", "."]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(0, 12))) for _ in range(300)]
    index = AnswerIndex(texts)
    for answers in (["a b"], ["ab"], ["b , c"], ["c c c", "a ."], ["a"]):
        expected = [i for i, t in enumerate(texts) if has_answer(t, answers)]
        assert index.passages_with_answer(answers) == expected


# ------------------------------------------------------------------- acc_at_k

def test_acc_at_k():
    ranks = [1, 3, None, 20, 5]
    mean, per_item = acc_at_k(ranks, 5)
    assert per_item == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert mean == pytest.approx(0.6)
    assert acc_at_k(ranks, 1) == (pytest.approx(0.2), [1.0, 0.0, 0.0, 0.0, 0.0])
    assert acc_at_k(ranks, 20)[0] == pytest.approx(0.8)


@pytest.mark.parametrize("ranks, k", [([1, 2], 0), ([], 5), ([0, 1], 5)])
def test_acc_at_k_errors(ranks, k):
    with pytest.raises(ValueError):
        acc_at_k(ranks, k)


# ------------------------------------------------------------- SQuAD metrics

def test_normalize_answer():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("An apple, a day.") == "apple day"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("U.S.A.") == "usa"


def test_exact_match():
    assert exact_match("The Beatles", ["beatles"]) == 1.0
    assert exact_match("Paris.", ["paris"]) == 1.0
    assert exact_match("U.S.A.", ["USA"]) == 1.0  # SQuAD deletes punctuation
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("London", ["Paris", "london"]) == 1.0
    assert exact_match("London", []) == 0.0


def test_f1_values():
    # "big red dog" vs "red dog": P = 2/3, R = 1, F1 = 0.8
    assert f1("the big red dog", ["red dog"]) == pytest.approx(0.8)
    # P = 1/2, R = 1/3 -> F1 = 0.4; max over golds picks the exact match
    assert f1("red cat", ["red dog bone"]) == pytest.approx(0.4)
    assert f1("red cat", ["red dog bone", "Red cat."]) == pytest.approx(1.0)
    assert f1("blue", ["red dog"]) == 0.0
    # repeated tokens are counted with multiplicity: P = 1/3, R = 1
    assert f1("dog dog dog", ["dog"]) == pytest.approx(0.5)


def test_substring_acc():
    assert substring_acc("It was written by The Beatles in 1965.", ["beatles"]) == 1.0
    assert substring_acc("I think Paris", ["London", "paris"]) == 1.0
    assert substring_acc("Paris", ["Paris, France"]) == 0.0
    assert substring_acc("anything", ["", "the", "!!"]) == 0.0  # all normalise to ""
    # substring is more lenient than EM on the same pair
    assert exact_match("I think Paris", ["paris"]) == 0.0


@pytest.mark.parametrize("metric", [exact_match, f1, substring_acc])
def test_answer_metrics_reject_plain_string(metric):
    with pytest.raises(ValueError, match="single str"):
        metric("Paris", "Paris")


# --------------------------------------------------------------- statistics

def test_bootstrap_ci_deterministic_and_contains_mean():
    values = np.random.default_rng(7).random(100)
    r1 = bootstrap_ci(values, seed=3)
    r2 = bootstrap_ci(list(values), seed=3)
    assert r1 == r2
    assert set(r1) == {"mean", "low", "high", "n"}
    assert r1["n"] == 100
    assert r1["mean"] == pytest.approx(values.mean())
    assert r1["low"] < r1["mean"] < r1["high"]
    assert bootstrap_ci(values, seed=4) != r1


def test_bootstrap_ci_constant_and_width():
    assert bootstrap_ci([1.0] * 10) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 10}
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.integers(0, 2, 50).astype(float))
    large = bootstrap_ci(rng.integers(0, 2, 5000).astype(float))
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])
    # for n=5000 Bernoulli(0.5) the 95% half-width is about 1.96 * 0.5 / sqrt(5000) = 0.014
    assert 0.02 < large["high"] - large["low"] < 0.036
    # a narrower confidence level gives a narrower interval
    narrow = bootstrap_ci([0, 1, 1, 0, 1, 0, 0, 1], confidence=0.5)
    wide = bootstrap_ci([0, 1, 1, 0, 1, 0, 0, 1], confidence=0.99)
    assert narrow["high"] - narrow["low"] < wide["high"] - wide["low"]


def test_paired_pvalue_clearly_better_system():
    rng = np.random.default_rng(42)
    a = (rng.random(200) < 0.7).astype(float)
    b = (rng.random(200) < 0.4).astype(float)
    assert paired_bootstrap_pvalue(a, b) < 0.01
    assert paired_bootstrap_pvalue(b, a) < 0.01  # two-sided


def test_paired_pvalue_similar_and_identical_systems():
    a = np.tile([1.0, 0.0], 100)
    b = a.copy()
    assert paired_bootstrap_pvalue(a, b) == 1.0
    # differ on 3 of 200 items: a wins twice, b once -> no real evidence
    b[[0, 2, 1]] = [0.0, 0.0, 1.0]
    p = paired_bootstrap_pvalue(a, b)
    assert p > 0.3
    assert p == paired_bootstrap_pvalue(a, b, seed=0)  # deterministic


def test_paired_pvalue_matches_definition():
    # Recompute the definition with an explicit loop over the same random draws.
    a = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    b = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    idx = np.random.default_rng(5).integers(0, 6, size=(200, 6))
    d = (a - b).mean()
    opposite_or_zero = sum(1 for row in idx if (a[row] - b[row]).mean() * d <= 0)
    expected = min(1.0, 2 * opposite_or_zero / 200)
    assert paired_bootstrap_pvalue(a, b, n_resamples=200, seed=5) == pytest.approx(expected)


@pytest.mark.parametrize(
    "call",
    [
        lambda: paired_bootstrap_pvalue([1.0, 0.0], [1.0, 0.0, 1.0]),
        lambda: paired_bootstrap_pvalue([], []),
        lambda: bootstrap_ci([]),
        lambda: bootstrap_ci([1.0], confidence=1.5),
        lambda: bootstrap_ci([1.0], n_resamples=0),
    ],
)
def test_statistics_errors(call):
    with pytest.raises(ValueError):
        call()


def test_length_mismatch_message_names_both_lengths():
    with pytest.raises(ValueError, match=r"len\(a\)=2.*len\(b\)=3"):
        paired_bootstrap_pvalue([1.0, 0.0], [1.0, 0.0, 1.0])


def test_empty_prediction_never_matches_an_answer_that_normalises_to_empty():
    from invar_rag_lib.metrics import exact_match

    assert exact_match("", ["---"]) == 0.0 and exact_match("the", [")", "The"]) == 0.0
    assert exact_match("Paris", ["---", "paris"]) == 1.0
