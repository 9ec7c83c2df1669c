"""Retrieval: acc@k tables and curves, the retriever's training losses, alignment and LSR views."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..results import retrievers  # noqa: E402
from .names import DATASET_NAMES, display_name, ordered, ordered_retrievers  # noqa: E402
from .style import COLUMN_W, LINE, PAGE_W, PASSAGE_COLORS, marker_of, style_of, theme  # noqa: E402


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
    """01/04: acc@k against k for every retriever and dataset; one 95% bootstrap band, for the
    method's own retriever (`invar`, when present), so the others stay readable; the answer-coverage
    ceiling dotted; one legend block at the right."""
    theme()
    typed = retrievers(results)
    datasets = ordered(next(iter(typed.values())))
    fig, axes = plt.subplots(1, len(datasets), figsize=(PAGE_W, 2.5), sharey=True)
    axes = [axes] if len(datasets) == 1 else list(axes)
    names = ordered_retrievers(typed)
    for ax, ds in zip(axes, datasets):
        for name in names:
            color, ls = style_of(name)
            metrics = typed[name][ds].metrics
            ks = sorted(int(key.split("@")[1]) for key in metrics)
            mean = [100 * metrics[f"acc@{k}"].mean for k in ks]
            ax.plot(ks, mean, marker=marker_of(name), ls=ls, label=display_name(name), color=color)
            if name == "invar":
                ax.fill_between(ks, [100 * metrics[f"acc@{k}"].low for k in ks],
                                [100 * metrics[f"acc@{k}"].high for k in ks], alpha=0.15, color=color, lw=0,
                                label="invar 95% CI")
        coverage = results.get("answer_coverage", {}).get(ds)
        if coverage is not None:
            ax.axhline(100 * coverage, ls=(0, (1, 3)), color="black", lw=0.8, label="answer in corpus")
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_title(DATASET_NAMES.get(ds, ds))
        ax.set_xlabel("k (passages)")
    axes[0].set_ylabel("acc@k (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=(len(labels) + 1) // 2 if len(labels) > 6 else len(labels),
               frameon=False)
    fig.tight_layout(rect=(0, 0.16 if len(labels) > 6 else 0.09, 1, 1))
    return fig


def alignment_scatter(results: dict):
    """02: P_θ(d|q) against P_c(d|q) for every training-group member, before and after alignment."""
    theme()
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_W, 2.9), sharex=True, sharey=True)
    a = results["all"]
    colors = [PASSAGE_COLORS["positive"] if p else PASSAGE_COLORS["negative"] for p in a["positive"]]
    for ax, key, title in zip(axes, ("p_theta_before", "p_theta_after"),
                              ("before", r"after $L_{ctr} + \alpha L_{align}$")):
        ax.scatter(a["p_c"], a[key], s=6, alpha=0.6, c=colors, lw=0)
        ax.plot([0, 1], [0, 1], ls=":", color="gray")
        ax.set_title(title)
        ax.set_xlabel(r"$P_c(d|q)$ (MiniLM)")
    axes[0].set_ylabel(r"$P_\theta(d|q)$ (LLM retriever)")
    axes[1].scatter([], [], c=PASSAGE_COLORS["positive"], label="positive")
    axes[1].scatter([], [], c=PASSAGE_COLORS["negative"], label="hard negative")
    axes[1].legend(loc="upper left")
    fig.tight_layout()
    return fig


def lsr_by_environment(results: dict):
    """03: Q_e(d|q) of positives and hard negatives in each environment."""
    theme()
    rows = [{"environment": env, "passage": kind, "Q_e(d|q)": v}
            for env, by_kind in results["distributions"].items()
            for kind, values in by_kind.items() for v in values]
    fig, ax = plt.subplots(figsize=(COLUMN_W, 2.6))
    frame = pd.DataFrame(rows).replace({"passage": {"negative": "hard negative"}})
    sns.boxplot(data=frame, x="environment", y="Q_e(d|q)", hue="passage", ax=ax, width=0.6,
                palette={"positive": PASSAGE_COLORS["positive"], "hard negative": PASSAGE_COLORS["negative"]},
                fliersize=1.5, linewidth=0.6, medianprops={"color": "white", "linewidth": 1.0})
    # the uniform line behind the boxes, in the loss figures' grey (not a retriever's red)
    ax.axhline(1.0 / results["group_size"], ls=":", color=LINE, lw=0.9, zorder=0, label="1/|G(q)| (uniform)")
    ax.set_ylabel(r"$Q_e(d|q)$")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False, handlelength=1.2,
              columnspacing=0.8)
    fig.tight_layout()
    return fig


TERM_LABELS = {"loss": "total loss $L$", "ctr": "$L_{ctr}$ (contrastive)", "align": "$L_{align}$ (KL to MiniLM)",
               "inv": "$L_{inv}$ (invariance)", "lsr": r"$KL(Q_{orig} \| P_\theta)$ (LSR)"}


def loss_curves(results: dict):
    """04: training loss and each of its terms per step, one panel per term (2 columns), every
    variant in its fixed colour; L_ctr with the loss of a uniform ranking (collapse line)."""
    theme()
    histories = {n: results["training"][n] for n in ordered_retrievers(results["training"])}
    terms = [t for t in ("loss", "ctr", "align", "inv", "lsr") if any(t in h[0] for h in histories.values())]
    cols = 3 if len(terms) > 4 else 2
    rows = (len(terms) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_W, 1.8 * rows + 0.4), squeeze=False)
    for ax, term in zip(axes.flat, terms):
        for name, h in histories.items():
            if term in h[0]:
                color, _ = style_of(name)
                ax.plot([r["step"] for r in h], [r[term] for r in h], color=color, lw=1.0, label=display_name(name))
        if term == "ctr" and results.get("ctr_uniform"):
            ax.axhline(results["ctr_uniform"], ls=":", color="gray", label="uniform ranking")
        ax.set_title(TERM_LABELS.get(term, term))
        ax.set_xlabel("optimizer step")
    spare = list(axes.flat)[len(terms):]
    for ax in spare:
        ax.axis("off")
    handles = {}
    for ax in axes.flat:
        for hd, lb in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lb, hd)
    if spare:  # the legend in the empty panel
        spare[0].legend(list(handles.values()), list(handles), loc="center", frameon=False)
        fig.tight_layout()
    else:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 7),
                   frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
