"""Profiles: frozen dataclasses loaded from one TOML file per profile.

Nothing that changes a result is implicit: every choice lives in a field here and in
`invar_rag_lib/profiles/<name>.toml`. Unknown keys are rejected with the list of valid ones.
A default is docs/method.md's value where it gives one, else the cpu (default) profile's; each
profile file still states every value it relies on.
"""
from __future__ import annotations

import dataclasses
import re
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
    train_questions_per_source: int = 800  # for each of tqa_dev and nq_gold
    # WikiQA's answer sentences enter the corpus as title-less passages: kept few (distractors and
    # the generator's sources only; stage 1 does not train on them, docs/method.md §4)
    wikiqa_train_questions: int = 200
    # A training question whose SQuAD-normalised word set has Jaccard >= this with any evaluation-
    # sample question is a near-duplicate and is left out of training (exact matches always are).
    near_duplicate_jaccard: float = 0.8
    selection_seed: int = 13
    # "built": the corpus built around the evaluation questions (every shipped profile); "wiki18":
    # DPR's whole wiki-18 (`invar-rag data fetch --corpus wiki18` first) plus the training stand-ins'
    # gold passages, in place of the Search-R1 passages and the distractors (docs/paper-scale.md).
    corpus: str = "built"


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
    """The LLM bi-encoder (docs/method.md §1) and its LoRA adapter `retriever`."""
    backbone: str = "smollm2-135m"  # tiny-random | smollm2-135m | a local Hugging Face model dir
    query_template: str = "query: {q}"
    passage_template: str = "passage: {title} {text}"
    max_len: int = 64  # passage window in tokens, EOS included (the LLM reads only this much)
    query_max_len: int = 32
    padding_side: str = "left"  # the trunk cache makes left and right give the same h(x)
    # h(x): "mean" over the real tokens, or "eos" (RepLLaMA: the EOS state, with tau_r = 0.01). The
    # EOS state of a 135M model carries too little content and training collapses (docs/method.md §1).
    pooling: str = "mean"
    tau_r: float = 0.05
    lora_layers: int = 2  # LoRA on the top L decoder layers; 0 = all layers (no trunk cache)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05  # on the adapter's inputs while training (METHOD's value)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    encode_batch_size: int = 16  # texts per frozen-trunk forward
    score_batch_size: int = 64  # trunk states per top-layer forward when scoring (rerank, full, checks)
    mode: str = "rerank"  # rerank: score MiniLM's top `rerank_depth`; full: encode the whole corpus
    rerank_depth: int = 100
    # "int8": the frozen layers below the LoRA layers run PyTorch's dynamic int8 linear kernels
    # (CPU only; llm/quantize.py); "none": float32 everywhere (METHOD's model as it is).
    trunk_quantization: str = "none"
    # The backbone's weights: "float32" (the CPU default: bf16 has no native CPU kernels and is ~300x
    # slower there) or "bfloat16" / "float16" on a GPU (half the memory; the LoRA adapters stay float32).
    dtype: str = "float32"
    # Recompute each trained layer's activations in the backward pass instead of storing them (LoRA on
    # every layer of a large model); `invar-rag memory` shows what it saves.
    gradient_checkpointing: bool = False
    # Full retrieval's index (retrieval/dense.py): "flat" is exact (every profile here: the corpora
    # are at most ~22k passages); "ivf" (nlist cells, 0 = 4*sqrt(n); nprobe searched), "ivfpq" (the
    # same cells, each vector stored in index_pq_m bytes) or "hnsw" for a Wikipedia-size corpus, whose
    # recall@k against exact search is measured and logged in each run. With index_gpus, faiss-gpu
    # (where installed) shards the index across every visible GPU.
    index: str = "flat"
    index_nlist: int = 0
    index_nprobe: int = 32
    index_pq_m: int = 64
    index_gpus: bool = True
    # The corpus encoding of `invar-rag encode-corpus` (retrieval/shards.py): passages per sealed
    # shard (the unit of resumption and of work per process) and the stored precision.
    encode_shard_size: int = 4096
    rep_dtype: str = "float16"


@dataclass(frozen=True)
class Stage1Config:
    """Training data, environments, losses and optimisation of the retriever (docs/method.md §1).

    Two sets of training questions: every question (`train_questions`) gives a group G(q) of
    `group_size` passages for L_ctr and L_align (A(q) = G(q)); the first `env_questions` of them
    also get environments (rewrites, windows) and LSR scores over their first `env_group_size`
    members, for L_inv and the LSR term (an LM forward per passage and environment is the cost).
    """
    train_sources: tuple[str, ...] = ("tqa_dev", "nq_gold")  # WikiQA: sentence-as-passage, not used
    train_questions: int = 1400  # drawn evenly from `train_sources`
    val_questions: int = 200  # further held-out training questions: the validation split of sweeps
    coarse_candidates: int = 20  # K_c: MiniLM's top passages, the pool of positives and hard negatives
    # A passage of K(q) that merely contains an answer is a positive only within MiniLM's top
    # `positive_depth` (deeper matches are often coincidental: "November" in a biography); gold first.
    positive_depth: int = 5
    group_size: int = 8  # |G(q)|: positives + hard negatives (MiniLM's highest-ranked answer-free)
    max_positives: int = 1
    env_questions: int = 150  # questions with environments and LSR (the first ones); 0 = all
    env_group_size: int = 4  # members of G(q) scored by LSR and used by L_inv / the LSR term
    env_batch_size: int = 8  # environment questions per micro-batch (cycled), for L_inv / LSR
    # Representation-level alignment (docs/method.md §1 allows it): "ridge" maps the pooled h(x) into
    # MiniLM's space with a closed-form ridge regression fitted on the training texts (frozen model),
    # used by every variant with α > 0; "none" keeps h(x) as pooled.
    projection: str = "none"
    ridge_lambda: float = 1.0
    tau_c: float = 0.05  # MiniLM temperature in P_c (cosine scores)
    beta: float = 1.0  # LSR temperature in Q_e
    n_rewrites: int = 1  # R
    rewrite_method: str = "llm"  # llm: generated by the backbone (rule-based fallback) | rules
    rewrite_batch_size: int = 16  # prompts per greedy-decoding batch (decoding is latency-bound on a GPU)
    windows: tuple[int, ...] = (32,)  # extra context-window sizes S, besides retriever.max_len
    lsr_prompt: str = "Passage: {passage}\nQuestion: {question}\nAnswer:"
    lsr_batch_size: int = 8
    alpha: float = 1.0
    lam: float = 0.5
    gamma: float = 1.0
    lr: float = 3e-3  # benchmarks/stage1_sweep.py (cpu)
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 16  # queries per optimizer micro-batch
    grad_accum: int = 1
    warmup_steps: int = 5
    max_grad_norm: float = 1.0
    checkpoint_every: int = 20  # optimizer steps


@dataclass(frozen=True)
class GeneratorConfig:
    """Stage 2 (docs/method.md §2): the `generator` adapter, its prompts, training and decoding.

    The adapter's shape is its own (`lora_*`: LoRA on the top `lora_layers` layers, 0 = all); the
    layers below are its frozen trunk, cached once per training sequence in their own store. The
    prompt is `instruction` + `n_shot` demonstrations + the top-`k` passages (each cut to
    `passage_tokens` tokens) + the question; the demonstrations come first, so one key/value cache
    of that shared prefix serves every prompt, in decoding and in training.

    Its questions are stage 1's: it trains on the first `train_questions` of the retriever's training
    questions (sources in turn) and is validated on the first `val_questions` of the held-out ones
    (`splits.py`), never on an evaluation question or a demonstration.
    """
    retriever_variant: str = "invar"  # whose top-k passages the generator reads (frozen)
    k: int = 3
    passage_tokens: int = 48
    n_shot: int = 8
    instruction: str = "Answer the question with a short answer, using the passages.\n\n"
    demo_template: str = "Question: {q}\nAnswer: {a}\n\n"
    passage_template: str = "Passage: {passage}\n"  # {passage} = "{title}. {text}", or the text if untitled
    question_template: str = "Question: {q}\nAnswer:"
    demo_sources: tuple[str, ...] = ("nq_gold",)  # NQ answers are canonical; TriviaQA lists aliases in any order
    # "first": the first gold answer (docs/method.md); "in_context": the first gold answer that the shown
    # windows contain (DPR has_answer), else the first the whole passages contain, else the shortest.
    # TriviaQA's first alias is arbitrary ('Yellowest' for the colour of a JCB digger, "I'm not a crook"
    # for Nixon), so the cpu profile grounds the target (stage2/prompts.py:target_answer).
    target_answer: str = "in_context"
    # The prompt the adapter trains and answers with: "same" (the base rows' prompt: instruction +
    # n_shot demonstrations) or "zero_shot" (the instruction alone; a trained reader needs no demos).
    adapter_prompt: str = "same"
    # Which training examples it sees: "retrieved" (the frozen retriever's top k as they are, with or
    # without an answer in the shown windows), "answer_only" (only examples whose shown windows hold
    # an answer) or "oracle" (RAFT-like: an example without one gets an answer-bearing passage of the
    # corpus in place of its k-th, so every example can be read off its context).
    context_mix: str = "retrieved"
    train_questions: int = 300
    val_questions: int = 200  # held-out training questions (stage 1's validation split): EM before/after
    diagnostic_questions: int = 100  # training questions decoded before/after training (train EM)
    epochs: int = 2
    batch_size: int = 8
    lr: float = 5e-4
    lora_layers: int = 2  # LoRA on the top L decoder layers (0 = all); its own, not the retriever's
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05  # the generator adapter's (METHOD's value); the retriever's is retriever.lora_dropout
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    grad_accum: int = 1
    warmup_steps: int = 5
    max_grad_norm: float = 1.0
    max_new_tokens: int = 16
    checkpoint_every: int = 20  # steps between generator checkpoints (and at the end)
    weight_decay: float = 0.0  # AdamW's, on the generator adapter
    trunk_batch_size: int = 8  # training sequences per frozen-trunk forward (they are long: ~190 tokens + demos)
    generate_batch_size: int = 32
    decode_attention: str = "sdpa"  # attention kernel while decoding ("eager" | "sdpa"); sdpa is faster on CPU


@dataclass(frozen=True)
class AblationConfig:
    """The sweeps of notebook 07 that this profile runs; docs/method.md's full grids are
    `FULL_LAMBDAS` / `FULL_REWRITES`, and a point left out here is reported as not run."""
    lams: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0, 2.0)
    rewrites: tuple[int, ...] = (0, 1, 2)


FULL_LAMBDAS = (0.0, 0.1, 0.5, 1.0, 2.0)
FULL_REWRITES = (0, 1, 2)


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
    stage1: Stage1Config = field(default_factory=Stage1Config)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ablations: AblationConfig = field(default_factory=AblationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"data": DataConfig, "retrieval": RetrievalConfig, "retriever": RetrieverConfig,
             "stage1": Stage1Config, "generator": GeneratorConfig, "ablations": AblationConfig}


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
            if element is float:
                value = tuple(float(v) if type(v) is int else v for v in value)
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


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Folders of the checkout that a profile's reports may never be written into (or over).
_PROTECTED = ("data", "invar_rag_lib", "notebooks", "tests", "docs", "benchmarks", ".git", ".ci", ".venv")


def _validate_paths(p: Profile, where: str) -> None:
    """A profile's name and reports folder decide where files are written and deleted: refuse
    what would land on the checkout itself."""
    from .paths import repo_root

    if not _NAME.fullmatch(p.name) or p.name in (".", ".."):
        raise ConfigError(f"{where}.name must be a plain folder name (letters, digits, _ . -), got {p.name!r}: "
                          "it names data/processed/<name>/ and the profile's caches")
    if not p.reports_dir.strip():
        raise ConfigError(f"{where}.reports_dir must not be empty (e.g. 'build/{p.name}/reports')")
    root = repo_root().resolve()
    raw = Path(p.reports_dir)
    target = (raw if raw.is_absolute() else root / raw).resolve()
    if not raw.is_absolute() and root not in (target, *target.parents):
        raise ConfigError(f"{where}.reports_dir {p.reports_dir!r} leaves the checkout; use a folder inside it "
                          "(or an absolute path)")
    if target == root or target in root.parents:
        raise ConfigError(f"{where}.reports_dir {p.reports_dir!r} is the checkout itself (or above it): report "
                          "would overwrite its README.md; use e.g. 'reports' or 'build/<name>/reports'")
    for name in _PROTECTED:
        top = root / name
        if target == top or top in target.parents:
            raise ConfigError(f"{where}.reports_dir {p.reports_dir!r} lies inside the checkout's {name}/, which "
                              "reports must never write into; use e.g. 'reports' or 'build/<name>/reports'")


def _validate(p: Profile, where: str) -> None:
    _validate_paths(p, where)
    d = p.data
    if not d.eval_datasets:
        raise ConfigError(f"{where}.data.eval_datasets must name at least one of ['nq', 'triviaqa', 'popqa']")
    if not p.retrieval.ks:
        raise ConfigError(f"{where}.retrieval.ks must list at least one k")
    s1, g = p.stage1, p.generator
    for section, cfg in (("stage1", s1), ("generator", g)):
        if cfg.max_grad_norm <= 0:
            raise ConfigError(f"{where}.{section}.max_grad_norm must be > 0 (gradient clipping), got {cfg.max_grad_norm}")
        if cfg.warmup_steps < 0 or cfg.weight_decay < 0:
            raise ConfigError(f"{where}.{section}: warmup_steps and weight_decay must be >= 0")
    if s1.alpha < 0 or s1.lam < 0 or s1.gamma < 0:
        raise ConfigError(f"{where}.stage1: alpha, lam and gamma weigh loss terms and must be >= 0")
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
    if r.index not in ("flat", "ivf", "ivfpq", "hnsw"):
        raise ConfigError(f"{where}.retriever.index must be 'flat', 'ivf', 'ivfpq' or 'hnsw', got {r.index!r}")
    if r.index_pq_m < 1 or r.encode_shard_size < 1:
        raise ConfigError(f"{where}.retriever.index_pq_m and encode_shard_size must be >= 1")
    if r.rep_dtype not in ("float16", "float32"):
        raise ConfigError(f"{where}.retriever.rep_dtype must be 'float16' or 'float32', got {r.rep_dtype!r}")
    if r.index_nlist < 0 or r.index_nprobe < 1:
        raise ConfigError(f"{where}.retriever.index_nlist must be >= 0 (0 = 4*sqrt(n)) and index_nprobe >= 1")
    if r.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"{where}.retriever.dtype must be 'float32', 'bfloat16' or 'float16', got {r.dtype!r}")
    if r.dtype != "float32" and r.trunk_quantization != "none":
        raise ConfigError(f"{where}.retriever.trunk_quantization = {r.trunk_quantization!r} quantizes float32 "
                          f"weights; with retriever.dtype = {r.dtype!r} set it to 'none'")
    if r.trunk_quantization not in ("none", "int8"):
        raise ConfigError(f"{where}.retriever.trunk_quantization must be 'none' or 'int8', got {r.trunk_quantization!r}")
    if r.trunk_quantization == "int8" and r.lora_layers == 0:
        raise ConfigError(f"{where}.retriever.trunk_quantization = 'int8' needs a frozen trunk (lora_layers > 0)")
    if r.mode not in ("full", "rerank"):
        raise ConfigError(f"{where}.retriever.mode must be 'full' or 'rerank', got {r.mode!r}")
    s1 = p.stage1
    if s1.rewrite_method not in ("llm", "rules"):
        raise ConfigError(f"{where}.stage1.rewrite_method must be 'llm' or 'rules', got {s1.rewrite_method!r}")
    if s1.group_size < 2 or s1.max_positives >= s1.group_size:
        raise ConfigError(f"{where}.stage1: need group_size >= 2 and max_positives < group_size")
    if s1.coarse_candidates < s1.group_size:
        raise ConfigError(f"{where}.stage1.coarse_candidates must be >= group_size")
    if any(w < 2 or w >= r.max_len for w in s1.windows):
        raise ConfigError(f"{where}.stage1.windows must lie in 2..retriever.max_len-1 (= {r.max_len - 1})")
    g = p.generator
    if g.k < 0 or g.n_shot < 0 or g.passage_tokens < 1 or g.max_new_tokens < 1:
        raise ConfigError(f"{where}.generator: k and n_shot must be >= 0, passage_tokens and max_new_tokens >= 1")
    bad = [s for s in g.demo_sources if s not in ("tqa_dev", "nq_gold", "wikiqa")]
    if bad or not g.demo_sources:
        raise ConfigError(f"{where}.generator.demo_sources: unknown {bad}; valid are ['tqa_dev', 'nq_gold', 'wikiqa']")
    if g.adapter_prompt not in ("same", "zero_shot"):
        raise ConfigError(f"{where}.generator.adapter_prompt must be 'same' or 'zero_shot', got {g.adapter_prompt!r}")
    if g.context_mix not in ("retrieved", "answer_only", "oracle"):
        raise ConfigError(f"{where}.generator.context_mix must be 'retrieved', 'answer_only' or 'oracle', "
                          f"got {g.context_mix!r}")
    if not g.instruction.strip():
        raise ConfigError(f"{where}.generator.instruction must not be empty (it is the shared prompt prefix)")
    if g.val_questions < 0 or g.diagnostic_questions < 0:
        raise ConfigError(f"{where}.generator: val_questions and diagnostic_questions must be >= 0")
    if g.decode_attention not in ("eager", "sdpa"):
        raise ConfigError(f"{where}.generator.decode_attention must be 'eager' or 'sdpa', got {g.decode_attention!r}")
    if g.target_answer not in ("first", "in_context"):
        raise ConfigError(f"{where}.generator.target_answer must be 'first' or 'in_context', got {g.target_answer!r}")
    if any(r < 0 for r in p.ablations.rewrites) or any(l < 0 for l in p.ablations.lams):
        raise ConfigError(f"{where}.ablations: lams and rewrites must be >= 0")
    if r.pooling not in ("eos", "mean"):
        raise ConfigError(f"{where}.retriever.pooling must be 'eos' or 'mean', got {r.pooling!r}")
    if r.tau_r <= 0 or s1.tau_c <= 0 or s1.beta <= 0:
        raise ConfigError(f"{where}: retriever.tau_r, stage1.tau_c and stage1.beta must be > 0")
    bad = [s for s in s1.train_sources if s not in ("tqa_dev", "nq_gold", "wikiqa")]
    if bad or not s1.train_sources:
        raise ConfigError(f"{where}.stage1.train_sources: unknown {bad}; valid are ['tqa_dev', 'nq_gold', 'wikiqa']")
    if s1.projection not in ("none", "ridge") or s1.ridge_lambda <= 0:
        raise ConfigError(f"{where}.stage1: projection must be 'none' or 'ridge' and ridge_lambda > 0")
    if not 2 <= s1.env_group_size <= s1.group_size:
        raise ConfigError(f"{where}.stage1.env_group_size must lie in 2..group_size (= {s1.group_size})")
    if not 1 <= s1.positive_depth <= s1.coarse_candidates:
        raise ConfigError(f"{where}.stage1.positive_depth must lie in 1..coarse_candidates (= {s1.coarse_candidates})")
    if s1.train_questions < 1 or s1.val_questions < 0 or s1.env_questions < 0 or s1.env_batch_size < 1 \
            or s1.rewrite_batch_size < 1:
        raise ConfigError(f"{where}.stage1: need train_questions >= 1, val_questions >= 0, env_questions >= 0, "
                          "env_batch_size, rewrite_batch_size >= 1")
    if s1.lr <= 0 or s1.epochs < 1 or s1.batch_size < 1 or s1.grad_accum < 1 or s1.checkpoint_every < 1:
        raise ConfigError(f"{where}.stage1: need lr > 0 and epochs, batch_size, grad_accum, checkpoint_every >= 1")
    if r.max_len < 2 or r.query_max_len < 2:
        raise ConfigError(f"{where}.retriever: max_len and query_max_len must be >= 2 (text + EOS)")
    if r.lora_r < 1 or r.lora_alpha <= 0 or not 0 <= r.lora_dropout < 1 or r.rerank_depth < 1:
        raise ConfigError(f"{where}.retriever: need lora_r >= 1, lora_alpha > 0, 0 <= lora_dropout < 1, "
                          "rerank_depth >= 1")
    if g.lr <= 0 or g.epochs < 1 or g.batch_size < 1 or g.checkpoint_every < 1 or g.generate_batch_size < 1 \
            or g.train_questions < 1 or not 0 <= g.lora_dropout < 1 or g.grad_accum < 1:
        raise ConfigError(f"{where}.generator: need lr > 0, 0 <= lora_dropout < 1 and epochs, batch_size, grad_accum, "
                          "checkpoint_every, generate_batch_size, train_questions >= 1")
    if g.lora_layers < 0 or g.lora_r < 1 or g.lora_alpha <= 0 or not g.lora_targets:
        raise ConfigError(f"{where}.generator: need lora_layers >= 0 (0 = all), lora_r >= 1, lora_alpha > 0 and "
                          "some lora_targets")
    if r.trunk_quantization != "none" and (g.lora_layers == 0 or g.lora_layers > r.lora_layers):
        raise ConfigError(f"{where}.generator.lora_layers: the {r.trunk_quantization} trunk quantizes the layers "
                          f"below the retriever's top {r.lora_layers}; the generator may not train them "
                          f"(set generator.lora_layers in 1..{r.lora_layers}, or retriever.trunk_quantization = 'none')")
    d = p.data
    if d.eval_questions_per_dataset < 1 or d.corpus_pool_questions_per_dataset < d.eval_questions_per_dataset \
            or d.distractor_passages < 0 or d.train_questions_per_source < 0:
        raise ConfigError(f"{where}.data: need eval_questions_per_dataset >= 1, corpus_pool_questions_per_dataset "
                          ">= eval_questions_per_dataset, distractor_passages and train_questions_per_source >= 0")
    if d.corpus not in ("built", "wiki18"):
        raise ConfigError(f"{where}.data.corpus must be 'built' or 'wiki18', got {d.corpus!r}")
    if not 0 < d.near_duplicate_jaccard <= 1:
        raise ConfigError(f"{where}.data.near_duplicate_jaccard must lie in (0, 1], got {d.near_duplicate_jaccard}")
    if p.retrieval.bootstrap_resamples < 1:
        raise ConfigError(f"{where}.retrieval.bootstrap_resamples must be >= 1")


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
    profile = profile_from_dict(values, where=str(path))
    builtin = PROFILE_DIR / f"{profile.name}.toml"
    if path.resolve() != builtin.resolve() and builtin.exists() and load_profile(profile.name) != profile:
        raise ConfigError(f"{path}: name = {profile.name!r} is a built-in profile's, with other values; its data "
                          f"build, runs and checkpoints would be taken for (and overwrite) that profile's. Give the "
                          "file a name of its own")
    return profile
