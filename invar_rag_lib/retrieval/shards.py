"""Sharded, resumable corpus encoding (tevatron's layout): the corpus is cut into fixed shards of
`shard_size` passages, each process of an `accelerate launch` encodes the shards `i ≡ rank (mod
world)`, and each shard is written sealed (safetensors bytes + a `.sha256` digest) as soon as it is
done. A killed encode resumes where it stopped (sealed shards are kept, a damaged or unsealed one is
encoded again); `merge` then writes one `reps.npy` in corpus order, shard by shard, without holding
the corpus in memory, and seals it.

Because a shard's rows are encoded in the same batches whatever the number of processes (batches
never cross a shard boundary), 1 and N processes write the same bytes. The folder records its plan
(`plan.json`: count, shard size, dtype, the encoder's key, the ids' digest); a folder planned for
another corpus or encoder is refused, never mixed.

Storage is float16 by default (`retriever.rep_dtype`): half of float32's bytes, and inner products of
unit vectors lose about 1e-3, well inside what an approximate index loses.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..integrity import IntegrityError, digest_path, read_sealed, read_sealed_json, write_sealed, write_sealed_json
from ..io_utils import atomic_write_text, sha256_file

DTYPES = {"float16": np.float16, "float32": np.float32}
# Above this many passages a corpus is encoded only by `invar-rag encode-corpus` (sharded, resumable),
# never inside a notebook's process: wiki-18's 21M passages would take days there and fill the disk.
IN_PROCESS_MAX = 1_000_000
PLAN, MERGED = "plan.json", "reps.npy"


def ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Plan:
    count: int
    shard_size: int
    dtype: str
    key: str  # everything the representation depends on besides the text (the encoder's cache key)
    ids: str  # digest of the corpus ids, in order

    @property
    def shards(self) -> int:
        return math.ceil(self.count / self.shard_size)

    def rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.count, (shard + 1) * self.shard_size))


def _shard_path(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:06d}.safetensors"


def _process() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) of this process: accelerate's, or (0, 1, no-op) outside a launch."""
    try:
        from accelerate import PartialState

        state = PartialState(cpu=True) if _no_gpu() else PartialState()
        return state.process_index, state.num_processes, state.wait_for_everyone
    except ImportError:  # pragma: no cover - accelerate is a pinned dependency
        return 0, 1, lambda: None


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _check_plan(root: Path, plan: Plan) -> None:
    path = root / PLAN
    try:
        stored = read_sealed_json(path)
    except IntegrityError as e:
        raise IntegrityError(path, f"{e.reason}; delete {root} to encode the corpus again") from None
    if stored != plan.__dict__:
        diff = sorted(k for k in plan.__dict__ if stored.get(k) != plan.__dict__[k])
        raise ValueError(f"{root} holds an encoding planned with other {diff} ({ {k: stored.get(k) for k in diff} } "
                         f"there, { {k: plan.__dict__[k] for k in diff} } now); delete it or choose another folder")


def _read_shard(path: Path, plan: Plan, shard: int) -> np.ndarray | None:
    """The shard's representations, checked against its digest and the plan; None when it is
    missing, unsealed, damaged or of another shape (then it is encoded again)."""
    if not path.exists():
        return None
    try:
        from safetensors.numpy import load

        reps = load(read_sealed(path))["reps"]
    except Exception:  # noqa: BLE001 - damaged, unsealed or unreadable: encode it again
        return None
    return reps if reps.shape[0] == len(plan.rows(shard)) and reps.dtype == DTYPES[plan.dtype] else None


def encode_sharded(root: str | Path, ids: Sequence[str], texts: Callable[[Sequence[int]], list[str]],
                   encode: Callable[[list[str]], np.ndarray], key: str, shard_size: int = 4096,
                   batch_size: int = 256, dtype: str = "float16", log=print) -> Plan:
    """Encode the corpus `ids` (texts fetched per shard by `texts(rows)`, so the corpus never has to be
    in memory) into sealed shards under `root`; this process does its share, then waits for the
    others. Returns the plan; `merge(root)` gives the representations."""
    if dtype not in DTYPES:
        raise ValueError(f"rep dtype {dtype!r}: one of {sorted(DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    root = Path(root)
    plan = Plan(len(ids), shard_size, dtype, key, ids_digest(ids))
    rank, world, barrier = _process()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / PLAN).exists():
            write_sealed_json(root / PLAN, plan.__dict__)
    barrier()
    _check_plan(root, plan)
    mine = list(range(rank, plan.shards, world))
    done = [s for s in mine if _read_shard(_shard_path(root, s), plan, s) is not None]
    if done:
        log(f"process {rank}/{world}: {len(done)} of its {len(mine)} shards already encoded (resuming)")
    from safetensors.numpy import save

    todo = [s for s in mine if s not in set(done)]
    for n, shard in enumerate(todo):
        rows = plan.rows(shard)
        batch_texts = texts(rows)
        parts = [np.asarray(encode(batch_texts[i:i + batch_size]), dtype=np.float32)
                 for i in range(0, len(batch_texts), batch_size)]
        reps = np.concatenate(parts).astype(DTYPES[dtype])
        write_sealed(_shard_path(root, shard), save({"reps": np.ascontiguousarray(reps)},
                                                    metadata={"first": str(rows.start), "key": key}))
        if (n + 1) % 10 == 0 or n + 1 == len(todo):
            log(f"process {rank}/{world}: {len(done) + n + 1} of {len(mine)} shards encoded")
    barrier()
    return plan


def merge(root: str | Path, log=print) -> np.ndarray:
    """All shards in corpus order as one read-only array (a memory map of the sealed `reps.npy`,
    written here once, shard by shard, by the main process; each shard read and checked once)."""
    root = Path(root)
    plan = Plan(**read_sealed_json(root / PLAN))
    out = root / MERGED
    rank, _, barrier = _process()
    if rank == 0 and not _valid_merged(out, plan):
        tmp = out.with_name(f".{out.name}.tmp")
        arr = None
        for shard in range(plan.shards):
            path = _shard_path(root, shard)
            reps = _read_shard(path, plan, shard)
            if reps is None:
                raise IntegrityError(path, "missing or damaged: run the encode again (it resumes) before merging")
            if arr is None:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=reps.dtype, shape=(plan.count, reps.shape[1]))
            rows = plan.rows(shard)
            arr[rows.start:rows.stop] = reps
        dim = arr.shape[1]
        arr.flush()
        del arr
        digest = sha256_file(tmp)
        tmp.replace(out)
        atomic_write_text(digest_path(out), f"{digest}  {MERGED}\n")
        stat = out.stat()
        _VERIFIED[out.resolve()] = (stat.st_size, stat.st_mtime_ns)  # just hashed: no second pass
        log(f"merged {plan.shards} shards into {out} ({plan.count} x {dim} {plan.dtype})")
    barrier()
    return np.load(out, mmap_mode="r")


def read_encoding(root: str | Path, ids: Sequence[str], key: str, log=print) -> np.ndarray | None:
    """The merged encoding under `root` when it was made for exactly this corpus (`ids`, in order) and
    encoder (`key`); None when there is none (the caller encodes in its own process)."""
    root = Path(root)
    if not (root / MERGED).exists():
        return None
    plan = Plan(**read_sealed_json(root / PLAN))
    if plan.ids != ids_digest(ids) or plan.key != key:
        return None
    log(f"reading the corpus encoding {root} ({plan.count} passages, {plan.dtype})")
    return merge(root, log=log)  # checked against its digest (merged again from the shards if damaged)


_VERIFIED: dict[Path, tuple[int, int]] = {}  # merged files this process has hashed: (size, mtime)


def _valid_merged(path: Path, plan: Plan) -> bool:
    digest = digest_path(path)
    if not path.exists() or not digest.exists():
        return False
    stat = path.stat()
    if _VERIFIED.get(path.resolve()) == (stat.st_size, stat.st_mtime_ns):
        return True  # hashed by this process already and unchanged since (160 GiB for wiki-18 at 4,096 dims)
    ok = (digest.read_text().split()[:1] == [sha256_file(path)]
          and np.load(path, mmap_mode="r").shape[0] == plan.count)
    if ok:
        _VERIFIED[path.resolve()] = (stat.st_size, stat.st_mtime_ns)
    return ok
