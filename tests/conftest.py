"""Shared fixtures: a miniature raw-sources directory and a tiny profile.

Nothing here reads the real sources (shared/data-sources) and nothing writes under the
repository's data/ or reports/: every test gets $INVAR_RAG_HOME pointed at a temp directory.
"""
from __future__ import annotations

import os

# Offline by construction: set before anything imports huggingface_hub, transformers or datasets,
# so `make test` cannot reach a network even outside CI. Subprocesses inherit them.
OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE_VARS)

import csv  # noqa: E402
import gzip
import io
import json
from pathlib import Path

import pytest

from invar_rag_lib.config import profile_from_dict
from invar_rag_lib.paths import HOME_ENV, SOURCE_FILES, SOURCES_ENV

# ----------------------------------------------------------------------------- fixture data
# Evaluation samples, FlashRAG format. Six questions per dataset.
NQ_SAMPLE = [
    {"id": "test_0", "question": "who wrote the song hallelujah", "golden_answers": ["Leonard Cohen"]},
    {"id": "test_1", "question": "what is the capital of australia", "golden_answers": ["Canberra"]},
    {"id": "test_2", "question": "when did the berlin wall fall", "golden_answers": ["1989"]},
    {"id": "test_3", "question": "who painted the mona lisa", "golden_answers": ["Leonardo da Vinci"]},
    {"id": "test_4", "question": "how many legs does a spider have", "golden_answers": ["eight", "8"]},
    {"id": "test_5", "question": "what is the longest river in africa", "golden_answers": ["Nile"]},
]
TQA_QUOTED_QUESTION = '"Who wrote ""A cauliflower is nothing but a cabbage with a college education""?"'
TQA_UNQUOTED_QUESTION = 'Who wrote "A cauliflower is nothing but a cabbage with a college education"?'
TRIVIAQA_SAMPLE = [
    {"id": "test_6233", "question": TQA_QUOTED_QUESTION, "golden_answers": ["Mark Twain", "Samuel Clemens"]},
    {"id": "test_11", "question": "Which planet is known as the Red Planet?", "golden_answers": ["Mars"]},
    {"id": "test_12", "question": "What is the chemical symbol for gold?", "golden_answers": ["Au"]},
    {"id": "test_13", "question": "Which composer wrote the Moonlight Sonata?",
     "golden_answers": ["Beethoven", "Ludwig van Beethoven"]},
    {"id": "test_14", "question": "In which city is the Colosseum?", "golden_answers": ["Rome"]},
    {"id": "test_15", "question": "What is the largest ocean on Earth?",
     "golden_answers": ["Pacific", "Pacific Ocean"]},
]


def _popqa(i, subj, prop, obj, question, answers):
    return {"id": str(i), "question": question, "golden_answers": answers,
            "metadata": {"subj": subj, "prop": prop, "obj": obj, "s_pop": 100 + i}}


POPQA_SAMPLE = [
    _popqa(101, "George Rankin", "occupation", "politician", "What is George Rankin's occupation?",
           ["politician", "political leader"]),
    _popqa(102, "Toronto", "country", "Canada", "In what country is Toronto?", ["Canada"]),
    _popqa(103, "Hamlet", "author", "William Shakespeare", "Who is the author of Hamlet?",
           ["William Shakespeare", "Shakespeare"]),
    _popqa(104, "Zorblatt Quux", "genre", "vaporwave", "What genre is Zorblatt Quux?", ["vaporwave"]),
    _popqa(105, "Mount Kilimanjaro", "country", "Tanzania", "In what country is Mount Kilimanjaro?",
           ["Tanzania"]),
    _popqa(106, "Inception", "director", "Christopher Nolan", "Who was the director of Inception?",
           ["Christopher Nolan"]),
]

# wiki-18 passages as Search-R1 retrieved them: DPR-quoted titles, `""` for a literal quote.
HALLELUJAH_TITLE = "Hallelujah (Leonard Cohen song)"
HALLELUJAH_TEXT = ('"Hallelujah" is a song written by Canadian singer Leonard Cohen, originally '
                   'released on his album "Various Positions" (1984).')
R1_PASSAGES = [
    {"id": "r1-000000000001", "title": '"Hallelujah (Leonard Cohen song)"',
     "text": '""Hallelujah"" is a song written by Canadian singer Leonard Cohen, originally '
             'released on his album ""Various Positions"" (1984).',
     "retrieved_for": ["nq:test_0"]},
    {"id": "r1-000000000002", "title": '"Canberra"',
     "text": "Canberra is the capital city of Australia, located at the northern end of the "
             "Australian Capital Territory.",
     "retrieved_for": ["nq:test_1", "triviaqa:test_14"]},
    # The same passage as above with different whitespace and another retrieval: deduplicated.
    {"id": "r1-000000000003", "title": '"Canberra"',
     "text": "Canberra  is the capital city of Australia, located at the northern end of the\n"
             "Australian Capital Territory.",
     "retrieved_for": ["popqa:102"]},
    {"id": "r1-000000000004", "title": '"Berlin Wall"',
     "text": "The Berlin Wall fell on 9 November 1989, after weeks of civil unrest.",
     "retrieved_for": ["nq:test_2"]},
    {"id": "r1-000000000005", "title": '"Mark Twain"',
     "text": 'Samuel Langhorne Clemens, known by his pen name Mark Twain, wrote ""The Adventures '
             'of Tom Sawyer"".',
     "retrieved_for": ["triviaqa:test_6233"]},
    {"id": "r1-000000000006", "title": '"Mars"',
     "text": "Mars is often called the Red Planet because of its reddish appearance.",
     "retrieved_for": ["triviaqa:test_11"]},
    {"id": "r1-000000000007", "title": '"Moonlight Sonata"',
     "text": "The Piano Sonata No. 14 is a piano sonata by Ludwig van Beethoven.",
     "retrieved_for": ["triviaqa:test_13"]},
    {"id": "r1-000000000008", "title": '"Hamlet"',
     "text": "Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601.",
     "retrieved_for": ["popqa:103"]},
    {"id": "r1-000000000009", "title": '"George Rankin"',
     "text": "George Rankin was an Australian soldier and politician.",
     "retrieved_for": ["popqa:101"]},
    # The answer (Christopher Nolan) is only in the title: DPR has_answer reads the text only.
    {"id": "r1-000000000011", "title": '"Christopher Nolan"',
     "text": "He directed the science fiction film Inception, released in 2010.",
     "retrieved_for": ["popqa:106"]},
    # Retrieved only for a question that is not in any sample: never enters the corpus.
    {"id": "r1-000000000010", "title": '"Zebra"',
     "text": "Zebras are African equines with distinctive black-and-white striped coats.",
     "retrieved_for": ["nq:test_999"]},
]
R1_EXCLUDED_TEXT = "Zebras are African equines"

# lost-in-the-middle NQ oracle. The first record is NQ eval question test_0 (modulo case and
# punctuation): it must never become a training question.
ORACLE_DUPLICATE_QUESTION = "Who wrote the song Hallelujah?"
NQ_ORACLE = [
    {"question": ORACLE_DUPLICATE_QUESTION, "answers": ["Leonard Cohen"],
     "ctxs": [{"title": HALLELUJAH_TITLE, "text": HALLELUJAH_TEXT, "hasanswer": True, "isgold": True}]},
    {"question": "who sang bohemian rhapsody", "answers": ["Queen"],
     "ctxs": [{"title": "Bohemian Rhapsody",
               "text": 'Bohemian Rhapsody is a song by the British rock band Queen, written by '
                       'Freddie Mercury.', "hasanswer": True, "isgold": True}]},
    {"question": "where is the eiffel tower located", "answers": ["Paris"],
     "ctxs": [{"title": "Distractor", "text": "Not the gold one.", "hasanswer": False, "isgold": False},
              {"title": "Eiffel Tower",
               "text": "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in "
                       "Paris, France.", "hasanswer": True, "isgold": True}]},
    {"question": "who discovered penicillin", "answers": ["Alexander Fleming"],
     "ctxs": [{"title": "Penicillin",
               "text": "Penicillin was discovered in 1928 by Scottish scientist Alexander Fleming.",
               "hasanswer": True, "isgold": True}]},
]
NQ_GOLD_TRAIN_QUESTIONS = {"who sang bohemian rhapsody", "where is the eiffel tower located",
                           "who discovered penicillin"}

# DPR topics for TQA dev: TSV, CSV-quoted where a field holds a quote, python-list answers.
TQA_DEV_ROWS = [
    ("Which band recorded Bohemian Rhapsody?", "['Queen']"),                   # in corpus (nq gold)
    ('Who wrote "Hallelujah" first?', "['Leonard Cohen', 'Cohen']"),          # in corpus, quoted
    ("What is the capital of Peru?", "['Lima']"),                              # not in corpus
    ('What is the boiling point of water in "Fahrenheit"?', "['212', \"212 degrees\"]"),  # not
    ("Which planet is known as the red planet", "['Mars']"),                  # = eval question
    ("Which Italian city is famous for canals?", "['Venice']"),                # in corpus (wikisum)
]
TQA_DEV_TRAIN_QUESTIONS = {"Which band recorded Bohemian Rhapsody?", 'Who wrote "Hallelujah" first?',
                           "Which Italian city is famous for canals?"}

# WikiQA train, reduced columns, with one row that kept the 7 original columns.
WIKIQA_HEADER = ["QuestionID", "Question", "SentenceID", "Sentence", "Label"]
WIKIQA_ROWS = [
    ["Q1", "how are glacier caves formed?", "S1",
     "A partly submerged glacier cave on Perito Moreno Glacier .", "0"],
    ["Q2", "how are glacier caves formed?", "S2",
     "A glacier cave is a cave formed within the ice of a glacier .", "1"],
    ["Q3", "what is the speed of sound", "S3", "Sound is a vibration .", "0"],  # no positive
    ["Q4", "what does barefoot and pregnant mean", "D562", "Barefoot and pregnant", "D562-8",
     "Barefoot and pregnant is a phrase about keeping women at home .", "1"],  # 7 columns
    ["Q5", "how many legs does a spider have?", "S5", "Spiders have eight legs .", "1"],  # = eval
]
WIKIQA_TRAIN_QUESTIONS = {"how are glacier caves formed?", "what does barefoot and pregnant mean"}

WIKI_SUMMARIES = {
    "Venice": {"title": "Venice", "extract": "Venice is a city in northeastern Italy built on "
               "islands and known for its canals.", "description": "City in Italy", "topic": "Geography"},
    "Pacific Ocean": {"title": "Pacific Ocean", "extract": "The Pacific Ocean is the largest and "
                      "deepest of Earth's five oceanic divisions.", "description": "Ocean",
                      "topic": "Geography"},
    "Gold": {"title": "Gold", "extract": "Gold is a chemical element with the symbol Au and atomic "
             "number 79.", "description": "Chemical element", "topic": "Science"},
    "Nothing": {"title": "Nothing", "extract": "", "description": "no extract: skipped", "topic": "x"},
    "Photosynthesis": {"title": "Photosynthesis", "extract": "Photosynthesis is the process plants "
                       "use to convert light into chemical energy.", "description": "", "topic": "Science"},
}

# What a build with the `tiny` profile (pool = all six questions, no caps) must contain.
EXPECTED = {
    "eval_questions": 4,
    "train": {"tqa_dev": len(TQA_DEV_TRAIN_QUESTIONS), "nq_gold": len(NQ_GOLD_TRAIN_QUESTIONS),
              "wikiqa": len(WIKIQA_TRAIN_QUESTIONS)},
    # wiki18: 10 passages in the pool, one a whitespace duplicate -> 9; the oracle's Hallelujah
    # passage equals the wiki18 one (no new row); 3 NQ-gold training passages; 2 WikiQA
    # positives; 4 summaries with an extract.
    "corpus_by_source": {"nqgold": 3, "wiki18": 9, "wikiqa": 2, "wikisum": 4},
}


# ----------------------------------------------------------------------------- writers
def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


def jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def tsv_csv_quoted(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    return buf.getvalue()


def write_tiny_sources(root: Path) -> Path:
    files = {
        "nq_sample": jsonl(NQ_SAMPLE),
        "triviaqa_sample": jsonl(TRIVIAQA_SAMPLE),
        "popqa_sample": jsonl(POPQA_SAMPLE),
        "r1_passages": jsonl(R1_PASSAGES),
        "nq_oracle": jsonl(NQ_ORACLE),
        "tqa_dev": tsv_csv_quoted(TQA_DEV_ROWS),
        "wikiqa_train": "\n".join("\t".join(r) for r in [WIKIQA_HEADER, *WIKIQA_ROWS]) + "\n",
        "wiki_summaries": json.dumps(WIKI_SUMMARIES, ensure_ascii=False, indent=1),
    }
    assert set(files) == set(SOURCE_FILES)
    for name, rel in SOURCE_FILES.items():
        _write(root / rel, files[name])
    return root


def tiny_profile_dict(reports_dir: Path) -> dict:
    return {"name": "tiny", "seed": 0, "reports_dir": str(reports_dir),
            "data": {"eval_datasets": ["nq", "triviaqa", "popqa"], "eval_questions_per_dataset": 4,
                     "corpus_pool_questions_per_dataset": 6, "distractor_passages": 100,
                     "train_questions_per_source": 100, "selection_seed": 13},
            "retrieval": {"ks": [1, 2, 3], "bootstrap_resamples": 50}}


def full_mode_profile(tmp_path: Path, retriever: dict | None = None, stage1: dict | None = None):
    """The tiny profile with the tiny random Llama retrieving over the whole corpus (the gpu profile's
    `retriever.mode = "full"`), LoRA on every layer, passages read in windows of 12 tokens."""
    from invar_rag_lib.config import profile_from_dict

    values = tiny_profile_dict(tmp_path / "reports")
    values["retriever"] = {"backbone": "tiny-random", "max_len": 24, "query_max_len": 16, "lora_layers": 0,
                           "mode": "full", **(retriever or {})}
    values["stage1"] = {"windows": [12], **(stage1 or {})}
    return profile_from_dict(values)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test runs with $INVAR_RAG_HOME in a temp dir and no $INVAR_RAG_SOURCES, so nothing
    derived from repo_root() can touch the checkout's data/ or reports/."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv(HOME_ENV, str(home))
    monkeypatch.delenv(SOURCES_ENV, raising=False)
    return home


@pytest.fixture
def tiny_sources(tmp_path) -> Path:
    return write_tiny_sources(tmp_path / "sources")


@pytest.fixture
def tiny_expected() -> dict:
    return EXPECTED


@pytest.fixture
def tiny_profile(tmp_path):
    return profile_from_dict(tiny_profile_dict(tmp_path / "reports"))


@pytest.fixture(scope="module")
def built_tiny(tmp_path_factory):
    """One benchmark build shared by the read-only tests of a module: (manifest, Benchmark)."""
    from invar_rag_lib.data import load_benchmark, prepare_benchmark

    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(root / "home"))
        mp.delenv(SOURCES_ENV, raising=False)
        profile = profile_from_dict(tiny_profile_dict(root / "reports"))
        sources = write_tiny_sources(root / "sources")
        manifest = prepare_benchmark(profile, sources=sources, out_dir=root / "out", log=lambda *_: None)
        bench = load_benchmark("tiny", root / "out")
    return manifest, bench


@pytest.fixture(scope="session")
def minilm():
    from invar_rag_lib.retrieval.dense import MiniLMEncoder

    return MiniLMEncoder(max_seq_length=256, batch_size=32)
