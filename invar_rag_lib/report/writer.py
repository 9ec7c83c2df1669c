"""Results JSON, tables (md/csv/tex) and figures, each written atomically under a reports dir.

Every results file carries its provenance: resolved config, seed, package versions, git revision.
Figures and tables are made from results files only, so `invar-rag report` can redo them without
any model.
"""
from __future__ import annotations

import importlib.metadata
import io
import json
import platform
from datetime import datetime, timezone
import subprocess
from pathlib import Path
from typing import Any

from ..config import Profile
from ..io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..paths import repo_root, reports_dir, shown

PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "faiss-cpu", "bm25s",
            "datasets", "numpy")


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(),
                             capture_output=True, text=True, check=True).stdout.strip()
        # Generated outputs do not make the code dirty: the run itself rewrites reports/.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":(exclude)reports", ":(exclude)data"],
                               cwd=repo_root(), capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(profile: Profile) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"profile": profile.name, "seed": profile.seed, "config": profile.to_dict(),
            "git_revision": git_revision(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "packages": versions}


class Reports:
    """Paths and writers for one profile's reports directory."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self.root = reports_dir(profile.reports_dir)

    @staticmethod
    def relative(path: str | Path) -> str:
        """A path as printed in notebooks: relative to the checkout, so outputs do not leak it."""
        return shown(path, levels_up=0)

    def results_path(self, name: str) -> Path:
        return self.root / "results" / f"{name}.json"

    def write_results(self, name: str, payload: dict) -> Path:
        """The results JSON with its provenance, sealed like a cache (a `.sha256` digest beside it), so
        a results file edited or damaged after the run is refused by `read_results`, never re-tabled."""
        from ..integrity import write_sealed

        obj = {"provenance": provenance(self.profile), **payload}
        return write_sealed(self.results_path(name), (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)
                                                      + "\n").encode())

    def read_results(self, name: str) -> dict:
        from ..integrity import IntegrityError, read_sealed

        path = self.results_path(name)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run the notebook that writes it first")
        notebook = name.split("_")[0]
        try:
            obj = json.loads(read_sealed(path).decode("utf-8"))
        except IntegrityError as e:
            raise IntegrityError(path, f"{e.reason}: results are written by their notebook only; restore the file "
                                 f"(git checkout) or rerun notebook {notebook}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}); restore it (git checkout) or rerun notebook "
                             f"{notebook}") from None
        if not isinstance(obj, dict) or "provenance" not in obj:
            raise ValueError(f"{path} is not a results file (no provenance); restore it or rerun notebook {notebook}")
        return obj

    def write_table(self, df, stem: str, caption: str = "") -> dict[str, Path]:
        base = self.root / "tables" / stem
        out = {"md": atomic_write_text(base.with_suffix(".md"), to_markdown(df, caption)),
               "csv": atomic_write_text(base.with_suffix(".csv"), df.to_csv(index=True)),
               "tex": atomic_write_text(base.with_suffix(".tex"),
                                        df.to_latex(index=True, caption=latex_escape(caption) or None,
                                                    label=f"tab:{stem}", escape=True))}
        return out

    def save_figure(self, fig, stem: str) -> dict[str, Path]:
        base = self.root / "figures" / stem
        out = {}
        import matplotlib

        # TrueType (Type 42) fonts in the PDF, as journals ask, instead of Type 3 bitmaps.
        with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
            for fmt, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt, dpi=300, bbox_inches="tight", metadata=meta)
                out[fmt] = atomic_write_bytes(base.with_suffix(f".{fmt}"), buf.getvalue())
        return out


def to_markdown(df, caption: str = "") -> str:
    """A GitHub table without the `tabulate` dependency."""
    index_name = df.index.name or ""
    header = [index_name] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for idx, *values in df.itertuples(index=True, name=None):  # per column's own type (iterrows makes 199 199.0)
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in values]) + " |")
    return (f"{caption}\n\n" if caption else "") + "\n".join(lines) + "\n"


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """pandas escapes cells but not the caption."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def fmt_ci(m: dict, scale: float = 100.0, digits: int = 1) -> str:
    """'72.0 [63.0, 80.0]' from a bootstrap_ci dict."""
    return f"{m['mean'] * scale:.{digits}f} [{m['low'] * scale:.{digits}f}, {m['high'] * scale:.{digits}f}]"
