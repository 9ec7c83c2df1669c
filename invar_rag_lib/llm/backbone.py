"""`Backbone`: the one loaded base model of both stages, its named LoRA adapters and its trunk stores.

Both adapters, `retriever` (stage 1) and `generator` (stage 2), sit on the same frozen base weights,
each on its own top `L` decoder layers (docs/method.md §5). Below an adapter's first LoRA layer, its
*split*, every weight is frozen for it, so the hidden states there depend on the text alone: they are
computed once into a `TrunkCache` keyed by the fingerprint of the weights below the split.

This class is the one place that turns a depth into a split, fingerprints the weights and switches
adapters (`with backbone.adapter("retriever" | "generator" | None)`, None = the base model).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch

from ..paths import cache_dir
from .encoder import RETRIEVER_ADAPTER, decoder_of, lora_config, split_point, tokenize, trunk_states
from .quantize import quantize_trunk
from .trunk_cache import TrunkCache, trunk_fingerprint

RETRIEVER = RETRIEVER_ADAPTER  # stage 1's adapter
GENERATOR = "generator"  # stage 2's adapter


@dataclass(frozen=True)
class LoraShape:
    """Where an adapter sits and how big it is: LoRA on the top `layers` decoder layers (0 = all)."""
    layers: int
    r: int
    alpha: int
    dropout: float
    targets: tuple[str, ...]


def retriever_shape(profile) -> LoraShape:
    rc = profile.retriever
    return LoraShape(rc.lora_layers, rc.lora_r, rc.lora_alpha, rc.lora_dropout, tuple(rc.lora_targets))


def generator_shape(profile) -> LoraShape:
    g = profile.generator
    return LoraShape(g.lora_layers, g.lora_r, g.lora_alpha, g.lora_dropout, tuple(g.lora_targets))


class Backbone:
    """The base model (float32, eval mode) with the `retriever` adapter, the tokenizer, and the
    trunk stores. `adapters` maps each added adapter to its `LoraShape`."""

    def __init__(self, name: str, retriever: LoraShape, seed: int = 0, trunk_quantization: str = "none",
                 padding_side: str = "left", encode_batch_size: int = 16, other_depths: Sequence[int] = (),
                 dtype: str = "float32", log=print):
        from peft import get_peft_model

        from .weights import load_model

        self.name, self.seed, self.log = name, seed, log
        self.padding_side, self.encode_batch_size = padding_side, encode_batch_size
        torch.manual_seed(seed)  # the retriever adapter's initialisation
        base, self.tokenizer = load_model(name, seed=seed, dtype=dtype)
        if dtype != "float32" and next(base.parameters()).device.type == "cpu":
            log(f"note: retriever.dtype = {dtype!r} on the CPU, which has no native kernels for it "
                "(about 300x slower than float32 here); float32 is the CPU setting")
        self.n_layers = decoder_of(base).config.num_hidden_layers
        self.model = get_peft_model(base, self._lora(base, retriever), adapter_name=RETRIEVER)
        self.model.eval()
        self.adapters = {RETRIEVER: retriever}
        self.initial = {RETRIEVER: self.adapter_state(RETRIEVER)}  # every retriever variant starts here
        self.loaded: dict[str, str | None] = {RETRIEVER: None}  # digest of the weights now in each slot
        # Fingerprints of the float32 weights, tagged with the trunk's arithmetic (int8 states differ);
        # taken before any quantization, for every split this run will use.
        # (A bfloat16 / float16 backbone hashes its own, lower-precision weights: its caches are its own.)
        self.arithmetic = "" if trunk_quantization == "none" else f":{trunk_quantization}"
        self._fingerprints: dict[int, str] = {}
        for split in {self.split(RETRIEVER), *(split_point(self.model, d) for d in other_depths)}:
            self.fingerprint(split)
        self.model_fingerprint = trunk_fingerprint(self.model, self.n_layers,
                                                   extra=name + ":full" + self.arithmetic)
        quantize_trunk(self.model, self.split(RETRIEVER), trunk_quantization)
        self._trunks: dict[tuple[int, str], TrunkCache] = {}
        self._rep_stores: dict[str, TrunkCache] = {}

    @classmethod
    def from_profile(cls, profile, log=print) -> "Backbone":
        rc = profile.retriever
        return cls(rc.backbone, retriever_shape(profile), seed=profile.seed,
                   trunk_quantization=rc.trunk_quantization, padding_side=rc.padding_side,
                   encode_batch_size=rc.encode_batch_size, other_depths=(profile.generator.lora_layers,),
                   dtype=rc.dtype, log=log)

    def _lora(self, model, shape: LoraShape):
        return lora_config(model, shape.layers, shape.r, shape.alpha, shape.dropout, shape.targets)

    # --- adapters -----------------------------------------------------------------------------
    def add_adapter(self, name: str, shape: LoraShape, replace: bool = False) -> None:
        """A further named adapter (the `generator`), initialised from the profile's seed, so its
        initial weights do not depend on what ran before. Adding it again with the same shape is a
        no-op; with another shape it is refused, unless `replace` (a sweep over depths), which
        deletes the old one first."""
        if name in self.adapters:
            if self.adapters[name] == shape:
                return
            if not replace:
                raise ValueError(f"adapter {name!r} exists with another shape ({self.adapters[name]}); "
                                 f"reload the backbone for {shape}")
            if name == RETRIEVER:
                raise ValueError("the retriever adapter is the backbone's first and is never replaced")
            self.model.delete_adapter(name)
            del self.adapters[name], self.initial[name], self.loaded[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model.add_adapter(name, self._lora(self.model, shape))
        self.adapters[name] = shape
        self.initial[name] = self.adapter_state(name)
        self.loaded[name] = None
        self.model.eval()

    def split(self, adapter: str) -> int:
        """Index of the first decoder layer that carries `adapter`'s LoRA (0 = every layer: no trunk)."""
        return split_point(self.model, self.adapters[adapter].layers)

    @contextlib.contextmanager
    def adapter(self, name: str | None):
        """Run with `name` as the active adapter, or with every adapter off (None); restores the
        previous active adapter afterwards."""
        if name is None:
            with self.model.disable_adapter():
                yield
            return
        if name not in self.adapters:
            raise KeyError(f"no adapter {name!r}; added: {sorted(self.adapters)}")
        before = self.model.active_adapter
        if before != name:
            self.model.set_adapter(name)
        try:
            yield
        finally:
            if self.model.active_adapter != before:
                self.model.set_adapter(before)

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        from ..training import lora_state

        return lora_state(self.model, name)

    def load_adapter_state(self, name: str, state: dict[str, torch.Tensor], digest: str | None = None) -> None:
        """Put `state` into the `name` slot; `digest` names it (so a value holding the same weights
        does not load them again)."""
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.model, state, adapter_name=name)
        self.loaded[name] = digest

    def reset_adapter(self, name: str) -> None:
        """The slot back to its initial weights (every variant trains from them)."""
        self.load_adapter_state(name, self.initial[name], digest="initial")

    def mark_changed(self, name: str) -> None:
        """The weights of `name` are being changed in place (training): no value owns them now."""
        self.loaded[name] = None

    # --- fingerprints and trunk states ---------------------------------------------------------
    def fingerprint(self, split: int) -> str:
        """Hash of the float32 weights below `split` (what its trunk states depend on)."""
        if split not in self._fingerprints:
            if self.arithmetic:
                raise ValueError(f"no fingerprint of the weights below layer {split} was taken before the trunk was "
                                 "quantized; pass that depth to the Backbone (other_depths)")
            self._fingerprints[split] = trunk_fingerprint(self.model, split, extra=self.name + self.arithmetic)
        return self._fingerprints[split]

    def trunk(self, split: int, store: str = "trunk") -> TrunkCache:
        """The trunk-state store for `split` under `data/cache/<store>/` (the generator's long
        sequences live in their own store, so stage 1 never loads them). In memory only for split 0."""
        key = (split, store)
        if key not in self._trunks:
            self._trunks[key] = TrunkCache(cache_dir() / store, self.fingerprint(split), log=self.log,
                                           persist=split > 0)
        return self._trunks[key]

    def states(self, texts: Sequence[str], window: int, split: int | None = None,
               cache: bool = True) -> list[torch.Tensor]:
        """Trunk states (the input of layer `split`; default the retriever's) of `texts` read as the
        retriever reads them: at most `window - 1` tokens, then EOS. Computed with every adapter
        off (the trunk is base weights), once per (text, window); with `cache=False` computed and not
        kept (a corpus of millions of passages is encoded once, and its trunk states would fill the disk)."""
        split = self.split(RETRIEVER) if split is None else split

        def compute(batch_texts):
            with self.adapter(None):
                return trunk_states(self.model, tokenize(self.tokenizer, batch_texts, window, self.padding_side), split)

        if not cache:
            return compute(list(texts))
        return self.trunk(split).get_or_compute(texts, window, compute, self.encode_batch_size, log=self.log)

    def rep_store(self, key: str) -> TrunkCache:
        """The persisted pooled representations of one retriever value (`LLMRetriever.key`), one
        store per key, so its shards are read from disk once per run."""
        if key not in self._rep_stores:
            self._rep_stores[key] = TrunkCache(cache_dir() / "reps", key, log=self.log, label="passage reps")
        return self._rep_stores[key]
