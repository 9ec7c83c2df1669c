"""Names and orders shared by every table and figure: datasets, retrievers, the headline k."""
from __future__ import annotations


DATASET_NAMES = {"nq": "NQ", "triviaqa": "TriviaQA", "popqa": "PopQA"}


# The k of every headline stability, floor and ablation number (the paper's Acc@5); acc@k tables show
# every k the profile computes.
HEADLINE_K = 5


RETRIEVER_ORDER = ("bm25", "minilm", "random", "llm-zero", "llm-ctr", "llm-lsr", "invar", "invar-align", "invar-inv")


def display_name(retriever: str) -> str:
    """docs/method.md writes the ablations with a minus sign: invar−align, invar−inv."""
    return retriever.replace("invar-", "invar−")


def ordered_retrievers(names, order=RETRIEVER_ORDER) -> list[str]:
    """`names` in `order`, anything else after, alphabetically."""
    known = [n for n in order if n in names]
    return known + sorted(n for n in names if n not in order)


def ordered(datasets) -> list[str]:
    """NQ, TriviaQA, PopQA first (the paper's order), anything else after, alphabetically."""
    known = [d for d in DATASET_NAMES if d in datasets]
    return known + sorted(d for d in datasets if d not in DATASET_NAMES)
