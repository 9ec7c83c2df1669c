"""The numbered notebooks as stored, and the papermill runner on two tiny notebooks."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from invar_rag_lib import reproduce
from invar_rag_lib.paths import HOME_ENV, SOURCES_ENV
from invar_rag_lib.reproduce import NotebookFailed, run_notebooks

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
assert NOTEBOOKS, f"no numbered notebooks in {NOTEBOOKS_DIR}"  # else every parametrised test vanishes


def test_notebook_numbers_are_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_defaulting_to_smoke(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    assert tagged[0].cell_type == "code"
    params = pm.inspect_notebook(str(path))
    assert "profile" in params
    assert ast.literal_eval(params["profile"]["default"]) == "smoke"
    assert nb.metadata.get("kernelspec", {}).get("name") == reproduce.KERNEL_NAME


# ----------------------------------------------------------------------------- the runner
def _notebook(path: Path, *cells: str) -> Path:
    """A markdown title, a parameters cell, then `cells` (code; markdown when prefixed "md:")."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), params,
                *[nbformat.v4.new_markdown_cell(src[3:]) if src.startswith("md:")
                  else nbformat.v4.new_code_cell(src) for src in cells]]
    nbformat.write(nb, str(path))
    return path


PREVIOUS_GOOD = b'{"previous": "successful run of 02_fails"}\n'


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """Run 01_ok (succeeds) and 02_fails (ValueError in its 2nd code cell) once, for the module."""
    root = tmp_path_factory.mktemp("runner")
    home, nb_dir = root / "home", root / "notebooks"
    nb_dir.mkdir()
    _notebook(nb_dir / "01_ok.ipynb", "x = 1 + 1", "print(profile, x)")
    _notebook(nb_dir / "02_fails.ipynb", "md:The next cell fails.", 'raise ValueError("bad input 42")',
              "never = True")
    executed = home / "build" / "smoke" / "reports" / "executed"
    executed.mkdir(parents=True)
    (executed / "02_fails.ipynb").write_bytes(PREVIOUS_GOOD)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOME_ENV, str(home))
        mp.delenv(SOURCES_ENV, raising=False)
        mp.delenv("PYTHONHASHSEED", raising=False)
        mp.setattr(reproduce, "notebooks_dir", lambda: nb_dir)
        # these toy notebooks need no benchmark (ensure_benchmark has its own test)
        mp.setattr(reproduce, "ensure_benchmark", lambda *a, **k: None)
        with pytest.raises(NotebookFailed) as info:
            run_notebooks("smoke", log=lambda *a: None)
        hashseed_after = os.environ.get("PYTHONHASHSEED")
    return {"error": info.value, "message": str(info.value), "executed": executed, "home": home,
            "hashseed_after": hashseed_after}


def test_runner_failure_message_names_notebook_cell_and_error(failed_run):
    msg = failed_run["message"]
    failed_copy = failed_run["executed"] / "02_fails.failed.ipynb"
    assert msg.startswith("02_fails.ipynb failed in cell ")
    assert "ValueError: bad input 42" in msg
    assert str(failed_copy) in msg
    # "cell N" is the In [N] of the failing cell in the partly executed copy
    nb = nbformat.read(str(failed_copy), as_version=4)
    errored = [c for c in nb.cells if c.cell_type == "code"
               and any(o.get("output_type") == "error" for o in c.outputs)]
    assert len(errored) == 1 and "bad input 42" in errored[0].source
    assert f"failed in cell {errored[0].execution_count} " in msg


def test_runner_keeps_good_copies_and_the_failed_one(failed_run):
    executed = failed_run["executed"]
    ok = executed / "01_ok.ipynb"
    assert ok.is_file()
    nb = nbformat.read(str(ok), as_version=4)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "smoke 2" in outputs
    assert (executed / "02_fails.ipynb").read_bytes() == PREVIOUS_GOOD  # untouched
    assert (executed / "02_fails.failed.ipynb").is_file()
    assert not list(executed.glob(".running.*"))
    # no timings are recorded for a failed reproduction, and PYTHONHASHSEED is restored
    assert not (failed_run["home"] / "build" / "smoke" / "reports" / "results" / "timings.json").exists()
    assert failed_run["hashseed_after"] is None


def test_runner_failure_message_counts_code_cells_of_the_notebook(failed_run):
    """The raising cell is the 2nd code cell of 02_fails.ipynb (cells: markdown, parameters,
    markdown, raising code, code); in the executed copy, after papermill's injected-parameters
    cell, it is the 3rd. Papermill's cell_index is the 0-based position among *all* cells of the
    executed copy (markdown included), #4 here, which matches neither count and must not be
    shown as a code-cell number."""
    import re

    msg = failed_run["message"]
    numbers = re.findall(r"code cell #(\d+)", msg)
    assert numbers and set(numbers) <= {"2", "3"}, msg


def test_runner_success_records_timings(tmp_path, isolated_home, monkeypatch):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _notebook(nb_dir / "00_only.ipynb", "assert profile == 'smoke'")
    monkeypatch.setattr(reproduce, "notebooks_dir", lambda: nb_dir)
    timings = run_notebooks("smoke", only=["0"], log=lambda *a: None)
    assert list(timings) == ["00_only"]
    reports = isolated_home / "build" / "smoke" / "reports"
    assert (reports / "executed" / "00_only.ipynb").is_file()
    saved = json.loads((reports / "results" / "timings.json").read_text())
    assert saved["00_only"]["wall_s"] == timings["00_only"]


def test_ensure_benchmark_builds_a_missing_benchmark_only_when_notebook_00_is_not_run(tmp_path, monkeypatch):
    from invar_rag_lib import data

    monkeypatch.setenv(HOME_ENV, str(tmp_path))
    built, said = [], []
    monkeypatch.setattr(data, "prepare_benchmark", lambda profile, log=print: built.append(profile.name))
    reproduce.ensure_benchmark("smoke", [Path("00_data.ipynb"), Path("02_x.ipynb")], said.append)
    assert built == [] and said == []  # notebook 00 builds it itself
    reproduce.ensure_benchmark("smoke", [Path("02_x.ipynb")], said.append)
    assert built == ["smoke"] and "building it first" in said[0]
    manifest = tmp_path / "data" / "processed" / "smoke" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    reproduce.ensure_benchmark("smoke", [Path("02_x.ipynb")], said.append)
    assert built == ["smoke"]  # present: nothing rebuilt


def test_ctrl_c_during_a_notebook_ends_in_one_line(tmp_path, isolated_home):
    """A terminal's Ctrl-C (SIGINT to the foreground process group) while a cell runs: the command
    exits 130 with its one line; the kernel's own complaint about the closed client (a 20-line
    traceback on its standard error) is not shown, and no temp copy is left behind."""
    import signal
    import subprocess
    import sys
    import time

    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _notebook(nb_dir / "00_slow.ipynb", "print('cell started', flush=True)\nimport time\ntime.sleep(120)")
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\nfrom pathlib import Path\nfrom invar_rag_lib import cli, reproduce\n"
        f"reproduce.notebooks_dir = lambda: Path({str(nb_dir)!r})\n"
        "reproduce.ensure_benchmark = lambda *a, **k: None\n"
        "sys.exit(cli.main(['reproduce', '--profile', 'smoke', '--only', '0']))\n")
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # papermill's piped log shows the cell's print
        line = proc.stderr.readline()
        seen.append(line)
        if "cell started" in line or not line:
            break
    assert any("cell started" in s for s in seen), "".join(seen)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted;"), err
    executed = isolated_home / "build" / "smoke" / "reports" / "executed"
    assert not list(executed.glob(".running.*")), list(executed.iterdir())


def test_what_the_kernel_writes_to_its_stderr_is_shown_after_the_notebook(tmp_path, isolated_home, monkeypatch,
                                                                          capsys):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _notebook(nb_dir / "00_noisy.ipynb", "import os\nos.write(2, b'a C library speaks\\n')")
    monkeypatch.setattr(reproduce, "notebooks_dir", lambda: nb_dir)
    run_notebooks("smoke", only=["0"], log=lambda *a: None)
    assert "a C library speaks" in capsys.readouterr().err
    assert not list((isolated_home / "build" / "smoke" / "reports" / "executed").glob(".running.*"))
