"""`invar-rag` command line: exit codes and error messages (nothing real is executed)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import nbformat
import pytest

from invar_rag_lib import reproduce
from invar_rag_lib.cli import _parse_param, main
from invar_rag_lib.config import available_profiles
from invar_rag_lib.paths import SOURCE_FILES

from conftest import tiny_profile_dict

REAL_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _toml(d: dict) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for section, values in d.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_notebook(path: Path, parameters_src: str, *code_cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(parameters_src)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params,
                *[nbformat.v4.new_code_cell(src) for src in code_cells]]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def no_execution(monkeypatch):
    """Any attempt to start a kernel or execute a notebook fails the test."""
    import papermill

    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a notebook was executed")

    monkeypatch.setattr(papermill, "execute_notebook", forbidden)
    monkeypatch.setattr(reproduce, "ensure_kernel", forbidden)
    return calls


def test_unknown_profile_for_data_prepare(capsys):
    assert main(["data", "prepare", "--profile", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown profile 'nosuch'")
    assert str(available_profiles()) in err


def test_unknown_profile_for_reproduce(capsys, no_execution):
    assert main(["reproduce", "--profile", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'nosuch'" in err and str(available_profiles()) in err
    assert no_execution == []


def test_missing_sources_lists_where_it_looked(capsys, tmp_path, isolated_home, monkeypatch):
    env_dir = tmp_path / "env-sources"
    monkeypatch.setenv("INVAR_RAG_SOURCES", str(env_dir))
    assert main(["data", "prepare", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "could not find the raw data sources" in err
    assert f"  {env_dir}: does not exist" in err  # a wrong $INVAR_RAG_SOURCES does not fall through
    assert not (isolated_home / "data" / "processed").exists()
    monkeypatch.delenv("INVAR_RAG_SOURCES")
    assert main(["data", "prepare", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    for d in (isolated_home / "data" / "sources", isolated_home.parent / "shared" / "data-sources"):
        assert f"  {d}: does not exist" in err


def test_missing_explicit_sources(capsys, tmp_path):
    bad = tmp_path / "typo"
    assert main(["data", "prepare", "--profile", "smoke", "--sources", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"  {bad}: does not exist" in err
    assert "--sources DIR" in err


def test_malformed_source_is_reported_with_line(capsys, tiny_sources):
    path = tiny_sources / SOURCE_FILES["nq_sample"]
    lines = gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    lines[2] = '{"id": "test_2", "question": oops}\n'
    path.write_bytes(gzip.compress("".join(lines).encode()))
    assert main(["data", "prepare", "--profile", "smoke", "--sources", str(tiny_sources)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: malformed JSON" in err


def test_data_prepare_happy_path(capsys, tiny_sources, tmp_path, isolated_home):
    profile = tmp_path / "tiny.toml"
    profile.write_text(_toml(tiny_profile_dict(tmp_path / "reports")))
    assert main(["data", "prepare", "--profile", str(profile), "--sources", str(tiny_sources)]) == 0
    out = capsys.readouterr().out
    counts = json.loads(out[out.index("{"):])
    assert counts["train"] == {"nq_gold": 3, "tqa_dev": 3, "wikiqa": 2}
    assert (isolated_home / "data" / "processed" / "tiny" / "manifest.json").is_file()
    # second run: up to date
    assert main(["data", "prepare", "--profile", str(profile), "--sources", str(tiny_sources)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_reproduce_unknown_parameter_lists_the_notebooks_parameters(capsys, isolated_home, no_execution):
    nb_dir = isolated_home / "notebooks"
    write_notebook(nb_dir / "00_first.ipynb", 'profile = "smoke"\nsources = None\n', "x = 1")
    write_notebook(nb_dir / "01_second.ipynb", 'profile = "smoke"\n', "y = 2")
    assert main(["reproduce", "--profile", "smoke", "-p", "sourcez=/tmp/x"]) == 2
    err = capsys.readouterr().err
    assert "00_first.ipynb: unknown parameter(s) ['sourcez']" in err
    assert "its parameters are ['profile', 'sources']" in err
    assert no_execution == []
    executed = isolated_home / "build" / "smoke" / "reports" / "executed"
    assert not list(executed.glob("*.ipynb"))
    assert not (isolated_home / "build" / "smoke" / "reports" / "results" / "timings.json").exists()


def test_reproduce_unknown_parameter_on_the_real_notebooks(capsys, monkeypatch, no_execution):
    monkeypatch.setattr(reproduce, "notebooks_dir", lambda: REAL_NOTEBOOKS)
    assert main(["reproduce", "--profile", "smoke", "--only", "0", "-p", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "00_data_and_corpus.ipynb: unknown parameter(s) ['bogus']" in err
    assert "'profile'" in err
    assert no_execution == []


def test_reproduce_unknown_notebook_number(capsys, isolated_home, no_execution):
    write_notebook(isolated_home / "notebooks" / "00_first.ipynb", 'profile = "smoke"\n')
    assert main(["reproduce", "--profile", "smoke", "--only", "7"]) == 2
    err = capsys.readouterr().err
    assert "unknown notebook number(s) ['7']; available: ['00']" in err
    assert no_execution == []


def test_parse_param():
    assert _parse_param("n=5") == ("n", 5)
    assert _parse_param("flag=true") == ("flag", True)
    assert _parse_param("path=/tmp/x=y") == ("path", "/tmp/x=y")
    assert _parse_param('xs=[1, "a"]') == ("xs", [1, "a"])
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "-p", "novalue"])
    assert info.value.code == 2
