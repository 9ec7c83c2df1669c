"""Where the models run: one rule for the LLM, MiniLM, training and retrieval."""
from __future__ import annotations

import os

import torch


DEVICE_ENV = "INVAR_RAG_DEVICE"


def compute_device() -> torch.device:
    """Where the LLM and MiniLM run: the GPU when torch sees one, else the CPU.

    `INVAR_RAG_DEVICE=cpu` keeps everything on the CPU on a GPU machine; `=cuda` fails loudly when
    there is no GPU. On a GPU, float32 matrix products use TF32 (about 3x faster on an H100; the
    results differ from the CPU's in the fourth significant digit)."""
    want = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if want not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV}={want!r}: use auto, cpu or cuda")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}=cuda, but torch sees no GPU (torch {torch.__version__}); "
                           "unset it to run on the CPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda")
