"""Profiles: frozen dataclasses loaded from one TOML file per profile.

Nothing that changes a result is implicit: every choice lives in a field here and in
`invar_rag_lib/profiles/<name>.toml`. Unknown keys are rejected with the list of valid ones.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

PROFILE_DIR = Path(__file__).parent / "profiles"


class ConfigError(ValueError):
    """A profile or parameter that does not exist or does not fit."""


@dataclass(frozen=True)
class DataConfig:
    eval_datasets: tuple[str, ...] = ("nq", "triviaqa", "popqa")
    eval_questions_per_dataset: int = 100  # drawn (seeded) from each 1,000-question sample
    # Passages retrieved (by Search-R1's E5) for this many sample questions per dataset enter the
    # corpus; a superset of the eval selection, so the corpus also holds other questions' passages.
    corpus_pool_questions_per_dataset: int = 250
    distractor_passages: int = 2000  # Wikipedia summaries (Level-4 vital articles); 10033 = all
    train_questions_per_source: int = 200  # for each of tqa_dev, nq_gold, wikiqa
    selection_seed: int = 13


@dataclass(frozen=True)
class RetrievalConfig:
    ks: tuple[int, ...] = (1, 5, 20, 100)
    bm25_k1: float = 0.9  # Anserini's defaults for passage retrieval
    bm25_b: float = 0.4
    bm25_method: str = "lucene"
    bm25_stemmer: str = "english"  # PyStemmer (Snowball) language
    bm25_stopwords: str = "en"
    minilm_batch_size: int = 32
    minilm_max_seq_length: int = 256  # the model's own sentence-transformers setting
    passage_format: str = "{title} {text}"  # what MiniLM and BM25 read of a passage
    bootstrap_resamples: int = 1000


@dataclass(frozen=True)
class RetrieverConfig:
    """The LLM bi-encoder (METHOD.md §1) and its LoRA adapter `retriever`."""
    backbone: str = "smollm2-135m"  # tiny-random | smollm2-135m | a local Hugging Face model dir
    query_template: str = "query: {q}"
    passage_template: str = "passage: {title} {text}"
    max_len: int = 64  # passage window in tokens, EOS included (the LLM reads only this much)
    query_max_len: int = 32
    padding_side: str = "left"  # the trunk cache makes left and right give the same h(x)
    tau_r: float = 0.01
    lora_layers: int = 2  # LoRA on the top L decoder layers; 0 = all layers (no trunk cache)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    encode_batch_size: int = 16
    mode: str = "rerank"  # rerank: score MiniLM's top `rerank_depth`; full: encode the whole corpus
    rerank_depth: int = 100


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int = 0
    # cpu writes the committed reports; smoke (tests, nbval) writes under build/ so it never
    # overwrites them; paper writes under reports/paper.
    reports_dir: str = "reports"
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "retrieval": RetrievalConfig, "retriever": RetrieverConfig}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def _build(cls, values: Mapping[str, Any], where: str):
    valid = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}"
        )
    kwargs = {}
    defaults = cls()
    for key, value in values.items():
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
            value = tuple(value)
            element = type(default[0]) if default else None
            if element and not all(type(v) is element for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of {element.__name__}, got {list(value)!r}")
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def profile_from_dict(values: Mapping[str, Any], where: str = "profile") -> Profile:
    values = dict(values)
    sections = {}
    for name, cls in _SECTIONS.items():
        sub = values.pop(name, {})
        if not isinstance(sub, Mapping):
            raise ConfigError(f"{where}.{name}: expected a table of keys, got {sub!r}")
        sections[name] = _build(cls, sub, f"{where}.{name}")
    valid_top = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(set(values) - set(valid_top))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid_top)}")
    if "name" not in values:
        raise ConfigError(f"{where}: missing key 'name'")
    defaults = Profile(name="")
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if type(value) is not expected:
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
    profile = Profile(**values, **sections)
    _validate(profile, where)
    return profile


def _validate(p: Profile, where: str) -> None:
    d = p.data
    known = ("nq", "triviaqa", "popqa")
    bad = [x for x in d.eval_datasets if x not in known]
    if bad:
        raise ConfigError(f"{where}.data.eval_datasets: unknown {bad}; valid are {list(known)}")
    if not 1 <= d.eval_questions_per_dataset <= 1000:
        raise ConfigError(f"{where}.data.eval_questions_per_dataset must be in 1..1000")
    if d.corpus_pool_questions_per_dataset < d.eval_questions_per_dataset:
        raise ConfigError(
            f"{where}.data.corpus_pool_questions_per_dataset must be >= eval_questions_per_dataset"
        )
    if any(k < 1 for k in p.retrieval.ks):
        raise ConfigError(f"{where}.retrieval.ks must be positive")
    r = p.retriever
    if r.padding_side not in ("left", "right"):
        raise ConfigError(f"{where}.retriever.padding_side must be 'left' or 'right', got {r.padding_side!r}")
    if r.mode not in ("full", "rerank"):
        raise ConfigError(f"{where}.retriever.mode must be 'full' or 'rerank', got {r.mode!r}")
    if r.max_len < 2 or r.query_max_len < 2:
        raise ConfigError(f"{where}.retriever: max_len and query_max_len must be >= 2 (text + EOS)")


def deep_update(base: dict, overrides: Mapping[str, Any], where: str = "overrides") -> dict:
    """Apply dotted overrides such as {"data.distractor_passages": 10}."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{where}: '{dotted}' does not name a section; sections are {sorted(_SECTIONS)}")
            node = node[part]
        node[parts[-1]] = value
    return out


def load_profile(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> Profile:
    """Load a profile by name (`smoke`, `cpu`, `paper`) or from a TOML path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ConfigError(
                f"unknown profile {str(name_or_path)!r}; valid profiles are {available_profiles()} "
                f"(or pass the path of a .toml file)"
            )
    elif not path.exists():
        raise ConfigError(f"profile file {path} does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if overrides:
        values = deep_update(values, overrides)
    return profile_from_dict(values, where=str(path))
