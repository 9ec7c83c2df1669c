"""Figures of notebooks 05–07, from results files only; the file name carries the notebook number."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from .study_tables import METRIC_NAMES, _rows, point_label  # noqa: E402
from .tables import DATASET_NAMES, HEADLINE_K, display_name, ordered, ordered_retrievers  # noqa: E402


def generator_loss(results: dict):
    """05: the generator's token cross-entropy per optimizer step."""
    sns.set_theme(style="whitegrid", context="notebook")
    h = results["training"]["history"]
    fig, ax = plt.subplots(figsize=(6, 3))
    steps, loss = [r["step"] for r in h], [r["loss"] for r in h]
    ax.plot(steps, loss, color="#4c72b0", alpha=0.5, label="per step")
    if len(loss) >= 5:
        smooth = np.convolve(loss, np.ones(5) / 5, mode="valid")
        ax.plot(steps[4:], smooth, color="#4c72b0", label="mean of 5")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on answer tokens")
    ax.set_title(f"generator adapter: {results['training']['n_examples']} examples")
    ax.legend()
    fig.tight_layout()
    return fig


def generation_bars(results: dict, metrics=("em", "acc", "window_hit")):
    """06: EM, PopQA-style acc and the share of prompts whose shown passage windows (what the
    generator reads) hold an answer, per row. Results without `window_hit` (older runs) show
    `context_hit`, the whole passages."""
    first = next(iter(results["rows"].values()))
    if "window_hit" in metrics and "window_hit" not in next(iter(first.values()))["metrics"]:
        metrics = tuple("context_hit" if m == "window_hit" else m for m in metrics)
    sns.set_theme(style="whitegrid", context="notebook")
    rows = _rows(results["rows"])
    datasets = ordered(results["rows"][rows[0]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.6), sharey=False)
    axes = np.atleast_1d(axes)
    palette = sns.color_palette("deep", len(datasets))
    width = 0.8 / len(datasets)
    for ax, m in zip(axes, metrics):
        for j, ds in enumerate(datasets):
            vals = [results["rows"][r][ds]["metrics"][m] for r in rows]
            mean = np.array([100 * v["mean"] for v in vals])
            err = np.array([[100 * (v["mean"] - v["low"]) for v in vals], [100 * (v["high"] - v["mean"]) for v in vals]])
            x = np.arange(len(rows)) + (j - (len(datasets) - 1) / 2) * width
            ax.bar(x, mean, width, yerr=err, color=palette[j], label=DATASET_NAMES.get(ds, ds), capsize=2)
        ax.set_xticks(np.arange(len(rows)), rows, rotation=25, ha="right")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{METRIC_NAMES[m]} (%)", fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def ablation_curves(results: dict, k: int = HEADLINE_K):
    """07: acc@k and the rewrite-stability Jaccard@k against λ and against R, per dataset."""
    sns.set_theme(style="whitegrid", context="notebook")
    axes_of = [("lambda", "λ (weight of L_inv)"), ("rewrites", "R (rewrites per training question)")]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharey="row", squeeze=False)
    datasets = ordered(next(iter(results["retrievers"].values())))
    palette = sns.color_palette("deep", len(datasets))
    for col, (axis, label) in enumerate(axes_of):
        points = sorted((p for p in results["points"] if p["axis"] == axis), key=lambda p: p["value"])
        xs = [p["value"] for p in points]
        for row, (getter, ylabel) in enumerate([
                (lambda r: r["metrics"][f"acc@{k}"], f"acc@{k} (%)"),
                (lambda r: r["stability"][f"jaccard@{k}"], f"Jaccard@{k} vs rewrites (%) ↑")]):
            ax = axes[row][col]
            for color, ds in zip(palette, datasets):
                vals = [getter(results["retrievers"][p["name"]][ds]) for p in points]
                ax.errorbar(xs, [100 * v["mean"] for v in vals],
                            yerr=[[100 * (v["mean"] - v["low"]) for v in vals], [100 * (v["high"] - v["mean"]) for v in vals]],
                            marker="o", capsize=3, color=color, label=DATASET_NAMES.get(ds, ds))
            ax.set_xticks(xs, [f"{x:g}" for x in xs], fontsize=8)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 1:
                ax.set_xlabel(label)
    axes[0][0].legend(fontsize=8)
    fig.align_ylabels(axes[:, 0])
    missing = results.get("not_run") or []
    fig.suptitle("Ablations of invar (rerank, same candidates and eval rewrites)"
                 + (f"; not run in this profile: {', '.join(missing)}" if missing else ""), fontsize=10)
    fig.tight_layout()
    return fig


def stability_all(variants: dict, ablations: dict, k: int = HEADLINE_K):
    """07: the variance claim for every retriever: Jaccard@k ↑ and std of hit@k across the question
    and its rewrites ↓, for BM25, MiniLM, every variant of notebook 04 and every ablation point."""
    sns.set_theme(style="whitegrid", context="notebook")
    entries = [(display_name(n), variants["retrievers"][n]) for n in ordered_retrievers(variants["retrievers"])
               if "stability" in next(iter(variants["retrievers"][n].values()))]  # not the random floor
    seen = {n for n in variants["retrievers"]}
    for p in ablations["points"]:
        if p["name"] not in seen and p["axis"] != "component":
            entries.append((f"invar, {point_label(p)}", ablations["retrievers"][p["name"]]))
            seen.add(p["name"])
    datasets = ordered(entries[0][1])
    palette = sns.color_palette("deep", len(datasets))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(entries) + 1.6), sharey=True)
    height = 0.8 / len(datasets)
    y = np.arange(len(entries))
    for ax, (key, title) in zip(axes, [(f"jaccard@{k}", f"Jaccard@{k} of top-{k} sets ↑"),
                                       (f"has_answer_std@{k}", f"std of hit@{k} across rewrites ↓")]):
        for j, ds in enumerate(datasets):
            vals = [e[1][ds]["stability"][key] for e in entries]
            ax.barh(y + (j - (len(datasets) - 1) / 2) * height, [100 * v["mean"] for v in vals], height,
                    xerr=[[100 * (v["mean"] - v["low"]) for v in vals], [100 * (v["high"] - v["mean"]) for v in vals]],
                    color=palette[j], label=DATASET_NAMES.get(ds, ds), capsize=2)
        ax.set_title(title + " (%)")
    axes[0].set_yticks(y, [e[0] for e in entries])
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
