"""The memory estimate (llm/memory.py), the backbone's dtype and gradient checkpointing (issue 23, item 1)."""
from __future__ import annotations

import json

import pytest
import torch

from invar_rag_lib.config import ConfigError, load_profile
from invar_rag_lib.llm.memory import LLAMA2_7B_CONFIG, GiB, estimate, model_config, model_shape

LLAMA2_7B = LLAMA2_7B_CONFIG


@pytest.fixture
def llama2_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_7B))  # the config alone: sized on the meta device
    return tmp_path


def _paper(llama2_dir, **retriever):
    return load_profile("paper", overrides={"retriever.backbone": str(llama2_dir),
                                            **{f"retriever.{k}": v for k, v in retriever.items()}})


def test_a_7b_config_is_sized_on_the_meta_device(llama2_dir):
    shape = model_shape(model_config(str(llama2_dir)), ("q_proj", "v_proj"))
    assert 6.7e9 < shape.params < 6.8e9  # Llama-2-7B: 6.74B parameters
    assert shape.lora_dims == ((4096, 4096), (4096, 4096))


def test_the_paper_profile_fits_an_80_gib_gpu_and_float32_without_checkpointing_does_not(llama2_dir):
    cuda = torch.device("cuda")
    est = estimate(_paper(llama2_dir), device=cuda, n_passages=0, available=80 * GiB)
    assert abs(est.parts["weights"] / GiB - 6.74e9 * 2 / GiB) < 0.2  # bfloat16
    est.check()  # fits
    fp32 = estimate(_paper(llama2_dir, dtype="float32", gradient_checkpointing=False), device=cuda, n_passages=0,
                    available=80 * GiB)
    assert fp32.parts["weights"] == 2 * est.parts["weights"] and fp32.parts["activations"] > 10 * est.parts["activations"]
    with pytest.raises(ConfigError, match=r"cannot fit; the largest part is activations .*gradient_checkpointing"):
        fp32.check()


def test_the_full_index_is_counted_and_the_refusal_names_its_field(llama2_dir):
    est = estimate(_paper(llama2_dir), device=torch.device("cuda"), n_passages=21_000_000, available=80 * GiB)
    assert abs(est.parts["index"] / GiB - 21e6 * 4096 * 4 / GiB) < 1  # wiki-18 at 4,096 dims, float32: ~320 GiB
    with pytest.raises(ConfigError, match=r'largest part is index .*retriever.index = "ivfpq"'):
        est.check()
    pq = estimate(_paper(llama2_dir, index="ivfpq", index_pq_m=64), device=torch.device("cuda"), n_passages=21_000_000,
                  available=80 * GiB)
    assert pq.parts["index"] == 21_000_000 * (64 + 8)  # PQ codes and ids: ~1.4 GiB
    pq.check()  # fits


def test_cli_memory_is_one_line_each_and_refuses_with_exit_2(llama2_dir, tmp_path, capsys):
    from invar_rag_lib.cli import main

    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "p"\nreports_dir = "build/p"\n[retriever]\nbackbone = "{llama2_dir}"\n'
                       'lora_layers = 0\n[stage1]\nbatch_size = 64\n')
    assert main(["memory", "--profile", str(profile), "--device-gib", "24"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("memory estimate:") and len(err.strip().splitlines()) == 1 and "cannot fit" in err


@pytest.mark.parametrize("value", ["float64", "int8"])
def test_unknown_dtype_is_refused(value):
    with pytest.raises(ConfigError, match="retriever.dtype"):
        load_profile("smoke", overrides={"retriever.dtype": value})


def test_a_bfloat16_backbone_keeps_its_adapters_in_float32():
    from invar_rag_lib.llm.backbone import Backbone, retriever_shape

    profile = load_profile("smoke", overrides={"retriever.dtype": "bfloat16"})
    said = []
    backbone = Backbone("tiny-random", retriever_shape(profile), dtype="bfloat16", log=said.append)
    dtypes = {n: p.dtype for n, p in backbone.model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    assert any("300x slower" in s for s in said)  # on the CPU it says so


def test_layer_checkpointing_gives_the_same_loss_and_gradients():
    from torch.utils import checkpoint as ckpt

    from invar_rag_lib.llm.encoder import decoder_of, layer_checkpointing, run_layers
    from invar_rag_lib.llm.weights import tiny_llama

    model = tiny_llama(seed=0).train()
    decoder = decoder_of(model)
    ids = torch.arange(24).reshape(3, 8) % 60
    mask = torch.ones_like(ids)
    mask[0, :3] = 0

    def loss_and_grads(on: bool):
        model.zero_grad()
        with layer_checkpointing(on):
            out = run_layers(decoder, decoder.embed_tokens(ids), mask, 0, 4, final_norm=True)
        loss = (out * mask[..., None]).pow(2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    calls = []
    real = ckpt.checkpoint
    ckpt.checkpoint = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        loss_on, grads_on = loss_and_grads(True)
    finally:
        ckpt.checkpoint = real
    loss_off, grads_off = loss_and_grads(False)
    assert len(calls) == 4  # every layer was checkpointed
    assert torch.allclose(loss_on, loss_off) and len(grads_on) == len(grads_off)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_on, grads_off))


# ----------------------------------------------------------------------------- the approximate index (item 4)
def _clustered(n: int, d: int = 64, centres: int = 200, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype("float32")
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_an_approximate_index_over_50k_passages_keeps_recall_at_100_above_095(index):
    from invar_rag_lib.retrieval.dense import DenseRetriever

    passages = _clustered(50_000)
    queries = _clustered(300, seed=1)
    ids = [f"p{i}" for i in range(len(passages))]
    approx = DenseRetriever(ids, passages, index=index)
    ranked, _ = approx.search_embeddings(queries, 100)
    assert approx.recall is not None and approx.recall >= 0.95, approx.recall  # measured on the first search
    exact, _ = DenseRetriever(ids, passages).search_embeddings(queries, 100)
    overlap = sum(len(set(a) & set(b)) for a, b in zip(ranked, exact)) / (100 * len(queries))
    assert abs(overlap - approx.recall) < 0.05  # the reported recall is what the run got


def test_an_approximate_index_without_faiss_is_refused():
    import numpy as np

    from invar_rag_lib.retrieval.dense import DenseRetriever

    with pytest.raises(ValueError, match="needs faiss"):
        DenseRetriever(["a"], np.ones((1, 4), "float32"), backend="torch", index="ivf")


def test_unknown_index_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="retriever.index"):
        load_profile("smoke", overrides={"retriever.index": "annoy"})
