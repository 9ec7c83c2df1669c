"""BM25 with bm25s: Snowball stemming and English stop words, one tokenizer for corpus and queries.

The index and the tokenizer's vocabulary are saved together, keyed by the corpus content and the
BM25 settings, so a second run loads instead of re-indexing.

bm25s imports JAX at import time when JAX is installed (for its top-k), and JAX then takes 75% of
the GPU's memory for itself: on an H100 that made the LLM run out of memory in notebook 02 (the
first gpu-profile run, reports/gpu-attempts/). So `_bm25s()` keeps JAX on the CPU, and the top-k is
always numpy's, the same on every machine (the user's own JAX_PLATFORMS, if set, is kept).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..integrity import check_dir, load_or_none, seal_dir
from ..io_utils import replace_dir, sha256_text


def _bm25s():
    """bm25s, imported with JAX (if present) kept off the GPU."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import bm25s

    return bm25s


class BM25Retriever:
    def __init__(self, model, tokenizer, ids: list[str], settings: dict):
        self.model, self.tokenizer, self.ids, self.settings = model, tokenizer, ids, settings

    @staticmethod
    def _tokenizer(settings: dict):
        import Stemmer

        Tokenizer = _bm25s().tokenization.Tokenizer
        stemmer = Stemmer.Stemmer(settings["stemmer"]) if settings["stemmer"] else None
        return Tokenizer(lower=True, stopwords=settings["stopwords"], stemmer=stemmer)

    @staticmethod
    def index_key(ids: Sequence[str], texts: Sequence[str], settings: dict) -> str:
        return sha256_text(json.dumps(settings, sort_keys=True), *ids, *texts)[:16]

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], settings: dict) -> "BM25Retriever":
        bm25s = _bm25s()
        tokenizer = cls._tokenizer(settings)
        tokens = tokenizer.tokenize(list(texts), update_vocab=True, return_as="tuple", show_progress=False)
        model = bm25s.BM25(k1=settings["k1"], b=settings["b"], method=settings["method"])
        model.index(tokens, show_progress=False)
        return cls(model, tokenizer, list(ids), dict(settings))

    @classmethod
    def build_or_load(cls, ids: Sequence[str], texts: Sequence[str], settings: dict,
                      index_root: str | Path, log=print) -> "BM25Retriever":
        key = cls.index_key(ids, texts, settings)
        path = Path(index_root) / f"bm25-{key}"
        if (loaded := load_or_none(path, cls.load, "BM25 index", log)) is not None:
            log(f"BM25: loading index {path.name}")
            return loaded
        log(f"BM25: indexing {len(ids)} passages")
        retriever = cls.build(ids, texts, settings)
        retriever.save(path)
        return retriever

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
        try:
            self.model.save(str(tmp), show_progress=False)
            self.tokenizer.save_vocab(str(tmp))
            (tmp / "settings.json").write_text(json.dumps(self.settings, sort_keys=True))
            (tmp / "ids.json").write_text(json.dumps(self.ids))
            seal_dir(tmp, "bm25")  # the manifest, written last, marks completeness
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> "BM25Retriever":
        bm25s = _bm25s()
        path = Path(path)
        check_dir(path, "bm25")
        settings = json.loads((path / "settings.json").read_text())
        tokenizer = cls._tokenizer(settings)
        tokenizer.load_vocab(str(path))
        model = bm25s.BM25.load(str(path), show_progress=False)
        return cls(model, tokenizer, json.loads((path / "ids.json").read_text()), settings)

    def search(self, queries: Sequence[str], k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-k passage ids and scores per query. Query words unseen in the corpus are dropped."""
        k = min(k, len(self.ids))
        tokens = self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids",
                                         show_progress=False)
        docs, scores = self.model.retrieve(tokens, k=k, show_progress=False, n_threads=1,
                                          backend_selection="numpy")
        return [[self.ids[j] for j in row] for row in docs], scores
