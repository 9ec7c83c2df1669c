"""Evaluation metrics for retrieval-augmented QA experiments.

Three families live here, kept deliberately separate so that numbers
reported in a paper can always be traced to one well-defined definition:

* DPR-style answer matching (``has_answer`` and friends): the standard used
  for top-k retrieval accuracy on NQ / TriviaQA.  Reimplemented here so the
  repo does not depend on the DPR codebase, with the same tokenisation.
* SQuAD-style answer metrics (EM, F1) plus PopQA-style substring accuracy.
* Bootstrap statistics, so every headline number can carry a CI / p-value.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
import regex

# ---------------------------------------------------------------------------
# DPR has_answer semantics
# ---------------------------------------------------------------------------

# Same token definition as DPR's SimpleTokenizer: a run of letters / digits /
# combining marks, or any single character that is not whitespace/control.
_DPR_TOKEN = regex.compile(
    r"([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])",
    flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE,
)


def dpr_tokens(text: str) -> list[str]:
    """Lower-cased DPR SimpleTokenizer tokens of ``text`` after NFD.

    NFD makes precomposed and decomposed accents tokenise identically; the
    combining mark then stays inside the token (it is ``\\p{M}``), so
    "Röntgen" and "Rontgen" remain different tokens, exactly as in DPR.
    """
    text = unicodedata.normalize("NFD", text)
    return [m.group().lower() for m in _DPR_TOKEN.finditer(text)]


def _check_answers(answers: Sequence[str]) -> None:
    """Reject a bare string: iterating it would treat each character as an answer."""
    if isinstance(answers, str):
        raise ValueError(
            "answers must be a sequence of strings, got a single str "
            f"({answers!r}); wrap it in a list: [answer]"
        )


def _contains(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    """True when ``needle`` occurs as a contiguous run inside ``haystack``."""
    n = len(needle)
    if n == 0:
        return False
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def _answer_token_lists(answers: Sequence[str]) -> list[list[str]]:
    """Tokenise answers once, dropping those with no tokens (they never match)."""
    _check_answers(answers)
    return [toks for toks in map(dpr_tokens, answers) if toks]


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """True if any answer's token sequence occurs contiguously in ``text``.

    Token-level (not substring) matching means "cat" does not match
    "concatenate", while punctuation and case differences are tolerated.
    """
    return has_answer_in_tokens(dpr_tokens(text), answers)


def has_answer_in_tokens(text_tokens: Sequence[str], answers: Sequence[str]) -> bool:
    """`has_answer` for a text already split by `dpr_tokens` (tokenise a passage once, test it often)."""
    return any(_contains(text_tokens, a) for a in _answer_token_lists(answers))


class AnswerIndex:
    """Pre-tokenised passages plus an inverted index, for fast has_answer.

    Checking every answer against tens of thousands of passages by brute force
    is quadratic in practice; instead we only verify passages that contain every
    token of the answer (the intersection of their postings, rarest first), and a
    one-token answer needs no verification at all.
    """

    def __init__(self, texts: Iterable[str]):
        self.tokens: list[list[str]] = [dpr_tokens(t) for t in texts]
        self.postings: dict[str, set[int]] = {}
        for i, toks in enumerate(self.tokens):
            for tok in set(toks):
                self.postings.setdefault(tok, set()).add(i)

    def __len__(self) -> int:
        return len(self.tokens)

    def passages_with_answer(self, answers: Sequence[str]) -> list[int]:
        """Sorted indices of passages for which ``has_answer`` would be True."""
        hits: set[int] = set()
        for ans in _answer_token_lists(answers):
            postings = sorted((self.postings.get(tok, set()) for tok in set(ans)), key=len)
            candidates = postings[0].intersection(*postings[1:]) - hits
            if len(ans) == 1:
                hits |= candidates
            else:
                hits.update(i for i in candidates if _contains(self.tokens[i], ans))
        return sorted(hits)

    def hits(self, answer_lists: Sequence[Sequence[str]], ids: Sequence[str],
             max_ids: int) -> list[tuple[int, list[str]]]:
        """Per answer list: how many passages hold an answer, and the `ids` of the first `max_ids`."""
        out = []
        for answers in answer_lists:
            found = self.passages_with_answer(answers)
            out.append((len(found), [ids[j] for j in found[:max_ids]]))
        return out

    def any_passage_has_answer(self, answers: Sequence[str]) -> bool:
        """True if at least one indexed passage contains an answer."""
        return bool(self.passages_with_answer(answers))


# ---------------------------------------------------------------------------
# SQuAD-style answer metrics
# ---------------------------------------------------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = regex.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower, strip punctuation and articles, squash spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer. A gold answer that
    normalises to "" is ignored, so an empty prediction never scores."""
    _check_answers(answers)
    pred = normalize_answer(prediction)
    return float(bool(pred) and any(pred == normalize_answer(a) for a in answers))


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """SQuAD v1 bag-of-tokens F1 (0.0 when there is no overlap)."""
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD token F1, maximised over gold answers (0.0 with no gold)."""
    _check_answers(answers)
    pred = normalize_answer(prediction).split()
    return max((_token_f1(pred, normalize_answer(a).split()) for a in answers), default=0.0)


def substring_acc(prediction: str, answers: Sequence[str]) -> float:
    """PopQA-style accuracy: a normalised gold answer is a substring of the prediction.

    This is far more lenient than EM (a long answer listing many candidates
    scores 1.0), so it must always be reported under its own name, never as EM.
    Gold answers that normalise to "" never match.
    """
    _check_answers(answers)
    pred = normalize_answer(prediction)
    golds = (normalize_answer(a) for a in answers)
    return float(any(g and g in pred for g in golds))


# ---------------------------------------------------------------------------
# Retrieval accuracy
# ---------------------------------------------------------------------------


def acc_at_k(first_hit_ranks: Sequence[int | None], k: int) -> tuple[float, list[float]]:
    """Top-k retrieval accuracy: mean and per-item 0/1 values (kept for bootstrap)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(first_hit_ranks) == 0:
        raise ValueError("acc_at_k needs at least one item")
    if any(r is not None and r < 1 for r in first_hit_ranks):
        raise ValueError("ranks are 1-based; got a rank < 1")
    per_item = [float(r is not None and r <= k) for r in first_hit_ranks]
    return float(np.mean(per_item)), per_item


# ---------------------------------------------------------------------------
# Bootstrap statistics
# ---------------------------------------------------------------------------


def _as_scores(values: Sequence[float], name: str = "values") -> np.ndarray:
    """1-D float array; empty input is an error, not a silent NaN."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    return arr


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` with-replacement resamples, in one vectorised draw."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    idx = rng.integers(0, values.size, size=(n_resamples, values.size))
    return values[idx].mean(axis=1)


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict:
    """Percentile-bootstrap CI of the mean; deterministic for a given seed."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = _as_scores(values)
    means = _resampled_means(arr, n_resamples, np.random.default_rng(seed))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"mean": float(arr.mean()), "low": float(low), "high": float(high), "n": int(arr.size)}


def paired_bootstrap_pvalue(a: Sequence[float], b: Sequence[float],
                            n_resamples: int = 1000, seed: int = 0) -> float:
    """Two-sided paired-bootstrap p-value for mean(a) != mean(b).

    Items are resampled jointly (pairing removes per-item difficulty noise).
    p = 2 * share of resampled mean differences that are zero or have the
    opposite sign of the observed difference, capped at 1.
    """
    a_arr, b_arr = _as_scores(a, "a"), _as_scores(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"a and b must score the same items: len(a)={a_arr.size}, len(b)={b_arr.size}")
    diffs = a_arr - b_arr
    observed = diffs.mean()
    if observed == 0:
        return 1.0
    boot = _resampled_means(diffs, n_resamples, np.random.default_rng(seed))
    share = np.mean(np.sign(boot) != np.sign(observed))
    return float(min(1.0, 2.0 * share))
