"""One style for every figure of the study: print sizes, fonts, and two palettes.

Figures are drawn at their print size (`PAGE_W` for a two-column page, `COLUMN_W` for one column),
so the fonts set here (7–8 pt) are the sizes on paper. Retrievers have one colour, line style and
marker each, the same in every figure (baselines dashed, floors dotted, trained LLM variants solid);
datasets have their own palette (teal shades) that no retriever uses, so a colour never means two
things. Run-specific facts (n, counts) belong in captions, not titles.
"""
from __future__ import annotations

import seaborn as sns

PAGE_W = 7.0  # inches: a two-column paper's text width
COLUMN_W = 3.4  # inches: one column

RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
      "legend.fontsize": 7, "legend.title_fontsize": 7, "lines.linewidth": 1.2, "lines.markersize": 3.5,
      "axes.linewidth": 0.6, "grid.linewidth": 0.5, "patch.linewidth": 0.5}


def theme() -> None:
    """The study's seaborn theme at print size (call before drawing a figure)."""
    sns.set_theme(style="whitegrid", context="paper", rc=RC)


_TAB = sns.color_palette("tab10")

# name -> (colour, line style, marker)
RETRIEVER_STYLE = {
    "bm25": ((0.15, 0.15, 0.15), "--", "s"), "minilm": (_TAB[0], "--", "D"),
    "random": ((0.65, 0.65, 0.65), ":", "x"), "llm-zero": (_TAB[5], ":", "v"),
    "llm-ctr": (_TAB[1], "-", "^"), "llm-lsr": (_TAB[2], "-", "P"), "invar": (_TAB[3], "-", "o"),
    "invar-align": (_TAB[4], "-", "*"), "invar-inv": (_TAB[6], "-", "X"),
}

# a single series that is neither a retriever nor a dataset (corpus sources, the generator loss)
LINE = "#4a4a4a"

# training-group members (figures 02, 03): dark = positive, light = hard negative
PASSAGE_COLORS = {"positive": "#3b3b3b", "negative": "#c2c2c2"}

DATASET_COLORS = {"nq": "#08414c", "triviaqa": "#2a8c99", "popqa": "#7cc6cc"}
_EXTRA = ["#5c5c8a", "#b3b3d9"]


def style_of(name: str):
    """(colour, line style) of a retriever; names outside the study get a dash-dot line."""
    if name in RETRIEVER_STYLE:
        return RETRIEVER_STYLE[name][:2]
    return _TAB[8 + sum(map(ord, name)) % 2], "-."


def marker_of(name: str) -> str:
    return RETRIEVER_STYLE[name][2] if name in RETRIEVER_STYLE else "."


def dataset_colors(datasets) -> list:
    """One colour per dataset, from the dataset palette (never a retriever's colour)."""
    extra = iter(_EXTRA * 4)
    return [DATASET_COLORS.get(ds) or next(extra) for ds in datasets]
