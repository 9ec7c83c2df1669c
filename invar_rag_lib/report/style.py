"""One colour and line style per retriever, shared by every figure of the study."""
from __future__ import annotations

import seaborn as sns


# One colour and line style per retriever in every figure (a variant keeps its colour across panels
# and notebooks): baselines dashed, floors dotted, trained LLM variants solid.
_TAB = sns.color_palette("tab10")


RETRIEVER_STYLE = {
    "bm25": (_TAB[7], "--"), "minilm": (_TAB[0], "--"), "random": ((0.55, 0.55, 0.55), ":"),
    "llm-zero": (_TAB[5], ":"), "llm-ctr": (_TAB[1], "-"), "llm-lsr": (_TAB[2], "-"),
    "invar": (_TAB[3], "-"), "invar-align": (_TAB[4], "-"), "invar-inv": (_TAB[6], "-"),
}


def style_of(name: str):
    """(colour, line style) of a retriever; names outside the study get the remaining colours."""
    if name in RETRIEVER_STYLE:
        return RETRIEVER_STYLE[name]
    return _TAB[8 + hash(name) % 2], "-."
