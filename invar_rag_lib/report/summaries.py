"""The closing "What this shows" of every notebook: Markdown written from the saved results, so
every number in it comes from the run that the notebook just made (never typed by hand).

`what_this_shows(reports, "04")` returns the text; the notebook displays it as Markdown.
"""
from __future__ import annotations

from typing import Callable

from ..results import generation, retrievers
from .claims import fmt_p
from .names import DATASET_NAMES, display_name, ordered

_SUMMARIES: dict[str, Callable] = {}


def _summary(number: str):
    def register(fn):
        _SUMMARIES[number] = fn
        return fn
    return register


def what_this_shows(reports, number: str) -> str:
    return "### What this shows\n\n" + _SUMMARIES[number](reports)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


def _per_dataset(values: dict, fmt=_pct) -> str:
    return " / ".join(fmt(values[ds]) for ds in ordered(values))


def _names(datasets) -> str:
    return " / ".join(DATASET_NAMES.get(ds, ds) for ds in ordered(datasets))


def _versus(label: str, a: dict, b: dict, pvalues: dict, n_resamples: int) -> str:
    """'- label: NQ 72 vs 70, p 0.678, …' over the datasets that have a p-value."""
    return (f"- {label}: " + ", ".join(f"{DATASET_NAMES.get(ds, ds)} {_pct(a[ds])} vs {_pct(b[ds])}, "
                                      f"p {fmt_p(p, n_resamples)}" for ds, p in pvalues.items() if p is not None)
            + ".")


@_summary("00")
def _s00(reports) -> str:
    r = reports.read_results("00_data/benchmark")
    ev, corpus, train = r["counts"]["eval"], r["counts"]["corpus"], r["counts"]["train"]
    cover = {ds: ev[ds]["answer_in_corpus"] / ev[ds]["questions"] for ds in ev}
    return (f"- {_per_dataset({d: ev[d]['questions'] for d in ev}, str)} evaluation questions ({_names(ev)}) "
            f"over a corpus of {corpus['total']:,} passages.\n"
            f"- Only {_per_dataset(cover)}% of them have an answer in some corpus passage: that is the ceiling "
            "of every acc@k in this study. Only NQ questions come with gold passages (the NQ oracle), so NQ "
            "is the easiest dataset by construction.\n"
            f"- Training questions: " + ", ".join(f"{s} {n}" for s, n in train.items())
            + f". Leakage check {r['leakage_check'].split(';')[0]}.")


@_summary("01")
def _s01(reports) -> str:
    r = reports.read_results("01_baselines/retrieval")
    acc = {name: {ds: res.acc(5).mean for ds, res in by.items()} for name, by in retrievers(r).items()}
    cov = r.get("answer_coverage", {})
    lines = [f"- Over the whole corpus, acc@5 ({_names(acc['bm25'])}) is {_per_dataset(acc['bm25'])}% for BM25 and "
             f"{_per_dataset(acc['minilm'])}% for MiniLM" + (f", against a ceiling of {_per_dataset(cov)}%." if cov else ".")]
    ps = {ds: r["paired_pvalues"].get(f"minilm_vs_bm25/{ds}", {}).get("acc@5") for ds in ordered(acc["bm25"])}
    lines.append("- MiniLM against BM25, paired bootstrap p at acc@5: "
                 + ", ".join(f"{DATASET_NAMES.get(ds, ds)} {fmt_p(p, _resamples(r))}" for ds, p in ps.items() if p is not None)
                 + ". MiniLM's top candidates are what the LLM retriever reranks from notebook 02 on.")
    return "\n".join(lines)


def _resamples(results: dict) -> int:
    return results["provenance"]["config"]["retrieval"]["bootstrap_resamples"]


@_summary("02")
def _s02(reports) -> str:
    a = reports.read_results("02_alignment/alignment")
    pf = reports.read_results("02_alignment/pooling")["pooling_floor"]
    rows = pf["rows"]
    check = a["trunk_cache_check"]
    acc5 = {k: v["acc@5"]["mean"] if isinstance(v.get("acc@5"), dict) else v["acc@5"] for k, v in rows.items()}
    return (f"- The trunk cache is exact: the cached path equals a plain forward (max |Δ| = "
            f"{max(check['max_abs_diff_left'], check['max_abs_diff_right']):.1e} with {check['pooling']} pooling).\n"
            f"- Untrained, on {pf['n']} validation questions: acc@5 "
            + ", ".join(f"{k} {_pct(v)}%" for k, v in acc5.items())
            + f". The profile uses **{pf['chosen']}** pooling; a pooling at the `random` level carries no "
            "usable signal before training.\n"
            f"- A short run of L_ctr + α L_align on {a['n_groups']} groups moves the LLM's group distribution "
            f"toward MiniLM's: KL(P_c ‖ P_θ) {a['kl_before']:.3f} → {a['kl_after']:.3f}.")


@_summary("03")
def _s03(reports) -> str:
    r = reports.read_results("03_invariance/invariance")
    src = r["rewrite_sources"]
    b = r["invariance_loss_on_batch"]
    return (f"- {r['n_groups']} groups of {r['group_size']} in {len(r['environments'])} environments "
            f"({', '.join(e['name'] if isinstance(e, dict) else str(e) for e in r['environments'])}); {src.get('llm', 0)} of {sum(src.values())} rewrites are the "
            f"backbone's own, the rest the rule-based fallback.\n"
            f"- {_pct(r['invariant_share'])}% of group passages are invariant (their LSR usefulness agrees in every "
            f"environment: {_pct(r['invariant_positive_share'])}% of positives, {_pct(r['invariant_negative_share'])}% "
            "of negatives); only these pull the retriever in L_inv.\n"
            f"- On one batch of the untrained adapter, L_inv = {b['L_inv']:.3f}: mean KL {b['kl_mean']:.3f} plus "
            f"γ = {b['gamma']:g} times a variance across environments of {b['kl_var']:.4f}. The variance term is "
            "small next to the mean: environments disagree little before training.")


def _floor_lines(acc: dict, pv: dict, trained: list[str], datasets: list[str], what: str) -> list[str]:
    """How many of `trained` beat each floor on every dataset with p < 0.05 (paired bootstrap)."""
    lines = []
    for floor in ("random", "llm-zero"):
        beat = [n for n in trained if all(acc[n][ds] > acc[floor][ds]
                                          and (pv.get(f"{n}_vs_{floor}/{ds}") or {}).get("acc@5", 1) < 0.05
                                          for ds in datasets)]
        lines.append(f"- {len(beat)} of {len(trained)} {what} beat `{floor}` on every dataset with "
                     f"p < 0.05 ({', '.join(display_name(n) for n in beat) or 'none'}).")
    return lines


@_summary("04")
def _s04(reports) -> str:
    r = reports.read_results("04_retriever/retrieval")
    ret, pv, n_res = retrievers(r), r["paired_pvalues"], _resamples(r)
    datasets = ordered(ret["invar"]) if "invar" in ret else ordered(next(iter(ret.values())))
    acc = {name: {ds: ret[name][ds].acc(5).mean for ds in datasets} for name in ret}
    trained = [n for n in r.get("objectives", {}) if n != "llm-zero" and n in ret]
    lines = [f"- acc@5 ({_names(datasets)}, {r['mode']}): "
             + "; ".join(f"{display_name(n)} {_per_dataset(acc[n])}" for n in
                         ("random", "llm-zero", *trained, "minilm") if n in acc) + "."]
    lines += _floor_lines(acc, pv, trained, datasets, "trained variants")
    if "invar" in ret and "llm-ctr" in ret:
        ps = {ds: (pv.get(f"invar_vs_llm-ctr/{ds}") or {}).get("acc@5") for ds in datasets}
        lines.append(_versus("`invar` against `llm-ctr` (does the invariance objective add anything?)",
                             acc["invar"], acc["llm-ctr"], ps, n_res))
    cos = r.get("passage_cosine", {})
    if cos:
        lines.append("- Collapse check: the mean pairwise cosine of passage representations is "
                     + ", ".join(f"{display_name(n)} {c:.2f}" for n, c in cos.items())
                     + " (1 would mean every passage maps to one point).")
    return "\n".join(lines)


@_summary("05")
def _s05(reports) -> str:
    r = reports.read_results("05_generator/training")
    t, d = r["training"], r.get("diagnostics", {})
    g = r["provenance"]["config"]["generator"]
    h = t["history"]
    first, last = h[: min(5, len(h))], h[-min(5, len(h)):]
    mean = lambda xs: sum(x["loss"] for x in xs) / len(xs)  # noqa: E731
    depth = "every layer" if g["lora_layers"] == 0 else f"the top {g['lora_layers']} layers"
    lines = [f"- The `generator` adapter (LoRA on {depth}) trained on {t['n_examples']} examples with the frozen "
             f"`{r['retriever']}` retriever's top {r['k']} passages ({g['adapter_prompt']} prompt, {g['context_mix']} "
             f"contexts): {len(h)} steps, answer-token cross-entropy {mean(first):.2f} (first steps) → "
             f"{mean(last):.2f} (last steps); on {t['loss_on_sample']['examples']} training examples the base model's "
             f"loss is {t['loss_on_sample']['base model']:.2f} and the generator's {t['loss_on_sample']['generator']:.2f}."]
    for split, label in (("val", "held-out validation"), ("train", "training")):
        x = d.get(split)
        if x:
            ext = ("" if x["base model"]["extraction"] is None else
                   f"; extraction {_pct(x['base model']['extraction'])}% → {_pct(x['generator']['extraction'])}%")
            lines.append(f"- On {x['n']} {label} questions, EM {_pct(x['base model']['em'])}% (base model) → "
                         f"{_pct(x['generator']['em'])}% (generator){ext}; the shown windows hold an answer for "
                         f"{_pct(x['answer_in_shown_windows'])}% of them.")
    lines.append("- The retriever adapter did not move (a test checks it); notebook 06 measures the reader on the "
                 "evaluation questions.")
    return "\n".join(lines)


@_summary("06")
def _s06(reports) -> str:
    r = reports.read_results("06_generation/generation")
    rows, n_res = generation(r), _resamples(r)
    datasets = ordered(next(iter(rows.values())))
    em = {row: {ds: rows[row][ds].metric("em").mean for ds in datasets} for row in rows}
    lines = ["- EM (" + _names(datasets) + "): " + "; ".join(f"{row} {_per_dataset(em[row])}" for row in rows) + "."]
    for row, base, what in (("invar-rag", "invar-retrieval", "the generator on invar's passages"),
                            ("minilm-rag+generator", "minilm-rag", "the generator on MiniLM's passages"),
                            ("invar-rag", "minilm-rag", "`invar-rag` against `minilm-rag`")):
        if row in rows and base in rows:
            ps = {ds: (r["paired_pvalues"].get(f"{row}_vs_{base}/{ds}") or {}).get("em") for ds in datasets}
            lines.append(_versus(f"{what} (`{row}` vs `{base}`), EM", em[row], em[base], ps, n_res))
    ext = {row: {ds: rows[row][ds].metric("extraction").mean for ds in datasets if rows[row][ds].has("extraction")}
           for row in rows if row != "closed-book"}
    window = {row: {ds: rows[row][ds].metric("window_hit").mean for ds in datasets}
              for row in rows if rows[row][datasets[0]].has("window_hit") and row != "closed-book"}
    if window:
        lines.append("- The shown windows hold an answer for "
                     + "; ".join(f"{row} {_per_dataset(w)}%" for row, w in window.items())
                     + " of questions; the extraction rate (EM among those) is "
                     + "; ".join(f"{row} {_per_dataset(e)}%" for row, e in ext.items() if len(e) == len(datasets)) + ".")
    return "\n".join(lines)


@_summary("07")
def _s07(reports) -> str:
    from .claims import claims_table

    from .artifacts import ablation_floors

    variants, ablations = reports.read_results("04_retriever/retrieval"), reports.read_results("07_ablations/ablations")
    table = claims_table(variants, reports.read_results("06_generation/generation"), ablations)
    floors = ablation_floors(variants, ablations)
    ret = retrievers(floors)
    datasets = ordered(ret["random"])
    acc = {name: {ds: ret[name][ds].acc(5).mean for ds in datasets} for name in ret}
    counts = table["verdict"].value_counts().to_dict()
    lines = _floor_lines(acc, floors["paired_pvalues"], [n for n in ret if n not in ("random", "llm-zero")],
                         datasets, "ablation points trained here")
    lines += ["- Verdicts on the paper's claims at this profile's n: "
              + ", ".join(f"{n} {v}" for v, n in counts.items()) + "."]
    lines += [f"- {claim} ({row['test']}): **{row['verdict']}**" for claim, row in table.iterrows()]
    return "\n".join(lines)
