"""Stability under query rewrites: Jaccard@k and hit-std@k tables and figures, the variance claim."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..results import retrievers  # noqa: E402
from .names import DATASET_NAMES, HEADLINE_K, display_name, ordered, ordered_retrievers  # noqa: E402
from .ablations import point_label  # noqa: E402
from .style import PAGE_W, dataset_colors, theme  # noqa: E402


def stability_table(results: dict, k: int = HEADLINE_K) -> pd.DataFrame:
    """Rows: retrievers; columns: dataset × (Jaccard@k of top-k sets between the original question
    and its rewrites ↑, std of has_answer@k across environments ↓), in percent with 95% CI."""
    table, typed = {}, retrievers(results)
    for name in ordered_retrievers(typed):
        by_ds = typed[name]
        row = {}
        for ds in ordered(by_ds):
            res = by_ds[ds]
            if not res.has_stability:
                continue
            row[f"{DATASET_NAMES.get(ds, ds)} Jaccard@{k} ↑"] = res.stability("jaccard", k).pct()
            row[f"{DATASET_NAMES.get(ds, ds)} hit-std@{k} ↓"] = res.stability("has_answer_std", k).pct()
        if row:  # the random floor has no rankings, hence no stability
            table[display_name(name)] = row
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("retriever")


def stability_bars(results: dict, k: int = HEADLINE_K):
    """04: the variance claim per retriever: Jaccard@k of the top-k sets of a question and its
    rewrites (↑) and the std of hit@k across them (↓), with 95% bootstrap intervals."""
    theme()
    typed = retrievers(results)
    names = [n for n in ordered_retrievers(typed) if next(iter(typed[n].values())).has_stability]
    datasets = ordered(typed[names[0]])
    palette = dataset_colors(datasets)
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_W, 2.6))
    width = 0.8 / len(datasets)
    for ax, (key, label) in zip(axes, [("jaccard", f"Jaccard@{k} (%) ↑"),
                                       ("has_answer_std", f"std of hit@{k} (%) ↓")]):
        for j, ds in enumerate(datasets):
            vals = [typed[n][ds].stability(key, k) for n in names]
            x = np.arange(len(names)) + (j - (len(datasets) - 1) / 2) * width
            ax.bar(x, [100 * v.mean for v in vals], width, color=palette[j], label=DATASET_NAMES.get(ds, ds),
                   yerr=[[100 * (v.mean - v.low) for v in vals], [100 * (v.high - v.mean) for v in vals]],
                   capsize=1.5, error_kw={"lw": 0.6, "ecolor": "#8c8c8c"})  # visible on dark and light bars
        ax.set_xticks(np.arange(len(names)), [display_name(n) for n in names], rotation=30, ha="right")
        ax.set_ylabel(label)
    axes[0].legend(frameon=False)
    fig.tight_layout()
    return fig


def stability_all(variants: dict, ablations: dict, k: int = HEADLINE_K):
    """07: the variance claim for every retriever: Jaccard@k ↑ and std of hit@k across the question
    and its rewrites ↓, for BM25, MiniLM, every variant of notebook 04 and every ablation point."""
    theme()
    v_typed, a_typed = retrievers(variants), retrievers(ablations)
    entries = [(display_name(n), v_typed[n]) for n in ordered_retrievers(v_typed)
               if next(iter(v_typed[n].values())).has_stability]  # not the random floor
    seen = set(v_typed)
    for p in ablations["points"]:  # the component ablations first (notebook 07 trains them), then the grid
        if p["name"] not in seen:
            label = point_label(p) if p["axis"] == "component" else f"invar, {point_label(p)}"
            entries.append((label, a_typed[p["name"]]))
            seen.add(p["name"])
    datasets = ordered(entries[0][1])
    palette = dataset_colors(datasets)
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_W, 0.28 * len(entries) + 1.0), sharey=True)
    height = 0.8 / len(datasets)
    y = np.arange(len(entries))
    for ax, (key, title) in zip(axes, [("jaccard", f"Jaccard@{k} of top-{k} sets ↑"),
                                       ("has_answer_std", f"std of hit@{k} across rewrites ↓")]):
        for j, ds in enumerate(datasets):
            vals = [e[1][ds].stability(key, k) for e in entries]
            ax.barh(y + (j - (len(datasets) - 1) / 2) * height, [100 * v.mean for v in vals], height,
                    xerr=[[100 * (v.mean - v.low) for v in vals], [100 * (v.high - v.mean) for v in vals]],
                    color=palette[j], label=DATASET_NAMES.get(ds, ds), capsize=1, error_kw={"lw": 0.6})
        ax.set_title(title.replace(" ↑", " (%) ↑").replace(" ↓", " (%) ↓"))
    axes[0].set_yticks(y, [e[0] for e in entries])
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def variance_claim_table(variants: dict, k: int = HEADLINE_K, model: str = "invar", baseline: str = "llm-ctr") -> pd.DataFrame:
    """The paper's variance claim tested per dataset: `model` against `baseline` on the per-question
    std of hit@k across environments (↓) and Jaccard@k to the rewrites (↑), with the paired
    bootstrap p-value of the difference."""
    from ..metrics import paired_bootstrap_pvalue

    cfg = variants["provenance"]["config"]
    n_boot, seed = cfg["retrieval"]["bootstrap_resamples"], variants["provenance"]["seed"]
    rows, typed = {}, retrievers(variants)
    for ds in ordered(typed[model]):
        row = {}
        for key, label in (("has_answer_std", f"hit-std@{k} ↓"), ("jaccard", f"Jaccard@{k} ↑")):
            a = typed[model][ds].stability_per_question(key)
            b = typed[baseline][ds].stability_per_question(key)
            ma, mb = sum(a) / len(a), sum(b) / len(b)
            row[f"{display_name(model)} {label}"] = round(100 * ma, 1)
            row[f"{baseline} {label}"] = round(100 * mb, 1)
            row[f"Δ {label}"] = round(100 * (ma - mb), 1)
            row[f"p ({label.split('@')[0]})"] = round(paired_bootstrap_pvalue(a, b, n_boot, seed), 3)
        rows[DATASET_NAMES.get(ds, ds)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("dataset")
