"""Encode a synthetic corpus with the tiny LLM retriever through `LLMRetriever.encode_corpus` (sharded,
resumable) and save the merged representations: run directly (1 process) or under `accelerate
launch --num_processes 2` by tests/test_corpus_encoding.py, which compares the two.
Usage: SCRIPT OUT.npy (the cache under $INVAR_RAG_HOME)"""
import sys

import numpy as np

from invar_rag_lib.config import load_profile
from invar_rag_lib.llm.backbone import Backbone, LoraShape
from invar_rag_lib.llm.retriever import LLMRetriever

N_PASSAGES, SHARD = 150, 16
WORDS = ["paris", "river", "capital", "music", "war", "planet", "ocean", "king", "film", "gold", "tower", "sea"]


def passages() -> dict[str, dict]:
    return {f"p{i}": {"title": WORDS[i % 12], "text": " ".join(WORDS[(i * 5 + j * 7) % 12] for j in range(4 + i % 9))}
            for i in range(N_PASSAGES)}


def main(out: str) -> None:
    profile = load_profile("smoke")
    backbone = Backbone("tiny-random", LoraShape(2, 4, 8, 0.0, ("q_proj", "v_proj")), seed=0, log=lambda *a: None)
    retriever = LLMRetriever.from_profile(backbone, profile, passages())
    reps = retriever.encode_corpus(shard_size=SHARD, dtype="float16", log=print)
    from accelerate import PartialState

    if PartialState().is_main_process:
        np.save(out, np.asarray(reps))


if __name__ == "__main__":
    main(sys.argv[1])
