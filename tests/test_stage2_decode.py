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


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_decoding_several_readers_with_a_shared_trunk_equals_decoding_each_alone(lm, attn):
    """`decode_readers`: two readers (the model, and the model with its top layers changed, as an
    adapter on the top layers does) share the prefill below the split and drop finished rows; each
    reader's answers equal `greedy_decode`'s with that reader alone."""
    import contextlib
    import copy

    from invar_rag_lib.llm.decode_readers import decode_readers

    model, tok = lm
    other = copy.deepcopy(model)
    with torch.no_grad():  # another "adapter": the top two layers differ
        for layer in other.model.layers[2:]:
            for p in layer.parameters():
                p.mul_(0.8)

    @contextlib.contextmanager
    def use(weights):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(weights)
        try:
            yield
        finally:
            model.load_state_dict(before)

    base_answers = greedy_decode(model, tok, PROMPTS, 8, batch_size=3, attn_implementation=attn)
    with use(other.state_dict()):
        other_answers = greedy_decode(model, tok, PROMPTS, 8, batch_size=3, attn_implementation=attn)
    stats = [DecodeStats(), DecodeStats()]
    got = decode_readers(model, tok, PROMPTS, [contextlib.nullcontext, lambda: use(other.state_dict())], split=2,
                         max_new_tokens=8, batch_size=3, stats=stats, attn_implementation=attn)
    assert got == [base_answers, other_answers]
    assert base_answers != other_answers, "the two readers must differ for the test to mean anything"
    alone = decode_readers(model, tok, PROMPTS, [contextlib.nullcontext], split=0, max_new_tokens=8, batch_size=4)
    assert alone == [base_answers]
    assert stats[0].prompts == len(PROMPTS) and 0 < stats[0].generated_tokens <= 8 * len(PROMPTS)
