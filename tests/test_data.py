"""prepare_benchmark / load_benchmark on the miniature sources of conftest.py."""
from __future__ import annotations

import json
import os

import pytest

from invar_rag_lib import data as data_mod
from invar_rag_lib.data import (
    LeakageError,
    _check_no_leakage,
    load_benchmark,
    prepare_benchmark,
    question_key,
)
from invar_rag_lib.metrics import has_answer

from conftest import (  # noqa: E402  (tests/ is on sys.path via rootdir conftest)
    NQ_SAMPLE,
    NQ_GOLD_TRAIN_QUESTIONS,
    ORACLE_DUPLICATE_QUESTION,
    POPQA_SAMPLE,
    R1_EXCLUDED_TEXT,
    TQA_DEV_TRAIN_QUESTIONS,
    TQA_QUOTED_QUESTION,
    TQA_UNQUOTED_QUESTION,
    TRIVIAQA_SAMPLE,
    WIKIQA_TRAIN_QUESTIONS,
)

QUIET = lambda *a, **k: None  # noqa: E731
SAMPLES = {"nq": NQ_SAMPLE, "triviaqa": TRIVIAQA_SAMPLE, "popqa": POPQA_SAMPLE}


def _tree_snapshot(root):
    """{relative path: (mtime_ns, bytes)} of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def _as_json(obj):
    return json.loads(json.dumps(obj))


# ----------------------------------------------------------------------------- schema and content
def test_schema_of_eval_train_and_corpus(built_tiny):
    _, bench = built_tiny
    assert sorted(bench.eval) == ["nq", "popqa", "triviaqa"]
    assert sorted(bench.train) == ["nq_gold", "tqa_dev", "wikiqa"]
    qa_cols = ["id", "question", "golden_answers", "dataset", "metadata"]
    for split in [*bench.eval.values(), *bench.train.values()]:
        assert split.column_names == qa_cols
        assert split.features["golden_answers"].feature.dtype == "string"
        for col in ("id", "question", "dataset", "metadata"):
            assert split.features[col].dtype == "string"
    assert bench.corpus.column_names == ["id", "title", "text"]
    for ds, split in bench.eval.items():
        assert set(split["dataset"]) == {ds}
        assert all(i.startswith(f"{ds}/") for i in split["id"])
    for source, split in bench.train.items():
        assert set(split["dataset"]) == {source}


def test_eval_selection_comes_from_the_samples(built_tiny, tiny_expected):
    _, bench = built_tiny
    for ds, sample in SAMPLES.items():
        rows = bench.eval_records(ds)
        assert len(rows) == tiny_expected["eval_questions"]
        by_id = {f"{ds}/{r['id']}": r for r in sample}
        for row in rows:
            src = by_id[row["id"]]
            assert row["golden_answers"] == src["golden_answers"]
            assert row["metadata"]["source_id"] == src["id"]
        assert len({r["id"] for r in rows}) == len(rows)


def test_manifest_counts_match_the_datasets(built_tiny, tiny_expected):
    manifest, bench = built_tiny
    counts = manifest["counts"]
    assert counts["eval"].keys() == bench.eval.keys()
    for ds, split in bench.eval.items():
        assert counts["eval"][ds]["questions"] == len(split)
        flags = [r["metadata"]["answer_in_corpus"] for r in bench.eval_records(ds)]
        assert counts["eval"][ds]["answer_in_corpus"] == sum(flags)
    assert counts["train"] == {s: len(split) for s, split in bench.train.items()}
    assert counts["train"] == tiny_expected["train"]
    assert counts["corpus"]["total"] == len(bench.corpus)
    assert counts["corpus"]["by_source"] == tiny_expected["corpus_by_source"]
    assert sum(counts["corpus"]["by_source"].values()) == len(bench.corpus)
    assert manifest["profile"] == "tiny"
    assert manifest["config"]["eval_questions_per_dataset"] == 4
    assert set(manifest["inputs"]) == set(data_mod.SOURCE_FILES)
    assert manifest["outputs_sha256"] and all(len(v) == 64 for v in manifest["outputs_sha256"].values())


def test_training_questions_are_exactly_the_expected_ones(built_tiny):
    _, bench = built_tiny
    assert {r["question"] for r in bench.train_records("nq_gold")} == NQ_GOLD_TRAIN_QUESTIONS
    assert {r["question"] for r in bench.train_records("tqa_dev")} == TQA_DEV_TRAIN_QUESTIONS
    assert {r["question"] for r in bench.train_records("wikiqa")} == WIKIQA_TRAIN_QUESTIONS


def test_no_training_question_equals_an_eval_question(built_tiny):
    _, bench = built_tiny
    eval_keys = {question_key(r["question"]) for s in SAMPLES.values() for r in s}
    eval_keys.add(question_key(TQA_UNQUOTED_QUESTION))
    train_questions = [r["question"] for s in bench.train for r in bench.train_records(s)]
    assert train_questions
    assert not [q for q in train_questions if question_key(q) in eval_keys]
    # In particular the oracle record that duplicates NQ test_0 is not a training question.
    assert ORACLE_DUPLICATE_QUESTION not in train_questions
    assert all(question_key(q) != question_key(ORACLE_DUPLICATE_QUESTION) for q in train_questions)


def test_triviaqa_csv_quoting_is_undone_in_eval_questions(built_tiny, tiny_profile, tiny_sources):
    _, bench = built_tiny
    questions = [r["question"] for r in bench.eval_records("triviaqa")]
    assert TQA_QUOTED_QUESTION not in questions
    assert not any(q.startswith('"') or '""' in q for q in questions)
    # With every question selected, the quoted one is there, unquoted.
    from dataclasses import replace

    everything = replace(tiny_profile, data=replace(tiny_profile.data, eval_questions_per_dataset=6))
    built = data_mod._build(everything, tiny_sources)
    assert TQA_UNQUOTED_QUESTION in [r["question"] for r in built["eval"]["triviaqa"]]
    assert built["all_eval_keys"][question_key(TQA_UNQUOTED_QUESTION)] == "triviaqa/test_6233"


def test_titles_unquoted_and_doubled_quotes_undone(built_tiny):
    _, bench = built_tiny
    titles = bench.corpus["title"]
    texts = bench.corpus["text"]
    assert "Hallelujah (Leonard Cohen song)" in titles
    assert "Canberra" in titles
    assert not any(t.startswith('"') and t.endswith('"') and len(t) > 1 for t in titles)
    assert not any('""' in t for t in texts)
    hallelujah = [t for t in texts if "Leonard Cohen" in t]
    assert hallelujah == ['"Hallelujah" is a song written by Canadian singer Leonard Cohen, originally '
                          'released on his album "Various Positions" (1984).']
    assert any('wrote "The Adventures of Tom Sawyer".' in t for t in texts)


def test_corpus_is_deduplicated_and_filtered_to_the_pool(built_tiny):
    _, bench = built_tiny
    rows = list(bench.corpus)
    keys = [(r["title"], " ".join(r["text"].split())) for r in rows]
    assert len(keys) == len(set(keys))
    assert len({r["id"] for r in rows}) == len(rows)
    canberra = [r for r in rows if r["title"] == "Canberra"]
    assert len(canberra) == 1  # two raw records differing only in whitespace
    assert canberra[0]["id"].startswith("wiki18-")
    # The oracle's gold passage for the Hallelujah question equals the wiki-18 one: one row.
    assert sum("Leonard Cohen" in r["text"] for r in rows) == 1
    assert not any(R1_EXCLUDED_TEXT in r["text"] for r in rows)
    # Summaries without an extract are skipped; WikiQA positives enter with an empty title.
    assert "Nothing" not in [r["title"] for r in rows]
    assert {r["text"] for r in rows if r["id"].startswith("wikiqa-")} == {
        "A glacier cave is a cave formed within the ice of a glacier .",
        "Barefoot and pregnant is a phrase about keeping women at home .",
    }
    assert all(r["title"] == "" for r in rows if r["id"].startswith("wikiqa-"))


def test_answer_in_corpus_matches_has_answer_over_the_corpus(built_tiny):
    _, bench = built_tiny
    corpus = {r["id"]: r["text"] for r in bench.corpus}
    seen_true = seen_false = False
    for ds in bench.eval:
        for q in bench.eval_records(ds):
            expected = sorted(pid for pid, text in corpus.items() if has_answer(text, q["golden_answers"]))
            meta = q["metadata"]
            assert meta["answer_in_corpus"] is bool(expected), q["question"]
            assert meta["n_answer_passages"] == len(expected)
            assert sorted(meta["answer_passage_ids"]) == expected
            seen_true |= bool(expected)
            seen_false |= not expected
    assert seen_true and seen_false  # the fixture exercises both outcomes


def test_answer_only_in_a_title_does_not_count(tiny_profile, tiny_sources):
    from dataclasses import replace

    everything = replace(tiny_profile, data=replace(tiny_profile.data, eval_questions_per_dataset=6))
    built = data_mod._build(everything, tiny_sources)
    by_id = {r["source_id"]: r for r in built["eval"]["popqa"]}
    assert any(row["title"] == "Christopher Nolan" for row in built["corpus"])
    assert by_id["106"]["n_answer_passages"] == 0 and by_id["106"]["answer_passage_ids"] == []
    assert by_id["103"]["n_answer_passages"] == 1  # Shakespeare, in the Hamlet passage's text


def test_train_answer_passages_contain_an_answer(built_tiny):
    _, bench = built_tiny
    corpus = {r["id"]: r["text"] for r in bench.corpus}
    for source in bench.train:
        for r in bench.train_records(source):
            ids = r["metadata"]["answer_passage_ids"]
            assert ids, (source, r["question"])
            assert all(has_answer(corpus[i], r["golden_answers"]) for i in ids)
            assert all(g in corpus for g in r["metadata"]["gold_ids"])
    for r in bench.train_records("nq_gold"):
        (gold,) = r["metadata"]["gold_ids"]
        assert gold.startswith("nqgold-")
        assert has_answer(corpus[gold], r["golden_answers"])


def test_popqa_metadata_kept_and_decoded(built_tiny):
    _, bench = built_tiny
    by_id = {f"popqa/{r['id']}": r for r in POPQA_SAMPLE}
    for row in bench.eval_records("popqa"):
        assert isinstance(row["metadata"], dict)
        assert row["metadata"]["popqa"] == by_id[row["id"]]["metadata"]
    # raw rows hold JSON strings; eval_records decodes them
    raw = bench.eval["popqa"][0]["metadata"]
    assert isinstance(raw, str) and json.loads(raw)["popqa"]["prop"]
    for row in bench.eval_records("nq"):
        assert "popqa" not in row["metadata"]


def test_nq_eval_gold_ids_point_at_the_oracle_passage(built_tiny):
    _, bench = built_tiny
    corpus = {r["id"]: r["text"] for r in bench.corpus}
    for row in bench.eval_records("nq"):
        if row["id"] == "nq/test_0":
            (gold,) = row["metadata"]["gold_ids"]
            assert "Leonard Cohen" in corpus[gold]
        else:
            assert row["metadata"]["gold_ids"] == []


# ----------------------------------------------------------------------------- build mechanics
def test_second_call_is_up_to_date_and_does_not_rebuild(tiny_profile, tiny_sources, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    before = _tree_snapshot(out)

    def no_build(*a, **k):
        raise AssertionError("rebuilt although up to date")

    monkeypatch.setattr(data_mod, "_build", no_build)
    messages = []
    second = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=messages.append)
    assert second == _as_json(first)
    assert any("up to date" in m for m in messages)
    assert _tree_snapshot(out) == before


def test_returned_manifest_is_the_same_whether_built_or_reused(tiny_profile, tiny_sources, tmp_path):
    """A fresh build and an up-to-date call must return the same manifest (the stored one)."""
    out = tmp_path / "out"
    built = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    reused = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    stored = json.loads((out / "manifest.json").read_text())
    assert reused == stored
    assert built == stored  # fails: the fresh build returns tuples where the file has lists


def test_two_builds_give_identical_outputs(tiny_profile, tiny_sources, tmp_path):
    a = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=tmp_path / "a", log=QUIET)
    b = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=tmp_path / "b", log=QUIET)
    assert a["outputs_sha256"] == b["outputs_sha256"]
    assert a["build_key"] == b["build_key"]
    assert a["counts"] == b["counts"]


def test_force_rebuilds(tiny_profile, tiny_sources, tmp_path):
    out = tmp_path / "out"
    first = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    marker = out / "stale-file"
    marker.write_text("from an older build")
    messages = []
    second = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, force=True,
                               log=messages.append)
    assert any(m.startswith("building") for m in messages)
    assert not marker.exists()  # the directory was replaced as a whole
    assert (out / "manifest.json").stat().st_mtime_ns != stamp
    assert second["outputs_sha256"] == first["outputs_sha256"]
    assert load_benchmark("tiny", out).manifest == _as_json(second)


def test_changed_source_or_config_triggers_a_rebuild(tiny_profile, tiny_sources, tmp_path):
    from dataclasses import replace

    out = tmp_path / "out"
    first = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    smaller = replace(tiny_profile, data=replace(tiny_profile.data, distractor_passages=1))
    messages = []
    second = prepare_benchmark(smaller, sources=tiny_sources, out_dir=out, log=messages.append)
    assert not any("up to date" in m for m in messages)
    assert second["build_key"] != first["build_key"]
    assert second["counts"]["corpus"]["by_source"]["wikisum"] == 1
    # a changed source file (one more summary) also invalidates the build
    import gzip

    path = tiny_sources / data_mod.SOURCE_FILES["wiki_summaries"]
    summaries = json.loads(gzip.decompress(path.read_bytes()))
    summaries["Tea"] = {"title": "Tea", "extract": "Tea is an aromatic beverage.", "description": "",
                        "topic": "Food"}
    path.write_bytes(gzip.compress(json.dumps(summaries).encode()))
    third = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    assert third["build_key"] not in (first["build_key"], second["build_key"])
    assert third["counts"]["corpus"]["by_source"]["wikisum"] == 5


def test_failed_build_leaves_previous_build_intact(tiny_profile, tiny_sources, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, log=QUIET)
    before = _tree_snapshot(out)
    real_save = data_mod._save

    def save_then_crash(built, tmp, *args, **kwargs):
        real_save(built, tmp, *args, **kwargs)  # write everything into the temp dir ...
        raise RuntimeError("disk full")           # ... then fail before the swap

    monkeypatch.setattr(data_mod, "_save", save_then_crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=out, force=True, log=QUIET)
    assert _tree_snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    assert load_benchmark("tiny", out).manifest["counts"]["corpus"]["total"] > 0


def test_leakage_check_raises_naming_the_question():
    built = {
        "all_eval_keys": {question_key("Who wrote the song Hallelujah?"): "nq/test_0",
                          question_key("What is the capital of Peru?"): "triviaqa/test_9"},
        "train": {"nq_gold": [{"question": "who sang bohemian rhapsody"}],
                  "tqa_dev": [{"question": "who wrote the song hallelujah"}]},
    }
    with pytest.raises(LeakageError) as info:
        _check_no_leakage(built)
    msg = str(info.value)
    assert "who wrote the song hallelujah" in msg
    assert "nq/test_0" in msg and "tqa_dev" in msg
    assert msg.startswith("1 training question")
    built["train"]["tqa_dev"] = [{"question": "something else entirely"}]
    _check_no_leakage(built)  # no error once the leak is gone


def test_prepare_runs_the_leakage_check(tiny_profile, tiny_sources, tmp_path, monkeypatch):
    real_build = data_mod._build

    def leaky_build(profile, source_dir, log=print):
        built = real_build(profile, source_dir, log)
        built["train"]["wikiqa"].append({"question": "Who painted the Mona Lisa?"})
        return built

    monkeypatch.setattr(data_mod, "_build", leaky_build)
    with pytest.raises(LeakageError, match="Mona Lisa"):
        prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=tmp_path / "out", log=QUIET)
    assert not (tmp_path / "out").exists()


def test_default_output_goes_under_invar_rag_home(tiny_profile, tiny_sources, isolated_home):
    prepare_benchmark(tiny_profile, sources=tiny_sources, log=QUIET)
    assert (isolated_home / "data" / "processed" / "tiny" / "manifest.json").is_file()
    bench = load_benchmark("tiny")
    assert bench.path == isolated_home / "data" / "processed" / "tiny"


def test_load_benchmark_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_benchmark("tiny", tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere") in msg
    assert "invar-rag data prepare --profile tiny" in msg


def test_build_does_not_depend_on_process_hash_seed(tiny_profile, tiny_sources, tmp_path):
    """The selection must be reproducible across processes (PYTHONHASHSEED differs)."""
    import subprocess
    import sys

    here = prepare_benchmark(tiny_profile, sources=tiny_sources, out_dir=tmp_path / "a", log=QUIET)
    code = (
        "import json,sys\n"
        "from invar_rag_lib.config import profile_from_dict\n"
        "from invar_rag_lib.data import prepare_benchmark\n"
        "p = profile_from_dict(json.loads(sys.argv[1]))\n"
        "m = prepare_benchmark(p, sources=sys.argv[2], out_dir=sys.argv[3], log=lambda *a: None)\n"
        "print(json.dumps(m['outputs_sha256']))\n"
    )
    from conftest import tiny_profile_dict

    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    res = subprocess.run([sys.executable, "-c", code, json.dumps(tiny_profile_dict(tmp_path / "r")),
                          str(tiny_sources), str(tmp_path / "b")], env=env, capture_output=True,
                         text=True, check=True)
    assert json.loads(res.stdout.strip().splitlines()[-1]) == here["outputs_sha256"]


def test_near_duplicates_of_eval_questions_are_found_by_word_overlap():
    from invar_rag_lib.data import NearDuplicates

    near = NearDuplicates(["who wrote the music phantom of the opera", "what is the capital of rwanda"], 0.8)
    assert near.match("Who wrote the Phantom of the Opera music?") == ("who wrote the music phantom of the opera", 1.0)
    assert near.match("what is the capital of kenya") is None  # same template, another question
    assert near.match("who painted the mona lisa") is None


def test_near_duplicate_training_question_is_left_out_and_recorded(tiny_sources):
    from invar_rag_lib.config import profile_from_dict
    from conftest import tiny_profile_dict

    strict = profile_from_dict({**tiny_profile_dict(tiny_sources / "r"),
                                "data": {**tiny_profile_dict(tiny_sources / "r")["data"], "near_duplicate_jaccard": 0.3}})
    loose = profile_from_dict(tiny_profile_dict(tiny_sources / "r"))
    a, b = data_mod._build(loose, tiny_sources, log=lambda *x: None), data_mod._build(strict, tiny_sources, log=lambda *x: None)
    dropped = {d["question"] for d in b["near_duplicates"]}
    assert dropped, "a loose threshold must catch something in the fixture"
    for source, rows in b["train"].items():
        assert not dropped & {r["question"] for r in rows}
    assert all(d["jaccard"] >= 0.3 and d["eval_question"] for d in b["near_duplicates"])
    assert len(a["near_duplicates"]) <= len(b["near_duplicates"])
