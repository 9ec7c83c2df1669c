"""Progress bars where a person watches a terminal; silence in notebooks, CI logs and tests.

`progress(iterable, ...)` is tqdm when standard error is an interactive terminal (`invar-rag
train-retriever`, `make reproduce`'s library calls run inside notebook kernels and are not), and the
plain iterable otherwise, so executed notebooks never store frozen "0%" widgets. The loops that
use it print their own one-line summary.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    if os.environ.get("INVAR_RAG_PROGRESS") in ("0", "1"):
        return os.environ["INVAR_RAG_PROGRESS"] == "1"
    return "ipykernel" not in sys.modules and sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    if not interactive():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)


class _Silent:
    def update(self, n: int = 1, **postfix) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, total: int, initial: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        if postfix:
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def step_bar(total: int, initial: int, desc: str):
    """A bar for a training loop (`update(loss=...)` per step, `close()` at the end)."""
    return _Bar(total, initial, desc) if interactive() else _Silent()
