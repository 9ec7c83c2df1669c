"""Generation: EM/F1/acc tables, answer-in-context, decoding speed, the generator's training."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: papermill, nbval, CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..results import generation  # noqa: E402
from ..stage2 import ROWS  # noqa: E402
from .names import DATASET_NAMES, ordered, ordered_retrievers  # noqa: E402
from .style import COLUMN_W, LINE, PAGE_W, dataset_colors, theme  # noqa: E402


METRIC_NAMES = {"em": "EM", "f1": "F1", "acc": "acc", "context_hit": "answer in the top-k passages",
                "window_hit": "answer in the shown windows", "extraction": "EM where the windows show an answer"}


def generation_rows(names) -> list[str]:
    return ordered_retrievers(names, ROWS)


def generation_table(results: dict, metrics=("em", "f1", "acc"), significance_vs: str = "minilm-rag") -> pd.DataFrame:
    """Rows: generation rows; columns: dataset × metric, '% mean [95% CI]', † = p < 0.05 against
    `significance_vs` (paired bootstrap)."""
    table, typed = {}, generation(results)
    for row in generation_rows(typed):
        cells = {}
        for ds in ordered(typed[row]):
            for m in metrics:
                cell = typed[row][ds].metric(m).pct()
                p = results["paired_pvalues"].get(f"{row}_vs_{significance_vs}/{ds}", {}).get(m)
                if p is not None and p < 0.05:
                    cell += " †"
                cells[f"{DATASET_NAMES.get(ds, ds)} {METRIC_NAMES[m]}"] = cell
        table[row] = cells
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("row")


def context_table(results: dict) -> pd.DataFrame:
    """What the reader could read and what it made of it: the share of questions whose top-k passages
    contain an answer, on whole passages and within the shown windows (title + first
    `passage_tokens` tokens), and the extraction rate (EM among the questions whose shown windows
    hold an answer), per row that retrieves."""
    table, typed = {}, generation(results)
    for row in generation_rows(typed):
        cells = {}
        for ds in ordered(typed[row]):
            r = typed[row][ds]
            if not r.has("window_hit") or (r.metric("context_hit").mean == 0 and row == "closed-book"):
                continue
            name = DATASET_NAMES.get(ds, ds)
            cells[f"{name} whole passages"] = r.metric("context_hit").pct()
            cells[f"{name} shown windows"] = r.metric("window_hit").pct()
            if r.has("extraction"):
                cells[f"{name} extraction"] = r.metric("extraction").pct()
        if cells:
            table[row] = cells
    return pd.DataFrame.from_dict(table, orient="index").fillna("—").rename_axis("row")


def changed_table(results: dict) -> pd.DataFrame:
    """How much each adapter row changes against the base model reading the same passages: answers
    that differ, EM gained (0 → 1) and lost (1 → 0), of n questions."""
    table = {}
    for row, by_ds in results.get("changed", {}).items():
        cells = {}
        for ds in ordered(by_ds):
            c = by_ds[ds]
            name = DATASET_NAMES.get(ds, ds)
            cells[f"{name} answers changed"] = f"{c['answer_changed']} of {c['n']}"
            cells[f"{name} EM +/−"] = f"+{c['em_gained']} / −{c['em_lost']}"
        table[f"{row} vs {next(iter(by_ds.values()))['vs']}"] = cells
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("adapter row vs base row")


def examples_table(results: dict) -> pd.DataFrame:
    """A few questions where the generator answers otherwise than the base model on the same passages."""
    rows = results.get("examples", [])
    if not rows:
        return pd.DataFrame({"note": ["no question where the two answers differ"]})
    return pd.DataFrame([{**r, "dataset": DATASET_NAMES.get(r["dataset"], r["dataset"]),
                          "gold": " | ".join(r["gold"])} for r in rows]).set_index("dataset")


def generation_pvalues(results: dict) -> pd.DataFrame:
    """Paired bootstrap p-values, at the bootstrap's resolution: every row against minilm-rag, each
    adapter row against the base model on the same passages, invar-rag against minilm-rag +
    generator; in row and dataset order."""
    from .claims import fmt_p

    n_res = results["provenance"]["config"]["retrieval"]["bootstrap_resamples"]

    def order(key):
        pair, ds = key.split("/")
        row, base = pair.split("_vs_")
        return (base != "minilm-rag", ROWS.index(row) if row in ROWS else 99,
                ordered([d for d in DATASET_NAMES] + [ds]).index(ds))

    keys = sorted(results["paired_pvalues"], key=order)
    df = pd.DataFrame({k.replace("_vs_", " vs ").replace("/", " / "): {METRIC_NAMES[m]: fmt_p(p, n_res) for m, p in
                                                                      results["paired_pvalues"][k].items()}
                       for k in keys}).T
    df = df[[METRIC_NAMES[m] for m in ("em", "f1", "acc") if METRIC_NAMES[m] in df.columns]]
    return df.rename_axis("row vs baseline / dataset")


def decode_speed_table(results: dict) -> pd.DataFrame:
    """Decoding throughput per row (uncached prompts only; the shared prefix is counted once)."""
    rows = {row: {"prompts": int(s["prompts"]), "prompt tokens": int(s["prompt_tokens"]),
                  "generated tokens": int(s["generated_tokens"]), "seconds": round(s["seconds"], 1),
                  "tokens/s": round(s["tokens_per_s"])} for row, s in results["decode_speed"].items()}
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("row")
    return df.astype({"prompts": int, "prompt tokens": int, "generated tokens": int, "tokens/s": int})


def generator_training_table(results: dict) -> pd.DataFrame:
    t = results["training"]
    h = t["history"]
    g = results["provenance"]["config"]["generator"]
    head, tail = h[: min(5, len(h))], h[-min(5, len(h)):]
    c, s = t["counts"], t["loss_on_sample"]
    depth = "every layer" if g["lora_layers"] == 0 else f"top {g['lora_layers']} layers"
    return pd.DataFrame({"value": {
        "adapter": f"LoRA on the {depth}, r {g['lora_r']}, α {g['lora_alpha']}, dropout {g['lora_dropout']:g}",
        "training questions → examples": f"{c['questions']} → {c['examples']} ({c['context_mix']} contexts; "
                                          f"{c['answer_in_shown_windows']} show an answer, {c['answer_passage_swapped_in']} "
                                          "with an answer passage swapped in)",
        "target answer rule": c["target_answer"],
        "prompt": f"{g['adapter_prompt']} ({t['prefix_tokens']} shared prefix tokens, "
                  f"{round(t['tokens_per_example'], 1)} per example in all)",
        "optimizer steps (epochs × steps)": f"{len(h)} ({g['epochs']} × {len(h) // max(1, g['epochs'])}), lr {g['lr']:g}",
        "loss, first 5 steps → last 5 steps": f"{sum(r['loss'] for r in head) / len(head):.3f} → "
                                               f"{sum(r['loss'] for r in tail) / len(tail):.3f}",
        f"loss on {s['examples']} training examples: base model → generator": f"{s['base model']:.3f} → {s['generator']:.3f}",
        "retriever (frozen)": results["retriever"], "passages per prompt (k)": results["k"]}}).rename_axis("")


def diagnostics_table(results: dict) -> pd.DataFrame:
    """EM (and extraction: EM where the shown windows hold an answer) of the base model and of the
    generator on the same validation and training questions, with the frozen retriever's passages."""
    rows = {}
    for split, label in (("val", "validation (held out)"), ("train", "training (first questions)")):
        d = results["diagnostics"].get(split)
        if not d:
            continue
        for who in ("base model", "generator"):
            x = d[who]
            rows[f"{label}, {who}"] = {
                "questions": d["n"], "answer in shown windows (%)": round(100 * d["answer_in_shown_windows"], 1),
                "EM (%)": round(100 * x["em"], 1),
                "extraction (%)": "—" if x["extraction"] is None else round(100 * x["extraction"], 1)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("questions, reader")


def generator_loss_curve(results: dict):
    """05: the generator's token cross-entropy per optimizer step."""
    theme()
    h = results["training"]["history"]
    fig, ax = plt.subplots(figsize=(COLUMN_W, 2.3))
    steps, loss = [r["step"] for r in h], [r["loss"] for r in h]
    ax.plot(steps, loss, color=LINE, alpha=0.35, lw=0.8, label="per step")
    if len(loss) >= 5:
        smooth = np.convolve(loss, np.ones(5) / 5, mode="valid")
        ax.plot(steps[4:], smooth, color=LINE, label="rolling mean, 5 steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    base = results["training"].get("loss_on_sample", {}).get("base model")
    if base is not None:
        ax.axhline(base, ls="--", color="grey", lw=0.8, label="base model, same examples")
    # above the axes, so no line runs through it
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=1, frameon=False, borderaxespad=0.2)
    fig.tight_layout()
    return fig


def generation_bars(results: dict, metrics=("em", "acc", "window_hit")):
    """06: EM, PopQA-style acc and the share of prompts whose shown passage windows (what the
    generator reads) hold an answer, per row. Results without `window_hit` (older runs) show
    `context_hit`, the whole passages."""
    typed = generation(results)
    first = next(iter(typed.values()))
    if "window_hit" in metrics and not next(iter(first.values())).has("window_hit"):
        metrics = tuple("context_hit" if m == "window_hit" else m for m in metrics)
    theme()
    rows = generation_rows(typed)
    datasets = ordered(typed[rows[0]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(PAGE_W, 2.6), sharey=False)
    axes = np.atleast_1d(axes)
    palette = dataset_colors(datasets)
    width = 0.8 / len(datasets)
    for ax, m in zip(axes, metrics):
        for j, ds in enumerate(datasets):
            vals = [typed[r][ds].metric(m) for r in rows]
            mean = np.array([100 * v.mean for v in vals])
            err = np.array([[100 * (v.mean - v.low) for v in vals], [100 * (v.high - v.mean) for v in vals]])
            x = np.arange(len(rows)) + (j - (len(datasets) - 1) / 2) * width
            ax.bar(x, mean, width, yerr=err, color=palette[j], label=DATASET_NAMES.get(ds, ds), capsize=1, error_kw={"lw": 0.6})
        ax.set_xticks(np.arange(len(rows)), rows, rotation=35, ha="right")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{METRIC_NAMES[m]} (%)")
    handles, labels = axes[0].get_legend_handles_labels()  # one legend, below the panels
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig
