"""The generator adapter: its trunk-cached, prefix-once loss equals a full forward (for a trunk and
for LoRA on every layer), only it trains, reuse works."""
import pytest
import torch
import torch.nn.functional as F

from invar_rag_lib.config import load_profile
from invar_rag_lib.llm.backbone import Backbone, generator_shape
from invar_rag_lib.training import lora_state
from invar_rag_lib.llm.decode import Prompt
from invar_rag_lib.stage2.examples import Example
from invar_rag_lib.stage2.train import GENERATOR_ADAPTER, GeneratorData, GeneratorTop, sequence_ids, train_generator

EXAMPLES = [Example(Prompt("Answer.\n\n", f"Passage: item {i} is {'very ' * i}red\nQuestion: what is {i}?\nAnswer:"),
                    f"colour {i}") for i in range(8)]


@pytest.fixture
def stage(tmp_path, monkeypatch):
    """(profile, backbone with both adapters, the generator's split), caches under tmp_path."""
    monkeypatch.setenv("INVAR_RAG_HOME", str(tmp_path))
    profile = load_profile("smoke")
    backbone = Backbone.from_profile(profile, log=lambda *a: None)
    backbone.add_adapter(GENERATOR_ADAPTER, generator_shape(profile))
    return profile, backbone, backbone.split(GENERATOR_ADAPTER)


@pytest.mark.parametrize("all_layers", [False, True])
def test_cached_loss_equals_a_full_forward(stage, all_layers):
    profile, backbone, split = stage
    split = 0 if all_layers else split  # 0: no trunk, the prefix and rows run through every layer
    with torch.no_grad():  # a non-zero adapter, so the comparison covers the LoRA path
        for n, p in backbone.model.named_parameters():
            if f"lora_B.{GENERATOR_ADAPTER}" in n:
                p.normal_(0, 0.05)
    data = GeneratorData(backbone, EXAMPLES[:3], split)
    with backbone.adapter(GENERATOR_ADAPTER):
        got = GeneratorTop(backbone.model, split)(*data.batch([0, 1, 2]))
    losses, count = 0.0, 0
    for e in EXAMPLES[:3]:
        prefix, own, n_target = sequence_ids(backbone.tokenizer, e)
        ids = prefix + own
        with backbone.adapter(GENERATOR_ADAPTER):
            logits = backbone.model(input_ids=torch.tensor([ids])).logits[0]
        target = torch.tensor(ids[-n_target:])
        losses += F.cross_entropy(logits[len(ids) - n_target - 1:-1], target, reduction="sum")
        count += n_target
    torch.testing.assert_close(got, losses / count, atol=1e-5, rtol=1e-5)


def test_training_moves_only_the_generator_and_reuse_loads_it(stage, tmp_path):
    profile, backbone, split = stage
    model = backbone.model
    retriever_before = lora_state(model, "retriever")
    generator_before = lora_state(model, GENERATOR_ADAPTER)
    data = GeneratorData(backbone, EXAMPLES, split)
    first = train_generator(backbone, data, profile, tmp_path / "gen", log=lambda *a: None)
    assert not first["reused"] and len(first["history"]) == len(EXAMPLES) // profile.generator.batch_size
    after = lora_state(model, GENERATOR_ADAPTER)
    assert any(not torch.equal(after[k], generator_before[k]) for k in after)
    assert all(torch.equal(v, lora_state(model, "retriever")[k]) for k, v in retriever_before.items())
    assert model.active_adapter == "retriever"  # training leaves the active adapter as it found it
    # reuse: a fresh adapter gets exactly the trained weights back, without training
    backbone.load_adapter_state(GENERATOR_ADAPTER, generator_before)
    fresh = GeneratorData(backbone, EXAMPLES, split)
    again = train_generator(backbone, fresh, profile, tmp_path / "gen", reuse=True, log=lambda *a: None)
    assert again["reused"] and again["history"] == first["history"]
    assert "states" not in vars(fresh), "reusing a checkpoint must not read or compute trunk states"
    assert all(torch.equal(v, after[k]) for k, v in lora_state(model, GENERATOR_ADAPTER).items())
    # other data: no reuse
    other = GeneratorData(backbone, EXAMPLES[::-1], split)
    third = train_generator(backbone, other, profile, tmp_path / "gen", reuse=True, log=lambda *a: None)
    assert not third["reused"]
