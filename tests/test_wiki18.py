"""`invar-rag data fetch --corpus wiki18` (invar_rag_lib/wiki18.py) on a synthetic psgs_w100 served
from a file:// mirror: streamed verification, the Arrow build, the answer coverage."""
from __future__ import annotations

import gzip
import json

import pytest

from invar_rag_lib import wiki18
from invar_rag_lib.wiki18 import Wiki18Error, build_corpus, check_recorded, coverage, fetch_wiki18, iter_passages

ROWS = 500


def _tsv(rows: int = ROWS, bad_line: int | None = None) -> bytes:
    lines = ["id\ttext\ttitle"]
    for i in range(1, rows + 1):
        text = f"passage {i} about the river thames and {'london' if i % 50 == 0 else 'paris'}"
        if i % 7 == 0:
            text = f'"{text} said ""quoted"" words"'  # DPR's CSV quoting
        title = f'"Title, {i}"' if i % 3 == 0 else f"Title {i}"
        lines.append(f"{i}\t{text}\t{title}")
    if bad_line:
        lines[bad_line - 1] = "garbage without tabs"
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def mirror(tmp_path):
    def make(content: bytes, cut: bool = False) -> str:
        path = tmp_path / "mirror" / wiki18.URL_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.compress(content)
        path.write_bytes(data[:len(data) // 2] if cut else data)
        return (tmp_path / "mirror").as_uri()
    return make


def test_fetch_streams_verifies_and_records_then_keeps_the_verified_file(tmp_path, mirror):
    url = mirror(_tsv())
    said: list = []
    out = fetch_wiki18(tmp_path / "src", url, rows=ROWS, log=said.append)
    rec = json.loads(out.with_name(wiki18.RECORD).read_text())
    assert rec["rows"] == ROWS and len(rec["sha256_content"]) == 64 and not rec["pinned"]
    assert check_recorded(out)["sha256_content"] == rec["sha256_content"]
    said.clear()
    fetch_wiki18(tmp_path / "src", url, rows=ROWS, log=said.append)
    assert "present" in said[0]


@pytest.mark.parametrize("case, match", [
    ("rows", "499 passages, DPR's psgs_w100 has 500"),
    ("cut", "ends early"),
    ("sha", "is not the pinned"),
    ("header", "is not DPR's header"),
])
def test_a_bad_download_is_refused_and_nothing_is_kept(tmp_path, mirror, case, match):
    content = _tsv(ROWS - 1 if case == "rows" else ROWS)
    if case == "header":
        content = b"title\ttext\tid" + content[len(b"id\ttext\ttitle"):]
    url = mirror(content, cut=case == "cut")
    with pytest.raises(Wiki18Error, match=match):
        fetch_wiki18(tmp_path / "src", url, rows=ROWS, sha256="0" * 64 if case == "sha" else None,
                     log=lambda *a: None)
    assert not list((tmp_path / "src" / "wiki18").iterdir())


def test_a_changed_file_is_caught_by_the_recorded_digest(tmp_path, mirror):
    out = fetch_wiki18(tmp_path / "src", mirror(_tsv()), rows=ROWS, log=lambda *a: None)
    out.write_bytes(gzip.compress(_tsv().replace(b"thames", b"severn")))
    with pytest.raises(Wiki18Error, match="content changed since it was fetched"):
        check_recorded(out)


def test_rows_parse_with_dpr_quoting_and_a_malformed_row_names_its_line(tmp_path):
    path = tmp_path / "psgs_w100.tsv.gz"
    path.write_bytes(gzip.compress(_tsv()))
    rows = list(iter_passages(path))
    assert len(rows) == ROWS and rows[0]["id"] == "wiki18:1"
    assert rows[6]["text"].endswith('said "quoted" words') and rows[2]["title"] == "Title, 3"
    path.write_bytes(gzip.compress(_tsv(bad_line=40)))
    with pytest.raises(Wiki18Error, match=r"psgs_w100.tsv.gz:40: expected"):
        list(iter_passages(path))


def test_arrow_build_and_answer_coverage_in_one_and_in_two_processes(tmp_path):
    path = tmp_path / "psgs_w100.tsv.gz"
    path.write_bytes(gzip.compress(_tsv()))
    n = build_corpus(path, tmp_path / "corpus", log=lambda *a: None)
    assert n == ROWS
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "corpus"))
    assert ds[49]["text"].endswith("london") and ds.column_names == ["id", "title", "text"]
    questions = [{"id": "q1", "dataset": "nq", "answers": ["London"]},
                 {"id": "q2", "dataset": "nq", "answers": ["the Seine"]},
                 {"id": "q3", "dataset": "popqa", "answers": ["Thames"]}]
    r1 = [{"title": "Title 1", "text": "passage 1 about the river thames and paris"},
          {"title": "not there", "text": "no"}]
    one = coverage(tmp_path / "corpus", questions, r1, chunk=128, workers=1)
    two = coverage(tmp_path / "corpus", questions, r1, chunk=128, workers=2)
    assert one == two
    assert one["n_answer_passages"] == {"q1": ROWS // 50, "q2": 0, "q3": ROWS}
    assert one["by_dataset"] == {"nq": {"questions": 2, "answer_in_corpus": 1},
                                 "popqa": {"questions": 1, "answer_in_corpus": 1}}
    assert one["search_r1_passages_found"] == {"found": 1, "of": 2}


def test_cli_fetch_wiki18_builds_and_says_why_coverage_is_missing(tmp_path, mirror, isolated_home, capsys,
                                                                  monkeypatch):
    from invar_rag_lib.cli import main

    monkeypatch.setattr(wiki18, "WIKI18_ROWS", ROWS)  # the synthetic file stands in for DPR's
    assert main(["data", "fetch", "--corpus", "wiki18", "--mirror", mirror(_tsv()), "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "answer coverage skipped: no built benchmark for profile 'smoke'" in out
    manifest = json.loads((isolated_home / "data" / "processed" / "wiki18" / "manifest.json").read_text())
    assert manifest["passages"] == ROWS and manifest["source"]["rows"] == ROWS


def test_prepare_records_the_coverage_of_a_built_benchmarks_questions(tmp_path, mirror, built_tiny):
    from invar_rag_lib.wiki18 import prepare_wiki18

    _, bench = built_tiny
    manifest = prepare_wiki18(tmp_path / "src", mirror(_tsv()), rows=ROWS, bench=bench, workers=1, log=lambda *a: None)
    cov = manifest["coverage"]
    n_eval = sum(len(bench.eval[ds]) for ds in bench.eval)
    assert sum(d["questions"] for d in cov["by_dataset"].values()) == n_eval == len(cov["n_answer_passages"])
    assert cov["passages"] == ROWS and manifest["source"]["rows"] == ROWS


def test_a_benchmark_built_on_wiki18_holds_it_whole_and_counts_answers_in_it(tmp_path, mirror, isolated_home):
    """data.corpus = "wiki18": the built passages the training stand-ins need, then every wiki-18 row;
    no Search-R1 passages or distractors; each evaluation question's answer count is has_answer over
    the whole corpus, and the build key covers the wiki-18 content."""
    import datasets

    from conftest import tiny_profile_dict, write_tiny_sources
    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.data import load_benchmark, prepare_benchmark
    from invar_rag_lib.metrics import AnswerIndex
    from invar_rag_lib.wiki18 import prepare_wiki18

    content = _tsv().replace(b"passage 7 about", b"Canberra and 1989 and passage 7 about")
    sources = write_tiny_sources(tmp_path / "sources")
    values = tiny_profile_dict(tmp_path / "reports")
    with pytest.raises(FileNotFoundError, match="invar-rag data fetch --corpus wiki18"):
        prepare_benchmark(profile_from_dict({**values, "data": {**values["data"], "corpus": "wiki18"}}),
                          sources=sources, log=lambda *a: None)
    prepare_wiki18(tmp_path / "src", mirror(content), rows=ROWS, workers=1, log=lambda *a: None)
    built = prepare_benchmark(profile_from_dict(values), sources=sources, log=lambda *a: None)
    whole = prepare_benchmark(profile_from_dict({**values, "data": {**values["data"], "corpus": "wiki18"}}),
                              sources=sources, out_dir=tmp_path / "w", log=lambda *a: None)
    assert whole["build_key"] != built["build_key"]
    by_source = whole["counts"]["corpus"]["by_source"]
    assert by_source["wiki18"] == ROWS and "wikisum" not in by_source
    assert whole["counts"]["corpus"]["total"] == sum(by_source.values())
    bench = load_benchmark("tiny", tmp_path / "w")
    texts = datasets.load_from_disk(str(tmp_path / "w" / "corpus"))["text"]
    assert len(texts) == whole["counts"]["corpus"]["total"]
    index = AnswerIndex(texts)
    for ds in bench.eval:
        for r in bench.eval_records(ds):
            assert r["metadata"]["n_answer_passages"] == len(index.passages_with_answer(r["golden_answers"]))
    canberra = [r for ds in bench.eval for r in bench.eval_records(ds) if "Canberra" in r["golden_answers"]]
    assert canberra and "wiki18:7" in canberra[0]["metadata"]["answer_passage_ids"]


def test_a_second_prepare_keeps_the_arrow_build_of_the_same_content(tmp_path, mirror, isolated_home):
    from invar_rag_lib.wiki18 import prepare_wiki18

    url = mirror(_tsv())
    prepare_wiki18(tmp_path / "src", url, rows=ROWS, workers=1, log=lambda *a: None)
    said: list = []
    manifest = prepare_wiki18(tmp_path / "src", url, rows=ROWS, workers=1, log=said.append)
    assert manifest["passages"] == ROWS
    assert any("present and unchanged" in s for s in said) and any("kept" in s for s in said)
    assert not any("(Arrow)" in s for s in said)  # not streamed again
