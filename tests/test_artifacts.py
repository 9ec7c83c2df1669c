"""The report registry: every artifact is shown by a notebook, and `invar-rag report` rebuilds
tables and figures from results files alone."""
import json
import re
from pathlib import Path

import nbformat
import pytest

from invar_rag_lib.report import artifacts
from invar_rag_lib.cli import main
from invar_rag_lib.config import load_profile
from invar_rag_lib.report.writer import Reports
from invar_rag_lib.stage1.ablations import ablation_points, not_run
from invar_rag_lib.report.generation import generation_table

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_code(prefix: str) -> str:
    [path] = NOTEBOOKS.glob(f"{prefix}_*.ipynb")
    return "\n".join(c.source for c in nbformat.read(path, 4).cells if c.cell_type == "code")


def test_every_artifact_is_shown_by_its_notebook_and_reads_what_a_notebook_writes():
    written = set()
    for nb in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"):
        written |= set(re.findall(r'write_results\("([^"]+)"', notebook_code(nb.name[:2])))
    for art in artifacts.ARTIFACTS:
        assert f'"{art.stem}"' in notebook_code(art.stem[:2]), f"{art.stem} is not shown in notebook {art.stem[:2]}"
        assert set(art.results) <= written, f"{art.stem} reads {art.results}, not all written by a notebook"
    assert len({a.stem for a in artifacts.ARTIFACTS}) == len(artifacts.ARTIFACTS)


def _generation_results():
    def cell(values):
        m = sum(values) / len(values)
        return {"mean": m, "low": max(0.0, m - 0.1), "high": min(1.0, m + 0.1), "n": len(values)}

    per = {"closed-book": [0, 0, 1, 0], "minilm-rag": [1, 1, 0, 1], "invar-rag": [1, 0, 0, 0]}
    rows = {r: {"nq": {"metrics": {m: cell(v) for m in ("em", "f1", "acc", "context_hit")}}} for r, v in per.items()}
    return {"provenance": {"profile": "smoke", "git_revision": "abc1234", "date": "2026-11-27 10:00 UTC",
                           "config": load_profile("smoke").to_dict()},
            "rows": rows, "k": 3, "n_shot": 8, "retriever_mode": "rerank of MiniLM's top 30",
            "paired_pvalues": {"closed-book_vs_minilm-rag/nq": {"em": 0.01, "f1": 0.2, "acc": 0.01},
                               "invar-rag_vs_minilm-rag/nq": {"em": 0.3, "f1": 0.3, "acc": 0.3}},
            "decode_speed": {"minilm-rag": {"prompts": 4, "prompt_tokens": 100, "generated_tokens": 8,
                                            "seconds": 1.0, "tokens_per_s": 108.0}}}


def test_generation_table_orders_rows_and_marks_significance():
    table = generation_table(_generation_results())
    assert list(table.index) == ["closed-book", "minilm-rag", "invar-rag"]
    assert table.loc["closed-book", "NQ EM"] == "25.0 [15.0, 35.0] †"
    assert table.loc["invar-rag", "NQ EM"] == "25.0 [15.0, 35.0]"
    assert table.loc["minilm-rag", "NQ acc"] == "75.0 [65.0, 85.0]"


def test_report_rebuilds_from_results_alone_and_writes_the_gallery(tmp_path, capsys):
    profile = load_profile("smoke")
    reports = Reports(profile)
    reports.write_results("06_generation/generation", _generation_results())
    assert main(["report", "--profile", "smoke"]) == 1  # the other notebooks' results are missing
    out = capsys.readouterr()
    assert "skipped 04_retrieval_variants: missing" in out.out + out.err
    tables = reports.root / "tables"
    for stem in ("06_generation", "06_generation_pvalues", "06_decode_speed"):
        assert (tables / f"{stem}.md").exists() and (tables / f"{stem}.tex").exists()
    assert (reports.root / "figures" / "06-generation.png").exists()
    gallery = (reports.root / "README.md").read_text()
    assert "## 06_generation" in gallery and "revision abc1234" in gallery and "2026-11-27" in gallery
    assert "04_retrieval_variants" not in gallery


def test_ablation_points_reuse_variant_names_and_report_what_is_not_run():
    gpu = load_profile("gpu")
    names = {(p.axis, p.value): p.name for p in ablation_points(gpu)}
    assert names[("lambda", 0.5)] == "invar" and names[("lambda", 0.0)] == "invar-inv"
    assert names[("rewrites", 1)] == "invar" and names[("rewrites", 2)] == "invar-R2"
    assert names[("lambda", 2.0)] == "invar-lam2"
    assert not_run(gpu) == []
    cpu = load_profile("cpu")  # within its time budget: only the points notebook 04 trains
    assert {p.name for p in ablation_points(cpu)} == {"invar", "invar-align", "invar-inv"}
    assert not_run(cpu) == ["λ = 0.1", "λ = 1", "λ = 2", "R = 0", "R = 2"]
    smoke = load_profile("smoke")
    assert not_run(smoke) == ["λ = 0.1", "λ = 1"]


def test_sync_readme_replaces_only_marked_tables_that_were_rebuilt(tmp_path):
    from invar_rag_lib.report.artifacts import sync_readme

    reports = Reports(load_profile("smoke"))
    (reports.root / "tables").mkdir(parents=True)
    (reports.root / "tables" / "06_generation.md").write_text("| new |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- BEGIN 06_generation -->\n| old |\n<!-- END 06_generation -->\n"
                      "<!-- BEGIN 04_stability -->\n| kept |\n<!-- END 04_stability -->\n")
    n = sync_readme(readme, reports, {"06_generation": "ok", "04_stability": "missing x"})
    assert n == 1
    assert readme.read_text() == ("intro\n<!-- BEGIN 06_generation -->\n| new |\n<!-- END 06_generation -->\n"
                                  "<!-- BEGIN 04_stability -->\n| kept |\n<!-- END 04_stability -->\n")


def test_a_table_is_shown_whole_with_its_caption_and_figures_embed_truetype_fonts(tmp_path):
    """`show` gives a notebook the table's markdown (a long cell is never cut at pandas' column
    width) with its caption; PDFs carry TrueType fonts, not Type 3."""
    from invar_rag_lib.report.artifacts import show

    reports = Reports(load_profile("smoke"))
    long_row = {**_generation_results()}
    reports.write_results("06_generation/generation", long_row)
    shown = show(reports, "06_generation_pvalues")
    text = shown.data
    assert text.startswith("Paired bootstrap p-values (two-sided,") and "| row vs baseline / dataset |" in text
    assert "…" not in text and "..." not in text
    show(reports, "06-generation")
    pdf = (reports.root / "figures" / "06-generation.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf
