"""Disk cache of frozen-trunk hidden states, keyed by trunk fingerprint, window and text.

(The same store keeps pooled passage representations, keyed by everything they depend on:
`llm.retriever.LLMRetriever.key`.)

With LoRA on the top `L` layers only, the output of the layers below depends on the text alone
(docs/method.md §5), so it is computed once and reused by every training step, epoch, variant and
evaluation. States are stored unpadded in float32 (so the cached path equals a plain forward),
in safetensors shards; each `get_or_compute` that has new texts writes one new shard atomically.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..integrity import load_or_none, read_sealed, write_sealed
from ..io_utils import sha256_text
from ..progress import progress


def hash_tensors(h, named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed (name, tensor) pairs into the hash `h`, each tensor as its float32 bytes."""
    for name, tensor in named:
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())


def trunk_fingerprint(model, split: int, extra: str = "") -> str:
    """Hash of the weights that the trunk states depend on (embeddings + layers below `split`).

    Base-weight names are read without peft's `.base_layer` infix, so the hash does not depend on
    which layers carry a LoRA adapter (LoRA weights themselves are left out)."""
    from .encoder import decoder_of

    decoder = decoder_of(model)
    h = hashlib.sha256(f"split={split};{extra}".encode())
    modules = [decoder.embed_tokens, *decoder.layers[:split]]
    for module in modules:
        hash_tensors(h, ((name.replace(".base_layer", ""), tensor) for name, tensor in
                         sorted(module.state_dict().items()) if "lora_" not in name))
    return h.hexdigest()[:16]


class TrunkCache:
    """With `persist=False` the states live in memory only: with LoRA on every layer the "trunk" is
    the embedding lookup, cheaper to redo than to write (gigabytes at the gpu profile's scale)."""

    def __init__(self, root: str | Path, fingerprint: str, log=print, persist: bool = True,
                 label: str = "trunk states"):
        self.dir, self.log, self.persist, self.label = Path(root) / fingerprint, log, persist, label
        self.states: dict[str, torch.Tensor] = {}
        self.shards = sorted(self.dir.glob("shard-*.safetensors")) if persist and self.dir.exists() else []
        self._loaded = False

    @staticmethod
    def key(text: str, max_len: int) -> str:
        return sha256_text(text, str(max_len))[:32]

    def _load(self) -> None:
        from safetensors.torch import load

        if not self._loaded:
            good = []
            for shard in self.shards:
                states = load_or_none(shard, lambda p: load(read_sealed(p)), f"{self.label} shard", self.log)
                if states is not None:  # a damaged shard is deleted; its texts are recomputed on demand
                    self.states.update(states)
                    good.append(shard)
            self.shards = good
            self._loaded = True

    def __len__(self) -> int:
        self._load()
        return len(self.states)

    def get_or_compute(self, texts: Sequence[str], max_len: int,
                       compute: Callable[[list[str]], list[torch.Tensor]], batch_size: int | None = 16,
                       log=None) -> list[torch.Tensor]:
        """States for `texts` (in order); `compute(texts)` is called, in batches, for new ones
        (`batch_size=None`: one call with every new text, which then batches as it likes)."""
        from safetensors.torch import save as save_bytes

        self._load()
        keys = [self.key(t, max_len) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.states))
        if todo:
            text_of = dict(zip(keys, texts))
            if log:
                log(f"{self.label}: computing {len(todo)} new texts (window {max_len}), "
                    f"{len(set(keys)) - len(todo)} cached")
            new: dict[str, torch.Tensor] = {}
            size = batch_size or len(todo)
            starts = range(0, len(todo), size)
            for i in (progress(starts, self.label, unit="batch") if batch_size else starts):
                chunk = todo[i:i + size]
                for k, state in zip(chunk, compute([text_of[k] for k in chunk])):
                    new[k] = state.detach().to(torch.float32).contiguous()
            if self.persist:
                shard = self.dir / f"shard-{len(self.shards):05d}-{sha256_text(*todo)[:8]}.safetensors"
                write_sealed(shard, save_bytes(new))
                self.shards.append(shard)
            self.states.update(new)
        return [self.states[k] for k in keys]
