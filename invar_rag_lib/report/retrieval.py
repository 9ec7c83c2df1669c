"""Retrieval: acc@k tables and curves, the retriever's training losses, alignment and LSR views."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..results import retrievers  # noqa: E402
from .names import DATASET_NAMES, display_name, ordered, ordered_retrievers  # noqa: E402
from .style import style_of  # noqa: E402


def retrieval_table(results: dict, ks=(5, 20), significance_vs: str | None = None) -> pd.DataFrame:
    """Rows: retrievers; columns: dataset × acc@k as 'mean [low, high]' in percent.

    With `significance_vs`, a † marks p < 0.05 in the paired bootstrap against that retriever
    (read from results["paired_pvalues"]["<row>_vs_<baseline>/<dataset>"]).
    """
    table, typed = {}, retrievers(results)
    for name in ordered_retrievers(typed):
        by_ds = typed[name]
        row = {}
        for ds in ordered(by_ds):
            res = by_ds[ds]
            for k in ks:
                cell = res.acc(k).pct()
                p = results.get("paired_pvalues", {}).get(f"{name}_vs_{significance_vs}/{ds}", {}).get(f"acc@{k}")
                if p is not None and p < 0.05:
                    cell += " †"
                row[f"{DATASET_NAMES.get(ds, ds)} acc@{k}"] = cell
        table[display_name(name)] = row
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("retriever")


def acc_at_k_curves(results: dict):
    """01/04: acc@k against k for every retriever and dataset, with 95% bootstrap bands (drawn for
    the trained variants only, so the floors and baselines stay readable); one legend below."""
    sns.set_theme(style="whitegrid", context="notebook")
    typed = retrievers(results)
    datasets = ordered(next(iter(typed.values())))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), sharey=True)
    axes = [axes] if len(datasets) == 1 else list(axes)
    names = ordered_retrievers(typed)
    for ax, ds in zip(axes, datasets):
        for name in names:
            color, ls = style_of(name)
            metrics = typed[name][ds].metrics
            ks = sorted(int(key.split("@")[1]) for key in metrics)
            mean = [100 * metrics[f"acc@{k}"].mean for k in ks]
            ax.plot(ks, mean, marker="o", ms=3, lw=1.6, ls=ls, label=display_name(name), color=color)
            if ls == "-":
                ax.fill_between(ks, [100 * metrics[f"acc@{k}"].low for k in ks],
                                [100 * metrics[f"acc@{k}"].high for k in ks], alpha=0.12, color=color)
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
