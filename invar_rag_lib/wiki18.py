"""DPR's wiki-18 corpus (`psgs_w100.tsv.gz`: 21,015,324 passages of 100 words from the December 2018
English Wikipedia), fetched from its public origin and streamed into an Arrow dataset, for the
`paper` profile (`invar-rag data fetch --corpus wiki18`).

Nothing here holds the corpus in memory: the download is written to disk in 1 MiB blocks while its
*uncompressed* content is hashed and its lines counted; the Arrow build reads it line by line
(`datasets.Dataset.from_generator` writes batches as they come); the answer coverage of the
evaluation questions is counted over the Arrow build in chunks, in `workers` processes.

Verification. DPR publishes no digest for this file, so the checks are: the header and the exact
row count (21,015,324), every row parsing to (id, text, title) with ids 1..N in order, the share of
the Search-R1 passages (a pinned, digest-checked sample of wiki-18, `fetch.R1_PASSAGES_SHA256`)
found verbatim in it, and the content SHA-256, recorded by the first fetch and checked by every
later build (pin it in `WIKI18_SHA256` once known, and the first fetch is checked too).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Iterator, Sequence

from .integrity import IntegrityError
from .io_utils import atomic_write_json, sha256_content
from .paths import shown

URL_PATH = "dpr/wikipedia_split/psgs_w100.tsv.gz"
ORIGIN = "https://dl.fbaipublicfiles.com"
WIKI18_ROWS = 21_015_324
WIKI18_SHA256: str | None = None  # of the uncompressed content; DPR publishes none (see above)
HEADER = "id\ttext\ttitle"
RECORD = "psgs_w100.record.json"


class Wiki18Error(RuntimeError):
    pass


def _stream(url: str, timeout: float = 60.0):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - the fixed origin or a user's mirror
    except (urllib.error.URLError, OSError) as exc:
        raise Wiki18Error(f"could not download {url}: {exc}. Check the network (or --mirror)") from exc


def fetch_wiki18(dest: str | Path, mirror: str | None = None, rows: int | None = None,
                 sha256: str | None = None, force: bool = False, log=print) -> Path:
    """Download `psgs_w100.tsv.gz` into `dest/wiki18/`, verifying header, row count and (if pinned)
    the content digest while it streams; a failed check leaves nothing behind. A file already there
    is kept after its content is re-hashed against the digest its fetch recorded. `rows` and
    `sha256` default to DPR's."""
    rows, sha256 = rows or WIKI18_ROWS, sha256 or WIKI18_SHA256
    out = Path(dest) / "wiki18" / "psgs_w100.tsv.gz"
    record_path = out.with_name(RECORD)
    if not force and out.exists() and record_path.exists():
        rec = json.loads(record_path.read_text())
        if rec.get("bytes") == out.stat().st_size and (sha256 is None or rec.get("sha256_content") == sha256):
            check_recorded(out)  # kept only if its content still has the digest recorded when fetched
            log(f"{shown(out)}: present and unchanged ({rec['rows']:,} passages, content sha256 "
                f"{rec['sha256_content'][:16]}…)")
            return out
    url = f"{(mirror or ORIGIN).rstrip('/')}/{URL_PATH}"
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.part")
    h, lines, size, head = hashlib.sha256(), 0, 0, b""
    unzip = zlib.decompressobj(wbits=31)
    log(f"downloading {url} (about 4.4 GB; verified while it streams)")
    try:
        with _stream(url) as response, open(part, "wb") as f:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
                size += len(block)
                data = unzip.decompress(block)
                if len(head) < 64:
                    head += data[:64]
                h.update(data)
                lines += data.count(b"\n")
                if size % (256 << 20) < len(block):
                    log(f"  {size / 1e9:.1f} GB, {lines:,} lines")
            tail = unzip.flush()
            h.update(tail)
            lines += tail.count(b"\n")
        if not unzip.eof:
            raise Wiki18Error(f"{url}: the gzip stream ends early (a cut download); nothing was kept")
        first = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
        if first != HEADER:
            raise Wiki18Error(f"{url}: first line {first[:60]!r} is not DPR's header {HEADER!r}")
        if lines - 1 != rows:
            raise Wiki18Error(f"{url}: {lines - 1:,} passages, DPR's psgs_w100 has {rows:,}; nothing was kept")
        digest = h.hexdigest()
        if sha256 and digest != sha256:
            raise Wiki18Error(f"{url}: content SHA-256 {digest[:16]}… is not the pinned {sha256[:16]}…")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, out)
    atomic_write_json(record_path, {"url": url, "bytes": size, "rows": rows, "sha256_content": digest,
                                    "pinned": bool(sha256)})
    log(f"{shown(out)}: {rows:,} passages, content sha256 {digest} (recorded; later builds check it)")
    return out


def check_recorded(path: str | Path) -> dict:
    """The fetch record of `path`, after re-hashing the content against it (the build's check)."""
    path = Path(path)
    record_path = path.with_name(RECORD)
    if not record_path.exists():
        raise Wiki18Error(f"{path}: no {RECORD} beside it; fetch it with `invar-rag data fetch --corpus wiki18`")
    rec = json.loads(record_path.read_text())
    digest = sha256_content(path)
    if digest != rec["sha256_content"]:
        raise Wiki18Error(f"{path}: content changed since it was fetched (sha256 {digest[:16]}…, recorded "
                          f"{rec['sha256_content'][:16]}…); fetch it again with --force")
    return rec


def iter_passages(path: str | Path) -> Iterator[dict]:
    """(id, title, text) of each row, in order; a malformed row is an error naming `path:line`."""
    from .sources import _open_text, clean_dpr_title

    path = Path(path)
    with _open_text(path) as lines:  # a truncated archive is named with the line where it stops
        reader = csv.reader(lines, delimiter="\t")
        header = next(reader, None)
        if header != HEADER.split("\t"):
            raise Wiki18Error(f"{path}:1: header {header!r} is not DPR's {HEADER!r}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 3 or not row[0].isdigit() or int(row[0]) != lineno - 1:
                raise Wiki18Error(f"{path}:{lineno}: expected `id<TAB>text<TAB>title` with id {lineno - 1}, "
                                  f"got {row[:1]} and {len(row)} fields; fetch it again with --force")
            yield {"id": f"wiki18:{row[0]}", "title": clean_dpr_title(row[2]), "text": row[1]}


def build_corpus(path: str | Path, out: str | Path, log=print) -> int:
    """The Arrow dataset (id, title, text) of the whole file at `out`, written as it streams."""
    import tempfile

    import datasets

    out = Path(out)
    features = datasets.Features({k: datasets.Value("string") for k in ("id", "title", "text")})
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        ds = datasets.Dataset.from_generator(iter_passages, gen_kwargs={"path": str(path)}, features=features,
                                             cache_dir=tmp, writer_batch_size=10_000)
        staging = Path(tmp) / "corpus"
        ds.save_to_disk(str(staging), max_shard_size="500MB")
        n = len(ds)
        del ds
        if out.exists():
            import shutil

            shutil.rmtree(out)
        os.replace(staging, out)
    log(f"{shown(out)}: {n:,} passages (Arrow)")
    return n


def _scan_chunk(args) -> tuple[list[tuple[int, list[str]]], int]:
    """For one chunk of the corpus: (passages with an answer, their first `max_ids` ids) per answer
    list, and how many of the `r1` (title, text) pairs appear in it."""
    corpus_dir, lo, hi, answer_lists, max_ids, r1 = args
    import datasets

    from .metrics import AnswerIndex

    part = datasets.load_from_disk(corpus_dir).select(range(lo, hi))
    texts, titles, ids = part["text"], part["title"], part["id"]
    found = sum((t, x) in r1 for t, x in zip(titles, texts)) if r1 else 0
    return AnswerIndex(texts).hits(answer_lists, ids, max_ids), found


def answer_passages(corpus_dir: str | Path, answer_lists: Sequence[Sequence[str]], max_ids: int = 50,
                    r1_passages: Sequence[dict] = (), chunk: int = 200_000, workers: int | None = None,
                    log=print) -> tuple[list[tuple[int, list[str]]], int]:
    """DPR's has_answer of each answer list over the whole Arrow corpus at `corpus_dir`, chunk by chunk
    in `workers` processes (the corpus is never in memory whole): per list, the number of passages
    holding an answer and the first `max_ids` of their ids, in corpus order; and how many of
    `r1_passages` appear verbatim."""
    import datasets
    from multiprocessing import get_context

    n = len(datasets.load_from_disk(str(corpus_dir)))
    r1 = {(p["title"], p["text"]) for p in r1_passages}
    lists = [list(a) for a in answer_lists]
    jobs = [(str(corpus_dir), lo, min(n, lo + chunk), lists, max_ids, r1) for lo in range(0, n, chunk)]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    totals: list[tuple[int, list[str]]] = [(0, []) for _ in lists]
    found = 0

    def add(result):
        nonlocal totals, found
        part, f = result
        totals = [(c + pc, (ids + pids)[:max_ids]) for (c, ids), (pc, pids) in zip(totals, part)]
        found += f

    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            for i, result in enumerate(pool.imap(_scan_chunk, jobs), start=1):  # in order: ids stay in corpus order
                add(result)
                if i % 10 == 0:
                    log(f"  answer scan: {i} of {len(jobs)} chunks of {chunk:,} passages")
    else:
        for job in jobs:
            add(_scan_chunk(job))
    return totals, found


def coverage(corpus_dir: str | Path, questions: Sequence[dict], r1_passages: Sequence[dict] = (),
             chunk: int = 200_000, workers: int | None = None, log=print) -> dict:
    """How many wiki-18 passages hold an answer of each question (DPR's has_answer, as the benchmark
    build records for its own corpus), and how many of the Search-R1 passages appear verbatim."""
    import datasets

    n = len(datasets.load_from_disk(str(corpus_dir)))
    hits, found = answer_passages(corpus_dir, [q["answers"] for q in questions], 0, r1_passages, chunk,
                                  workers, log)
    counts = [c for c, _ in hits]
    per_dataset: dict[str, dict] = {}
    for q, c in zip(questions, counts):
        d = per_dataset.setdefault(q["dataset"], {"questions": 0, "answer_in_corpus": 0})
        d["questions"] += 1
        d["answer_in_corpus"] += c > 0
    return {"passages": n, "by_dataset": per_dataset,
            "n_answer_passages": {q["id"]: c for q, c in zip(questions, counts)},
            "search_r1_passages_found": {"found": found, "of": len(r1_passages)}}


def _previous_build(root: Path) -> dict:
    """The manifest of an earlier, complete Arrow build under `root` ({} when there is none)."""
    from .integrity import read_sealed_json

    try:
        manifest = read_sealed_json(root / "manifest.json")
    except IntegrityError:
        return {}
    return manifest if (root / "corpus" / "dataset_info.json").exists() else {}


def prepare_wiki18(dest: str | Path | None = None, mirror: str | None = None, profile_name: str = "paper",
                   force: bool = False, rows: int | None = None, sha256: str | None = None,
                   workers: int | None = None, bench=None, log=print) -> dict:
    """`invar-rag data fetch --corpus wiki18`: fetch (or check) the file, build
    `data/processed/wiki18/corpus/` and write `data/processed/wiki18/manifest.json` with the fetch
    record and the answer coverage of `profile_name`'s evaluation questions (when that benchmark is
    built; else it says how to add it)."""
    from .integrity import write_sealed_json
    from .paths import data_dir, find_sources, processed_dir

    dest = Path(dest) if dest else data_dir() / "sources"
    path = fetch_wiki18(dest, mirror, rows=rows, sha256=sha256, force=force, log=log)  # verified either way
    record = json.loads(path.with_name(RECORD).read_text())
    root = processed_dir("wiki18")
    root.mkdir(parents=True, exist_ok=True)
    previous = _previous_build(root)
    if not force and previous.get("source", {}).get("sha256_content") == record["sha256_content"]:
        n = previous["passages"]
        log(f"{shown(root / 'corpus')}: the Arrow build of this content is there ({n:,} passages); kept")
    else:
        n = build_corpus(path, root / "corpus", log=log)
    manifest: dict = {"source": record, "passages": n}
    if bench is None:
        try:
            from .data import load_benchmark

            bench = load_benchmark(profile_name)
        except Exception as e:  # noqa: BLE001 - coverage is optional: say why it is missing
            log(f"answer coverage skipped: no built benchmark for profile {profile_name!r} ({str(e)[:120]}); run "
                f"`invar-rag data prepare --profile {profile_name}`, then this command again")
    if bench is not None:
        questions = [{"id": r["id"], "dataset": ds, "answers": r["golden_answers"]}
                     for ds in bench.eval for r in bench.eval_records(ds)]
        try:
            from .sources import read_r1_passages
            from .paths import SOURCE_FILES

            r1 = read_r1_passages(find_sources() / SOURCE_FILES["r1_passages"])
        except Exception:  # noqa: BLE001 - the cross-check is optional
            r1 = []
        cov = coverage(root / "corpus", questions, r1, workers=workers, log=log)
        manifest["coverage"] = {"profile": profile_name, **cov}
        for ds, d in cov["by_dataset"].items():
            log(f"{ds}: {d['answer_in_corpus']} of {d['questions']} evaluation questions have an answer in wiki-18")
        found = cov["search_r1_passages_found"]
        if found["of"]:
            log(f"Search-R1 passages found verbatim: {found['found']} of {found['of']}")
    write_sealed_json(root / "manifest.json", manifest)
    return manifest
