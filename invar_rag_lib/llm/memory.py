"""How much memory a profile's run needs, estimated before it starts, and a refusal when it cannot fit.

The model's shape comes from its config alone: the weights are counted on PyTorch's `meta` device
(no memory, no download), so a 7B model is sized in a second. The parts:

- **weights**: every parameter at the backbone's `retriever.dtype`;
- **adapters**: LoRA weights of both adapters, and for the one that trains its gradient and AdamW's
  two moments (float32);
- **activations**: one micro-batch through the layers that carry LoRA (the layers below are a
  cached, gradient-free trunk), per Korthikanti et al. (2022), s·b·h·(34 + 5·a·s/h) bytes per layer
  at 16 bits (twice at 32), or only each layer's input plus one layer's activations with
  `retriever.gradient_checkpointing`; plus the generator's logits;
- **index**: the passage index of `retriever.mode = "full"`, when the corpus size is known (a built
  benchmark, or `--passages`): float32 vectors for `flat` and `ivf` (faiss holds float32 whatever
  the stored dtype), plus 32 links each for `hnsw`, `index_pq_m` bytes + an 8-byte id for `ivfpq`;
  one device's share when faiss-gpu shards it (`index_gpus`) is this divided by the GPU count.

It is an estimate (allocator overhead and CUDA kernels' workspaces are not in it): a run is refused
only when the estimate alone exceeds the device's memory, with the field to change.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Llama-2-7B's config.json (the paper's backbone): enough to size it on the meta device without its weights
LLAMA2_7B_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                    "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
                    "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
GiB = 1024 ** 3


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    heads: int
    vocab: int
    lora_dims: tuple[tuple[int, int], ...]  # (in, out) of each LoRA target module in one layer


def model_config(backbone: str, convert: bool = True):
    """The transformers config of a backbone name (tiny-random, smollm2-135m, a local directory);
    without `convert`, a SmolLM2 not yet converted from its GGUF is a FileNotFoundError."""
    import transformers

    if backbone == "tiny-random":
        from .weights import tiny_llama

        return tiny_llama().config
    if backbone == "smollm2-135m":
        from ..paths import cache_dir
        from .weights import SMOLLM2_CACHE_NAME, ensure_smollm2_fp32

        path = cache_dir() / "models" / SMOLLM2_CACHE_NAME
        if convert:
            path = ensure_smollm2_fp32()
        elif not (path / "config.json").is_file():
            raise FileNotFoundError("SmolLM2 is not converted yet (the first notebook that loads it does)")
    else:
        path = Path(backbone).expanduser()
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (retriever.backbone must name a local Hugging Face model "
                                "directory)")
    return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def model_shape(config, targets) -> ModelShape:
    """Parameter count on the meta device, and the LoRA targets' shapes in one decoder layer."""
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    layer = model.model.layers[0]
    dims = tuple((m.in_features, m.out_features) for name, m in layer.named_modules()
                 if name.split(".")[-1] in set(targets) and isinstance(m, torch.nn.Linear))
    return ModelShape(params, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                      config.vocab_size, dims)


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, float]  # bytes
    fields: dict[str, str]  # part -> the profile field that shrinks it
    device: str
    available: float | None  # bytes; None when unknown

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        have = "unknown" if self.available is None else f"{self.available / GiB:.1f} GiB"
        return f"memory estimate: {self.total / GiB:.2f} GiB ({parts}) on {self.device}, which has {have}"

    def check(self) -> None:
        """Refuse (one line, naming the field to change) when the estimate exceeds the device."""
        from ..config import ConfigError

        if self.available is not None and self.total > self.available:
            worst = max(self.parts, key=self.parts.get)
            raise ConfigError(f"{self.describe()}: it cannot fit; the largest part is {worst} "
                              f"({self.parts[worst] / GiB:.1f} GiB): {self.fields[worst]}")


def _activations(shape: ModelShape, trained_layers: int, tokens: int, seq: int, bytes_per: int,
                 checkpointing: bool) -> float:
    per_layer = tokens * shape.hidden * (34 + 5 * shape.heads * seq / shape.hidden) * bytes_per / 2
    if checkpointing:  # each layer's input kept; one layer's activations recomputed at a time
        return trained_layers * tokens * shape.hidden * bytes_per + per_layer
    return trained_layers * per_layer


def device_memory(device: torch.device) -> float | None:
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory) if torch.cuda.is_available() else None
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def corpus_size(profile) -> int | None:
    from ..paths import processed_dir

    manifest = processed_dir(profile.name) / "manifest.json"
    try:
        return int(json.loads(manifest.read_text())["counts"]["corpus"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def estimate(profile, device: torch.device | None = None, shape: ModelShape | None = None,
             n_passages: int | None = None, available: float | None = None, convert: bool = True) -> MemoryEstimate:
    """The memory estimate of `profile`'s largest step on `device` (default: where it would run),
    against `available` bytes (default: that device's memory); `convert` as in `model_config`."""
    from .device import compute_device

    rc, s1, g = profile.retriever, profile.stage1, profile.generator
    device = device or compute_device()
    shape = shape or model_shape(model_config(rc.backbone, convert=convert), rc.lora_targets)
    bytes_w = torch.finfo(DTYPES[rc.dtype]).bits // 8
    act_bytes = max(bytes_w, 2)
    lora_per_layer = sum(rc.lora_r * (i + o) for i, o in shape.lora_dims)

    def lora(layers: int) -> int:
        return lora_per_layer * (layers or shape.layers)

    retr, gen = lora(rc.lora_layers), lora(g.lora_layers)
    adapters = 4 * (retr + gen) + 12 * max(retr, gen)  # weights (fp32), + grads and AdamW moments for one
    # stage 1's micro-batch: queries + their groups (+ environment texts), at the retriever's windows
    s1_tokens = s1.batch_size * (rc.query_max_len + s1.group_size * rc.max_len)
    s1_tokens += s1.env_batch_size * s1.env_group_size * max((rc.max_len, *s1.windows)) * (1 + s1.n_rewrites)
    s1_act = _activations(shape, rc.lora_layers or shape.layers, s1_tokens, rc.max_len, act_bytes,
                          rc.gradient_checkpointing)
    # stage 2's micro-batch: the prompt (k windows + question) and its answer, with float32 logits
    g_seq = g.k * (g.passage_tokens + 8) + 64 + g.max_new_tokens
    g_act = _activations(shape, g.lora_layers or shape.layers, g.batch_size * g_seq, g_seq, act_bytes,
                         rc.gradient_checkpointing) + g.batch_size * g_seq * shape.vocab * 4
    parts = {"weights": float(shape.params * bytes_w), "adapters": float(adapters),
             "activations": float(max(s1_act, g_act))}
    n_passages = n_passages if n_passages is not None else corpus_size(profile)
    if rc.mode == "full" and n_passages:
        per = {"ivfpq": rc.index_pq_m + 8, "hnsw": shape.hidden * 4 + 2 * 32 * 4}.get(rc.index, shape.hidden * 4)
        parts["index"] = float(n_passages * per)
    fields = {"weights": 'set retriever.dtype = "bfloat16" (on a GPU) or choose a smaller retriever.backbone',
              "adapters": "lower retriever.lora_r / generator.lora_r or lora_layers",
              "activations": "lower stage1.batch_size or generator.batch_size (raise grad_accum to keep the "
                             "global batch), or set retriever.gradient_checkpointing = true",
              "index": 'set retriever.index = "ivfpq" (index_pq_m bytes per passage) or retriever.mode = "rerank"'}
    return MemoryEstimate(parts, fields, str(device), available if available is not None else device_memory(device))


def preflight(profile, log=print) -> MemoryEstimate | None:
    """Before a run: print the estimate and refuse a run that cannot fit (`MemoryEstimate.check`)."""
    try:
        est = estimate(profile, convert=False)
    except FileNotFoundError as e:
        log(f"memory estimate: skipped ({e})")
        return None
    log(est.describe())
    est.check()
    return est
