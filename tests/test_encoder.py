"""The LLM bi-encoder: EOS pooling under both padding sides, the trunk cache, LoRA-only updates."""
import pytest
import torch

from invar_rag_lib.llm.weights import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.encoder import (RETRIEVER_ADAPTER, add_retriever_adapter, encode_full, format_passage, format_query, last_token_pool,
                                       split_point, tokenize, trunk_states)
from invar_rag_lib.llm.retriever import TopEncoder
from invar_rag_lib.llm.trunk_cache import TrunkCache, trunk_fingerprint


def encode_from_trunk(model, states, split, side="left", pooling="eos"):
    """h(x) from trunk states by the retriever module that training and evaluation use."""
    return TopEncoder(model, split, side, pooling).encode(states)

TEXTS = [format_query("who wrote the iliad"),
         format_passage("Iliad", "The Iliad is an ancient Greek epic poem attributed to Homer. " * 3),
         format_passage("", "short")]


@pytest.fixture()
def model_and_tok():
    tok = tiny_tokenizer()
    model = add_retriever_adapter(tiny_llama(seed=1), lora_layers=2, r=4, alpha=8, dropout=0.0,
                                  target_modules=["q_proj", "v_proj", "up_proj"])
    # LoRA B starts at zero (a no-op); perturb it so the cached-vs-plain checks see the adapter.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval(), tok


@pytest.mark.parametrize("side", ["left", "right"])
def test_pooled_position_is_the_eos(model_and_tok, side):
    _, tok = model_and_tok
    batch = tokenize(tok, TEXTS, max_len=24, padding_side=side)
    assert batch.attention_mask.sum(1).tolist() != [batch.input_ids.shape[1]] * len(TEXTS)  # padding happened
    positions = torch.arange(batch.input_ids.shape[1]).expand_as(batch.input_ids)
    pooled = last_token_pool(positions.unsqueeze(-1).float(), batch.attention_mask).squeeze(-1).long()
    rows = torch.arange(len(TEXTS))
    assert (batch.input_ids[rows, pooled] == tok.eos_token_id).all()
    assert (batch.attention_mask[rows, pooled] == 1).all()


def test_truncation_keeps_room_for_the_eos(model_and_tok):
    _, tok = model_and_tok
    batch = tokenize(tok, TEXTS, max_len=10, padding_side="right")
    assert batch.input_ids.shape[1] == 10
    assert batch.input_ids[1, 9].item() == tok.eos_token_id


def test_left_and_right_padding_give_the_same_representation(model_and_tok):
    model, tok = model_and_tok
    left = encode_full(model, tokenize(tok, TEXTS, 24, "left"), "eos")
    right = encode_full(model, tokenize(tok, TEXTS, 24, "right"), "eos")
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    assert torch.allclose(left.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_trunk_cache_path_equals_plain_forward(model_and_tok, side, tmp_path):
    model, tok = model_and_tok
    split = split_point(model, 2)
    assert split == 2
    calls = []

    def compute(texts):
        calls.append(len(texts))
        return trunk_states(model, tokenize(tok, texts, 24, side), split)

    cache = TrunkCache(tmp_path, trunk_fingerprint(model, split))
    states = cache.get_or_compute(TEXTS, 24, compute, batch_size=2)
    cached = encode_from_trunk(model, states, split, side)
    plain = encode_full(model, tokenize(tok, TEXTS, 24, side), "eos")
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)
    assert calls == [2, 1]
    # A second object on the same directory reads the shard instead of computing.
    again = TrunkCache(tmp_path, trunk_fingerprint(model, split)).get_or_compute(
        list(reversed(TEXTS)), 24, lambda t: pytest.fail("recomputed a cached text"))
    torch.testing.assert_close(encode_from_trunk(model, list(reversed(again)), split, side), plain,
                               atol=1e-5, rtol=0)


def test_one_step_changes_lora_weights_and_nothing_else(model_and_tok):
    model, tok = model_and_tok
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and f".{RETRIEVER_ADAPTER}." in n for n in trainable)
    assert all(".layers.2." in n or ".layers.3." in n for n in trainable)  # top 2 of 4 layers only
    split = split_point(model, 2)
    states = trunk_states(model, tokenize(tok, TEXTS, 24, "left"), split)
    reps = encode_from_trunk(model, states, split)
    loss = -(reps[0] @ reps[1]) + (reps[0] @ reps[2])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_trunk_fingerprint_tracks_trunk_weights_not_lora(model_and_tok):
    model, _ = model_and_tok
    split = split_point(model, 2)
    fp = trunk_fingerprint(model, split)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_A" in n).add_(1.0)
        assert trunk_fingerprint(model, split) == fp
        next(p for n, p in model.named_parameters() if ".layers.0." in n).add_(1.0)
        assert trunk_fingerprint(model, split) != fp


def test_lora_layers_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="lora_layers"):
        add_retriever_adapter(tiny_llama(seed=0), lora_layers=9, r=2, alpha=4, dropout=0.0,
                              target_modules=["q_proj"])
