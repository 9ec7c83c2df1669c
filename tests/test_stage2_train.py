"""The generator adapter: its trunk-cached loss equals a full forward, only it trains, reuse works."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from invar_rag_lib.config import load_profile
from invar_rag_lib.llm.backbone import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.encoder import add_retriever_adapter, split_point
from invar_rag_lib.llm.trunk_cache import TrunkCache
from invar_rag_lib.training import lora_state
from invar_rag_lib.llm.decode import Prompt
from invar_rag_lib.stage2.train import (GENERATOR_ADAPTER, Example, GeneratorData, GeneratorTop,
                                        add_generator_adapter, sequence_ids, train_generator)

EXAMPLES = [Example(Prompt("Answer.\n\n", f"Passage: item {i} is {'very ' * i}red\nQuestion: what is {i}?\nAnswer:"),
                    f"colour {i}") for i in range(8)]


@pytest.fixture
def stage(tmp_path):
    profile = load_profile("smoke")
    model = add_retriever_adapter(tiny_llama(seed=1), profile.retriever.lora_layers, 8, 16, 0.0,
                                  profile.retriever.lora_targets)
    add_generator_adapter(model, profile)
    model.eval()
    split = split_point(model, profile.retriever.lora_layers)
    st = SimpleNamespace(model=model, tokenizer=tiny_tokenizer(), split=split, log=lambda *a: None)
    return profile, st, TrunkCache(tmp_path / "trunk", "test")


def test_cached_loss_equals_a_full_forward(stage):
    profile, st, trunk = stage
    st.model.set_adapter(GENERATOR_ADAPTER)
    with torch.no_grad():  # a non-zero adapter, so the comparison covers the LoRA path
        for n, p in st.model.named_parameters():
            if f"lora_B.{GENERATOR_ADAPTER}" in n:
                p.normal_(0, 0.05)
    data = GeneratorData(st, EXAMPLES[:3], trunk)
    got = GeneratorTop(st.model, st.split)(*data.batch([0, 1, 2]))
    losses, count = 0.0, 0
    for e in EXAMPLES[:3]:
        ids, n_target = sequence_ids(st.tokenizer, e)
        logits = st.model(input_ids=torch.tensor([ids])).logits[0]
        target = torch.tensor(ids[-n_target:])
        losses += F.cross_entropy(logits[len(ids) - n_target - 1:-1], target, reduction="sum")
        count += n_target
    torch.testing.assert_close(got, losses / count, atol=1e-5, rtol=1e-5)


def test_training_moves_only_the_generator_and_reuse_loads_it(stage, tmp_path):
    profile, st, trunk = stage
    retriever_before = lora_state(st.model, "retriever")
    generator_before = lora_state(st.model, GENERATOR_ADAPTER)
    data = GeneratorData(st, EXAMPLES, trunk)
    first = train_generator(st.model, st.split, data, profile, tmp_path / "gen", log=lambda *a: None)
    assert not first["reused"] and len(first["history"]) == len(EXAMPLES) // profile.generator.batch_size
    after = lora_state(st.model, GENERATOR_ADAPTER)
    assert any(not torch.equal(after[k], generator_before[k]) for k in after)
    assert all(torch.equal(v, lora_state(st.model, "retriever")[k]) for k, v in retriever_before.items())
    # reuse: a fresh adapter gets exactly the trained weights back, without training
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(st.model, generator_before, adapter_name=GENERATOR_ADAPTER)
    fresh = GeneratorData(st, EXAMPLES, trunk)
    again = train_generator(st.model, st.split, fresh, profile, tmp_path / "gen", reuse=True, log=lambda *a: None)
    assert again["reused"] and again["history"] == first["history"]
    assert "states" not in vars(fresh), "reusing a checkpoint must not read or compute trunk states"
    assert all(torch.equal(v, after[k]) for k, v in lora_state(st.model, GENERATOR_ADAPTER).items())
    # other data: no reuse
    other = GeneratorData(st, EXAMPLES[::-1], trunk)
    third = train_generator(st.model, st.split, other, profile, tmp_path / "gen", reuse=True, log=lambda *a: None)
    assert not third["reused"]
