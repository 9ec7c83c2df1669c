"""Tables built from saved results files only (no model, no data)."""
from __future__ import annotations

import pandas as pd

from .reporting import fmt_ci

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


def benchmark_counts_table(results: dict) -> pd.DataFrame:
    counts = results["counts"]
    rows = []
    for ds in ordered(counts["eval"]):
        c = counts["eval"][ds]
        rows.append({"split": f"eval/{ds}", "questions": c["questions"],
                     "answer in corpus": f"{c['answer_in_corpus']} ({100 * c['answer_in_corpus'] / c['questions']:.0f}%)"})
    for source, n in counts["train"].items():
        rows.append({"split": f"train/{source}", "questions": n, "answer in corpus": "all (positives)"})
    df = pd.DataFrame(rows).set_index("split")
    return df


def corpus_table(results: dict) -> pd.DataFrame:
    by_source = results["counts"]["corpus"]["by_source"]
    df = pd.DataFrame({"passages": by_source}).rename_axis("source")
    df.loc["total"] = results["counts"]["corpus"]["total"]
    return df


def retrieval_table(results: dict, ks=(5, 20), significance_vs: str | None = None) -> pd.DataFrame:
    """Rows: retrievers; columns: dataset × acc@k as 'mean [low, high]' in percent.

    With `significance_vs`, a † marks p < 0.05 in the paired bootstrap against that retriever
    (read from results["paired_pvalues"]["<row>_vs_<baseline>/<dataset>"]).
    """
    table = {}
    for name in ordered_retrievers(results["retrievers"]):
        by_ds = results["retrievers"][name]
        row = {}
        for ds in ordered(by_ds):
            res = by_ds[ds]
            for k in ks:
                cell = fmt_ci(res["metrics"][f"acc@{k}"])
                p = results.get("paired_pvalues", {}).get(f"{name}_vs_{significance_vs}/{ds}", {}).get(f"acc@{k}")
                if p is not None and p < 0.05:
                    cell += " †"
                row[f"{DATASET_NAMES.get(ds, ds)} acc@{k}"] = cell
        table[display_name(name)] = row
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("retriever")


def stability_table(results: dict, k: int = HEADLINE_K) -> pd.DataFrame:
    """Rows: retrievers; columns: dataset × (Jaccard@k of top-k sets between the original question
    and its rewrites ↑, std of has_answer@k across environments ↓), in percent with 95% CI."""
    table = {}
    for name in ordered_retrievers(results["retrievers"]):
        by_ds = results["retrievers"][name]
        row = {}
        for ds in ordered(by_ds):
            stab = by_ds[ds].get("stability")
            if not stab:
                continue
            row[f"{DATASET_NAMES.get(ds, ds)} Jaccard@{k} ↑"] = fmt_ci(stab[f"jaccard@{k}"])
            row[f"{DATASET_NAMES.get(ds, ds)} hit-std@{k} ↓"] = fmt_ci(stab[f"has_answer_std@{k}"])
        if row:  # the random floor has no rankings, hence no stability
            table[display_name(name)] = row
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("retriever")
