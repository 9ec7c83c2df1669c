"""Readers for the raw public files. Each bad record gets an error naming the file and line.

Parsing pitfalls handled here (see shared/data-sources/SOURCES.md):
- DPR topic files are TSV with CSV quoting: parsed with csv.reader, answers with ast.literal_eval.
- Some FlashRAG TriviaQA questions still carry CSV quoting (`"Who wrote ""X""?"`): undone.
- DPR passage titles are wrapped in quotes and `""` stands for a literal quote in the text.
- The reduced WikiQA train file has 13 rows that still carry the 7 original columns.
"""
from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Iterator


class SourceFormatError(ValueError):
    """A record in a raw file that cannot be used; the message names file and line."""


class _Lines:
    """A text file's lines; a truncated or garbled file (gzip or UTF-8) raises `SourceFormatError`
    naming the file and the line where reading stopped, instead of a bare EOFError."""

    def __init__(self, path: Path):
        self.path, self.lineno = Path(path), 0
        if self.path.suffix == ".gz":
            self.f = io.TextIOWrapper(gzip.open(self.path, "rb"), encoding="utf-8", newline="")
        else:
            self.f = open(self.path, encoding="utf-8", newline="")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __iter__(self):
        while True:
            try:
                line = self.f.readline()
            except (EOFError, OSError, UnicodeDecodeError, zlib.error) as exc:
                raise SourceFormatError(
                    f"{self.path}:{self.lineno + 1}: the file is truncated or damaged ({type(exc).__name__}: "
                    f"{exc}); download it again (`invar-rag data fetch --force`; origins in data/SOURCES.md)") from None
            if not line:
                return
            self.lineno += 1
            yield line


def _open_text(path: Path) -> _Lines:
    return _Lines(path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record); a malformed line raises with file and line number."""
    with _open_text(Path(path)) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceFormatError(
                    f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                    "fix or remove that line"
                ) from None
            if not isinstance(record, dict):
                raise SourceFormatError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def undo_csv_quoting(text: str) -> str:
    """`"Who wrote ""X""?"` -> `Who wrote "X"?` (a TSV export left some questions quoted).

    Only a fully wrapped string whose inner quotes all come in doubled pairs is unquoted, so a
    question that merely starts and ends with a quotation is left alone.
    """
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"')
    return text


def _check_answers(answers, path, lineno, key, scorable: bool = False) -> list[str]:
    """The usable gold answers; a question with none is an error. An alias that SQuAD-normalises to ""
    (such as "---", "." or ")") is dropped too: an empty answer would match every passage and every
    prediction. An evaluation sample (`scorable`) left with no alias gets an empty list, and the
    benchmark build leaves it out and names it (`data._build`); a training question left with none
    is refused."""
    from .metrics import normalize_answer

    if isinstance(answers, str):
        answers = [answers]
    good = [a for a in answers if isinstance(a, str) and a.strip()] if isinstance(answers, list) else []
    if not good:
        raise SourceFormatError(
            f"{path}:{lineno}: question without answers (key {key!r} is {answers!r}); "
            "every evaluation and training question needs at least one gold answer"
        )
    usable = [a for a in good if normalize_answer(a)]
    if not usable and not scorable:
        raise SourceFormatError(
            f"{path}:{lineno}: every answer ({good!r}) normalises to nothing (punctuation or articles only), "
            "so it would match every passage; fix or remove that line")
    return usable


def _question(value, path, lineno, key: str = "question") -> str:
    """A question as text; null, a non-string or a blank question is refused."""
    if not isinstance(value, str) or not value.strip():
        raise SourceFormatError(f"{path}:{lineno}: key {key!r} is {value!r}, not a question; fix or remove that line")
    return value.strip()


def _nonempty(records: list, path) -> list:
    if not records:
        raise SourceFormatError(f"{path}: no records (an empty or truncated file); download it again "
                                "(`invar-rag data fetch --force`; origins in data/SOURCES.md)")
    return records


def _require(record: dict, keys, path, lineno) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise SourceFormatError(f"{path}:{lineno}: missing key(s) {missing} (the record has {sorted(record)}); "
                                "fix or remove that line")


def read_flashrag_sample(path: str | Path) -> list[dict]:
    """FlashRAG-format QA records: {id, question, golden_answers[, metadata]}."""
    out, seen = [], {}
    for lineno, r in iter_jsonl(path):
        _require(r, ("id", "question", "golden_answers"), path, lineno)
        if str(r["id"]) in seen:
            raise SourceFormatError(f"{path}:{lineno}: id {r['id']!r} already used on line {seen[str(r['id'])]}; "
                                    "every question needs its own id")
        seen[str(r["id"])] = lineno
        out.append({
            "source_id": str(r["id"]),
            "question": undo_csv_quoting(_question(r["question"], path, lineno)),
            "golden_answers": _check_answers(r["golden_answers"], path, lineno, "golden_answers", scorable=True),
            "metadata": r.get("metadata") or {}, "line": lineno,
        })
    return _nonempty(out, path)


def read_dpr_topics(path: str | Path) -> list[dict]:
    """DPR topic TSV: question \\t python-list-of-answers, CSV-quoted where needed."""
    out = []
    with _open_text(Path(path)) as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not row:
                continue
            if len(row) != 2:
                raise SourceFormatError(f"{path}:{lineno}: expected 2 tab-separated fields, got {len(row)}")
            try:
                answers = ast.literal_eval(row[1])
            except (ValueError, SyntaxError):
                raise SourceFormatError(f"{path}:{lineno}: answers field is not a Python list: {row[1][:80]!r}") from None
            out.append({"question": undo_csv_quoting(_question(row[0], path, lineno)),
                        "golden_answers": _check_answers(answers, path, lineno, "answers")})
    return _nonempty(out, path)


def read_nq_oracle(path: str | Path) -> list[dict]:
    """lost-in-the-middle NQ oracle: each question with its one gold passage."""
    out = []
    for lineno, r in iter_jsonl(path):
        _require(r, ("question", "answers", "ctxs"), path, lineno)
        ctxs = r.get("ctxs") or []
        gold = [c for c in ctxs if c.get("isgold")]
        if not gold:
            raise SourceFormatError(f"{path}:{lineno}: no gold passage in 'ctxs'")
        out.append({
            "question": _question(r["question"], path, lineno),
            "golden_answers": _check_answers(r.get("answers"), path, lineno, "answers"),
            "gold_title": gold[0]["title"], "gold_text": gold[0]["text"],
        })
    return _nonempty(out, path)


def clean_dpr_title(title: str) -> str:
    if len(title) >= 2 and title[0] == '"' and title[-1] == '"':
        title = title[1:-1]
    return title.replace('""', '"')


def read_r1_passages(path: str | Path) -> list[dict]:
    """wiki-18 (DPR psgs_w100) passages retrieved by Search-R1 for the sample questions."""
    out = []
    for lineno, r in iter_jsonl(path):
        if not r.get("text") or "retrieved_for" not in r:
            raise SourceFormatError(f"{path}:{lineno}: passage without 'text' or 'retrieved_for'")
        out.append({"title": clean_dpr_title(r.get("title", "")),
                    "text": r["text"].replace('""', '"'),
                    "retrieved_for": list(r["retrieved_for"])})
    return _nonempty(out, path)


def read_wikiqa_train(path: str | Path) -> list[dict]:
    """WikiQA train (reduced columns). Grouped by question text: positives are label-1 sentences."""
    groups: dict[str, dict] = {}
    with _open_text(Path(path)) as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or header[:2] != ["QuestionID", "Question"]:
            raise SourceFormatError(f"{path}:1: expected a header starting QuestionID, Question; got {header}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) == 5:
                question, sentence, label = row[1], row[3], row[4]
            elif len(row) == 7:  # the rows the reducing repo left with all original columns
                question, sentence, label = row[1], row[5], row[6]
            else:
                raise SourceFormatError(f"{path}:{lineno}: expected 5 or 7 columns, got {len(row)}")
            if label not in ("0", "1"):
                raise SourceFormatError(f"{path}:{lineno}: label must be 0 or 1, got {label!r}")
            question = _question(question, path, lineno, "Question")
            g = groups.setdefault(question, {"question": question.strip(), "positives": [], "negatives": []})
            (g["positives"] if label == "1" else g["negatives"]).append(undo_csv_quoting(sentence.strip()))
    return _nonempty(list(groups.values()), path)


def read_wiki_summaries(path: str | Path) -> list[dict]:
    with _open_text(Path(path)) as f:
        try:
            data = json.loads("".join(f))
        except json.JSONDecodeError as exc:
            raise SourceFormatError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise SourceFormatError(f"{path}:1: expected a JSON object of title -> summary, got {type(data).__name__}")
    return _nonempty([{"title": v.get("title", k), "text": v["extract"]} for k, v in data.items()
                      if isinstance(v, dict) and v.get("extract")], path)
