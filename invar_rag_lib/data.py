"""Build the benchmark of docs/method.md §4 from the raw sources and store it with `datasets`.

Output, under `data/processed/<profile>/`:
- `eval/`   DatasetDict nq | triviaqa | popqa   (id, question, golden_answers, dataset, metadata)
- `train/`  DatasetDict tqa_dev | nq_gold | wikiqa   (same schema)
- `corpus/` Dataset (id, title, text), deduplicated
- `manifest.json` counts, config, input and output sha256, build key.

`metadata` is a JSON string (the three datasets carry different fields, and Arrow wants one
schema); `load_benchmark` decodes it.
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import Profile
from .integrity import IntegrityError, check_dir, seal_dir
from .io_utils import atomic_write_json, replace_dir, sha256_content, sha256_file, sha256_text
from .metrics import AnswerIndex, normalize_answer
from .paths import SOURCE_FILES, find_sources, processed_dir, shown
from . import sources as src

# Bump when the build logic changes, so cached builds are redone.
BUILD_VERSION = "3"  # 2: WikiQA sentences lose leftover CSV quoting; 3: training aliases that normalise to nothing dropped
TRAIN_SOURCES = {
    "tqa_dev": "TriviaQA dev (DPR split of TQA train): stand-in for FreebaseQA",
    "nq_gold": "NQ-open questions with their gold passage, none in any eval sample: stand-in for MS MARCO",
    "wikiqa": "WikiQA train (real; answers are the label-1 sentences)",
}
MAX_ANSWER_PASSAGE_IDS = 50  # per training question; enough for positives, keeps rows small


class LeakageError(AssertionError):
    """An evaluation question appears in a training split."""


def question_key(question: str) -> str:
    """What counts as 'the same question' for the leakage check: SQuAD-normalised text."""
    return normalize_answer(question)


@dataclass
class Benchmark:
    eval: dict[str, Any]     # dataset name -> datasets.Dataset
    train: dict[str, Any]    # source name -> datasets.Dataset
    corpus: Any              # datasets.Dataset
    manifest: dict
    path: Path

    def eval_records(self, dataset: str) -> list[dict]:
        return [_decode(r) for r in self.eval[dataset]]

    def train_records(self, source: str) -> list[dict]:
        return [_decode(r) for r in self.train[source]]

    def passages(self) -> dict[str, dict]:
        """Corpus id -> passage row (id, title, text), in corpus order."""
        return {row["id"]: row for row in self.corpus}


def _decode(record: dict) -> dict:
    return {**record, "metadata": json.loads(record["metadata"])}


def _seeded_order(n: int, seed: int, salt: str) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:{salt}").shuffle(order)
    return order


class NearDuplicates:
    """Finds, for a training question, an evaluation-sample question with nearly the same words:
    Jaccard of the SQuAD-normalised word sets >= `threshold` (an inverted index keeps it fast)."""

    def __init__(self, questions, threshold: float):
        from .metrics import normalize_answer

        self.norm, self.threshold = normalize_answer, threshold
        self.questions = list(questions)
        self.words = [frozenset(normalize_answer(q).split()) for q in self.questions]
        self.sizes = [len(w) for w in self.words]
        self.index: dict[str, list[int]] = {}
        for i, w in enumerate(self.words):
            for t in w:
                self.index.setdefault(t, []).append(i)

    def match(self, question: str) -> tuple[str, float] | None:
        w = frozenset(self.norm(question).split())
        shared: dict[int, int] = {}
        for t in w:
            for i in self.index.get(t, ()):
                shared[i] = shared.get(i, 0) + 1
        n, sizes = len(w), self.sizes  # |w ∪ w_i| = |w| + |w_i| − |w ∩ w_i|
        best = max(((c / (n + sizes[i] - c), i) for i, c in shared.items()), default=(0.0, -1))
        return (self.questions[best[1]], round(best[0], 3)) if best[0] >= self.threshold else None


class _CorpusBuilder:
    """Collects passages, deduplicating on whitespace-normalised (title, text)."""

    def __init__(self):
        self.rows: list[dict] = []
        self.by_key: dict[str, str] = {}

    def add(self, title: str, text: str, source: str) -> str:
        title, text = " ".join(title.split()), " ".join(text.split())
        key = sha256_text(title, text)
        if key not in self.by_key:
            pid = f"{source}-{key[:12]}"
            self.by_key[key] = pid
            self.rows.append({"id": pid, "title": title, "text": text})
        return self.by_key[key]


def build_key(profile: Profile, input_shas: dict[str, str]) -> str:
    data = dict(profile.to_dict()["data"])
    if data.get("corpus") == "built":
        del data["corpus"]  # the default keeps the keys of builds made before the field existed
    payload = json.dumps({"data": data, "inputs": input_shas, "build_version": BUILD_VERSION}, sort_keys=True)
    return sha256_text(payload)


def wiki18_corpus() -> tuple[Path, str]:
    """The Arrow build of `invar-rag data fetch --corpus wiki18` and its content digest."""
    root = processed_dir("wiki18")
    try:
        from .integrity import read_sealed_json

        manifest = read_sealed_json(root / "manifest.json")
    except IntegrityError as e:
        raise FileNotFoundError(f"data.corpus = 'wiki18' needs the wiki-18 build ({e.reason} at {e.path}): run "
                                "`invar-rag data fetch --corpus wiki18` first") from None
    return root / "corpus", manifest["source"]["sha256_content"]


def prepare_benchmark(profile: Profile, sources: str | Path | None = None, force: bool = False,
                      out_dir: str | Path | None = None, log=print) -> dict:
    """Build (or reuse) the benchmark for `profile`; returns the manifest."""
    source_dir = find_sources(sources)
    out = Path(out_dir) if out_dir else processed_dir(profile.name)
    inputs = {name: _content_digest(source_dir / rel) for name, rel in SOURCE_FILES.items()}
    if profile.data.corpus == "wiki18":
        inputs["wiki18"] = wiki18_corpus()[1]
    key = build_key(profile, inputs)
    manifest_path = out / "manifest.json"
    if not force and manifest_path.exists():
        try:
            check_dir(out, "benchmark")
            old = json.loads(manifest_path.read_text())
        except (IntegrityError, json.JSONDecodeError) as e:
            log(f"benchmark {out} is damaged ({getattr(e, 'reason', e)}); rebuilding it")
            old = {}
        if old.get("build_key") == key:
            log(f"benchmark for profile {profile.name!r} is up to date: {shown(out)}")
            return old
    log(f"building benchmark for profile {profile.name!r} from {shown(source_dir)}")
    built = _build(profile, source_dir, log)
    _check_no_leakage(built)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        manifest = _save(built, tmp, profile, source_dir, inputs, key)
        seal_dir(tmp, "benchmark")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {shown(out)} ({manifest['counts']['corpus']['total']} passages)")
    return manifest


def _content_digest(path: Path) -> str:
    """The source's content digest; a truncated or damaged archive is named, not a bare EOFError."""
    import gzip
    import zlib

    try:
        return sha256_content(path)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as e:
        raise src.SourceFormatError(f"{path}: the file is truncated or damaged ({type(e).__name__}: {e}); download "
                                    "it again (`invar-rag data fetch --force`; origins in data/SOURCES.md)") from None


def _build(profile: Profile, source_dir: Path, log=print) -> dict:
    cfg = profile.data
    path = {name: source_dir / rel for name, rel in SOURCE_FILES.items()}
    oracle = src.read_nq_oracle(path["nq_oracle"])
    oracle_by_key = {question_key(r["question"]): r for r in oracle}

    # Evaluation samples: a seeded selection; the corpus pool is a superset of it.
    samples, eval_rows, pool_ids = {}, {}, set()
    all_eval_keys: dict[str, str] = {}
    for ds in ("nq", "triviaqa", "popqa"):
        records = src.read_flashrag_sample(path[f"{ds}_sample"])
        samples[ds] = records
        for r in records:
            all_eval_keys[question_key(r["question"])] = f"{ds}/{r['source_id']}"
    corpus = _CorpusBuilder()
    for ds in cfg.eval_datasets:
        records = samples[ds]
        unscorable = [r for r in records if not r["golden_answers"]]
        if unscorable:
            log(f"{ds}: left out {len(unscorable)} question(s) whose every answer normalises to the empty "
                "string (they cannot be scored): " + ", ".join(f"{path[f'{ds}_sample'].name}:{r['line']}"
                                                             for r in unscorable))
        # The seeded order is over the whole file, so leaving a question out changes no other choice.
        order = [i for i in _seeded_order(len(records), cfg.selection_seed, ds) if records[i]["golden_answers"]]
        pool = sorted(order[: cfg.corpus_pool_questions_per_dataset])
        chosen = set(order[: cfg.eval_questions_per_dataset])
        pool_ids |= {f"{ds}:{records[i]['source_id']}" for i in pool}
        eval_rows[ds] = [records[i] for i in pool if i in chosen]

    # Corpus: wiki-18 passages retrieved for the pool questions, NQ gold passages, distractors (with
    # data.corpus = "wiki18": the whole wiki-18 instead of the retrieved passages and the distractors).
    whole_wiki18 = cfg.corpus == "wiki18"
    for p in [] if whole_wiki18 else src.read_r1_passages(path["r1_passages"]):
        if pool_ids.intersection(p["retrieved_for"]):
            corpus.add(p["title"], p["text"], "wiki18")
    for ds in cfg.eval_datasets:
        for r in eval_rows[ds]:
            gold = oracle_by_key.get(question_key(r["question"])) if ds == "nq" else None
            r["gold_ids"] = [corpus.add(gold["gold_title"], gold["gold_text"], "nqgold")] if gold else []

    train: dict[str, list[dict]] = {}
    n_train = cfg.train_questions_per_source
    near = NearDuplicates([r["question"] for ds in ("nq", "triviaqa", "popqa") for r in samples[ds]],
                          cfg.near_duplicate_jaccard)
    dropped: list[dict] = []

    def first(order: list[int], rows: list[dict], source: str, n: int) -> list[int]:
        """The first `n` of the seeded `order` that are not near-duplicates of an evaluation
        question (those are recorded for the manifest). Leaving one out changes no other choice."""
        chosen = []
        for i in order:
            if len(chosen) == n:
                break
            hit = near.match(rows[i]["question"])
            if hit:
                dropped.append({"source": source, "question": rows[i]["question"], "eval_question": hit[0],
                                "jaccard": hit[1]})
            else:
                chosen.append(i)
        return chosen

    nq_gold = [r for r in oracle if question_key(r["question"]) not in all_eval_keys]
    order = first(_seeded_order(len(nq_gold), cfg.selection_seed, "nq_gold"), nq_gold, "nq_gold", n_train)
    train["nq_gold"] = []
    for i in sorted(order):
        r = nq_gold[i]
        pid = corpus.add(r["gold_title"], r["gold_text"], "nqgold")
        train["nq_gold"].append({"question": r["question"], "golden_answers": r["golden_answers"],
                                 "source_id": f"oracle-{i}", "gold_ids": [pid]})
    wikiqa = [g for g in src.read_wikiqa_train(path["wikiqa_train"])
              if g["positives"] and question_key(g["question"]) not in all_eval_keys]
    order = first(_seeded_order(len(wikiqa), cfg.selection_seed, "wikiqa"), wikiqa, "wikiqa", cfg.wikiqa_train_questions)
    train["wikiqa"] = []
    for i in sorted(order):
        g = wikiqa[i]
        ids = [corpus.add("", s, "wikiqa") for s in g["positives"]]
        train["wikiqa"].append({"question": g["question"], "golden_answers": g["positives"],
                                "source_id": f"wikiqa-{i}", "gold_ids": ids})
    if not whole_wiki18:
        summaries = src.read_wiki_summaries(path["wiki_summaries"])
        order = _seeded_order(len(summaries), cfg.selection_seed, "distractors")
        for i in sorted(order[: cfg.distractor_passages]):
            corpus.add(summaries[i]["title"], summaries[i]["text"], "wikisum")

    # Which corpus passages hold an answer (DPR has_answer on passage text only): every question's
    # answers in one pass (with wiki-18, one chunked scan of its 21M passages after the built ones).
    tqa_all = [(i, r) for i, r in enumerate(src.read_dpr_topics(path["tqa_dev"]))
               if question_key(r["question"]) not in all_eval_keys]
    asked = ([r for ds in cfg.eval_datasets for r in eval_rows[ds]] + train["nq_gold"] + train["wikiqa"]
             + [r for _, r in tqa_all])
    hits_of = _answer_passages(corpus.rows, [r["golden_answers"] for r in asked], whole_wiki18, log)
    for r, (n, ids) in zip(asked[:len(asked) - len(tqa_all)], hits_of):
        r["answer_passage_ids"] = ids
        r["n_answer_passages"] = n
    # TriviaQA dev has no gold passages: positives are corpus passages that contain an answer.
    tqa = [{**r, "source_id": f"tqa-dev-{i}", "gold_ids": [], "answer_passage_ids": ids}
           for (i, r), (n, ids) in zip(tqa_all, hits_of[len(asked) - len(tqa_all):]) if n]
    order = first(_seeded_order(len(tqa), cfg.selection_seed, "tqa_dev"), tqa, "tqa_dev", n_train)
    train["tqa_dev"] = [tqa[i] for i in sorted(order)]
    return {"eval": eval_rows, "train": train, "corpus": corpus.rows, "all_eval_keys": all_eval_keys,
            "near_duplicates": dropped}


def _answer_passages(rows: list[dict], answer_lists: list[list[str]], whole_wiki18: bool,
                     log=print) -> list[tuple[int, list[str]]]:
    """Per answer list: how many corpus passages hold an answer, and the first MAX_ANSWER_PASSAGE_IDS
    of their ids, in corpus order (the built passages, then wiki-18's when it is the corpus)."""
    out = AnswerIndex([row["text"] for row in rows]).hits(answer_lists, [row["id"] for row in rows],
                                                          MAX_ANSWER_PASSAGE_IDS)
    if whole_wiki18:
        from .wiki18 import answer_passages

        log(f"finding the answers of {len(answer_lists)} questions in wiki-18 (chunks in parallel)")
        more, _ = answer_passages(wiki18_corpus()[0], answer_lists, MAX_ANSWER_PASSAGE_IDS, log=log)
        out = [(n + m, (a + b)[:MAX_ANSWER_PASSAGE_IDS]) for (n, a), (m, b) in zip(out, more)]
    return out


def _check_no_leakage(built: dict) -> None:
    eval_keys = built["all_eval_keys"]
    leaks = [(source, r["question"], eval_keys[question_key(r["question"])])
             for source, rows in built["train"].items() for r in rows
             if question_key(r["question"]) in eval_keys]
    if leaks:
        shown = "; ".join(f"{s}: {q!r} = {e}" for s, q, e in leaks[:5])
        raise LeakageError(f"{len(leaks)} training question(s) appear in an evaluation sample: {shown}")


def _eval_row(ds: str, r: dict) -> dict:
    meta = {"source_id": r["source_id"], "answer_in_corpus": r["n_answer_passages"] > 0,
            "n_answer_passages": r["n_answer_passages"], "answer_passage_ids": r["answer_passage_ids"],
            "gold_ids": r["gold_ids"], **({"popqa": r["metadata"]} if r["metadata"] else {})}
    return {"id": f"{ds}/{r['source_id']}", "question": r["question"],
            "golden_answers": r["golden_answers"], "dataset": ds,
            "metadata": json.dumps(meta, ensure_ascii=False, sort_keys=True)}


def _train_row(source: str, r: dict) -> dict:
    meta = {"source_id": r["source_id"], "gold_ids": r["gold_ids"],
            "answer_passage_ids": r["answer_passage_ids"]}
    return {"id": f"{source}/{r['source_id']}", "question": r["question"],
            "golden_answers": r["golden_answers"], "dataset": source,
            "metadata": json.dumps(meta, ensure_ascii=False, sort_keys=True)}


def _save(built: dict, tmp: Path, profile: Profile, source_dir: Path, inputs: dict, key: str) -> dict:
    import datasets

    datasets.disable_progress_bars()
    qa = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                            "golden_answers": datasets.Sequence(datasets.Value("string")),
                            "dataset": datasets.Value("string"), "metadata": datasets.Value("string")})
    passages = datasets.Features({k: datasets.Value("string") for k in ("id", "title", "text")})

    def to_ds(rows, features):
        cols = {name: [r[name] for r in rows] for name in features}
        return datasets.Dataset.from_dict(cols, features=features)

    eval_dd = datasets.DatasetDict({ds: to_ds([_eval_row(ds, r) for r in rows], qa)
                                    for ds, rows in built["eval"].items()})
    train_dd = datasets.DatasetDict({s: to_ds([_train_row(s, r) for r in built["train"][s]], qa)
                                     for s in TRAIN_SOURCES})
    corpus = to_ds(built["corpus"], passages)
    by_source: dict[str, int] = {}
    for row in built["corpus"]:
        prefix = row["id"].split("-")[0]
        by_source[prefix] = by_source.get(prefix, 0) + 1
    n_corpus = len(built["corpus"])
    if profile.data.corpus == "wiki18":  # the built passages, then all of wiki-18 (memory-mapped, not loaded)
        whole = datasets.load_from_disk(str(wiki18_corpus()[0]))
        corpus = datasets.concatenate_datasets([corpus, whole.cast(passages)])
        by_source["wiki18"] = len(whole)
        n_corpus += len(whole)
    eval_dd.save_to_disk(str(tmp / "eval"))
    train_dd.save_to_disk(str(tmp / "train"))
    corpus.save_to_disk(str(tmp / "corpus"), max_shard_size="500MB")
    counts = {
        "eval": {ds: {"questions": len(rows),
                      "answer_in_corpus": sum(r["n_answer_passages"] > 0 for r in rows)}
                 for ds, rows in built["eval"].items()},
        "train": {s: len(rows) for s, rows in built["train"].items()},
        "corpus": {"total": n_corpus, "by_source": dict(sorted(by_source.items()))},
    }
    outputs = {str(p.relative_to(tmp)): sha256_file(p)
               for p in sorted(tmp.rglob("*.arrow"))}
    manifest = {
        "profile": profile.name, "build_key": key, "build_version": BUILD_VERSION,
        "invar_rag_version": __version__, "config": profile.to_dict()["data"],
        "counts": counts, "train_sources": TRAIN_SOURCES,
        "inputs": {name: {"path": SOURCE_FILES.get(name, "wiki18/psgs_w100.tsv.gz"), "sha256_content": sha}
                   for name, sha in inputs.items()},
        "outputs_sha256": outputs,
        "leakage_check": "passed: no training question (SQuAD-normalised) equals any of the "
                         f"{len(built['all_eval_keys'])} evaluation-sample questions; "
                         f"{len(built['near_duplicates'])} near-duplicate(s) (word-set Jaccard >= "
                         f"{profile.data.near_duplicate_jaccard}) left out of training: see near_duplicates",
        "near_duplicates": built["near_duplicates"],
    }
    atomic_write_json(tmp / "manifest.json", manifest)
    return json.loads((tmp / "manifest.json").read_text())  # the same object a reuse returns


def load_benchmark(profile_name: str, path: str | Path | None = None) -> Benchmark:
    import datasets

    root = Path(path) if path else processed_dir(profile_name)
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no benchmark at {root}: run `invar-rag data prepare --profile {profile_name}` first"
        )
    try:
        check_dir(root, "benchmark")
    except IntegrityError as e:
        raise IntegrityError(e.path, f"{e.reason}; rebuild the benchmark with "
                             f"`invar-rag data prepare --profile {profile_name} --force`") from e
    return Benchmark(
        eval=dict(datasets.load_from_disk(str(root / "eval"))),
        train=dict(datasets.load_from_disk(str(root / "train"))),
        corpus=datasets.load_from_disk(str(root / "corpus")),
        manifest=json.loads(manifest_path.read_text()),
        path=root,
    )
