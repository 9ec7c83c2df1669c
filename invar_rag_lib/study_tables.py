"""Tables of notebooks 05–07 (generation, decoding speed, ablations), from results files only."""
from __future__ import annotations

import pandas as pd

from .reporting import fmt_ci
from .stage2 import ROWS
from .tables import DATASET_NAMES, HEADLINE_K, display_name, ordered, ordered_retrievers

METRIC_NAMES = {"em": "EM", "f1": "F1", "acc": "acc", "context_hit": "answer in the top-k passages",
                "window_hit": "answer in the shown windows"}


def _rows(names) -> list[str]:
    return ordered_retrievers(names, ROWS)


def generation_table(results: dict, metrics=("em", "f1", "acc"), significance_vs: str = "minilm-rag") -> pd.DataFrame:
    """Rows: generation rows; columns: dataset × metric, '% mean [95% CI]', † = p < 0.05 against
    `significance_vs` (paired bootstrap)."""
    table = {}
    for row in _rows(results["rows"]):
        cells = {}
        for ds in ordered(results["rows"][row]):
            for m in metrics:
                cell = fmt_ci(results["rows"][row][ds]["metrics"][m])
                p = results["paired_pvalues"].get(f"{row}_vs_{significance_vs}/{ds}", {}).get(m)
                if p is not None and p < 0.05:
                    cell += " †"
                cells[f"{DATASET_NAMES.get(ds, ds)} {METRIC_NAMES[m]}"] = cell
        table[row] = cells
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("row")


def context_table(results: dict) -> pd.DataFrame:
    """What the generator could read: the share of questions whose top-k passages contain an
    answer, on whole passages and within the shown windows (title + first `passage_tokens`
    tokens), per row that retrieves. Empty for results written before `window_hit` existed."""
    table = {}
    for row in _rows(results["rows"]):
        cells = {}
        for ds in ordered(results["rows"][row]):
            m = results["rows"][row][ds]["metrics"]
            if "window_hit" not in m or (m["context_hit"]["mean"] == 0 and row == "closed-book"):
                continue
            name = DATASET_NAMES.get(ds, ds)
            cells[f"{name} whole passages"] = fmt_ci(m["context_hit"])
            cells[f"{name} shown windows"] = fmt_ci(m["window_hit"])
        if cells:
            table[row] = cells
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("row")


def generation_pvalues(results: dict) -> pd.DataFrame:
    """Paired bootstrap p-values: every row against minilm-rag, and invar-rag against
    invar-retrieval (the generator adapter's own effect), in row and dataset order."""
    def order(key):
        pair, ds = key.split("/")
        row, base = pair.split("_vs_")
        return (base != "minilm-rag", ROWS.index(row) if row in ROWS else 99,
                ordered([d for d in DATASET_NAMES] + [ds]).index(ds))

    keys = sorted(results["paired_pvalues"], key=order)
    df = pd.DataFrame({k.replace("_vs_", " vs ").replace("/", " / "): {METRIC_NAMES[m]: p for m, p in
                                                                      results["paired_pvalues"][k].items()}
                       for k in keys}).T
    df = df[[METRIC_NAMES[m] for m in ("em", "f1", "acc") if METRIC_NAMES[m] in df.columns]]
    return df.round(3).rename_axis("row vs baseline / dataset")


def decode_speed_table(results: dict) -> pd.DataFrame:
    """Decoding throughput per row (uncached prompts only; the shared prefix is counted once)."""
    rows = {row: {"prompts": s["prompts"], "prompt tokens": s["prompt_tokens"],
                  "generated tokens": s["generated_tokens"], "seconds": s["seconds"],
                  "tokens/s": s["tokens_per_s"]} for row, s in results["decode_speed"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("row")


def generator_training_table(results: dict) -> pd.DataFrame:
    t = results["training"]
    h = t["history"]
    head, tail = h[: min(5, len(h))], h[-min(5, len(h)):]
    return pd.DataFrame({"value": {
        "training examples": t["n_examples"], "tokens per example (mean)": round(t["tokens_per_example"], 1),
        "optimizer steps": len(h), "loss, first 5 steps": round(sum(r["loss"] for r in head) / len(head), 3),
        "loss, last 5 steps": round(sum(r["loss"] for r in tail) / len(tail), 3),
        "retriever": results["retriever"], "passages per prompt (k)": results["k"],
        "demonstrations (n_shot)": results["n_shot"]}}).rename_axis("")


def point_label(point: dict) -> str:
    if point["axis"] == "lambda":
        return f"λ = {point['value']:g}"
    if point["axis"] == "rewrites":
        return f"R = {point['value']}"
    return display_name(point["name"])


def ablation_table(results: dict, k: int = HEADLINE_K) -> pd.DataFrame:
    """One row per ablation point: acc@k (%, 95% CI, † = p < 0.05 against `invar`) and Jaccard@k of
    the top-k sets between each question and its rewrites, per dataset."""
    table = {}
    for point in results["points"]:
        by_ds = results["retrievers"][point["name"]]
        cells = {"checkpoint": point["name"]}
        for ds in ordered(by_ds):
            cell = fmt_ci(by_ds[ds]["metrics"][f"acc@{k}"])
            p = results["paired_pvalues"].get(f"{point['name']}_vs_invar/{ds}", {}).get(f"acc@{k}")
            if p is not None and p < 0.05:
                cell += " †"
            cells[f"{DATASET_NAMES.get(ds, ds)} acc@{k}"] = cell
            cells[f"{DATASET_NAMES.get(ds, ds)} Jaccard@{k} ↑"] = fmt_ci(by_ds[ds]["stability"][f"jaccard@{k}"])
        table[point_label(point)] = cells
    return pd.DataFrame.from_dict(table, orient="index").rename_axis("ablation")


def variance_claim_table(variants: dict, k: int = HEADLINE_K, model: str = "invar", baseline: str = "llm-ctr") -> pd.DataFrame:
    """The paper's variance claim tested per dataset: `model` against `baseline` on the per-question
    std of hit@k across environments (↓) and Jaccard@k to the rewrites (↑), with the paired
    bootstrap p-value of the difference."""
    from .metrics import paired_bootstrap_pvalue

    cfg = variants["provenance"]["config"]
    n_boot, seed = cfg["retrieval"]["bootstrap_resamples"], variants["provenance"]["seed"]
    rows = {}
    for ds in ordered(variants["retrievers"][model]):
        a = variants["retrievers"][model][ds]["stability"]["per_question"]
        b = variants["retrievers"][baseline][ds]["stability"]["per_question"]
        row = {}
        for key, label in (("has_answer_std", f"hit-std@{k} ↓"), ("jaccard", f"Jaccard@{k} ↑")):
            ma, mb = sum(a[key]) / len(a[key]), sum(b[key]) / len(b[key])
            row[f"{display_name(model)} {label}"] = round(100 * ma, 1)
            row[f"{baseline} {label}"] = round(100 * mb, 1)
            row[f"Δ {label}"] = round(100 * (ma - mb), 1)
            row[f"p ({label.split('@')[0]})"] = round(paired_bootstrap_pvalue(a[key], b[key], n_boot, seed), 3)
        rows[DATASET_NAMES.get(ds, ds)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("dataset")
