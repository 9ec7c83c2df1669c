"""Content integrity of every stored artifact: one mechanism for files and for folders.

- A **file** artifact (embeddings, trunk shards, rewrites, LSR, projection, generations) is written
  with `write_sealed`: the bytes atomically, then a sidecar `<name>.sha256` with their digest.
  `read_sealed` returns the bytes only if they hash to the recorded digest.
- A **folder** artifact (BM25 index, converted model, built benchmark, checkpoints) gets a
  `MANIFEST.sha256` listing the digest of every file in it, written last (`seal_dir`), under a
  header that names the folder's kind and seals the list; `check_dir` refuses a manifest that is
  missing, garbled, unsealed, cut, emptied or of another kind, a folder missing a file its kind
  requires, a file the manifest does not list, and any listed file that is missing or altered.

A missing digest counts as damage: the artifact was interrupted or written by a version that did
not seal it, so it cannot be trusted. Callers decide what damage means: a cache is reported with
its path and rebuilt (`load_or_none`), a checkpoint the user asked to reuse is refused.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable, TypeVar

from .io_utils import atomic_write_bytes, atomic_write_text, sha256_file

MANIFEST = "MANIFEST.sha256"
T = TypeVar("T")


class IntegrityError(Exception):
    """An artifact whose content does not match its recorded digest, or that cannot be read."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


class CheckpointError(Exception):
    """A checkpoint that cannot be used: damaged, or saved under another configuration."""


# Errors that readers raise on truncated or garbled content; treated as damage, like a bad digest.
def _corrupt_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [IntegrityError, zipfile.BadZipFile, EOFError, json.JSONDecodeError,
                                         UnicodeDecodeError, KeyError, ValueError]
    try:
        from safetensors import SafetensorError
        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    return tuple(errors)


CORRUPT_ERRORS = _corrupt_errors()


def digest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_sealed(path: str | Path, data: bytes) -> Path:
    """Write `data` atomically, then its digest next to it (a crash in between leaves no digest,
    which readers treat as damage)."""
    path = Path(path)
    digest_path(path).unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_text(digest_path(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
    return path


def write_sealed_json(path: str | Path, obj) -> Path:
    return write_sealed(path, (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode())


def _recorded(digest_file: Path, owner: Path) -> str:
    if not digest_file.exists():
        raise IntegrityError(owner, f"no digest ({digest_file.name} is missing: an interrupted or unsealed write)")
    text = digest_file.read_text().split()
    if not text or len(text[0]) != 64:
        raise IntegrityError(owner, f"unreadable digest file {digest_file.name}")
    return text[0]


def read_sealed(path: str | Path) -> bytes:
    """The bytes of `path`, verified against its sidecar digest; `IntegrityError` otherwise."""
    path = Path(path)
    if not path.exists():
        raise IntegrityError(path, "missing")
    expected = _recorded(digest_path(path), path)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected:
        raise IntegrityError(path, "content does not match its recorded sha256 (damaged or replaced)")
    return data


def read_sealed_json(path: str | Path):
    try:
        return json.loads(read_sealed(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(path, f"not valid JSON ({e})") from e


def remove_sealed(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


# The files each kind of folder must hold, whatever its manifest says: an emptied or cut manifest
# cannot make a folder without them valid.
REQUIRED: dict[str, tuple[str, ...]] = {
    "benchmark": ("manifest.json", "corpus/dataset_info.json"),
    "model": ("complete.json", "config.json", "model.safetensors", "tokenizer.json"),
    "bm25": ("settings.json", "ids.json", "params.index.json"),
    "checkpoint": ("state.json", "adapter.safetensors", "optimizer.pt", "rng.json", "rng.safetensors"),
}
_HEADER = "# invar-rag manifest v1"


def _body_digest(lines: list[str]) -> str:
    return hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()


def seal_dir(folder: str | Path, kind: str) -> Path:
    """Record the digest of every file under `folder` in its MANIFEST.sha256 (written last). The
    manifest's first line names the folder's kind and seals the lines below it."""
    folder = Path(folder)
    if kind not in REQUIRED:
        raise ValueError(f"unknown folder kind {kind!r}; one of {sorted(REQUIRED)}")
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    header = f"{_HEADER} kind={kind} files={len(lines)} sha256={_body_digest(lines)}"
    return atomic_write_text(folder / MANIFEST, "\n".join([header, *lines]) + "\n")


def _manifest_entries(folder: Path, kind: str) -> dict[str, str]:
    """relative path -> digest, from a manifest that parses, is sealed and is of this kind."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise IntegrityError(folder, f"no {MANIFEST} (an interrupted or unsealed write)")
    try:
        text = manifest.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise IntegrityError(manifest, f"unreadable manifest ({e.__class__.__name__})") from None
    lines = text.splitlines()
    if not lines or not lines[0].startswith(_HEADER):
        raise IntegrityError(manifest, "no sealed header (an unsealed manifest, or one written by an older "
                                       "invar-rag): the folder cannot be trusted")
    fields = dict(f.split("=", 1) for f in lines[0][len(_HEADER):].split() if "=" in f)
    body = lines[1:]
    if fields.get("sha256") != _body_digest(body) or fields.get("files") != str(len(body)):
        raise IntegrityError(manifest, "its lines do not match its sealed header (edited, cut or emptied)")
    if fields.get("kind") != kind:
        raise IntegrityError(manifest, f"seals a {fields.get('kind')!r} folder, not a {kind!r} one")
    entries = {}
    for n, line in enumerate(body, start=2):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel or rel.startswith("/") or ".." in Path(rel).parts:
            raise IntegrityError(manifest, f"line {n} is not '<sha256>  <relative path>'")
        entries[rel] = digest
    return entries


def check_dir(folder: str | Path, kind: str) -> None:
    """Verify `folder` against its manifest: sealed, of this kind, listing every file the folder holds
    and every file the kind requires, each with its recorded digest. `IntegrityError` names the
    first bad file."""
    folder = Path(folder)
    entries = _manifest_entries(folder, kind)
    for rel in REQUIRED[kind]:
        if rel not in entries:
            raise IntegrityError(folder / rel, f"a {kind} folder needs it, and its manifest does not list it")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST}
    if unlisted := sorted(present - set(entries)):
        raise IntegrityError(folder / unlisted[0], "present but not in the manifest (added after sealing)")
    for rel, expected in entries.items():
        path = folder / rel
        if not path.is_file():
            raise IntegrityError(path, "listed in the manifest but missing")
        if sha256_file(path) != expected:
            raise IntegrityError(path, "content does not match its recorded sha256 (damaged or replaced)")


def load_or_none(path: str | Path, load: Callable[[Path], T], what: str, log=print) -> T | None:
    """`load(path)` for a cache; on damage, report it with the path, delete it and return None so
    the caller rebuilds. A cache that does not exist yet is simply None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load(path)
    except CORRUPT_ERRORS as e:
        log(f"{what} cache {path} is damaged ({getattr(e, 'reason', None) or e}); deleted, rebuilding")
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            remove_sealed(path)
        return None
