"""The LLM bi-encoder of docs/method.md §1, with the trunk cache of §5.

Representation: `"query: {q}"` / `"passage: {title} {text}"`, truncated to `max_len - 1` tokens,
EOS appended; h(x) = a pooling of the final-layer hidden states, L2-normalised: `"eos"` (the state
at the EOS, i.e. the last real position: RepLLaMA) or `"mean"` (the mean over every real token,
EOS included). `POOLINGS` lists them; `retriever.pooling` picks one.
Only the LoRA weights of the peft adapter named `retriever` train, and only on the top `L`
decoder layers. Everything below is frozen, so its output ("the trunk") depends on the text alone
and is computed once (`TrunkCache`); a training step then runs just the top `L` layers.

Position ids always come from the attention mask (`cumsum - 1`), so a token's hidden state does
not depend on how much padding its batch needed or on which side: that is what makes trunk
states reusable across batches, and left and right padding interchangeable.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .padding import pad_id, pad_token_rows

RETRIEVER_ADAPTER = "retriever"


def format_query(question: str, template: str = "query: {q}") -> str:
    return template.format(q=question)


def format_passage(title: str, text: str, template: str = "passage: {title} {text}") -> str:
    return " ".join(template.format(title=title, text=text).split())


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D]: the hidden state at each row's last real token (the EOS), for left or
    right padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D] -> [B, D]: the mean of each row's real (non-padding) token states."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


POOLINGS = {"eos": last_token_pool, "mean": mean_pool}


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def tokenize(tokenizer, texts: Sequence[str], max_len: int, padding_side: str = "left") -> Batch:
    """Truncate to `max_len - 1` tokens (special tokens such as a BOS included), append EOS, pad."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the representation is read at the EOS")
    ids = [tokenizer(t, add_special_tokens=True, truncation=True, max_length=max_len - 1)["input_ids"]
           + [tokenizer.eos_token_id] for t in texts]
    return Batch(*pad_token_rows(ids, pad_id(tokenizer), padding_side))


def decoder_of(model):
    """The LlamaModel inside a causal LM, peft-wrapped or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


_CHECKPOINTING = contextvars.ContextVar("layer_checkpointing", default=False)


@contextlib.contextmanager
def layer_checkpointing(enabled: bool):
    """Inside this block, layers run with gradients are checkpointed (`retriever.gradient_checkpointing`):
    their activations are recomputed in the backward pass instead of kept. Same loss and gradients."""
    token = _CHECKPOINTING.set(enabled)
    try:
        yield
    finally:
        _CHECKPOINTING.reset(token)


def call_layer(layer, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
    """`layer(hidden, **kwargs)`, checkpointed inside `layer_checkpointing(True)` when gradients are on."""
    if _CHECKPOINTING.get() and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(layer, hidden, use_reentrant=False, **kwargs)
    return layer(hidden, **kwargs)


def run_layers(decoder, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int,
               end: int, final_norm: bool) -> torch.Tensor:
    """Run decoder layers [start, end) on `hidden` ([B, T, D]); mirrors LlamaModel.forward."""
    from transformers.masking_utils import create_causal_mask

    position_ids = positions_from_mask(attention_mask)
    causal_mask = create_causal_mask(config=decoder.config, inputs_embeds=hidden,
                                     attention_mask=attention_mask, cache=None,
                                     position_ids=position_ids)
    position_embeddings = decoder.rotary_emb(hidden, position_ids=position_ids)
    for layer in decoder.layers[start:end]:
        hidden = call_layer(layer, hidden, attention_mask=causal_mask, position_embeddings=position_embeddings,
                            position_ids=position_ids, cache=None, use_cache=False)
    return decoder.norm(hidden) if final_norm else hidden


def split_point(model, lora_layers: int) -> int:
    """Index of the first decoder layer that carries LoRA (0 = LoRA everywhere, no trunk)."""
    n = decoder_of(model).config.num_hidden_layers
    if not 0 <= lora_layers <= n:
        raise ValueError(f"lora_layers must be in 0..{n} for this model, got {lora_layers}")
    return 0 if lora_layers == 0 else n - lora_layers


def encode_hidden(model, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int,
                  pooling: str) -> torch.Tensor:
    """h(x) from the input of layer `start` ([B, T, D]): layers [start, N), final norm, pooling
    (`POOLINGS`), L2 norm. Inputs are moved to the model's device and dtype (states live on the CPU)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid are {sorted(POOLINGS)}")
    decoder = decoder_of(model)
    weight = decoder.norm.weight
    hidden, attention_mask = hidden.to(weight.device, weight.dtype), attention_mask.to(weight.device)
    hidden = run_layers(decoder, hidden, attention_mask, start, decoder.config.num_hidden_layers, final_norm=True)
    return F.normalize(POOLINGS[pooling](hidden, attention_mask).float(), dim=-1)


def encode_full(model, batch: Batch, pooling: str) -> torch.Tensor:
    """h(x) by a plain forward through every layer: [B, D], L2-normalised."""
    embed = decoder_of(model).embed_tokens
    return encode_hidden(model, embed(batch.input_ids.to(embed.weight.device)), batch.attention_mask, 0,
                         pooling)


@torch.no_grad()
def trunk_states(model, batch: Batch, split: int) -> list[torch.Tensor]:
    """Frozen-trunk output (hidden_states[split] of the full model) per text, unpadded, float32,
    on the CPU (where the trunk cache keeps them) wherever the model runs."""
    decoder = decoder_of(model)
    device = decoder.embed_tokens.weight.device
    mask = batch.attention_mask.to(device)
    hidden = decoder.embed_tokens(batch.input_ids.to(device))
    hidden = run_layers(decoder, hidden, mask, 0, split, final_norm=False).float().cpu()
    return [h[m.bool()].clone() for h, m in zip(hidden, batch.attention_mask)]


def lora_config(model, lora_layers: int, r: int, alpha: int, dropout: float, target_modules: Sequence[str]):
    """A peft LoraConfig on the top `lora_layers` decoder layers (0 = all): the shape of both the
    `retriever` and the `generator` adapter, so the layers below stay one shared frozen trunk."""
    from peft import LoraConfig

    n = decoder_of(model).config.num_hidden_layers
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      layers_to_transform=list(range(split_point(model, lora_layers), n)), bias="none")


def set_lora_dropout(model, adapter_name: str, p: float) -> None:
    """Set the dropout on the inputs of `adapter_name`'s LoRA modules to `p` (0 = none: peft's
    Identity, no random masks; the weights and their initialisation are unchanged)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict) and adapter_name in dropouts:
            dropouts[adapter_name] = torch.nn.Dropout(p) if p > 0 else torch.nn.Identity()


def add_retriever_adapter(model, lora_layers: int, r: int, alpha: int, dropout: float,
                          target_modules: Sequence[str], adapter_name: str = RETRIEVER_ADAPTER):
    """Wrap `model` with a named peft LoRA adapter on the top `lora_layers` layers (0 = all);
    every base weight is frozen."""
    from peft import get_peft_model

    config = lora_config(model, lora_layers, r, alpha, dropout, target_modules)
    return get_peft_model(model, config, adapter_name=adapter_name)
