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


def step_bar(total: int, initial: int, desc: str, show: bool = True):
    """A bar for a training loop (`update()`, `set_postfix(loss=...)`, `close()`); tqdm's own
    `disable` makes it a no-op outside an interactive terminal, or where `show` is False."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, dynamic_ncols=True,
                disable=not (show and interactive()))
