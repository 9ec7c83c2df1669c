"""Run the numbered notebooks without Jupyter, for a machine that has no papermill or kernel.

Each notebook's code cells run in order, in one fresh namespace per notebook, with the working
directory set to `notebooks/` as under papermill; the `parameters` cell runs first and the
parameters given here replace its values. A cell's last expression is printed, as a notebook would
show it. What the notebooks print goes to `<reports>/executed/NN_name.log` (there are no cell
outputs to keep, so no executed `.ipynb` copy is written), and the wall times are merged into
`<reports>/results/timings.json` with `"runner": "headless"`. The results under
`<reports>/results/` are the same files a papermill run writes, so `invar-rag report` works on them.

`make reproduce` keeps papermill: the executed notebooks are part of what it commits.
"""
from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from .config import load_profile
from .io_utils import atomic_write_json, atomic_write_text
from .machine import matmul_gflops, timing_entries
from .paths import reports_dir
from .reproduce import NotebookFailed, RunLock, ensure_benchmark, read_timings, select_notebooks


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def has_ipython() -> bool:
    from importlib import util

    return util.find_spec("IPython") is not None


IPYTHON_IMPORT = "from IPython.display import"


def without_ipython(source: str) -> str:
    """The cell's `IPython.display` imports pointed at the stand-ins of `display.py` (a fake
    `IPython` module would mislead matplotlib, pandas and tqdm, which look for a running IPython)."""
    return source.replace(IPYTHON_IMPORT, "from invar_rag_lib.report.display import")


def code_cells(path: Path) -> list[tuple[list[str], str]]:
    """(tags, source) of every code cell of the notebook at `path`."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return [(c.get("metadata", {}).get("tags", []), "".join(c["source"]))
                for c in nb["cells"] if c["cell_type"] == "code"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable notebook ({e.__class__.__name__}: {str(e)[:100]}); "
                         f"restore it with `git checkout -- notebooks/{path.name}`") from None


def run_cell(source: str, namespace: dict, name: str) -> None:
    """exec the cell; its last expression, if any, is printed (None is not)."""
    tree = ast.parse(source, filename=name)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, name, "exec"), namespace)
    if last is not None:
        value = eval(compile(ast.Expression(last.value), name, "eval"), namespace)
        if value is not None:
            print(value)


def run_notebook(path: Path, params: dict) -> None:
    namespace: dict = {"__name__": "__main__"}
    cells = code_cells(path)
    if not has_ipython():
        cells = [(tags, without_ipython(source)) for tags, source in cells]
    for number, (tags, source) in enumerate(cells, start=1):
        label = f"{path.name} code cell #{number}"
        if "parameters" in tags:
            run_cell(source, namespace, label)
            declared = {k for k in namespace if not k.startswith("__")}
            unknown = sorted(set(params) - declared)
            if unknown:
                raise ValueError(f"{path.name}: unknown parameter(s) {unknown}; its parameters are {sorted(declared)}")
            namespace.update(params)
            continue
        try:
            run_cell(source, namespace, label)
        except Exception as exc:
            first = source.strip().splitlines()[0] if source.strip() else ""
            raise NotebookFailed(f"{path.name} failed in code cell #{number} (starting {first!r}): "
                                 f"{type(exc).__name__}: {exc}") from exc


def run_headless(profile_name: str, only: Sequence[str] | None = None, parameters: dict | None = None,
                 log=print, keep_going: bool = False) -> dict:
    """Run the selected notebooks in this process; returns {notebook stem: wall seconds}.

    With `keep_going`, a failing notebook is logged (its traceback goes to its log) and the next
    one runs; the failures are raised together at the end."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        raise RuntimeError("run with PYTHONHASHSEED=0 (papermill runs set it for the kernel), e.g. "
                           "`PYTHONHASHSEED=0 invar-rag reproduce --headless ...`")
    os.environ.setdefault("MPLBACKEND", "Agg")
    profile = load_profile(profile_name)
    books = select_notebooks(only)
    params = {"profile": profile_name, **(parameters or {})}
    out_dir = reports_dir(profile.reports_dir) / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings_path = reports_dir(profile.reports_dir) / "results" / "timings.json"
    failures: list[str] = []
    timings: dict[str, float] = {}
    cwd = Path.cwd()
    gflops_start = matmul_gflops()
    t_all = time.perf_counter()
    with RunLock(profile_name):
        ensure_benchmark(profile_name, books, log)
        from .llm.memory import preflight

        preflight(profile, log)
        for i, nb in enumerate(books, start=1):
            log(f"[{i}/{len(books)}] running {nb.name} headless (profile {profile_name}) ...")
            buf = io.StringIO()
            t0 = time.perf_counter()
            ok = True
            try:
                os.chdir(nb.parent)
                with contextlib.redirect_stdout(_Tee(sys.stdout, buf)):
                    run_notebook(nb, params)
            except Exception as exc:  # noqa: BLE001 - recorded, then raised or collected
                ok = False
                buf.write("\n" + "".join(traceback.format_exception(exc)))
                if not keep_going:
                    atomic_write_text(out_dir / f"{nb.stem}.log", buf.getvalue())
                    raise
                failures.append(f"{nb.name}: {exc}")
                log(f"  FAILED: {exc}")
            finally:
                os.chdir(cwd)
            atomic_write_text(out_dir / f"{nb.stem}.log", buf.getvalue())
            if ok:
                timings[nb.stem] = round(time.perf_counter() - t0, 1)
                log(f"  done in {timings[nb.stem]:.0f} s ({(time.perf_counter() - t_all) / 60:.1f} min so far)")
            previous = read_timings(timings_path, log)
            previous.update(timing_entries(timings, gflops_start, gflops_start, os.cpu_count(), runner="headless"))
            timings_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(timings_path, previous)
    if failures:
        raise NotebookFailed(f"{len(failures)} notebook(s) failed: " + "; ".join(failures))
    return timings
