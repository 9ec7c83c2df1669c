"""Every table and figure of the study, in one registry used three ways: the notebooks show them
(`show`), `invar-rag report` regenerates them all from `reports/results/` alone (`build_all`), and
`reports/README.md`, the gallery, lists them with one sentence each (`write_gallery`).

An artifact names the results file(s) it reads and a function of those results only: no model, no
data, no profile object (captions take the profile from the results' provenance).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import ablations, claims, corpus, generation, names, retrieval, stability
from ..io_utils import atomic_write_text
from ..paths import repo_root
from ..results import retrievers
from .writer import Reports, fmt_ci


@dataclass(frozen=True)
class Artifact:
    stem: str  # file stem under tables/ (md, csv, tex) or figures/ (png, pdf)
    kind: str  # "table" | "figure"
    results: tuple[str, ...]  # results names read, e.g. ("04_retriever/retrieval",)
    make: Callable[..., Any]  # results dicts -> DataFrame | Figure
    about: str  # one sentence for the gallery
    caption: Callable[..., str] | None = None  # results dicts -> caption (tables: in the file; figures: in the gallery)


def _profile(r: dict) -> str:
    return r["provenance"]["profile"]


def _ks(r: dict) -> tuple[int, ...]:
    return tuple(r["provenance"]["config"]["retrieval"]["ks"])


def _resamples(r: dict) -> int:
    return r["provenance"]["config"]["retrieval"]["bootstrap_resamples"]


def _ns(r: dict) -> str:
    """The evaluated questions per dataset of a retrieval results file, e.g. '100 / 100 / 100'."""
    first = next(iter(r["retrievers"].values()))
    return " / ".join(str(first[ds]["n"]) for ds in first)


def _p_caption(r: dict, what: str) -> str:
    n = _resamples(r)
    return (f"Paired bootstrap p-values (two-sided, {n:,} resamples; < {2 / n:g} = below the bootstrap's "
            f"resolution) {what}")


def _p_vs_ctr(r: dict) -> pd.DataFrame:
    n_res = _resamples(r)
    rows = {f"{names.display_name(n)} / {ds}": {k: claims.fmt_p(p, n_res)
                                                 for k, p in r["paired_pvalues"][f"{n}_vs_llm-ctr/{ds}"].items()}
            for n in names.ordered_retrievers(r["retrievers"]) if n != "llm-ctr"
            for ds in names.ordered(r["retrievers"][n])}
    df = pd.DataFrame(rows).T
    return df[sorted(df.columns, key=lambda c: int(c.split("@")[1]))].rename_axis("retriever / dataset")


def _floors(r: dict, k: int = names.HEADLINE_K) -> pd.DataFrame:
    """acc@k of every LLM variant beside its two floors (the random rerank and the untrained
    model), with paired p-values, and the collapse check (mean pairwise cosine of h(d))."""
    n_res = r["provenance"]["config"]["retrieval"]["bootstrap_resamples"]

    def p_of(name: str, base: str, ds: str) -> str:
        p = r["paired_pvalues"].get(f"{name}_vs_{base}/{ds}", {}).get(f"acc@{k}")
        return "—" if p is None else claims.fmt_p(p, n_res)

    rows, typed = {}, retrievers(r)
    for n in names.ordered_retrievers(typed):
        if n in ("bm25", "minilm", "random"):
            continue
        cells = {}
        for ds in names.ordered(typed[n]):
            name = names.DATASET_NAMES.get(ds, ds)
            cells[f"{name} acc@{k}"] = f"{100 * typed[n][ds].acc(k).mean:.1f}"
            cells[f"{name} p vs random"] = p_of(n, "random", ds)
            cells[f"{name} p vs llm-zero"] = "—" if n == "llm-zero" else p_of(n, "llm-zero", ds)
        cosine = r.get("passage_cosine", {}).get(n)
        cells["mean cos(d, d')"] = "—" if cosine is None else f"{cosine:.3f}"
        rows[names.display_name(n)] = cells
    random_row = {f"{names.DATASET_NAMES.get(ds, ds)} acc@{k}": f"{100 * typed['random'][ds].acc(k).mean:.1f}"
                  for ds in names.ordered(typed["random"])}
    df = pd.DataFrame({"random (expected)": random_row, **rows}).T.fillna("—")
    columns = [c for ds in names.ordered(r["retrievers"]["random"]) for c in df.columns
               if c.startswith(names.DATASET_NAMES.get(ds, ds) + " ")] + ["mean cos(d, d')"]
    return df[columns].rename_axis("retriever")


def ablation_floors(v: dict, a: dict) -> dict:
    """Notebook 07's trained points beside notebook 04's floors (the random rerank and llm-zero, on
    the same questions and candidates), as a results dict `_floors` reads: paired p-values computed
    here, with the seed and resamples of the run."""
    from ..retrieval.harness import paired_pvalues

    points = [n for n in dict.fromkeys(p["name"] for p in a["points"]) if n not in v["retrievers"]]
    ret = {"random": v["retrievers"]["random"], "llm-zero": v["retrievers"]["llm-zero"],
           **{n: a["retrievers"][n] for n in points}}
    cfg = v["provenance"]["config"]
    pvalues = paired_pvalues(ret, ["random", "llm-zero"], v["ks"], cfg["retrieval"]["bootstrap_resamples"], cfg["seed"])
    cosine = {"llm-zero": v.get("passage_cosine", {}).get("llm-zero"),
              **{n: a.get("passage_cosine", {}).get(n) for n in points}}
    return {**a, "retrievers": ret, "paired_pvalues": pvalues, "pooling": v.get("pooling"),
            "passage_cosine": {n: c for n, c in cosine.items() if c is not None}}


def _pooling_table(r: dict) -> pd.DataFrame:
    f = r["pooling_floor"]
    return pd.DataFrame({name: {k: fmt_ci(v) for k, v in m.items()} for name, m in f["rows"].items()}
                        ).T.rename_axis("retriever (untrained)")


def _kl_table(r: dict) -> pd.DataFrame:
    return pd.DataFrame({"before": [r["kl_before"]], "after": [r["kl_after"]]},
                        index=pd.Index(["KL(P_c ‖ P_θ), mean over groups"], name="")).round(4)


def _lsr_table(r: dict) -> pd.DataFrame:
    return pd.DataFrame(r["by_environment"]).T.round(3).rename_axis("environment")


A = Artifact
DAGGER = "† = differs from the {} row (paired bootstrap, p < 0.05)"
ARTIFACTS: tuple[Artifact, ...] = (
    A("00_benchmark_counts", "table", ("00_data/benchmark",), corpus.benchmark_counts_table,
      "Evaluation and training questions per split, and how many evaluation questions have an answer in some corpus passage (the ceiling of acc@k).",
      lambda r: f"Benchmark splits ({_profile(r)} profile)"),
    A("00_corpus_sources", "table", ("00_data/benchmark",), corpus.corpus_table,
      "Where the corpus passages come from.", lambda r: f"Corpus by source ({_profile(r)} profile)"),
    A("00-corpus-composition", "figure", ("00_data/benchmark",), corpus.corpus_composition,
      "Corpus composition and answer coverage per evaluation set (the share with an answer in some passage bounds acc@k).",
      lambda r: f"{_profile(r)} profile; {r['counts']['corpus']['total']} passages"),
    A("01_retrieval_baselines", "table", ("01_baselines/retrieval",),
      lambda r: retrieval.retrieval_table(r, ks=(5, 20), significance_vs="bm25"),
      "BM25 and MiniLM over the whole corpus: the paper's Acc@5 / Acc@20 with 95% intervals († = differs from BM25, p < 0.05).",
      lambda r: f"Baseline retrieval, acc@k (%) with 95% CI, {_profile(r)} profile, full-corpus exact search; "
                f"{DAGGER.format('bm25')}"),
    A("01_retrieval_baselines_all_k", "table", ("01_baselines/retrieval",),
      lambda r: retrieval.retrieval_table(r, ks=_ks(r), significance_vs="bm25"),
      "The same baselines at every k.",
      lambda r: f"Baseline retrieval, acc@k (%) with 95% CI, {_profile(r)} profile, full-corpus exact search; "
                f"{DAGGER.format('bm25')}"),
    A("01-acc-at-k", "figure", ("01_baselines/retrieval",), retrieval.acc_at_k_curves,
      "acc@k against k for BM25 and MiniLM (exact search over the whole corpus), with the answer-coverage ceiling.",
      lambda r: f"{_profile(r)} profile; {_ns(r)} questions (NQ / TriviaQA / PopQA)"),
    A("02_alignment_kl", "table", ("02_alignment/alignment",), _kl_table,
      "How far the LLM retriever's group distribution is from MiniLM's before and after a short L_ctr + α L_align run.",
      lambda r: f"Alignment demo ({_profile(r)} profile)"),
    A("02_pooling_floor", "table", ("02_alignment/pooling",), _pooling_table,
      "Zero-shot: each pooling of the untrained LLM against the random floor and MiniLM, on held-out training questions (validation split), reranking MiniLM's top candidates.",
      lambda r: f"Pooling zero-shot, acc@k (%) with 95% CI, {r['pooling_floor']['n']} validation questions, rerank of MiniLM's top {r['pooling_floor']['depth']}, {_profile(r)} profile"),
    A("02-alignment", "figure", ("02_alignment/alignment",), retrieval.alignment_scatter,
      "P_θ against P_c for every group member, before and after alignment."),
    A("03_lsr_by_environment", "table", ("03_invariance/invariance",), _lsr_table,
      "LSR statistics of the training groups in each environment (original, rewrite, shorter window).",
      lambda r: f"LSR scores per environment ({_profile(r)} profile)"),
    A("03-lsr-by-environment", "figure", ("03_invariance/invariance",), retrieval.lsr_by_environment,
      "Q_e(d|q) of positives and hard negatives per environment (original, rewrite, shorter window).",
      lambda r: f"{_profile(r)} profile; {r['n_groups']} training groups; {100 * r['invariant_share']:.0f}% of "
                "passages invariant across environments"),
    A("04_retrieval_variants", "table", ("04_retriever/retrieval",),
      lambda r: retrieval.retrieval_table(r, ks=(5, 20), significance_vs="minilm"),
      "Every retriever variant of docs/method.md §1 beside BM25 and MiniLM († = differs from MiniLM, p < 0.05).",
      lambda r: f"Retriever variants, acc@k (%) with 95% CI, {_profile(r)} profile, {r['mode']}; "
                f"{DAGGER.format('minilm')}"),
    A("04_pvalues_vs_llm_ctr", "table", ("04_retriever/retrieval",), _p_vs_ctr,
      "Paired bootstrap p-values of every retriever against llm-ctr (does the invariance objective add anything?).",
      lambda r: _p_caption(r, "of acc@k, every retriever against llm-ctr")),
    A("04_floors", "table", ("04_retriever/retrieval",), _floors,
      "Each LLM variant against its floors: the exact expected acc@5 of a random rerank of the same candidates and the untrained llm-zero (paired bootstrap p-values), and the mean pairwise cosine of passage representations (near 1 = collapse).",
      lambda r: f"LLM retrievers against their floors, acc@5 (%), {_profile(r)} profile, {r['mode']}, pooling {r['pooling']}"),
    A("04_stability", "table", ("04_retriever/retrieval",), lambda r: stability.stability_table(r, k=names.HEADLINE_K),
      "Stability across question rewrites: Jaccard@5 of top-5 sets ↑ and std of hit@5 ↓.",
      lambda r: f"Stability across question rewrites, top-5, {_profile(r)} profile"),
    A("04-acc-at-k", "figure", ("04_retriever/retrieval",), retrieval.acc_at_k_curves,
      "acc@k against k for every retriever variant (the LLM variants rerank MiniLM's top candidates, so at k = 100 all meet); the band is invar's 95% bootstrap interval.",
      lambda r: f"{_profile(r)} profile; {_ns(r)} questions (NQ / TriviaQA / PopQA)"),
    A("04-stability", "figure", ("04_retriever/retrieval",), lambda r: stability.stability_bars(r, k=names.HEADLINE_K),
      "Stability across a question and its rewrites, per retriever: Jaccard@5 of the top-5 sets (higher = more stable) and the std of hit@5 (lower = more stable), with 95% intervals."),
    A("04-loss-curves", "figure", ("04_retriever/retrieval",), retrieval.loss_curves,
      "Training loss and its terms per step for every trained variant."),
    A("05_generator_training", "table", ("05_generator/training",), generation.generator_training_table,
      "What the generator adapter was trained on and how far its loss fell.",
      lambda r: f"Generator training ({_profile(r)} profile)"),
    A("05-generator-loss", "figure", ("05_generator/training",), generation.generator_loss_curve,
      "The generator's cross-entropy on answer tokens per step, beside the base model's on the same examples.",
      lambda r: f"{_profile(r)} profile; {r['training']['n_examples']} training examples"),
    A("05_generator_diagnostics", "table", ("05_generator/training",), generation.diagnostics_table,
      "Is the reader learning? EM and extraction rate of the base model and of the generator on the same held-out validation questions and on training questions.",
      lambda r: f"The generator before and after training, {_profile(r)} profile: base model (base prompt) vs generator "
                f"({r['provenance']['config']['generator']['adapter_prompt']} prompt), the frozen {r['retriever']} "
                f"retriever's top {r['k']} passages"),
    A("06_generation", "table", ("06_generation/generation",), generation.generation_table,
      "The main end-to-end table: EM, F1 and PopQA-style acc per row and dataset, with 95% intervals († = differs from minilm-rag, p < 0.05).",
      lambda r: f"End-to-end QA (%), k = {r['k']} passages, {r['n_shot']}-shot base prompt (generator rows: "
                f"{r.get('adapter_prompt', 'same')} prompt), {_profile(r)} profile, retrieval {r['retriever_mode']}; "
                f"{DAGGER.format('minilm-rag')}"),
    A("06_answer_in_context", "table", ("06_generation/generation",), generation.context_table,
      "How often the reader could have read an answer (top-k whole passages against the windows it is shown: title + first passage_tokens tokens) and how often it did: the extraction rate, EM among the questions whose windows show one.",
      lambda r: f"Answer in the top-{r['k']} passages and in the shown windows, and the extraction rate (EM where "
                f"the windows show an answer), % with 95% CI, {_profile(r)} profile"),
    A("06_changed_answers", "table", ("06_generation/generation",), generation.changed_table,
      "How many answers the generator adapter changes against the base model reading the same passages, and in which direction.",
      lambda r: f"Answers the generator changes, {_profile(r)} profile"),
    A("06_examples", "table", ("06_generation/generation",), generation.examples_table,
      "A few questions on which the generator answers otherwise than the base model on the same invar passages.",
      lambda r: f"Example answers before (invar-retrieval) and after (invar-rag) the generator adapter, {_profile(r)} profile"),
    A("06_generation_pvalues", "table", ("06_generation/generation",), generation.generation_pvalues,
      "Paired bootstrap p-values of every row against minilm-rag, of each generator row against the base model on the same passages (the adapter's own effect), and of invar-rag against minilm-rag + generator.",
      lambda r: _p_caption(r, "of EM, F1 and acc")),
    A("06_decode_speed", "table", ("06_generation/generation",), generation.decode_speed_table,
      "Greedy decoding throughput per row with the shared-prefix cache (answers cached on disk are not re-timed).",
      lambda r: f"Decoding throughput ({_profile(r)} profile)"),
    A("06-generation", "figure", ("06_generation/generation",), generation.generation_bars,
      "EM, acc and the share of prompts whose shown passage windows contain an answer, per row and dataset."),
    A("07_ablations", "table", ("07_ablations/ablations",), ablations.ablation_table,
      "invar−align, invar−inv, the λ sweep and the number of rewrites R: acc@5 († = differs from invar, p < 0.05) and Jaccard@5 across rewrites.",
      lambda r: f"Ablations of invar, {_profile(r)} profile, {r['mode']}; {DAGGER.format('invar')}"
                + (f"; not run in this profile: {', '.join(r['not_run'])}" if r["not_run"] else "")),
    A("07_floors", "table", ("04_retriever/retrieval", "07_ablations/ablations"),
      lambda v, a: _floors(ablation_floors(v, a)),
      "The ablation points trained in notebook 07 against notebook 04's floors: the random rerank and the untrained llm-zero on the same candidates (paired bootstrap p-values), and the collapse check.",
      lambda v, a: f"Ablation points against their floors, acc@5 (%), {_profile(v)} profile, {v['mode']}, pooling {v['pooling']}"),
    A("07-loss-curves", "figure", ("07_ablations/ablations",),
      lambda a: retrieval.loss_curves({**a, "training": {p["name"]: a["training"][p["name"]] for p in a["points"]
                                                          if p["name"] != "invar" and a.get("training", {}).get(p["name"])}}),
      "Training loss and its terms per step for every ablation point trained in notebook 07 (invar's own curves are in notebook 04)."),
    A("07-ablations", "figure", ("07_ablations/ablations",), ablations.ablation_curves,
      "acc@5 and rewrite stability (Jaccard@5) against λ and against R (rerank, same candidates and evaluation rewrites); an axis with two points or fewer is drawn as dots, one with a single point (invar itself) is left out.",
      lambda r: f"{_profile(r)} profile" + (f"; not run in this profile: {', '.join(r['not_run'])}"
                                             if r.get("not_run") else "")),
    A("07_variance_claim", "table", ("04_retriever/retrieval",), stability.variance_claim_table,
      "The variance claim tested directly: invar against llm-ctr on the per-question spread of hit@5 and the Jaccard@5 to the rewrites, with paired bootstrap p-values.",
      lambda r: f"Is invar more stable across question rewrites than llm-ctr? Top-5, {_profile(r)} profile (%)"),
    A("07_claims", "table", ("04_retriever/retrieval", "06_generation/generation", "07_ablations/ablations"),
      claims.claims_table,
      "Each claim of the paper as a paired test per dataset, with a verdict by one rule (invar_rag_lib/claims.py): reproduced, not reproduced, or not detectable at this n.",
      lambda v, g, a: (f"The paper's claims, {_profile(v)} profile: A vs B (%), Δ > 0 = the paper's direction, "
                       "95% bootstrap interval, paired bootstrap p; verdict: reproduced = paper's direction with "
                       "p < 0.05 on a majority of datasets and reversed on none; not reproduced = reversed with "
                       "p < 0.05 on a majority; else not detectable (smallest detectable Δ at 80% power)")),
    A("07-stability", "figure", ("04_retriever/retrieval", "07_ablations/ablations"), stability.stability_all,
      "The paper's variance claim for every retriever: Jaccard@5 ↑ and std of hit@5 ↓ across a question and its rewrites."),
    A("07_summary", "table", ("00_data/benchmark", "04_retriever/retrieval", "06_generation/generation",
                              "07_ablations/ablations"), claims.summary_table,
      "The study in five lines, written from the results (the README opens with it).",
      lambda b, v, g, a: f"What the {_profile(v)} profile reproduced; verdicts by the rule of the claims table"),
)
BY_STEM = {a.stem: a for a in ARTIFACTS}


def get(stem: str) -> Artifact:
    if stem not in BY_STEM:
        raise KeyError(f"unknown artifact {stem!r}; known: {sorted(BY_STEM)}")
    return BY_STEM[stem]


def build(reports: Reports, stem: str):
    """Make one artifact from its results file(s) and write it; returns the DataFrame (tables) or
    the dict of written paths (figures)."""
    import matplotlib.pyplot as plt

    art = get(stem)
    res = [reports.read_results(name) for name in art.results]
    try:
        obj = art.make(*res)
        caption = art.caption(*res) if art.kind == "table" and art.caption else ""
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        files = ", ".join(reports.relative(reports.results_path(n)) for n in art.results)
        raise ValueError(f"{files}: not the shape {stem} reads (missing or wrong entry {e}); rerun the notebook "
                         "that writes it, with this version of the code") from None
    if art.kind == "table":
        reports.write_table(obj, stem, caption=caption)
        return obj
    paths = reports.save_figure(obj, stem)
    plt.close(obj)
    return paths


def show(reports: Reports, stem: str):
    """`build`, returning something a notebook displays: a table as its markdown with its caption
    (never cut by pandas' column width), or the figure's PNG."""
    out = build(reports, stem)
    try:
        from IPython.display import Image, Markdown
    except ImportError:  # a headless run on a machine without IPython (invar_rag_lib/headless.py)
        from .display import Image, Markdown

    if get(stem).kind == "table":
        return Markdown((reports.root / "tables" / f"{stem}.md").read_text())
    return Image(filename=str(out["png"]))


def build_all(reports: Reports, log=print) -> dict[str, str]:
    """Every artifact whose results exist: {stem: "ok" | "missing <results file>"}."""
    status = {}
    for art in ARTIFACTS:
        missing = [n for n in art.results if not reports.results_path(n).exists()]
        if missing:
            status[art.stem] = f"missing {', '.join(reports.relative(reports.results_path(n)) for n in missing)}"
            continue
        build(reports, art.stem)
        status[art.stem] = "ok"
    for stem, s in status.items():
        if s != "ok":
            log(f"skipped {stem}: {s} (run its notebook first)")
    return status


def write_gallery(reports: Reports, status: dict[str, str]) -> str:
    """`<reports>/README.md`: every table (inline) and figure (image) with its sentence and the
    profile, revision and date of the results it was made from."""
    lines = ["# Reports gallery", "",
             "Regenerated by `invar-rag report` from `results/` alone (no model runs). Each entry names the "
             "results file it reads and the profile, code revision and date that produced those results. "
             "Executed notebooks are in `executed/`; `results/timings.json` has each notebook's wall time.", "",
             "Contents: " + " · ".join(f"[{a.stem}](#{a.stem.lower()})" for a in ARTIFACTS
                                        if status.get(a.stem) == "ok"), ""]
    for art in ARTIFACTS:
        if status.get(art.stem) != "ok":
            continue
        prov = [reports.read_results(n)["provenance"] for n in art.results]
        origin = "; ".join(f"`results/{n}.json`: {p['profile']} profile, revision {p['git_revision']}, "
                           f"{p.get('date', 'date not recorded')}" for n, p in zip(art.results, prov))
        lines += [f"## {art.stem}", "", art.about, "", f"<sub>{origin}</sub>", ""]
        if art.kind == "figure":
            lines += [f"![{art.stem}](figures/{art.stem}.png)", ""]
            if art.caption:
                lines += [f"*{art.caption(*[reports.read_results(n) for n in art.results])}.*", ""]
        else:
            md = (reports.root / "tables" / f"{art.stem}.md").read_text()
            lines += [md, f"Also as [CSV](tables/{art.stem}.csv) and [LaTeX](tables/{art.stem}.tex).", ""]
    text = "\n".join(lines)
    atomic_write_text(reports.root / "README.md", text)
    return text


_MARK = re.compile(r"(<!-- BEGIN ([\w-]+) -->\n)(.*?)(<!-- END \2 -->)", re.DOTALL)


def sync_readme(readme: Path, reports: Reports, status: dict[str, str]) -> int:
    """Replace each `<!-- BEGIN stem -->…<!-- END stem -->` block of `readme` with that table's
    current markdown, so the numbers quoted in the README are the ones the run produced; returns
    how many blocks were updated."""
    if not readme.exists():
        return 0
    text, count = readme.read_text(), 0

    def fill(m):
        nonlocal count
        stem = m.group(2)
        # a benchmark's table (benchmarks/*.py write reports/tables/<stem>.md) is filled from its file
        benchmark = stem not in BY_STEM and stem not in status and (reports.root / "tables" / f"{stem}.md").exists()
        if not benchmark and (status.get(stem) != "ok" or (stem in BY_STEM and get(stem).kind != "table")):
            return m.group(0)
        count += 1
        return m.group(1) + (reports.root / "tables" / f"{stem}.md").read_text() + m.group(4)

    new = _MARK.sub(fill, text)
    if new != text:
        atomic_write_text(readme, new)
    return count


def timings_table(timings: dict) -> pd.DataFrame:
    """Each notebook's wall minutes and minutes normalised to the reference machine speed, from
    `timings.json` (written by `make reproduce`), with the machine's measured speed."""
    from ..machine import REFERENCE_GFLOPS

    rows = {}
    for name, t in sorted(timings.items()):
        speed = (t["gflops_start"] + t["gflops_end"]) / 2 if "gflops_start" in t else None
        rows[name] = {"wall min": round(t["wall_s"] / 60, 1),
                      f"normalised min (at {REFERENCE_GFLOPS:.0f} GFLOP/s)": "—" if t.get("normalised_min") is None
                      else round(t["normalised_min"], 1),
                      "machine GFLOP/s": "—" if speed is None else round(speed)}
    wall = sum(t["wall_s"] for t in timings.values()) / 60
    norm = [t.get("normalised_min") for t in timings.values()]
    rows["all notebooks"] = {"wall min": round(wall, 1),
                             f"normalised min (at {REFERENCE_GFLOPS:.0f} GFLOP/s)":
                             "—" if None in norm else round(sum(norm), 1), "machine GFLOP/s": ""}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("notebook")


def _timings(reports: Reports, status: dict[str, str]) -> None:
    import json

    path = reports.root / "results" / "timings.json"
    if not path.exists():
        status["timings"] = f"missing {reports.relative(path)}"
        return
    try:
        table = timings_table(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not the timings `make reproduce` writes ({e}); delete it, the next run "
                         "writes it again") from None
    reports.write_table(table, "timings", caption="Wall time of each notebook in the last `make reproduce`, "
                        "and the same normalised to the reference machine speed (fp32 matmul measured at the run's "
                        "start and end)")
    status["timings"] = "ok"


def costs_table(timings: dict, tests: dict | None) -> pd.DataFrame:
    """What the README's two commands cost on their last measured runs: `make reproduce` from
    `timings.json`, `make test` from `benchmarks/test_suite.py`'s record (when there is one)."""
    from ..machine import REFERENCE_GFLOPS, normalised_minutes

    norm = f"normalised min (at {REFERENCE_GFLOPS:.0f} GFLOP/s)"
    speeds = [(t["gflops_start"] + t["gflops_end"]) / 2 for t in timings.values() if "gflops_start" in t]
    cores = sorted({t.get("cores") for t in timings.values() if t.get("cores")})
    normed = [t.get("normalised_min") for t in timings.values()]
    headless = any(t.get("runner") == "headless" for t in timings.values())
    rows = {f"`make reproduce`: {len(timings)} notebooks" + (", headless runner" if headless else ""): {
        "wall min": round(sum(t["wall_s"] for t in timings.values()) / 60, 1),
        norm: "—" if None in normed else round(sum(normed), 1),
        "machine": (f"{'/'.join(map(str, cores))} cores, " if cores else "")
        + (f"{sum(speeds) / len(speeds):.0f} GFLOP/s" if speeds else "speed not measured")}}
    for name, s in ((tests or {}).get("suites") or {}).items():
        counts = f"{s['passed']} passed" + (f", {s['skipped']} skipped" if s["skipped"] else "") + (
            f", {s['failed'] + s['errors']} FAILED" if s["failed"] + s["errors"] else "")
        rows[f"`make test`: {name} ({counts})"] = {
            "wall min": round(s["wall_s"] / 60, 1), norm: round(normalised_minutes(s["wall_s"], tests["gflops"]), 1),
            "machine": f"{tests['cores']} cores, {tests['gflops']:.0f} GFLOP/s, {tests['date']}"}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("command")


def _costs(reports: Reports, status: dict[str, str]) -> None:
    import json

    if status.get("timings") != "ok":
        status["costs"] = status.get("timings", "no timings")
        return
    timings = json.loads((reports.root / "results" / "timings.json").read_text())
    path = reports.root / "results" / "benchmarks" / "test_suite.json"
    try:
        tests = json.loads(path.read_text()) if path.exists() else None
        table = costs_table(timings, tests)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not the record `benchmarks/test_suite.py` writes ({e}); delete it or rerun "
                         "the benchmark") from None
    reports.write_table(table, "costs", caption=f"Last measured runs of the two commands ({reports.profile.name} profile; "
                        "recorded by `make reproduce` and by `benchmarks/test_suite.py`), in wall minutes and in "
                        "minutes normalised by the fp32 matmul speed measured in the same run")
    status["costs"] = "ok"


def report(reports: Reports, log=print) -> dict[str, str]:
    """Every table and figure, the timings table, the gallery, and (for the committed cpu reports)
    the tables quoted in the README and docs/results.md."""
    status = build_all(reports, log=log)
    _timings(reports, status)
    _costs(reports, status)
    write_gallery(reports, {k: v for k, v in status.items() if k in BY_STEM})
    if reports.root.resolve() == (repo_root() / "reports").resolve():
        for doc in (repo_root() / "README.md", repo_root() / "docs" / "results.md",
                    repo_root() / "docs" / "generator-recipe.md", repo_root() / "docs" / "maintainers.md",
                    repo_root() / "docs" / "paper-scale.md"):
            sync_readme(doc, reports, status)
    return status
