"""The executed notebooks committed under reports/executed read cleanly: no warnings, no progress
widgets, no paths of the machine that ran them, and each ends with its generated summary."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

EXECUTED = sorted((Path(__file__).resolve().parent.parent / "reports" / "executed").glob("[0-9][0-9]_*.ipynb"))
ABSOLUTE = re.compile(r"(/work/|/home/|/tmp/|/root/|/Users/|site-packages|[A-Z]:\\\\)")


def _outputs(nb: dict):
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            yield out


def _text(out: dict) -> str:
    if "text" in out:
        return "".join(out["text"])
    return "".join("".join(v) if isinstance(v, list) else str(v) for k, v in out.get("data", {}).items()
                   if k.startswith("text/"))


@pytest.mark.skipif(not EXECUTED, reason="no executed notebooks committed")
@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.name)
def test_executed_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    for out in _outputs(nb):
        text = _text(out)
        assert "Warning" not in text, f"{path.name}: a warning in the output: {text[:200]!r}"
        assert "application/vnd.jupyter.widget-view+json" not in out.get("data", {}), f"{path.name}: a widget"
        assert not ABSOLUTE.search(text), f"{path.name}: a machine path in the output: {ABSOLUTE.search(text)[0]!r}"
        assert out.get("output_type") != "error", f"{path.name}: an error output"
    assert "widgets" not in nb["metadata"], f"{path.name}: widget state saved with the notebook"
    meta = json.dumps(nb["metadata"])
    assert not ABSOLUTE.search(meta), f"{path.name}: a machine path in the metadata"
    last = _text(list(_outputs({"cells": nb["cells"][-1:]}))[0]) if nb["cells"][-1].get("outputs") else ""
    assert "What this shows" in last, f"{path.name} does not end with its generated summary"
