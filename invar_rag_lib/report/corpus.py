"""The benchmark and its corpus (notebook 00): counts and composition."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .names import DATASET_NAMES, ordered  # noqa: E402
from .style import LINE, PAGE_W, dataset_colors, theme  # noqa: E402


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


SOURCE_NAMES = {"wiki18": "wiki-18 passages (retrieved for eval pool)", "nqgold": "NQ gold passages",
                "wikiqa": "WikiQA sentences", "wikisum": "Wikipedia summaries (distractors)"}


def corpus_composition(results: dict):
    """00: where the corpus passages come from, and how many eval questions have an answer in it."""
    theme()
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_W, 2.4), gridspec_kw={"width_ratios": [1.6, 1]})
    by_source = results["counts"]["corpus"]["by_source"]
    df = pd.DataFrame({"source": [SOURCE_NAMES.get(s, s) for s in by_source], "passages": list(by_source.values())})
    sns.barplot(data=df, y="source", x="passages", ax=axes[0], color=LINE)
    axes[0].set_title("Corpus passages by source")
    axes[0].set_ylabel("")
    ev = results["counts"]["eval"]
    df2 = pd.DataFrame({"dataset": [DATASET_NAMES.get(d, d) for d in ordered(ev)],
                        "share": [100 * ev[d]["answer_in_corpus"] / ev[d]["questions"] for d in ordered(ev)]})
    sns.barplot(data=df2, x="dataset", y="share", ax=axes[1], hue="dataset", legend=False,
                palette=dataset_colors(ordered(ev)))
    axes[1].set_ylim(0, 100)
    axes[1].set_ylabel("questions with an answer (%)")
    axes[1].set_xlabel("")
    axes[1].set_title("Answer in the corpus")
    fig.tight_layout()
    return fig
