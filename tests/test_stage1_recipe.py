"""The stage-1 recipe: mean pooling, the random floor, training that learns a learnable toy task,
environment batches, and the training/validation split."""
import math

import pytest
import torch

from invar_rag_lib.config import ConfigError, load_profile
from invar_rag_lib.llm.weights import tiny_llama, tiny_tokenizer
from invar_rag_lib.llm.encoder import add_retriever_adapter, encode_full, mean_pool, tokenize, trunk_states
from invar_rag_lib.losses import contrastive_loss
from invar_rag_lib.retrieval.harness import paired_pvalue_at_k, random_ranking, random_ranking_from_counts
from invar_rag_lib.stage1.environments import Environment
from invar_rag_lib.llm.retriever import TopEncoder
from invar_rag_lib.stage1.train import TrainingData, env_batch, train_retriever
from invar_rag_lib.stage1.variants import Objective


def test_mean_pool_ignores_padding_on_either_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(mean_pool(hidden, left)[0], hidden[0, 2:].mean(0))
    torch.testing.assert_close(mean_pool(hidden, right)[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(mean_pool(hidden, left)[1], hidden[1].mean(0))


@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_pooled_trunk_path_equals_plain_forward(side):
    model = add_retriever_adapter(tiny_llama(seed=0), 2, 4, 8, 0.0, ["q_proj", "v_proj"]).eval()
    tok = tiny_tokenizer()
    texts = ["passage one two three", "a much longer passage with many more words in it", "x"]
    batch = tokenize(tok, texts, 16, side)
    with torch.no_grad():
        plain = encode_full(model, batch, pooling="mean")
        cached = TopEncoder(model, 2, side, "mean").encode(trunk_states(model, batch, 2))
        eos = encode_full(model, batch, pooling="eos")
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain, eos)  # the two poolings are different representations


def test_random_floor_is_the_exact_expectation():
    # N = 4 candidates, one holds the answer: P(hit@1) = 1/4, P(hit@2) = 1/2, P(hit@4) = 1.
    res = random_ranking_from_counts(["a", "b"], [(4, 1), (4, 0)], [1, 2, 4], n_resamples=50)
    assert res["per_question"]["expected_hit"]["1"] == [0.25, 0.0]
    assert res["per_question"]["expected_hit"]["2"] == [0.5, 0.0]
    assert res["metrics"]["acc@4"]["mean"] == pytest.approx(0.5)
    # two answer-bearing of 5 candidates, k = 2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    text = {"p1": "paris is here", "p2": "nothing", "p3": "paris again", "p4": "no", "p5": "none"}
    q = [{"id": "q", "golden_answers": ["Paris"]}]
    res = random_ranking({"q": ["p1", "p2", "p3", "p4", "p5"]}, q, text, [2], n_resamples=50)
    assert res["metrics"]["acc@2"]["mean"] == pytest.approx(0.7)


def test_paired_pvalue_against_the_random_floor():
    ids = [f"q{i}" for i in range(40)]
    floor = random_ranking_from_counts(ids, [(100, 1)] * 40, [5], n_resamples=200)
    perfect = {"per_question": {"ids": ids, "first_hit_rank": [1] * 40}}
    same = {"per_question": {"ids": ids, "expected_hit": floor["per_question"]["expected_hit"]}}
    assert paired_pvalue_at_k(perfect, floor, 5, n_resamples=200) < 0.01
    assert paired_pvalue_at_k(same, floor, 5, n_resamples=200) == 1.0


def test_env_batches_cycle_through_every_question_deterministically():
    first_pass = [i for m in range(5) for i in env_batch(10, 2, 0, m)]
    assert sorted(first_pass) == list(range(10))
    assert env_batch(10, 2, 0, 5) == env_batch(10, 2, 0, 5)
    assert len(env_batch(3, 8, 0, 0)) == 3  # fewer questions than a batch: all of them


def _toy_task(model, tok, n_queries=16, n_groups=2):
    """Query i names a topic word; its positive passage is about that topic, the negative about
    another one. Learnable: the word is in both texts."""
    words = ["paris", "river", "capital", "music", "war", "planet", "ocean", "king", "film", "gold",
             "train", "bird", "snow", "stone", "glass", "bread"]

    def states(texts, max_len):
        return trunk_states(model, tokenize(tok, texts, max_len, "left"), 2)

    queries = states([f"query about {words[i]}" for i in range(n_queries)], 24)
    flat = states([f"passage {words[(i + g) % len(words)]} {words[(i + g) % len(words)]} text"
                   for i in range(n_queries) for g in range(n_groups)], 16)
    positive = torch.zeros(n_queries, n_groups, dtype=torch.bool)
    positive[:, 0] = True
    return TrainingData({0: queries}, {16: [flat[i * n_groups:(i + 1) * n_groups] for i in range(n_queries)]},
                        torch.rand(n_queries, n_groups), None, positive, [])


def test_training_learns_a_learnable_toy_task_far_below_the_uniform_loss(tmp_path):
    profile = load_profile("smoke", overrides={
        "stage1.batch_size": 4, "stage1.epochs": 30, "stage1.lr": 3e-3, "stage1.warmup_steps": 2,
        "stage1.checkpoint_every": 1000, "retriever.lora_dropout": 0.0, "retriever.pooling": "mean",
        "retriever.tau_r": 0.05})
    from invar_rag_lib.llm.backbone import Backbone, LoraShape

    backbone = Backbone("tiny-random", LoraShape(2, 8, 16, 0.0, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj")), seed=0, log=lambda *a: None)
    model, tok = backbone.model, backbone.tokenizer
    data = _toy_task(model, tok)
    data.envs = [Environment("original", 0, 16)]
    uniform = math.log(4 * 2)  # 4 queries x 2 passages per micro-batch

    def full_loss():
        enc = TopEncoder(model, 2, "left", "mean").eval()
        with torch.no_grad():
            q = enc.encode(data.query_states[0])
            p = enc.encode([s for g in data.passage_states[16] for s in g])
        pos = torch.zeros(16, 32, dtype=torch.bool)
        for i in range(16):
            pos[i, 2 * i] = True
        return float(contrastive_loss(q, p, pos, 0.05))

    before = full_loss()
    history = train_retriever(backbone, data, Objective(), profile, tmp_path / "toy", log=lambda *a: None)["history"]
    after = full_loss()
    last = sum(h["ctr"] for h in history[-4:]) / 4
    assert last < 0.25 * uniform, (before, last, uniform)
    assert after < before


def test_training_split_is_disjoint_and_skips_unused_sources(built_tiny):
    from dataclasses import replace

    from invar_rag_lib.splits import training_split

    _, bench = built_tiny
    profile = load_profile("smoke")
    p = replace(profile, stage1=replace(profile.stage1, train_sources=("nq_gold",), train_questions=2,
                                        val_questions=1))
    train, val = training_split(p, bench)
    assert len(train) == 2 and len(val) == 1
    assert {q["question"] for q in train}.isdisjoint(q["question"] for q in val)
    nq = {r["question"] for r in bench.train_records("nq_gold")}
    assert all(q["question"] in nq for q in train + val)


@pytest.mark.parametrize("key, value, message", [
    ("retriever.pooling", "cls", "pooling must be 'eos' or 'mean'"),
    ("retriever.tau_r", 0.0, "must be > 0"),
    ("stage1.env_group_size", 9, "env_group_size must lie in 2..group_size"),
    ("stage1.positive_depth", 0, "positive_depth must lie in 1..coarse_candidates"),
    ("stage1.train_sources", ["msmarco"], "train_sources: unknown"),
    ("stage1.checkpoint_every", 0, "checkpoint_every >= 1"),
    ("stage1.lr", -1e-3, "lr > 0"),
])
def test_recipe_fields_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("smoke", overrides={key: value})


@pytest.mark.parametrize("lora_layers, mode, projection", [(2, "rerank", "ridge"), (0, "full", "none")])
def test_stage1_end_to_end_on_tiny_data(built_tiny, tmp_path, lora_layers, mode, projection):
    """prepare + every variant + scoring on the tiny benchmark: the cpu profile's code path
    (rerank, trunk cache) and the gpu profile's (LoRA on every layer, full-corpus retrieval)."""
    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.stage1.experiment import run_variants
    from invar_rag_lib.stage1.prepare import prepare
    from conftest import tiny_profile_dict

    _, bench = built_tiny
    values = tiny_profile_dict(tmp_path / "reports")
    values["retrieval"]["ks"] = [1, 5]
    values["retriever"] = {"backbone": "tiny-random", "max_len": 24, "query_max_len": 16,
                           "lora_layers": lora_layers, "mode": mode, "rerank_depth": 8}
    values["stage1"] = {"train_questions": 8, "val_questions": 2, "coarse_candidates": 6, "group_size": 3,
                        "env_questions": 4, "env_group_size": 2, "env_batch_size": 2, "rewrite_method": "rules",
                        "windows": [12], "epochs": 1, "batch_size": 2, "warmup_steps": 1,
                        "projection": projection}
    profile = profile_from_dict(values)
    prepared = prepare(profile, bench, log=lambda *a: None)
    assert len(prepared.data) <= 4 and len(prepared.main) >= len(prepared.data)
    assert all(len(g.passage_ids) == 2 for g in prepared.groups)
    out = run_variants(profile, bench, prepared, log=lambda *a: None)
    assert {"random", "llm-zero", "llm-ctr", "llm-lsr", "invar"} <= set(out["retrievers"])
    assert not {"invar-align", "invar-inv"} & set(out["retrievers"])  # notebook 07 trains the ablations
    assert set(out["passage_cosine"]) >= {"llm-zero", "invar"}
    assert "invar_vs_random/nq" in out["paired_pvalues"]
    assert out["mode"].startswith("full") == (mode == "full")
    from invar_rag_lib.report.retrieval import retrieval_table
    from invar_rag_lib.report.stability import stability_table

    assert "random" in retrieval_table(out, ks=(1, 5)).index and "random" not in stability_table(out).index
    assert (prepared.projection is not None) == (projection == "ridge")
    if projection == "ridge":  # a 64-dim tiny model mapped into MiniLM's 384 dimensions
        assert tuple(prepared.projection.shape) == (64, 384)


def test_ablations_train_the_component_variants_and_are_tested_against_04s_floors(built_tiny, tmp_path):
    """Notebook 07 trains invar−align and invar−inv (04 does not), reuses 04's invar checkpoint, and its
    points get floor p-values against 04's random and llm-zero; the α and λ claims read 07's results."""
    from invar_rag_lib.report.artifacts import _floors, ablation_floors
    from invar_rag_lib.report.claims import claims_table
    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.report.writer import provenance
    from invar_rag_lib.stage1.ablations import run_ablations
    from invar_rag_lib.stage1.experiment import run_variants
    from invar_rag_lib.stage1.prepare import prepare
    from conftest import tiny_profile_dict

    _, bench = built_tiny
    values = tiny_profile_dict(tmp_path / "reports")
    values["retrieval"]["ks"] = [1, 5]
    values["retriever"] = {"backbone": "tiny-random", "max_len": 24, "query_max_len": 16, "lora_layers": 2,
                           "mode": "rerank", "rerank_depth": 8}
    values["stage1"] = {"train_questions": 8, "val_questions": 2, "coarse_candidates": 6, "group_size": 3,
                        "env_questions": 4, "env_group_size": 2, "env_batch_size": 2, "rewrite_method": "rules",
                        "windows": [12], "epochs": 1, "batch_size": 2, "warmup_steps": 1}
    values["ablations"] = {"lams": [0.0, 0.5], "rewrites": [1]}
    profile = profile_from_dict(values)
    quiet = lambda *a: None  # noqa: E731
    v = {"provenance": provenance(profile), **run_variants(profile, bench, prepare(profile, bench, log=quiet), log=quiet)}
    a = {"provenance": provenance(profile), **run_ablations(profile, bench, log=quiet)}
    trained = {p["name"]: p["reused_checkpoint"] for p in a["points"]}
    assert trained == {"invar": True, "invar-align": False, "invar-inv": False}
    assert set(a["passage_cosine"]) == set(trained) and a["training"]["invar-align"]
    floors = ablation_floors(v, a)
    assert set(floors["retrievers"]) == {"random", "llm-zero", "invar-align", "invar-inv"}
    assert {"invar-align_vs_random/nq", "invar-inv_vs_llm-zero/nq"} <= set(floors["paired_pvalues"])
    assert floors["retrievers"]["llm-zero"] is v["retrievers"]["llm-zero"]
    table = _floors(floors)
    assert list(table.index) == ["random (expected)", "llm-zero", "invar−align", "invar−inv"]
    generation = {"rows": {}}
    claims = claims_table(v, generation, a)
    row = claims[claims["test"] == "invar vs invar−align, acc@5"].iloc[0]
    assert row["NQ"] != "—"  # read from notebook 07's results: notebook 04's have no invar−align


def test_the_cli_trains_the_same_invar_as_the_notebooks(tiny_sources, tmp_path, isolated_home):
    """`invar-rag train-retriever --variant invar` is notebook 04's `invar`: the same function, the
    ridge map included, so the same adapter weights (it was trained without the map before)."""
    from safetensors.torch import load_file

    from invar_rag_lib.cli import main
    from invar_rag_lib.config import load_profile
    from invar_rag_lib.data import load_benchmark, prepare_benchmark
    from invar_rag_lib.stage1.experiment import train_variant
    from invar_rag_lib.stage1.prepare import prepare
    from invar_rag_lib.stage1.variants import variant_objectives
    from invar_rag_lib.training import lora_state

    toml = tmp_path / "tiny.toml"
    toml.write_text(f"""name = "tiny"
reports_dir = "{tmp_path / 'reports'}"
[data]
eval_questions_per_dataset = 4
corpus_pool_questions_per_dataset = 6
distractor_passages = 100
train_questions_per_source = 100
[retrieval]
ks = [1, 5]
bootstrap_resamples = 50
[retriever]
backbone = "tiny-random"
max_len = 24
query_max_len = 16
lora_layers = 2
rerank_depth = 8
[stage1]
train_questions = 8
val_questions = 2
coarse_candidates = 6
group_size = 3
env_questions = 4
env_group_size = 2
env_batch_size = 2
rewrite_method = "rules"
windows = [12]
epochs = 1
batch_size = 2
warmup_steps = 1
projection = "ridge"
""")
    profile = load_profile(toml)
    prepare_benchmark(profile, sources=tiny_sources, log=lambda *a: None)
    out = tmp_path / "cli-invar"
    assert main(["train-retriever", "--profile", str(toml), "--variant", "invar", "--out", str(out)]) == 0
    cli_weights = load_file(str(out / "checkpoint-latest" / "adapter.safetensors"))
    bench = load_benchmark("tiny")
    prepared = prepare(profile, bench, log=lambda *a: None)
    assert prepared.projection is not None
    retriever, record = train_variant(profile, bench, prepared, "invar", variant_objectives(profile)["invar"],
                                      log=lambda *a: None)
    assert retriever.projection is prepared.projection and not record["reused"]
    ours = lora_state(prepared.backbone.model, "retriever")
    assert set(ours) == set(cli_weights)
    for k, v in ours.items():
        torch.testing.assert_close(cli_weights[k], v, atol=0, rtol=0)
