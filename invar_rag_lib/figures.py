"""Figures built from saved results files only; the file name carries the notebook number."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .tables import DATASET_NAMES, ordered  # noqa: E402

SOURCE_NAMES = {"wiki18": "wiki-18 passages (retrieved for eval pool)", "nqgold": "NQ gold passages",
                "wikiqa": "WikiQA sentences", "wikisum": "Wikipedia summaries (distractors)"}


def corpus_composition(results: dict):
    """00: where the corpus passages come from, and how many eval questions have an answer in it."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    by_source = results["counts"]["corpus"]["by_source"]
    df = pd.DataFrame({"source": [SOURCE_NAMES.get(s, s) for s in by_source], "passages": list(by_source.values())})
    sns.barplot(data=df, y="source", x="passages", ax=axes[0], color="#4c72b0")
    axes[0].set_title(f"Corpus: {results['counts']['corpus']['total']} passages")
    axes[0].set_ylabel("")
    ev = results["counts"]["eval"]
    df2 = pd.DataFrame({"dataset": [DATASET_NAMES.get(d, d) for d in ordered(ev)],
                        "share": [100 * ev[d]["answer_in_corpus"] / ev[d]["questions"] for d in ordered(ev)]})
    sns.barplot(data=df2, x="dataset", y="share", ax=axes[1], color="#55a868")
    axes[1].set_ylim(0, 100)
    axes[1].set_ylabel("% questions with an answer\nin some corpus passage")
    axes[1].set_title("Answer coverage (upper bound on acc@k)")
    fig.tight_layout()
    return fig


def acc_at_k_curves(results: dict):
    """01: acc@k against k for every retriever and dataset, with 95% bootstrap bands."""
    sns.set_theme(style="whitegrid", context="notebook")
    datasets = ordered(next(iter(results["retrievers"].values())))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.4), sharey=True)
    axes = [axes] if len(datasets) == 1 else list(axes)
    palette = sns.color_palette("deep")
    for ax, ds in zip(axes, datasets):
        for color, (name, by_ds) in zip(palette, results["retrievers"].items()):
            metrics = by_ds[ds]["metrics"]
            ks = sorted(int(key.split("@")[1]) for key in metrics)
            mean = [100 * metrics[f"acc@{k}"]["mean"] for k in ks]
            low = [100 * metrics[f"acc@{k}"]["low"] for k in ks]
            high = [100 * metrics[f"acc@{k}"]["high"] for k in ks]
            ax.plot(ks, mean, marker="o", label=name, color=color)
            ax.fill_between(ks, low, high, alpha=0.15, color=color)
        coverage = results.get("answer_coverage", {}).get(ds)
        if coverage is not None:
            ax.axhline(100 * coverage, ls=":", color="gray", label="answer in corpus")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(f"{DATASET_NAMES.get(ds, ds)} (n={by_ds[ds]['n']})")
        ax.set_xlabel("k")
    axes[0].set_ylabel("acc@k (%)")
    axes[-1].legend(loc="lower right")
    fig.tight_layout()
    return fig
