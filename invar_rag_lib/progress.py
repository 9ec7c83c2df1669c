"""Progress where a person watches: tqdm bars in an interactive terminal, and elsewhere (notebook
kernels, piped `make reproduce`, CI) one plain line per long step at a readable rate.

`progress(iterable, ...)` and `step_bar(...)` are tqdm when standard error is an interactive terminal
(`invar-rag train-retriever`); otherwise they print `desc: n/total (elapsed)` at most once per
`INVAR_RAG_HEARTBEAT_S` seconds (default 60) as `desc: unit n/total, m min`, so a long trunk pass, training run or decode shows
that it is alive, in the executed notebook and, through `reproduce`, in the log of a piped run, and
never stores a frozen "0%" widget.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    if os.environ.get("INVAR_RAG_PROGRESS") in ("0", "1"):
        return os.environ["INVAR_RAG_PROGRESS"] == "1"
    return "ipykernel" not in sys.modules and sys.stderr.isatty()


def heartbeat_s() -> float:
    try:
        return float(os.environ.get("INVAR_RAG_HEARTBEAT_S", "60"))
    except ValueError:
        return 60.0


class Heartbeat:
    """A bar's interface (`update`, `set_postfix`, `close`) that prints a line per interval."""

    def __init__(self, total: int | None, initial: int, desc: str, unit: str, show: bool = True):
        self.total, self.n, self.desc, self.unit, self.show = total, initial, desc, unit, show
        self.t0 = self.last = time.perf_counter()
        self.postfix = ""

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.show and now - self.last >= heartbeat_s():
            self.last = now
            of = f"/{self.total}" if self.total else ""
            print(f"  {self.desc}: {self.unit} {self.n}{of}, {(now - self.t0) / 60:.1f} min"
                  + (f" ({self.postfix})" if self.postfix else ""), flush=True)

    def close(self) -> None:
        pass


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    if not interactive():
        return _beating(iterable, Heartbeat(total if total is not None else _len(iterable), 0, desc, unit))
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


def _len(iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _beating(iterable: Iterable[T], beat: Heartbeat) -> Iterator[T]:
    for item in iterable:
        yield item
        beat.update()


def step_bar(total: int, initial: int, desc: str, show: bool = True):
    """A bar for a training loop (`update()`, `set_postfix(loss=...)`, `close()`): tqdm in an
    interactive terminal, a `Heartbeat` elsewhere (silent where `show` is False)."""
    if not interactive():
        return Heartbeat(total, initial, desc, "step", show)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                disable=not show)
