"""Figures built from saved results files only; the file name carries the notebook number."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .tables import DATASET_NAMES, display_name, ordered, ordered_retrievers  # noqa: E402

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
        for color, name in zip(palette, ordered_retrievers(results["retrievers"])):
            by_ds = results["retrievers"][name]
            metrics = by_ds[ds]["metrics"]
            ks = sorted(int(key.split("@")[1]) for key in metrics)
            mean = [100 * metrics[f"acc@{k}"]["mean"] for k in ks]
            low = [100 * metrics[f"acc@{k}"]["low"] for k in ks]
            high = [100 * metrics[f"acc@{k}"]["high"] for k in ks]
            ax.plot(ks, mean, marker="o", label=display_name(name), color=color)
            ax.fill_between(ks, low, high, alpha=0.15, color=color)
        coverage = results.get("answer_coverage", {}).get(ds)
        if coverage is not None:
            ax.axhline(100 * coverage, ls=":", color="gray", label="answer in corpus")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(f"{DATASET_NAMES.get(ds, ds)} (n={results['retrievers'][name][ds]['n']})")
        ax.set_xlabel("k")
    axes[0].set_ylabel("acc@k (%)")
    axes[-1].legend(loc="lower right")
    fig.tight_layout()
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


def loss_curves(results: dict):
    """04: training loss (and its terms) per step for every trained variant."""
    sns.set_theme(style="whitegrid", context="notebook")
    histories = {n: results["training"][n] for n in ordered_retrievers(results["training"])}
    terms = [t for t in ("loss", "ctr", "align", "inv", "lsr") if any(t in h[0] for h in histories.values())]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.3 * len(terms), 3), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for name, h in histories.items():
            if term in h[0]:
                ax.plot([r["step"] for r in h], [r[term] for r in h], label=display_name(name))
        if term == "ctr" and results.get("ctr_uniform"):
            ax.axhline(results["ctr_uniform"], ls=":", color="gray", label="uniform ranking")
        ax.set_title(term if term == "loss" else f"L_{term}")
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def stability_bars(results: dict, k: int = 5):
    """04: the variance claim: std of has_answer@k across environments, per retriever (lower is more stable)."""
    sns.set_theme(style="whitegrid", context="notebook")
    rows = []
    for name in ordered_retrievers(results["retrievers"]):
        by_ds = results["retrievers"][name]
        for ds in ordered(by_ds):
            stab = by_ds[ds].get("stability")
            if stab:
                m = stab[f"has_answer_std@{k}"]
                rows.append({"retriever": display_name(name), "dataset": DATASET_NAMES.get(ds, ds),
                             "std": 100 * m["mean"], "err": 100 * (m["high"] - m["low"]) / 2})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    sns.barplot(data=df, x="retriever", y="std", hue="dataset", ax=ax, errorbar=None)
    ax.set_ylabel(f"std of hit@{k} across\nquestion rewrites (%) ↓")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig
