"""The int8 frozen trunk (`retriever.trunk_quantization`, llm/quantize.py)."""
import pytest
import torch

from invar_rag_lib.config import ConfigError, load_profile
from invar_rag_lib.llm.weights import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.encoder import add_retriever_adapter, decoder_of, encode_full, format_passage, tokenize, trunk_states
from invar_rag_lib.llm.quantize import quantize_trunk
from invar_rag_lib.llm.retriever import TopEncoder

TEXTS = [format_passage("Iliad", "The Iliad is an ancient Greek epic poem attributed to Homer. " * 2),
         format_passage("Nile", "The Nile is the longest river in Africa.")]


def _model():
    return add_retriever_adapter(tiny_llama(seed=1), lora_layers=2, r=4, alpha=8, dropout=0.0,
                                 target_modules=["q_proj", "v_proj", "up_proj"]).eval()


def test_only_the_trunk_goes_int8_and_down_proj_stays_float():
    model = _model()
    assert quantize_trunk(model, 2, "none") == 0
    assert quantize_trunk(model, 2, "int8") == 2 * 6  # q, k, v, o, gate, up of layers 0 and 1
    layers = decoder_of(model).layers
    for layer in layers[:2]:
        assert type(layer.self_attn.q_proj).__name__ == type(layer.mlp.up_proj).__name__ == "FrozenInt8Linear"
        assert isinstance(layer.mlp.down_proj, torch.nn.Linear)
    for layer in layers[2:]:  # the LoRA layers are untouched
        assert any("lora_A" in n for n, _ in layer.named_parameters())
    # peft loads an adapter through the whole model's load_state_dict: the int8 layers stay as they are
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    state = {k: v + 1 for k, v in get_peft_model_state_dict(model, adapter_name="retriever").items()}
    set_peft_model_state_dict(model, state, adapter_name="retriever")
    after = get_peft_model_state_dict(model, adapter_name="retriever")
    assert all(torch.equal(after[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="unknown trunk quantization 'int4'"):
        quantize_trunk(_model(), 2, "int4")


def test_int8_trunk_is_close_and_the_cached_path_stays_exact():
    """States through the int8 trunk stay near the float32 ones, and the cached path (trunk states +
    top layers) equals a plain forward through the same quantized model, as notebook 02 checks."""
    tok = tiny_tokenizer()
    ref = _model()
    batch = tokenize(tok, TEXTS, 24, "left")
    float_rep = encode_full(ref, batch, pooling="mean")
    model = _model()
    quantize_trunk(model, 2, "int8")
    plain = encode_full(model, batch, pooling="mean")
    cached = TopEncoder(model, 2, "left", "mean").encode(trunk_states(model, batch, 2))
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=0)
    assert torch.nn.functional.cosine_similarity(plain, float_rep).min() > 0.95
    assert not torch.equal(plain, float_rep)


def test_int8_needs_a_trunk():
    with pytest.raises(ConfigError, match="needs a frozen trunk"):
        load_profile("smoke", overrides={"retriever.trunk_quantization": "int8", "retriever.lora_layers": 0})
    with pytest.raises(ConfigError, match="trunk_quantization must be 'none' or 'int8'"):
        load_profile("smoke", overrides={"retriever.trunk_quantization": "fp8"})
