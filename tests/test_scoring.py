"""Answer log-likelihoods (LSR) on the tiny random Llama."""
import pytest
import torch

from invar_rag_lib.llm.weights import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.scoring import answer_logliks


@pytest.fixture(scope="module")
def lm():
    return tiny_llama(seed=3).eval(), tiny_tokenizer()


def test_answer_logliks_match_a_hand_computation(lm):
    model, tok = lm
    prompt, answer = "Question: who wrote the iliad\nAnswer:", "Homer"
    p = tok(prompt)["input_ids"]
    a = tok(" Homer", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    expected = torch.stack([logp[len(p) - 1 + j, a[j]] for j in range(len(a))]).mean()
    got = answer_logliks(model, tok, [prompt], [answer])
    torch.testing.assert_close(got[0], expected, atol=1e-5, rtol=0)


def test_batching_and_order_do_not_change_scores(lm):
    model, tok = lm
    prompts = ["Passage: a b c\nQuestion: x\nAnswer:", "Q: short\nAnswer:",
               "Passage: the quick brown fox jumps over the lazy dog\nQuestion: what jumps\nAnswer:"]
    answers = ["the fox", "yes", "fox"]
    alone = torch.stack([answer_logliks(model, tok, [p], [a])[0] for p, a in zip(prompts, answers)])
    together = answer_logliks(model, tok, prompts, answers, batch_size=2)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert (together < 0).all()


def test_answer_logliks_rejects_mismatched_lengths(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        answer_logliks(model, tok, ["a", "b"], ["c"])
