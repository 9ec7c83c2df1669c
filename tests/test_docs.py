"""docs/method.md's equation → code table names functions that exist (so it cannot drift silently)."""
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _references() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "method.md").read_text()
    table = text[text.index('<a id="code"></a>'):]
    refs = []
    for line in table.splitlines():
        if not line.startswith("| ") or "`" not in line:
            continue
        cell = line.rstrip(" |").rsplit(" | ", 1)[-1]
        path = owner = None
        for name in re.findall(r"`([^`]+)`", cell):
            if ":" in name:  # `file.py:function`: a new file
                path, name = name.split(":", 1)
                owner = name.split(".")[0]
            elif name.startswith("."):  # `.rerank`: a method of the last class named
                name = owner + name
            else:
                owner = name.split(".")[0]
            if path and path.endswith(".py"):
                refs.append((path, name))
    return refs


def test_every_function_of_the_equation_table_exists():
    refs = _references()
    assert len(refs) > 40
    for path, name in refs:
        module = importlib.import_module("invar_rag_lib." + path[:-3].replace("/", "."))
        obj = module
        for part in name.split("."):
            assert hasattr(obj, part), f"docs/method.md names {path}:{name}, which does not exist"
            obj = getattr(obj, part)


def test_pyproject_depends_on_exactly_the_pinned_requirements():
    """`pip install -e .` gives a CLI with its libraries: pyproject's dependencies are
    requirements.txt's pins, one for one."""
    import tomllib

    pins = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps == pins


def test_the_standard_files_are_there():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    cff = (ROOT / "CITATION.cff").read_text()
    assert "cff-version" in cff and "2411.07021" in cff


def _tracked() -> set[str] | None:
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.splitlines())


def test_every_relative_link_of_the_readme_and_docs_names_a_committed_file():
    """A link (or a path an error message sends the user to) that resolves here but is ignored by
    git is dead in every clone: data/SOURCES.md was, behind `data/*` in .gitignore."""
    import pytest

    tracked = _tracked()
    if tracked is None:
        pytest.skip("not a git checkout")
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md",
            ROOT / "data" / "SOURCES.md"]
    dead = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else None
            if rel is None or not (rel in tracked or any(t.startswith(rel.rstrip("/") + "/") for t in tracked)):
                dead.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not dead, dead
    for src in ("invar_rag_lib/paths.py", "invar_rag_lib/sources.py", "invar_rag_lib/data.py"):
        for named in re.findall(r"(data/SOURCES\.md|docs/[\w-]+\.md)", (ROOT / src).read_text()):
            assert named in tracked, f"{src} sends the user to {named}, which is not committed"
