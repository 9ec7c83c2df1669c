"""Writes that never leave a half-written file, and content hashes."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_content(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content: of the uncompressed bytes for a `.gz` file, so a source keeps
    its digest when it is re-compressed (as `invar-rag data fetch` does)."""
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class DiskFull(OSError):
    """No space left (or over quota) while writing: names the path and what to free."""


def disk_full(path: str | Path, exc: OSError) -> OSError:
    """`exc` as a one-line `DiskFull` naming `path` when it is ENOSPC / EDQUOT; else `exc` itself."""
    import errno

    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return exc
    where = Path(path).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 1e6
    return DiskFull(exc.errno, f"no space left on the disk while writing {path} ({free:.0f} MB free); free some "
                               "space (data/cache/ can be deleted: it is rebuilt) and run the same command again")


@contextlib.contextmanager
def writing(path: str | Path):
    """Turn a disk-full error inside the block into `DiskFull` naming `path`."""
    try:
        yield
    except OSError as e:
        raise disk_full(path, e) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with writing(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ExclusiveLock:
    """An exclusive `fcntl` lock on `path`, which holds the holder's pid. The OS drops the lock when
    its process dies, so a lock file left by a killed process is stale and is simply taken over.
    `busy` is the message of the RuntimeError raised when another live process holds it ({pid})."""

    def __init__(self, path: str | Path, busy: str):
        self.path, self.busy = Path(path), busy

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip() or "unknown"
            self.f.close()
            raise RuntimeError(self.busy.format(pid=holder, lock=self.path)) from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"{os.getpid()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        self.f.close()  # releases the lock


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> Path:
    """Swap a fully written temp directory into place; the old one is removed only afterwards."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)
    return final_dir


def jsonable(value):
    """Tuples become lists, as they do in a JSON round trip (so a config compares equal to its
    saved copy)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
