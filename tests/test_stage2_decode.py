"""Greedy decoding with the shared-prefix cache equals decoding each prompt alone, without it."""
import pytest
import torch

from invar_rag_lib.llm.weights import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.decode import DecodeStats, Prompt, greedy_decode, prompt_ids, stop_token_ids


@pytest.fixture(scope="module")
def lm():
    model = tiny_llama(seed=5).eval()
    with torch.no_grad():  # sharper logits: a random tiny model otherwise repeats one token
        for p in model.parameters():
            p.mul_(3.0)
    return model, tiny_tokenizer()


PREFIX = "Answer briefly.\n\nQuestion: who wrote the iliad\nAnswer: Homer\n\n"
PROMPTS = [Prompt(PREFIX, f"Passage: the {'long ' * i}story of item {i * 7}\nQuestion: what is {i}?\nAnswer:")
           for i in range(7)]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_shared_prefix_cache_is_exact(lm, attn):
    model, tok = lm
    shared = greedy_decode(model, tok, PROMPTS, 8, batch_size=3, share_prefix=True, attn_implementation=attn)
    plain = greedy_decode(model, tok, PROMPTS, 8, batch_size=3, share_prefix=False, attn_implementation=attn)
    alone = [greedy_decode(model, tok, [p], 8, batch_size=1, share_prefix=False, attn_implementation=attn)[0]
             for p in PROMPTS]
    assert shared == plain == alone
    assert len(set(alone)) > 2, "outputs must differ between prompts for the test to mean anything"
    assert model.config._attn_implementation == "eager"  # restored


def test_stats_count_the_prefix_once_when_shared(lm):
    model, tok = lm
    on, off = DecodeStats(), DecodeStats()
    greedy_decode(model, tok, PROMPTS, 4, batch_size=4, share_prefix=True, stats=on)
    greedy_decode(model, tok, PROMPTS, 4, batch_size=4, share_prefix=False, stats=off)
    prefix, _ = prompt_ids(tok, PROMPTS[0])
    assert off.prompt_tokens - on.prompt_tokens >= (len(PROMPTS) - 1) * len(prefix)
    assert on.prompts == off.prompts == len(PROMPTS)
    assert 0 < on.generated_tokens <= 4 * len(PROMPTS)


def test_answers_stop_at_a_newline(lm):
    model, tok = lm
    stops = stop_token_ids(tok)
    assert tok.eos_token_id in stops
    assert all("\n" in tok.decode([i]) for i in stops if i != tok.eos_token_id)
    out = greedy_decode(model, tok, PROMPTS, 12, batch_size=4)
    assert all("\n" not in o for o in out)


def test_share_prefix_needs_one_prefix(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="one common prefix"):
        greedy_decode(model, tok, [PROMPTS[0], Prompt("other\n", "Question: x\nAnswer:")], 4)
