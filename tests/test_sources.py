"""Raw-file readers: each bad record is reported with file and line."""
from __future__ import annotations

import gzip
import json

import pytest

from invar_rag_lib.paths import SOURCE_FILES, SourcesNotFound, candidate_source_dirs, find_sources
from invar_rag_lib.sources import (
    SourceFormatError,
    clean_dpr_title,
    iter_jsonl,
    read_dpr_topics,
    read_flashrag_sample,
    read_nq_oracle,
    read_r1_passages,
    read_wiki_summaries,
    read_wikiqa_train,
    undo_csv_quoting,
)

from conftest import TQA_QUOTED_QUESTION, TQA_UNQUOTED_QUESTION, write_tiny_sources


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


# ----------------------------------------------------------------------------- jsonl
def test_iter_jsonl_reads_gzip_and_skips_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(gzip.compress(_lines({"a": 1}, "", "   ", {"a": 2}).encode()))
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "nq_test.jsonl"
    path.write_text(_lines({"id": "1", "question": "q?", "golden_answers": ["a"]},
                           "",
                           '{"id": "2", "question": "broken, "golden_answers": ["a"]}',
                           {"id": "3", "question": "q3?", "golden_answers": ["b"]}))
    with pytest.raises(SourceFormatError) as info:
        read_flashrag_sample(path)
    msg = str(info.value)
    assert f"{path}:3:" in msg
    assert "malformed JSON" in msg


def test_non_object_json_line_is_rejected(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(_lines({"a": 1}, "[1, 2]"))
    with pytest.raises(SourceFormatError, match=rf"{path}:2: expected a JSON object, got list"):
        list(iter_jsonl(path))


@pytest.mark.parametrize("answers", [[], [""], ["   "], None])
def test_question_without_answers_names_the_line(tmp_path, answers):
    path = tmp_path / "popqa_test.jsonl"
    path.write_text(_lines({"id": "1", "question": "ok?", "golden_answers": ["yes"]},
                           {"id": "2", "question": "no answers?", "golden_answers": answers}))
    with pytest.raises(SourceFormatError) as info:
        read_flashrag_sample(path)
    msg = str(info.value)
    assert f"{path}:2:" in msg
    assert "without answers" in msg


def test_flashrag_missing_key_names_the_line(tmp_path):
    path = tmp_path / "nq.jsonl"
    path.write_text(_lines({"id": "1", "question": "q?"}))
    with pytest.raises(SourceFormatError, match=rf"{path}:1: missing key\(s\) \['golden_answers'\]"):
        read_flashrag_sample(path)


def test_flashrag_sample_fields(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_lines(
        {"id": 7, "question": "  Where is Rome?  ", "golden_answers": ["Italy", "", "  "]},
        {"id": "test_6233", "question": TQA_QUOTED_QUESTION, "golden_answers": "Mark Twain",
         "metadata": {"prop": "author"}},
    ))
    a, b = read_flashrag_sample(path)
    assert a == {"source_id": "7", "question": "Where is Rome?", "golden_answers": ["Italy"], "metadata": {}, "line": 1}
    assert b["question"] == TQA_UNQUOTED_QUESTION
    assert b["golden_answers"] == ["Mark Twain"]
    assert b["metadata"] == {"prop": "author"}


# ----------------------------------------------------------------------------- csv quoting
@pytest.mark.parametrize("raw, expected", [
    ('"Who wrote ""X""?"', 'Who wrote "X"?'),
    (TQA_QUOTED_QUESTION, TQA_UNQUOTED_QUESTION),
    ('"""X"" is a novel by whom?"', '"X" is a novel by whom?'),
    ('"Who said ""hi"""', 'Who said "hi"'),
    ("Who wrote X?", "Who wrote X?"),                              # no quotes at all
    ('Who wrote "X"?', 'Who wrote "X"?'),                          # inner quotes, not wrapped
    ('"Hello," she said, "goodbye"', '"Hello," she said, "goodbye"'),  # starts/ends with a quotation
    ('"X" or "Y"', '"X" or "Y"'),
    ('"', '"'),
    ("", ""),
])
def test_undo_csv_quoting(raw, expected):
    assert undo_csv_quoting(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ('"Canberra"', "Canberra"),
    ('"The ""Boss"" (album)"', 'The "Boss" (album)'),
    ("Plain title", "Plain title"),
    ('"', '"'),
])
def test_clean_dpr_title(raw, expected):
    assert clean_dpr_title(raw) == expected


# ----------------------------------------------------------------------------- DPR topics
def test_dpr_topics_csv_quoting(tmp_path):
    path = tmp_path / "topics.dpr.trivia.dev.txt.gz"
    raw = (
        "Which band recorded Bohemian Rhapsody?\t['Queen']\n"
        '"Who said ""Hallelujah"" first?"\t[\'Leonard Cohen\', \'Cohen\']\n'
        'What is the boiling point of water?\t"[\'212\', ""212 degrees"", ""Gentleman\'s sport""]"\n'
        "\n"
        '"A tab\tinside, quoted"\t[\'a, b\']\n'
    )
    path.write_bytes(gzip.compress(raw.encode()))
    assert read_dpr_topics(path) == [
        {"question": "Which band recorded Bohemian Rhapsody?", "golden_answers": ["Queen"]},
        {"question": 'Who said "Hallelujah" first?', "golden_answers": ["Leonard Cohen", "Cohen"]},
        {"question": "What is the boiling point of water?",
         "golden_answers": ["212", "212 degrees", "Gentleman's sport"]},
        {"question": "A tab\tinside, quoted", "golden_answers": ["a, b"]},
    ]


def test_dpr_topics_wrong_field_count_names_the_line(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("q1?\t['x']\nq2?\t['y']\textra\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:2: expected 2 tab-separated fields, got 3"):
        read_dpr_topics(path)


def test_dpr_topics_doubly_quoted_question_is_unquoted(tmp_path):
    """The real topics.dpr.trivia.dev file holds 548 questions like the first line below: CSV
    quoting of a question that *itself* still carries CSV quoting (the same artefact as in the
    FlashRAG TriviaQA sample). After parsing, the question must read `Who wrote "X"?`, exactly as
    read_flashrag_sample gives the same question."""
    path = tmp_path / "topics.txt"
    path.write_text('"""Who wrote """"X""""?"""\t[\'Y\']\n'
                    '"""What play is about """"star-crossed lovers""""?"""\t[\'Romeo and Juliet\']\n')
    rows = read_dpr_topics(path)
    assert [r["question"] for r in rows] == ['Who wrote "X"?', 'What play is about "star-crossed lovers"?']


def test_dpr_topics_bad_answers_field(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("q1?\t['x']\nq2?\tnot a list\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:2: answers field is not a Python list"):
        read_dpr_topics(path)
    path.write_text("q1?\t['x']\nq2?\t[]\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:2: question without answers"):
        read_dpr_topics(path)


# ----------------------------------------------------------------------------- WikiQA
WIKIQA_HEADER = "QuestionID\tQuestion\tSentenceID\tSentence\tLabel\n"


def test_wikiqa_groups_by_question_and_tolerates_7_column_rows(tmp_path):
    path = tmp_path / "WikiQA-train.reduced-columns.tsv"
    path.write_text(
        WIKIQA_HEADER
        + "Q1\thow are glacier caves formed?\tS1\tA partly submerged glacier cave .\t0\n"
        + "Q2\thow are glacier caves formed?\tS2\tA glacier cave is formed within ice .\t1\n"
        + 'Q3\twhat does barefoot and pregnant mean\tD562\tBarefoot and pregnant\tD562-8\t'
          'The only way to keep a woman happy,\' he said, \'is to keep her barefoot."\t1\n'
        + "Q4\twhat is x\tS4\tNothing relevant .\t0\n"
    )
    groups = read_wikiqa_train(path)
    assert groups == [
        {"question": "how are glacier caves formed?", "positives": ["A glacier cave is formed within ice ."],
         "negatives": ["A partly submerged glacier cave ."]},
        {"question": "what does barefoot and pregnant mean",
         "positives": ["The only way to keep a woman happy,' he said, 'is to keep her barefoot.\""],
         "negatives": []},
        {"question": "what is x", "positives": [], "negatives": ["Nothing relevant ."]},
    ]


@pytest.mark.parametrize("bad_row, error", [
    ("Q9\tquestion?\tS9\tsentence\n", "expected 5 or 7 columns, got 4"),
    ("Q9\tquestion?\tS9\tsentence\t1\textra\n", "expected 5 or 7 columns, got 6"),
    ("Q9\tquestion?\tS9\tsentence\tyes\n", "label must be 0 or 1, got 'yes'"),
])
def test_wikiqa_bad_rows_name_the_line(tmp_path, bad_row, error):
    path = tmp_path / "wikiqa.tsv.gz"
    raw = WIKIQA_HEADER + "Q1\tq?\tS1\ts .\t1\n" + bad_row
    path.write_bytes(gzip.compress(raw.encode()))
    with pytest.raises(SourceFormatError) as info:
        read_wikiqa_train(path)
    assert f"{path}:3: {error}" in str(info.value)


def test_wikiqa_requires_header(tmp_path):
    path = tmp_path / "wikiqa.tsv"
    path.write_text("Q1\tq?\tS1\ts .\t1\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:1: expected a header"):
        read_wikiqa_train(path)


# ----------------------------------------------------------------------------- other readers
def test_nq_oracle_picks_the_gold_passage(tmp_path):
    path = tmp_path / "oracle.jsonl"
    path.write_text(_lines(
        {"question": " where is the eiffel tower ", "answers": ["Paris"],
         "ctxs": [{"title": "X", "text": "not gold", "isgold": False},
                  {"title": "Eiffel Tower", "text": "It is in Paris.", "isgold": True}]},
        {"question": "q without gold", "answers": ["a"], "ctxs": [{"title": "X", "text": "y", "isgold": False}]},
    ))
    with pytest.raises(SourceFormatError, match=rf"{path}:2: no gold passage"):
        read_nq_oracle(path)
    path.write_text(_lines(
        {"question": " where is the eiffel tower ", "answers": ["Paris"],
         "ctxs": [{"title": "X", "text": "not gold", "isgold": False},
                  {"title": "Eiffel Tower", "text": "It is in Paris.", "isgold": True}]},
        {"question": "no answers", "answers": [], "ctxs": [{"title": "T", "text": "t", "isgold": True}]},
    ))
    with pytest.raises(SourceFormatError, match=rf"{path}:2: question without answers"):
        read_nq_oracle(path)
    path.write_text(_lines(
        {"question": " where is the eiffel tower ", "answers": ["Paris"],
         "ctxs": [{"title": "X", "text": "not gold", "isgold": False},
                  {"title": "Eiffel Tower", "text": "It is in Paris.", "isgold": True}]}))
    assert read_nq_oracle(path) == [{"question": "where is the eiffel tower", "golden_answers": ["Paris"],
                                     "gold_title": "Eiffel Tower", "gold_text": "It is in Paris."}]


def test_r1_passages_clean_titles_and_quotes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_lines({"id": "r1-1", "title": '"The ""Boss"""', "text": 'He sang ""Born to Run"".',
                            "retrieved_for": ["nq:test_1"]},
                           {"id": "r1-2", "title": '"T"', "text": "", "retrieved_for": []}))
    with pytest.raises(SourceFormatError, match=rf"{path}:2: passage without 'text'"):
        read_r1_passages(path)
    path.write_text(_lines({"id": "r1-1", "title": '"The ""Boss"""', "text": 'He sang ""Born to Run"".',
                            "retrieved_for": ["nq:test_1"]}))
    assert read_r1_passages(path) == [{"title": 'The "Boss"', "text": 'He sang "Born to Run".',
                                       "retrieved_for": ["nq:test_1"]}]


def test_wiki_summaries(tmp_path):
    path = tmp_path / "summaries.json"
    path.write_text(json.dumps({"Gold": {"title": "Gold", "extract": "Gold is Au.", "description": "",
                                         "topic": "x"},
                                "Empty": {"title": "Empty", "extract": ""},
                                "NoTitle": {"extract": "Has no title field."},
                                "Odd": "not a dict"}))
    assert read_wiki_summaries(path) == [{"title": "Gold", "text": "Gold is Au."},
                                         {"title": "NoTitle", "text": "Has no title field."}]
    path.write_text('{"Gold": {"title": "Gold",\n "extract": }')
    with pytest.raises(SourceFormatError, match=rf"{path}:2: malformed JSON"):
        read_wiki_summaries(path)


# ----------------------------------------------------------------------------- find_sources
def test_find_sources_explicit_dir(tmp_path):
    root = write_tiny_sources(tmp_path / "src")
    assert find_sources(root) == root.resolve()
    assert find_sources(str(root)) == root.resolve()


def test_find_sources_default_lookup_order(tmp_path, isolated_home, monkeypatch):
    assert candidate_source_dirs() == [isolated_home / "data" / "sources",
                                       isolated_home.parent / "shared" / "data-sources"]
    write_tiny_sources(isolated_home / "data" / "sources")
    assert find_sources() == (isolated_home / "data" / "sources").resolve()
    env_dir = write_tiny_sources(tmp_path / "env")
    monkeypatch.setenv("INVAR_RAG_SOURCES", str(env_dir))
    assert find_sources() == env_dir.resolve()  # $INVAR_RAG_SOURCES comes before data/sources


def test_find_sources_nothing_found_lists_every_directory(tmp_path, isolated_home, monkeypatch):
    env_dir = tmp_path / "env-sources"
    env_dir.mkdir()
    (env_dir / SOURCE_FILES["nq_sample"]).parent.mkdir(parents=True)
    (env_dir / SOURCE_FILES["nq_sample"]).write_bytes(b"")
    monkeypatch.setenv("INVAR_RAG_SOURCES", str(env_dir))
    with pytest.raises(SourcesNotFound) as info:
        find_sources()
    msg = str(info.value)  # a wrong $INVAR_RAG_SOURCES is an error, like a wrong --sources
    assert f"{env_dir}: missing {SOURCE_FILES['triviaqa_sample']} (+6 more)" in msg
    assert str(isolated_home / "data" / "sources") not in msg
    monkeypatch.delenv("INVAR_RAG_SOURCES")
    with pytest.raises(SourcesNotFound) as info:
        find_sources()
    msg = str(info.value)
    for d in (isolated_home / "data" / "sources", isolated_home.parent / "shared" / "data-sources"):
        assert str(d) in msg
    assert f"{isolated_home / 'data' / 'sources'}: does not exist" in msg
    assert "--sources" in msg and "INVAR_RAG_SOURCES" in msg


def test_find_sources_bad_explicit_dir_does_not_fall_through(tmp_path, isolated_home):
    # Valid sources exist in the default place, but an explicit wrong --sources must not use them.
    write_tiny_sources(isolated_home / "data" / "sources")
    bad = tmp_path / "typo"
    with pytest.raises(SourcesNotFound) as info:
        find_sources(bad)
    msg = str(info.value)
    assert f"{bad}: does not exist" in msg
    assert "Looked in" in msg
    partial = write_tiny_sources(tmp_path / "partial")
    (partial / SOURCE_FILES["wiki_summaries"]).unlink()
    with pytest.raises(SourcesNotFound, match="missing ovos_wiki_offline/summaries_en-us.json.gz"):
        find_sources(partial)


# ----------------------------------------------------------------------------- damaged files
def test_alias_that_normalises_to_empty_is_dropped_from_an_eval_sample(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "1", "question": "q?", "golden_answers": ["---", "Paris"]}) + "\n"
                    + json.dumps({"id": "2", "question": "r?", "golden_answers": [")"]}) + "\n")
    first, second = read_flashrag_sample(path)
    assert first["golden_answers"] == ["Paris"]  # an empty prediction can no longer match "---"
    assert second["golden_answers"] == [] and second["line"] == 2  # the build leaves it out, by name


def test_truncated_gzip_names_file_and_line(tmp_path):
    import gzip

    path = tmp_path / "s.jsonl.gz"
    rows = "".join(json.dumps({"id": str(i), "question": f"q{i}?", "golden_answers": ["a"]}) + "\n"
                   for i in range(2000))
    data = gzip.compress(rows.encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError, match=rf"{path}:\d+: the file is truncated or damaged"):
        read_flashrag_sample(path)


def test_oracle_line_without_question_names_file_and_line(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps({"answers": ["x"], "ctxs": [{"isgold": True, "title": "t", "text": "x"}]}) + "\n")
    with pytest.raises(SourceFormatError, match=rf"{path}:1: missing key\(s\) \['question'\]"):
        read_nq_oracle(path)


# ----------------------------------------------------------------------------- refused at the door (issue 25)
@pytest.mark.parametrize("question", [None, "", "   ", 42])
def test_null_empty_or_non_text_question_is_refused_with_file_and_line(tmp_path, question):
    path = tmp_path / "s.jsonl"
    path.write_text(_lines({"id": "1", "question": "ok?", "golden_answers": ["a"]},
                           {"id": "2", "question": question, "golden_answers": ["a"]}))
    with pytest.raises(SourceFormatError, match=rf"{path}:2: key 'question' is"):
        read_flashrag_sample(path)


def test_duplicate_id_is_refused_naming_both_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(_lines({"id": "7", "question": "a?", "golden_answers": ["a"]},
                           {"id": "8", "question": "b?", "golden_answers": ["b"]},
                           {"id": "7", "question": "c?", "golden_answers": ["c"]}))
    with pytest.raises(SourceFormatError, match=rf"{path}:3: id '7' already used on line 1"):
        read_flashrag_sample(path)


def test_training_answer_that_normalises_to_nothing_is_dropped_and_an_answerless_question_refused(tmp_path):
    gold = [{"isgold": True, "title": "t", "text": "Paris. A city."}]
    path = tmp_path / "o.jsonl"
    path.write_text(_lines({"question": "capital?", "answers": [".", "Paris"], "ctxs": gold}))
    assert read_nq_oracle(path)[0]["golden_answers"] == ["Paris"]  # "." would match every passage with a period
    path.write_text(_lines({"question": "capital?", "answers": ["Paris"], "ctxs": gold},
                           {"question": "symbol?", "answers": [".", "the"], "ctxs": gold}))
    with pytest.raises(SourceFormatError, match=rf"{path}:2: every answer .* normalises to nothing"):
        read_nq_oracle(path)
    topics = tmp_path / "t.tsv"
    topics.write_text("what?\t['---']\n")
    with pytest.raises(SourceFormatError, match=rf"{topics}:1: every answer"):
        read_dpr_topics(topics)


@pytest.mark.parametrize("reader,name", [(read_flashrag_sample, "s.jsonl.gz"), (read_nq_oracle, "o.jsonl.gz"),
                                         (read_dpr_topics, "t.txt.gz"), (read_r1_passages, "p.jsonl.gz")])
@pytest.mark.parametrize("content", ["zero bytes", "empty gzip"])
def test_an_empty_source_is_refused_not_built_into_an_empty_benchmark(tmp_path, reader, name, content):
    path = tmp_path / name
    path.write_bytes(b"" if content == "zero bytes" else gzip.compress(b""))
    with pytest.raises(SourceFormatError, match=rf"{path}"):
        reader(path)


def test_a_truncated_archive_is_named_before_anything_is_built(tmp_path, monkeypatch):
    """The build hashes each source first: a cut .gz is a SourceFormatError naming it, not a bare EOFError."""
    from invar_rag_lib.data import _content_digest

    path = tmp_path / "s.jsonl.gz"
    data = gzip.compress("".join(f'{{"id": "{i}"}}\n' for i in range(5000)).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceFormatError, match=rf"{path}: the file is truncated or damaged"):
        _content_digest(path)
