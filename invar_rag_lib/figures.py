"""Figures built from saved results files only; the file name carries the notebook number."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .tables import DATASET_NAMES, HEADLINE_K, display_name, ordered, ordered_retrievers  # noqa: E402

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


# One colour and line style per retriever in every figure (a variant keeps its colour across panels
# and notebooks): baselines dashed, floors dotted, trained LLM variants solid.
_TAB = sns.color_palette("tab10")
RETRIEVER_STYLE = {
    "bm25": (_TAB[7], "--"), "minilm": (_TAB[0], "--"), "random": ((0.55, 0.55, 0.55), ":"),
    "llm-zero": (_TAB[5], ":"), "llm-ctr": (_TAB[1], "-"), "llm-lsr": (_TAB[2], "-"),
    "invar": (_TAB[3], "-"), "invar-align": (_TAB[4], "-"), "invar-inv": (_TAB[6], "-"),
}


def style_of(name: str):
    """(colour, line style) of a retriever; names outside the study get the remaining colours."""
    if name in RETRIEVER_STYLE:
        return RETRIEVER_STYLE[name]
    return _TAB[8 + hash(name) % 2], "-."


def acc_at_k_curves(results: dict):
    """01/04: acc@k against k for every retriever and dataset, with 95% bootstrap bands (drawn for
    the trained variants only, so the floors and baselines stay readable); one legend below."""
    sns.set_theme(style="whitegrid", context="notebook")
    datasets = ordered(next(iter(results["retrievers"].values())))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), sharey=True)
    axes = [axes] if len(datasets) == 1 else list(axes)
    names = ordered_retrievers(results["retrievers"])
    for ax, ds in zip(axes, datasets):
        for name in names:
            color, ls = style_of(name)
            metrics = results["retrievers"][name][ds]["metrics"]
            ks = sorted(int(key.split("@")[1]) for key in metrics)
            mean = [100 * metrics[f"acc@{k}"]["mean"] for k in ks]
            ax.plot(ks, mean, marker="o", ms=3, lw=1.6, ls=ls, label=display_name(name), color=color)
            if ls == "-":
                ax.fill_between(ks, [100 * metrics[f"acc@{k}"]["low"] for k in ks],
                                [100 * metrics[f"acc@{k}"]["high"] for k in ks], alpha=0.12, color=color)
        coverage = results.get("answer_coverage", {}).get(ds)
        if coverage is not None:
            ax.axhline(100 * coverage, ls=(0, (1, 3)), color="black", lw=1, label="answer in corpus")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(f"{DATASET_NAMES.get(ds, ds)} (n = {results['retrievers'][names[0]][ds]['n']})")
        ax.set_xlabel("k (passages)")
    axes[0].set_ylabel("acc@k (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 if len(labels) > 6 else 0.07, 1, 1))
    return fig


def alignment_scatter(results: dict):
    """02: P_θ(d|q) against P_c(d|q) for every training-group member, before and after alignment."""
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
    a = results["all"]
    colors = ["#c44e52" if p else "#4c72b0" for p in a["positive"]]
    for ax, key, title in zip(axes, ("p_theta_before", "p_theta_after"),
                              (f"before (KL {results['kl_before']:.3f})", f"after L_ctr + α L_align (KL {results['kl_after']:.3f})")):
        ax.scatter(a["p_c"], a[key], s=10, alpha=0.5, c=colors)
        ax.plot([0, 1], [0, 1], ls=":", color="gray")
        ax.set_title(title)
        ax.set_xlabel("P_c (MiniLM)")
    axes[0].set_ylabel("P_θ (LLM retriever)")
    axes[1].scatter([], [], c="#c44e52", label="positive")
    axes[1].scatter([], [], c="#4c72b0", label="hard negative")
    axes[1].legend(loc="upper left")
    fig.tight_layout()
    return fig


def lsr_by_environment(results: dict):
    """03: Q_e(d|q) of positives and hard negatives in each environment."""
    sns.set_theme(style="whitegrid", context="notebook")
    rows = [{"environment": env, "passage": kind, "Q_e(d|q)": v}
            for env, by_kind in results["distributions"].items()
            for kind, values in by_kind.items() for v in values]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.boxplot(data=pd.DataFrame(rows), x="environment", y="Q_e(d|q)", hue="passage", ax=ax,
                palette={"positive": "#c44e52", "negative": "#4c72b0"}, fliersize=2)
    ax.axhline(1.0 / results["group_size"], ls=":", color="gray", label="1/|G(q)|")
    ax.set_title(f"LSR distribution per environment ({results['n_groups']} groups; "
                 f"{100 * results['invariant_share']:.0f}% of passages invariant)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


TERM_LABELS = {"loss": "total loss L", "ctr": "L_ctr (contrastive)", "align": "L_align (KL to MiniLM)",
               "inv": "L_inv (invariance)", "lsr": "KL(Q_orig ‖ P_θ) (LSR)"}


def loss_curves(results: dict):
    """04: training loss and each of its terms per step, one panel per term (2 columns), every
    variant in its fixed colour; L_ctr with the loss of a uniform ranking (collapse line)."""
    sns.set_theme(style="whitegrid", context="notebook")
    histories = {n: results["training"][n] for n in ordered_retrievers(results["training"])}
    terms = [t for t in ("loss", "ctr", "align", "inv", "lsr") if any(t in h[0] for h in histories.values())]
    cols = 2
    rows = (len(terms) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3.1 * rows), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for name, h in histories.items():
            if term in h[0]:
                color, _ = style_of(name)
                ax.plot([r["step"] for r in h], [r[term] for r in h], color=color, lw=1.4, label=display_name(name))
        if term == "ctr" and results.get("ctr_uniform"):
            ax.axhline(results["ctr_uniform"], ls=":", color="gray", label="uniform ranking")
        ax.set_title(TERM_LABELS.get(term, term), fontsize=10)
        ax.set_ylabel(TERM_LABELS.get(term, term).split(" (")[0])
        ax.set_xlabel("optimizer step")
    for ax in list(axes.flat)[len(terms):]:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb, hd)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def stability_bars(results: dict, k: int = HEADLINE_K):
    """04: the variance claim per retriever: Jaccard@k of the top-k sets of a question and its
    rewrites (↑) and the std of hit@k across them (↓), with 95% bootstrap intervals."""
    sns.set_theme(style="whitegrid", context="notebook")
    names = [n for n in ordered_retrievers(results["retrievers"])
             if next(iter(results["retrievers"][n].values())).get("stability")]
    datasets = ordered(results["retrievers"][names[0]])
    palette = sns.color_palette("deep", len(datasets))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / len(datasets)
    for ax, (key, label) in zip(axes, [(f"jaccard@{k}", f"Jaccard@{k}, question vs rewrites (%) ↑"),
                                       (f"has_answer_std@{k}", f"std of hit@{k} across rewrites (%) ↓")]):
        for j, ds in enumerate(datasets):
            vals = [results["retrievers"][n][ds]["stability"][key] for n in names]
            x = np.arange(len(names)) + (j - (len(datasets) - 1) / 2) * width
            ax.bar(x, [100 * v["mean"] for v in vals], width, color=palette[j], label=DATASET_NAMES.get(ds, ds),
                   yerr=[[100 * (v["mean"] - v["low"]) for v in vals], [100 * (v["high"] - v["mean"]) for v in vals]],
                   capsize=2)
        ax.set_xticks(np.arange(len(names)), [display_name(n) for n in names], rotation=25, ha="right")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
