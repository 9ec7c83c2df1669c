"""Cheaper frozen passes on the CPU: the frozen trunk's linear layers in int8 (`retriever.trunk_quantization`).

With LoRA on the top `L` layers only, the layers below never train; every pass through them (the
corpus and training texts, LSR scoring, rewrites, decoding) runs their `nn.Linear`s as PyTorch's
dynamic int8 kernels instead of float32: weights per output channel, activations per batch.
`down_proj` stays float32, because its inputs carry this model's outlier activations (measured on
SmolLM2-135M: pooled h(x) keeps cosine 0.988 to the float32 one without it, 0.948 with it).
docs/stage1-recipe.md has the speed and accuracy measurements that chose it. CPU only.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch

KEEP_FLOAT = ("down_proj",)  # their inputs carry outlier activations
MODES = ("none", "int8")


@lru_cache(maxsize=1)
def _frozen_classes():
    """A dynamic int8 linear layer (and its packed weights) that loads nothing from a state dict:
    its weights come from the float32 ones at start-up, and peft loads an adapter through the whole
    model's `load_state_dict`, which would otherwise ask every int8 layer for its scale and weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams

    class FrozenInt8Linear(DynamicLinear):
        def _load_from_state_dict(self, *args, **kwargs):
            return

    class FrozenPackedParams(LinearPackedParams):
        def _load_from_state_dict(self, *args, **kwargs):
            return

    return FrozenInt8Linear, FrozenPackedParams


def quantize_trunk(model, split: int, mode: str) -> int:
    """Swap the `nn.Linear`s of decoder layers [0, split) for dynamic int8 ones (in place); returns how
    many were swapped. `mode` "none" does nothing. Call after every fingerprint of the float32
    weights is taken: a quantized layer has no float32 weights to hash."""
    if mode not in MODES:
        raise ValueError(f"unknown trunk quantization {mode!r}; valid are {list(MODES)}")
    if mode == "none" or split == 0:
        return 0
    from .encoder import decoder_of

    decoder = decoder_of(model)
    if decoder.embed_tokens.weight.device.type != "cpu":
        raise ValueError("trunk_quantization = 'int8' runs on the CPU only (PyTorch's dynamic int8 kernels); "
                         "use 'none' on a GPU")
    with warnings.catch_warnings():  # torch.ao's notice that new work should move to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        (frozen, frozen_params), swapped = _frozen_classes(), 0
        for layer in decoder.layers[:split]:
            for name, module in list(layer.named_modules()):
                if not isinstance(module, torch.nn.Linear) or name.rsplit(".", 1)[-1] in KEEP_FLOAT:
                    continue
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                quantized = quantize_dynamic(torch.nn.Sequential(module), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                             dtype=torch.qint8)[0]
                quantized.__class__ = frozen
                quantized._packed_params.__class__ = frozen_params
                setattr(parent, child, quantized)
                swapped += 1
    return swapped
