"""Run the numbered notebooks headlessly with papermill, in order, for one profile.

Executed copies go to `<reports>/executed/`; a copy is moved there only when its notebook
succeeded, so a failure never overwrites the last good copy (the failed one is kept beside it
as `NN_name.failed.ipynb`). Wall times are recorded in `<reports>/results/timings.json`.
"""
from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .config import load_profile
from .io_utils import ExclusiveLock, atomic_write_json
from .machine import REFERENCE_GFLOPS, matmul_gflops, timing_entries
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


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def check_parameters(books: Sequence[Path], params: dict, profile_name: str | None = None) -> None:
    """Before anything runs: every parameter must be declared in the `parameters` cell of every
    notebook it goes to (papermill itself would only warn and inject it anyway), its value must
    have the declared default's type, and `-p profile=…` must not contradict `--profile`."""
    import papermill as pm

    if profile_name is not None and params.get("profile", profile_name) != profile_name:
        raise ValueError(f"-p profile={params['profile']!r} contradicts --profile {profile_name!r}; "
                         "choose the profile with --profile only")
    for nb in books:
        try:
            declared = pm.inspect_notebook(str(nb))
        except Exception as e:  # noqa: BLE001 - nbformat's errors name no file
            raise ValueError(f"{nb}: not a readable notebook ({e.__class__.__name__}: {str(e).splitlines()[0][:100]}); "
                             f"restore it with `git checkout -- notebooks/{nb.name}`") from None
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise ValueError(f"{nb.name}: unknown parameter(s) {unknown}; "
                             f"its parameters are {sorted(declared)}")
        for name, value in params.items():
            kind = declared[name].get("inferred_type_name")
            if kind in (None, "None"):  # no annotation: the type of the default value
                try:
                    kind = type(ast.literal_eval(declared[name].get("default", "None"))).__name__
                except (ValueError, SyntaxError):
                    kind = None
            ok = _TYPES.get(kind)
            if ok and (not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok)):
                raise ValueError(f"{nb.name}: parameter {name} must be {kind} (its default is "
                                 f"{declared[name].get('default')}), got {value!r}; e.g. -p {name}="
                                 f"{declared[name].get('default')}")


def read_timings(path: Path, log=print) -> dict:
    """The previous run's timings (for estimates and merging); an unreadable file is named and set
    aside, never a reason to refuse a run."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        return data
    except (ValueError, UnicodeDecodeError) as e:
        log(f"{path} is unreadable ({e.__class__.__name__}: {str(e)[:80]}); ignoring it, this run writes a new one")
        return {}


class RunLock(ExclusiveLock):
    """One run per profile at a time: an exclusive lock on data/locks/<profile>.lock (a lock left by
    a killed run is stale and is simply taken over)."""

    def __init__(self, profile_name: str):
        from .paths import data_dir

        super().__init__(data_dir() / "locks" / f"{Path(profile_name).stem}.lock",
                         "another run of this profile is in progress (pid {pid}, lock {lock}); "
                         "wait for it to finish or stop it")


def clean_leftovers(out_dir: Path, books: Sequence[Path], log=print) -> None:
    """Remove what an interrupted run left: temp notebooks, and failed copies of the notebooks
    about to run (a new attempt supersedes them)."""
    stale = list(out_dir.glob(".running.*.ipynb")) + list(out_dir.glob(".running.*.kernel.log")) + [out_dir / nb.name.replace(".ipynb", ".failed.ipynb")
                                                      for nb in books]
    removed = [p for p in stale if p.exists()]
    for p in removed:
        p.unlink()
    if removed:
        log(f"removed {len(removed)} leftover(s) of an earlier run: {', '.join(p.name for p in removed)}")


def _relative_paths(executed: Path, name: str) -> None:
    """Papermill records the absolute input and output paths of the machine that ran it; the
    committed copy names them relative to the checkout instead."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    meta = nb.metadata.get("papermill", {})
    meta.update({"input_path": f"notebooks/{name}", "output_path": f"reports/executed/{name}"})
    nbformat.write(nb, str(executed))


def _eta(previous: dict, books: Sequence[Path]) -> str:
    known = [previous.get(nb.stem, {}).get("wall_s") for nb in books]
    if not all(known):
        return ""
    return f"about {sum(known) / 60:.0f} min in all, from the last recorded run"


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


def kernel_config():
    """Jupyter config for papermill's kernel manager: CurveZMQ keys for the kernel's local TCP
    sockets wherever the kernelspec supports them ("auto"), since ipykernel >= 7.3 warns on every
    start over unencrypted TCP and that warning would land in every run's log."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}})


def kernel_with_log(stderr_path: Path):
    """The kernel manager papermill starts the kernel with, its standard error going to
    `stderr_path` instead of ours: a Ctrl-C ends papermill's client while the kernel (in its own
    session) is still replying, and the kernel's 20-line traceback about the closed socket would be
    the last thing a user sees. What the kernel writes there is shown after the notebook instead
    (success or failure), and dropped only when the run was interrupted."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelWithLog(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            cmd, kw = await super()._async_pre_start_kernel(**kw)
            kw["stderr"] = stderr_path.open("ab")
            return cmd, kw

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            try:
                await super()._async_launch_kernel(kernel_cmd, **kw)
            finally:  # the kernel has its own copy of the descriptor
                if hasattr(kw.get("stderr"), "close"):
                    kw["stderr"].close()

    return KernelWithLog


def _show_kernel_log(path: Path) -> None:
    if path.exists():
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
        path.unlink()


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


def piped_log() -> bool:
    """Where standard error is not a terminal (`make reproduce > log`, CI), papermill's log of each
    cell ("Executing Cell N") and the cells' printed output (the library's progress lines) go to
    standard error with the time, so a long notebook shows that it is alive."""
    import logging

    if sys.stderr.isatty():
        return False
    logger = logging.getLogger("papermill")
    if not any(getattr(h, "invar_rag", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("    %(asctime)s %(message)s", datefmt="%H:%M:%S"))
        handler.invar_rag = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return True


def ensure_benchmark(profile_name: str, books: Sequence[Path], log=print) -> None:
    """Notebook 00 builds the benchmark; a run that starts later (`--only 02`) builds it first when
    it is missing, saying so, instead of failing inside a notebook."""
    from .data import prepare_benchmark
    from .paths import processed_dir

    if any(nb.name.startswith("00") for nb in books) or (processed_dir(load_profile(profile_name).name)
                                                         / "manifest.json").exists():
        return
    log(f"no benchmark for profile {profile_name!r} yet (notebook 00 builds it): building it first, as "
        f"`invar-rag data prepare --profile {profile_name}` does")
    prepare_benchmark(load_profile(profile_name), log=log)


def run_notebooks(profile_name: str, only: Sequence[str] | None = None,
                  parameters: dict | None = None, log=print) -> dict:
    with RunLock(profile_name):
        ensure_benchmark(profile_name, select_notebooks(only), log)
        from .llm.memory import preflight

        preflight(load_profile(profile_name), log)
        return _run_notebooks(profile_name, only, parameters, log)


def _run_notebooks(profile_name: str, only: Sequence[str] | None, parameters: dict | None, log) -> dict:
    import papermill as pm

    profile = load_profile(profile_name)
    books = select_notebooks(only)
    out_dir = reports_dir(profile.reports_dir) / "executed"
    params = {"profile": profile_name, **(parameters or {})}
    check_parameters(books, params, profile_name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write the executed notebooks to {out_dir} ({e.strerror}); make it writable "
                              "or set reports_dir in a copy of the profile") from None
    clean_leftovers(out_dir, books, log)
    kernel = ensure_kernel()
    path = reports_dir(profile.reports_dir) / "results" / "timings.json"
    previous = read_timings(path, log)
    if eta := _eta(previous, books):
        log(f"{len(books)} notebook(s), {eta}")
    env_backup = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"
    timings = {}
    gflops_start = matmul_gflops()  # the machine's speed, so wall times compare across machines
    log(f"machine: fp32 matmul {gflops_start:.0f} GFLOP/s (reference {REFERENCE_GFLOPS:.0f})")
    t_all = time.perf_counter()
    try:
        for i, nb in enumerate(books, start=1):
            tmp = out_dir / f".running.{nb.name}"
            kernel_log = out_dir / f".running.{nb.stem}.kernel.log"
            kernel_log.unlink(missing_ok=True)
            last = previous.get(nb.stem, {}).get("wall_s")
            log(f"[{i}/{len(books)}] running {nb.name} (profile {profile_name})"
                + (f", last time {last / 60:.1f} min" if last else "") + " ...")
            t0 = time.perf_counter()
            try:
                # A per-cell progress bar where a person watches a terminal; in a log (piped, CI) a
                # timed line per cell and the cells' own progress lines instead (`piped_log`).
                pm.execute_notebook(str(nb), str(tmp), parameters=params, kernel_name=kernel,
                                    cwd=str(nb.parent), progress_bar=sys.stderr.isatty(),
                                    log_output=piped_log(), config=kernel_config(),
                                    kernel_manager_class=kernel_with_log(kernel_log))
            except KeyboardInterrupt:
                Path(tmp).unlink(missing_ok=True)
                kernel_log.unlink(missing_ok=True)  # the kernel's complaint about the closed client
                raise
            except pm.PapermillExecutionError as exc:
                _show_kernel_log(kernel_log)
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
                _show_kernel_log(kernel_log)
                raise
            _show_kernel_log(kernel_log)
            _relative_paths(tmp, nb.name)
            os.replace(tmp, out_dir / nb.name)
            timings[nb.stem] = round(time.perf_counter() - t0, 1)
            log(f"  done in {timings[nb.stem]:.0f} s ({(time.perf_counter() - t_all) / 60:.1f} min so far)")
    finally:
        if env_backup is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = env_backup
    gflops_end = matmul_gflops()
    entries = timing_entries(timings, gflops_start, gflops_end, os.cpu_count())
    previous.update(entries)
    atomic_write_json(path, previous)
    total = sum(timings.values())
    log(f"machine: fp32 matmul {gflops_start:.0f} GFLOP/s at the start, {gflops_end:.0f} at the end; notebooks "
        f"{total / 60:.1f} wall min = {sum(e['normalised_min'] for e in entries.values()):.1f} min normalised "
        f"to {REFERENCE_GFLOPS:.0f} GFLOP/s")
    return timings
