"""Ablations: the λ and rewrite-count grid and the removed-term variants, as a table and curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..results import retrievers  # noqa: E402
from .names import DATASET_NAMES, HEADLINE_K, display_name, ordered  # noqa: E402
from .style import COLUMN_W, PAGE_W, dataset_colors, theme  # noqa: E402


def point_label(point: dict) -> str:
    if point["axis"] == "lambda":
        return f"λ = {point['value']:g}"
    if point["axis"] == "rewrites":
        return f"R = {point['value']}"
    return display_name(point["name"])


def ablation_table(results: dict, k: int = HEADLINE_K) -> pd.DataFrame:
    """One row per ablation point: acc@k (%, 95% CI, † = p < 0.05 against `invar`) and Jaccard@k of
    the top-k sets between each question and its rewrites, per dataset."""
    table, typed = {}, retrievers(results)
    for point in results["points"]:
        by_ds = typed[point["name"]]
        cells = {"checkpoint": point["name"]}
        for ds in ordered(by_ds):
            cell = by_ds[ds].acc(k).pct()
            p = results["paired_pvalues"].get(f"{point['name']}_vs_invar/{ds}", {}).get(f"acc@{k}")
            if p is not None and p < 0.05:
                cell += " †"
            cells[f"{DATASET_NAMES.get(ds, ds)} acc@{k}"] = cell
            cells[f"{DATASET_NAMES.get(ds, ds)} Jaccard@{k} ↑"] = by_ds[ds].stability("jaccard", k).pct()
        table[point_label(point)] = cells
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("ablation")


def ablation_curves(results: dict, k: int = HEADLINE_K):
    """07: acc@k and the rewrite-stability Jaccard@k against λ and against R, per dataset."""
    theme()
    axes_of = [("lambda", r"$\lambda$ (weight of $L_{inv}$)"), ("rewrites", "R (rewrites per training question)")]
    # an axis with one point is no sweep (its point is invar itself): left out, and named in the caption
    axes_of = [(axis, label) for axis, label in axes_of
               if sum(p["axis"] == axis for p in results["points"]) >= 2] or axes_of[:1]
    fig, axes = plt.subplots(2, len(axes_of), figsize=(PAGE_W if len(axes_of) > 1 else COLUMN_W, 4.2),
                             sharey="row", squeeze=False)
    typed = retrievers(results)
    datasets = ordered(next(iter(typed.values())))
    palette = dataset_colors(datasets)
    for col, (axis, label) in enumerate(axes_of):
        points = sorted((p for p in results["points"] if p["axis"] == axis), key=lambda p: p["value"])
        xs = [p["value"] for p in points]
        for row, (getter, ylabel) in enumerate([
                (lambda r: r.acc(k), f"acc@{k} (%)"),
                (lambda r: r.stability("jaccard", k), f"Jaccard@{k} vs rewrites (%) ↑")]):
            ax = axes[row][col]
            # two points or fewer are no curve: a dot plot (datasets side by side at each point)
            dots = len(xs) <= 2
            pos = list(range(len(xs))) if dots else xs
            for j, (color, ds) in enumerate(zip(palette, datasets)):
                vals = [getter(typed[p["name"]][ds]) for p in points]
                shift = (j - (len(datasets) - 1) / 2) * 0.12 if dots else 0.0
                ax.errorbar([x + shift for x in pos], [100 * v.mean for v in vals],
                            yerr=[[100 * (v.mean - v.low) for v in vals], [100 * (v.high - v.mean) for v in vals]],
                            marker="o", capsize=2, color=color, ls="none" if dots else "-", elinewidth=0.8,
                            label=DATASET_NAMES.get(ds, ds))
            ax.set_xticks(pos, [f"{x:g}" for x in xs])
            if dots:
                ax.set_xlim(-0.6, len(xs) - 0.4)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 1:
                ax.set_xlabel(label)
    handles, labels = axes[0][0].get_legend_handles_labels()  # one legend, below the panels
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.align_ylabels(axes[:, 0])
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
