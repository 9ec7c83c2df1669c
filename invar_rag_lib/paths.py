"""Where things live: the repository root, built data, caches, and the raw sources."""
from __future__ import annotations

import os
from pathlib import Path

SOURCES_ENV = "INVAR_RAG_SOURCES"
HOME_ENV = "INVAR_RAG_HOME"

# Files the benchmark is built from, relative to the sources directory (see its SOURCES.md).
SOURCE_FILES = {
    "nq_sample": "reason_over_search/data_subsample/nq_test.jsonl.gz",
    "triviaqa_sample": "reason_over_search/data_subsample/triviaqa_test.jsonl.gz",
    "popqa_sample": "reason_over_search/data_subsample/popqa_test.jsonl.gz",
    "r1_passages": "reason_over_search/search_r1_passages.derived.jsonl.gz",
    "nq_oracle": "lost_in_the_middle/nq-open-oracle.jsonl.gz",
    "tqa_dev": "anserini_topics/topics.dpr.trivia.dev.txt.gz",
    "wikiqa_train": "wikiqa/WikiQA-train.reduced-columns.tsv.gz",
    "wiki_summaries": "ovos_wiki_offline/summaries_en-us.json.gz",
}


class SourcesNotFound(FileNotFoundError):
    pass


def repo_root() -> Path:
    """The checkout this package runs from (override with $INVAR_RAG_HOME)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).resolve()
    return Path(__file__).resolve().parent.parent


def shown(path: str | Path, levels_up: int = 1) -> str:
    """A path as a message shows it: relative to the checkout (`data/...`, and with the default
    `levels_up = 1` also `../shared/...`), so executed notebooks carry no machine-specific absolute
    path; absolute when it lies more than `levels_up` levels outside the checkout."""
    rel = os.path.relpath(Path(path).resolve(), repo_root())
    ups = len([part for part in Path(rel).parts if part == ".."])
    return str(path) if ups > levels_up else rel


def data_dir() -> Path:
    return repo_root() / "data"


def processed_dir(profile: str) -> Path:
    return data_dir() / "processed" / profile


def cache_dir() -> Path:
    return data_dir() / "cache"


def runs_dir(profile: str) -> Path:
    return data_dir() / "runs" / profile


def reports_dir(profile_reports_dir: str) -> Path:
    p = Path(profile_reports_dir)
    return p if p.is_absolute() else repo_root() / p


def candidate_source_dirs(explicit: str | Path | None = None) -> list[Path]:
    """The lookup order: --sources, $INVAR_RAG_SOURCES, data/sources/, ../shared/data-sources."""
    dirs = []
    if explicit:
        dirs.append(Path(explicit))
    if os.environ.get(SOURCES_ENV):
        dirs.append(Path(os.environ[SOURCES_ENV]))
    root = repo_root()
    dirs += [root / "data" / "sources", root.parent / "shared" / "data-sources"]
    return dirs


def find_sources(explicit: str | Path | None = None) -> Path:
    """The first candidate directory that holds every source file; a clear error otherwise."""
    looked = []
    for d in candidate_source_dirs(explicit):
        missing = [rel for rel in SOURCE_FILES.values() if not (d / rel).is_file()]
        if not missing:
            return d.resolve()
        looked.append(f"  {d}: " + ("does not exist" if not d.exists() else f"missing {missing[0]}"
                                      + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")))
        if explicit and d == Path(explicit):
            break  # an explicit --sources that is wrong must not silently fall through
        if not explicit and os.environ.get(SOURCES_ENV) and d == Path(os.environ[SOURCES_ENV]):
            break  # nor may a wrong $INVAR_RAG_SOURCES
    raise SourcesNotFound(
        "could not find the raw data sources. Looked in:\n" + "\n".join(looked)
        + f"\nRun `invar-rag data fetch` (downloads them into data/sources/), pass --sources DIR, "
        f"set ${SOURCES_ENV}, or place the files under data/sources/ (layout and origins: data/SOURCES.md in this repository)."
    )
