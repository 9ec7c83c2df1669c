"""Run the numbered notebooks headlessly with papermill, in order, for one profile.

Executed copies go to `<reports>/executed/`; a copy is moved there only when its notebook
succeeded, so a failure never overwrites the last good copy (the failed one is kept beside it
as `NN_name.failed.ipynb`). Wall times are recorded in `<reports>/results/timings.json`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import load_profile
from .io_utils import atomic_write_json
from .paths import repo_root, reports_dir

KERNEL_NAME = "invar-rag"


class NotebookFailed(RuntimeError):
    pass


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def list_notebooks() -> list[Path]:
    return sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(only: Sequence[str] | None) -> list[Path]:
    books = list_notebooks()
    if not only:
        return books
    by_number = {p.name[:2]: p for p in books}
    unknown = [n for n in only if n.zfill(2) not in by_number]
    if unknown:
        raise ValueError(f"unknown notebook number(s) {unknown}; available: {sorted(by_number)}")
    return [by_number[n.zfill(2)] for n in sorted({n.zfill(2) for n in only})]


def check_parameters(books: Sequence[Path], params: dict) -> None:
    """Every parameter must be declared in the `parameters` cell of every notebook it goes to;
    papermill itself would only warn and inject it anyway."""
    import papermill as pm

    for nb in books:
        declared = pm.inspect_notebook(str(nb))
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ValueError(f"{nb.name}: unknown parameter(s) {unknown}; "
                             f"its parameters are {sorted(declared)}")


def _failing_code_cell(executed: Path) -> tuple[int, str]:
    """The failing cell's number among the stored notebook's code cells, and its first line.

    Papermill's own index counts the injected parameters cell (and the copy gains an error banner
    cell), so we find the cell whose outputs hold the error instead."""
    import nbformat

    number = 0
    for cell in nbformat.read(str(executed), as_version=4).cells:
        if cell.cell_type != "code" or "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        number += 1
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            lines = cell.source.strip().splitlines()
            return number, lines[0] if lines else ""
    return 0, ""


def ensure_kernel() -> str:
    """Register (or refresh) a kernelspec that runs *this* interpreter, so papermill never picks
    up another environment's python."""
    from jupyter_client.kernelspec import KernelSpecManager

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except Exception:  # noqa: BLE001 - jupyter_client raises NoSuchKernel or OSError
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=f"{KERNEL_NAME} ({sys.prefix})", prefix=sys.prefix)
    return KERNEL_NAME


def run_notebooks(profile_name: str, only: Sequence[str] | None = None,
                  parameters: dict | None = None, log=print) -> dict:
    import papermill as pm

    profile = load_profile(profile_name)
    books = select_notebooks(only)
    out_dir = reports_dir(profile.reports_dir) / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile_name, **(parameters or {})}
    check_parameters(books, params)
    kernel = ensure_kernel()
    env_backup = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"
    timings = {}
    try:
        for nb in books:
            tmp = out_dir / f".running.{nb.name}"
            log(f"running {nb.name} (profile {profile_name}) ...")
            t0 = time.perf_counter()
            try:
                pm.execute_notebook(str(nb), str(tmp), parameters=params, kernel_name=kernel,
                                    cwd=str(nb.parent), progress_bar=False, log_output=False)
            except pm.PapermillExecutionError as exc:
                failed = out_dir / nb.name.replace(".ipynb", ".failed.ipynb")
                os.replace(tmp, failed)
                number, first_line = _failing_code_cell(failed)
                raise NotebookFailed(
                    f"{nb.name} failed in cell {exc.exec_count} (code cell #{number} of the notebook, "
                    f"starting {first_line!r}): {exc.ename}: {exc.evalue}\n"
                    f"The partly executed copy is {failed}; earlier reports were left as they were."
                ) from None
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            os.replace(tmp, out_dir / nb.name)
            timings[nb.stem] = round(time.perf_counter() - t0, 1)
            log(f"  done in {timings[nb.stem]:.0f} s")
    finally:
        if env_backup is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = env_backup
    path = reports_dir(profile.reports_dir) / "results" / "timings.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update({k: {"wall_s": v, "cores": os.cpu_count()} for k, v in timings.items()})
    atomic_write_json(path, previous)
    return timings
