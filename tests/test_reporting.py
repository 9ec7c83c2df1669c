"""Reports (results with provenance, tables, figures), atomic writes, tables from results."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from invar_rag_lib import io_utils
from invar_rag_lib.config import load_profile, profile_from_dict
from invar_rag_lib.io_utils import (
    atomic_write_bytes,
    atomic_write_json,
    replace_dir,
    sha256_file,
    sha256_text,
)
from invar_rag_lib.report.writer import PACKAGES, Reports, fmt_ci, to_markdown
from invar_rag_lib.report.corpus import benchmark_counts_table, corpus_table
from invar_rag_lib.report.names import ordered
from invar_rag_lib.report.retrieval import retrieval_table

from conftest import tiny_profile_dict


@pytest.fixture
def reports(tmp_path):
    return Reports(profile_from_dict(tiny_profile_dict(tmp_path / "rep")))


@pytest.fixture
def table():
    return pd.DataFrame({"acc@5": ["72.0 [63.0, 80.0]", "65.5 [55.0, 74.0] †"], "n": [100, 20],
                         "note": ["a_b", "x & y"]},
                        index=pd.Index(["bm25", "minilm"], name="retriever"))


# ----------------------------------------------------------------------------- Reports
def test_write_results_adds_provenance(reports, tmp_path):
    path = reports.write_results("01_baselines/retrieval", {"retrievers": {"bm25": {"acc": 0.5}}})
    assert path == tmp_path / "rep" / "results" / "01_baselines" / "retrieval.json"
    saved = json.loads(path.read_text())
    assert saved["retrievers"] == {"bm25": {"acc": 0.5}}
    prov = saved["provenance"]
    assert prov["profile"] == "tiny" and prov["seed"] == 0
    assert prov["config"] == json.loads(json.dumps(reports.profile.to_dict()))
    assert prov["config"]["data"]["eval_questions_per_dataset"] == 4
    assert set(prov["packages"]) == set(PACKAGES)
    assert prov["packages"]["numpy"] == __import__("numpy").__version__
    assert isinstance(prov["git_revision"], str) and prov["git_revision"]
    assert prov["python"].count(".") == 2
    assert reports.read_results("01_baselines/retrieval") == saved


def test_read_missing_results_is_a_clear_error(reports):
    with pytest.raises(FileNotFoundError, match="nothing.json does not exist: run the notebook"):
        reports.read_results("nothing")


def test_relative_reports_dir_resolves_against_invar_rag_home(isolated_home):
    r = Reports(load_profile("smoke"))
    assert r.root == isolated_home / "build" / "smoke" / "reports"
    assert r.write_results("x", {}).is_relative_to(isolated_home)


def test_relative_paths_for_notebook_output(isolated_home, tmp_path):
    r = Reports(load_profile("smoke"))
    path = r.write_results("00_data/benchmark", {})
    assert Reports.relative(path) == "build/smoke/reports/results/00_data/benchmark.json"
    outside = tmp_path / "elsewhere.json"
    assert Reports.relative(outside) == str(outside)


def test_write_table_writes_md_csv_tex(reports, table, tmp_path):
    out = reports.write_table(table, "01_retrieval", caption="Baseline retrieval")
    base = tmp_path / "rep" / "tables" / "01_retrieval"
    assert out == {"md": base.with_suffix(".md"), "csv": base.with_suffix(".csv"),
                   "tex": base.with_suffix(".tex")}
    md = out["md"].read_text()
    assert md.startswith("Baseline retrieval\n\n| retriever | acc@5 | n | note |\n|---|---|---|---|\n")
    assert "| bm25 | 72.0 [63.0, 80.0] | 100 | a_b |" in md
    assert "| minilm | 65.5 [55.0, 74.0] † | 20 | x & y |" in md
    back = pd.read_csv(out["csv"], index_col=0)
    assert back.index.tolist() == ["bm25", "minilm"]
    assert back["acc@5"].tolist() == table["acc@5"].tolist()
    assert back["n"].tolist() == [100, 20]
    tex = out["tex"].read_text()
    assert "\\caption{Baseline retrieval}" in tex and "\\label{tab:01_retrieval}" in tex
    assert "bm25 & 72.0 [63.0, 80.0] & 100 & a\\_b \\\\" in tex
    assert "x \\& y" in tex  # cell values are escaped


def test_write_table_escapes_latex_specials_in_the_caption(reports, table):
    # Notebook 01 passes "acc@k (%) with 95% CI": an unescaped % comments out the rest of the
    # \caption line in LaTeX (including its closing brace), so the .tex does not compile.
    caption = "Baseline retrieval, acc@k (%) with 95% CI & more"
    tex = reports.write_table(table, "t", caption=caption)["tex"].read_text()
    caption_line = next(line for line in tex.splitlines() if line.startswith("\\caption{"))
    assert caption_line == "\\caption{Baseline retrieval, acc@k (\\%) with 95\\% CI \\& more}"
    # the markdown keeps the caption as written
    assert reports.write_table(table, "t", caption=caption)["md"].read_text().startswith(caption + "\n")


def test_save_figure_writes_png_and_pdf_reproducibly(reports, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 5, 20], [0.3, 0.6, 0.8], marker="o")
    try:
        out = reports.save_figure(fig, "01-acc-at-k")
        first = {k: p.read_bytes() for k, p in out.items()}
        again = {k: p.read_bytes() for k, p in reports.save_figure(fig, "01-acc-at-k").items()}
    finally:
        plt.close(fig)
    base = tmp_path / "rep" / "figures" / "01-acc-at-k"
    assert out == {"png": base.with_suffix(".png"), "pdf": base.with_suffix(".pdf")}
    assert first["png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert first["pdf"].startswith(b"%PDF-")
    assert first == again  # no timestamps: reruns give identical bytes


def test_to_markdown_and_fmt_ci():
    df = pd.DataFrame({"x": [1, 2]}, index=["a", "b"])
    assert to_markdown(df) == "|  | x |\n|---|---|\n| a | 1 |\n| b | 2 |\n"
    assert fmt_ci({"mean": 0.72, "low": 0.63, "high": 0.8}) == "72.0 [63.0, 80.0]"
    assert fmt_ci({"mean": 0.5, "low": 0.25, "high": 0.755}, scale=1, digits=2) == "0.50 [0.25, 0.76]"


# ----------------------------------------------------------------------------- tables
def test_tables_from_results():
    counts = {"eval": {"popqa": {"questions": 20, "answer_in_corpus": 10},
                       "nq": {"questions": 20, "answer_in_corpus": 15}},
              "train": {"tqa_dev": 7, "nq_gold": 20},
              "corpus": {"total": 30, "by_source": {"nqgold": 10, "wiki18": 20}}}
    t = benchmark_counts_table({"counts": counts})
    assert t.index.tolist() == ["eval/nq", "eval/popqa", "train/tqa_dev", "train/nq_gold"]
    assert t.loc["eval/nq", "answer in corpus"] == "15 (75%)"
    assert t.loc["train/tqa_dev", "questions"] == 7
    c = corpus_table({"counts": counts})
    assert c["passages"].to_dict() == {"nqgold": 10, "wiki18": 20, "total": 30}
    assert ordered(["zz", "popqa", "aa", "nq"]) == ["nq", "popqa", "aa", "zz"]

    m = {"mean": 0.5, "low": 0.4, "high": 0.6}
    results = {"retrievers": {"bm25": {"nq": {"metrics": {"acc@5": m, "acc@20": m}}},
                              "minilm": {"nq": {"metrics": {"acc@5": m, "acc@20": m}}}},
               "paired_pvalues": {"minilm_vs_bm25/nq": {"acc@5": 0.01, "acc@20": 0.2}}}
    r = retrieval_table(results, ks=(5, 20), significance_vs="bm25")
    assert r.loc["minilm", "NQ acc@5"] == "50.0 [40.0, 60.0] †"
    assert r.loc["minilm", "NQ acc@20"] == "50.0 [40.0, 60.0]"
    assert r.loc["bm25", "NQ acc@5"] == "50.0 [40.0, 60.0]"


# ----------------------------------------------------------------------------- io_utils
def test_atomic_write_json_replaces_content_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "r.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2], "é": "ü"})
    assert path.read_text(encoding="utf-8") == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1,\n  "é": "ü"\n}\n'
    atomic_write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"new": True}
    assert os.listdir(path.parent) == ["r.json"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    tmp_path = tmp_path / "w"  # (tmp_path itself also holds the autouse $INVAR_RAG_HOME)
    path = tmp_path / "r.json"
    atomic_write_json(path, {"old": 1})

    def broken_replace(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(io_utils.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(path, {"new": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["r.json"]
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_write_bytes_creates_parents(tmp_path):
    p = atomic_write_bytes(tmp_path / "a" / "b" / "c.bin", b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"


def test_replace_dir_swaps_directories(tmp_path):
    tmp_path = tmp_path / "w"
    tmp_path.mkdir()
    final = tmp_path / "final"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new = tmp_path / "new-tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    assert replace_dir(new, final) == final
    assert sorted(os.listdir(final)) == ["new.txt"]
    assert not new.exists()
    assert sorted(os.listdir(tmp_path)) == ["final"]  # the old copy was removed

    # first install (nothing to replace) and a leftover .old from an interrupted swap
    (tmp_path / ".other.old").mkdir()
    (tmp_path / ".other.old" / "stale").write_text("x")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "f").write_text("f")
    replace_dir(fresh, tmp_path / "other")
    assert os.listdir(tmp_path / "other") == ["f"]
    assert sorted(os.listdir(tmp_path)) == ["final", "other"]


def test_hashes():
    assert sha256_text("a", "b") != sha256_text("ab")  # parts are separated
    assert sha256_text("a", "b") == sha256_text("a", "b")
    assert len(sha256_text("")) == 64


def test_sha256_file(tmp_path):
    import hashlib

    p = tmp_path / "f"
    p.write_bytes(b"x" * 3_000_000)
    assert sha256_file(p) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert sha256_file(p, chunk=7) == sha256_file(p)


def test_the_test_suite_benchmark_counts_what_pytest_reported(tmp_path):
    """benchmarks/test_suite.py reads pytest's JUnit XML (the counts the docs quote come from it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "test_suite_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "test_suite.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    xml = tmp_path / "junit.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="7" failures="1" errors="1" skipped="2">'
                   '</testsuite></testsuites>')
    assert bench.junit_counts(xml) == {"passed": 3, "failed": 1, "errors": 1, "skipped": 2}
    text = bench.table({"date": "2026-01-01", "cores": 2, "gflops": 300.0,
                        "suites": {"unit tests": {"passed": 3, "failed": 1, "errors": 1, "skipped": 2, "wall_s": 120}}})
    assert "| unit tests | 3 | 2 | 2 | 2.0 | 4.0 |" in text


def test_costs_table_is_generated_from_the_recorded_runs():
    from invar_rag_lib.report.artifacts import costs_table

    timings = {"00_a": {"wall_s": 60.0, "cores": 2, "gflops_start": 300.0, "gflops_end": 300.0, "normalised_min": 2.0},
               "01_b": {"wall_s": 120.0, "cores": 2, "gflops_start": 300.0, "gflops_end": 300.0, "normalised_min": 4.0}}
    tests = {"date": "2026-01-01", "cores": 2, "gflops": 300.0,
             "suites": {"unit tests": {"passed": 5, "failed": 0, "errors": 0, "skipped": 1, "wall_s": 90.0}}}
    df = costs_table(timings, tests)
    assert list(df.index) == ["`make reproduce`: 2 notebooks", "`make test`: unit tests (5 passed, 1 skipped)"]
    assert df.iloc[0]["wall min"] == 3.0 and df.iloc[0].iloc[1] == 6.0 and df.iloc[1].iloc[1] == 3.0
    assert list(costs_table(timings, None).index) == ["`make reproduce`: 2 notebooks"]


def test_markdown_keeps_each_columns_type():
    """A row of ints and floats is not printed as floats (`iterrows` turned a count of 199 into 199.0)."""
    df = pd.DataFrame({"questions": [199, 100], "EM": [8.0, 15.1]}, index=["a", "b"]).rename_axis("row")
    assert to_markdown(df).splitlines()[2:] == ["| a | 199 | 8.0 |", "| b | 100 | 15.1 |"]
