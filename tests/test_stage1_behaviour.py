"""Behaviour of the stage-1 building blocks on the tiny benchmark: training groups, the rerank,
and the LSR scores with their cache."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_profile_dict


@pytest.fixture(scope="module")
def tiny(built_tiny, tmp_path_factory):
    """(profile, bench, prepared): stage 1 prepared once on the tiny benchmark (LLM rewrites off)."""
    from invar_rag_lib.config import profile_from_dict
    from invar_rag_lib.stage1.prepare import prepare

    _, bench = built_tiny
    root = tmp_path_factory.mktemp("stage1")
    values = tiny_profile_dict(root / "reports")
    values["retriever"] = {"backbone": "tiny-random", "max_len": 24, "query_max_len": 16, "lora_layers": 2,
                           "rerank_depth": 8}
    values["stage1"] = {"train_questions": 8, "val_questions": 2, "coarse_candidates": 6, "group_size": 3,
                        "env_questions": 4, "env_group_size": 2, "env_batch_size": 2, "rewrite_method": "rules",
                        "windows": [12], "epochs": 1, "batch_size": 2, "warmup_steps": 1}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INVAR_RAG_HOME", str(root / "home"))
        profile = profile_from_dict(values)
        yield profile, bench, prepare(profile, bench, log=lambda *a: None)


def test_groups_put_answer_bearing_positives_first_and_answer_free_negatives_after(tiny):
    from invar_rag_lib.metrics import has_answer

    profile, bench, prepared = tiny
    text = {row["id"]: row["text"] for row in bench.corpus}
    assert prepared.all_groups
    for g in prepared.all_groups:
        assert len(g.passage_ids) == profile.stage1.group_size == len(g.positive) == len(g.coarse_scores)
        n_pos = sum(g.positive)
        assert 1 <= n_pos and g.positive == [True] * n_pos + [False] * (len(g.positive) - n_pos)
        for pid, pos in zip(g.passage_ids, g.positive):
            assert has_answer(text[pid], g.answers) or not pos or pid.startswith("nqgold")
            if not pos:
                assert not has_answer(text[pid], g.answers)  # a hard negative never holds an answer
        assert any(has_answer(text[p], [g.target_answer]) for p, pos in zip(g.passage_ids, g.positive) if pos) \
            or g.target_answer == g.answers[0]
        negs = [s for s, pos in zip(g.coarse_scores, g.positive) if not pos]
        assert negs == sorted(negs, reverse=True)  # hard negatives in MiniLM's order


def test_rerank_orders_each_questions_candidates_by_the_score(tiny):
    _, bench, prepared = tiny
    stage = prepared.retriever()
    questions = bench.eval_records("nq")[:3]
    pids = [row["id"] for row in bench.corpus][:10]
    cands = {q["id"]: pids[i:i + 6] for i, q in enumerate(questions)}
    run = stage.rerank(questions, cands, depth=5)
    for q in questions:
        got = run[q["id"]]
        assert sorted(got) == sorted(cands[q["id"]][:5])  # a permutation of the first `depth`
        qr = stage.query_reps([stage.query_text(q["question"])])[0]
        scores = stage.passage_reps(got) @ qr
        assert torch.all(scores[:-1] >= scores[1:] - 1e-6)


def test_lsr_scores_equal_the_answer_loglikelihoods_and_are_cached(tiny, tmp_path, monkeypatch):
    from invar_rag_lib.llm import scoring
    from invar_rag_lib.stage1.lsr import compute_lsr, lsr_prompts

    profile, _, prepared = tiny
    backbone, envs, groups = prepared.backbone, prepared.envs, prepared.groups[:2]
    path = tmp_path / "lsr.json"
    args = (backbone.model, backbone.tokenizer, groups, envs, prepared.rewrites, prepared.passages,
            profile.stage1.lsr_prompt, path, "fp")
    values = compute_lsr(*args, log=lambda *a: None)
    assert values.shape == (len(envs), len(groups), len(groups[0].passage_ids))
    prompts = lsr_prompts(backbone.tokenizer, groups, envs, prepared.rewrites, prepared.passages,
                          profile.stage1.lsr_prompt)
    answers = [g.target_answer for _ in envs for g in groups for _ in g.passage_ids]
    with backbone.adapter(None):
        direct = scoring.answer_logliks(backbone.model, backbone.tokenizer, prompts[:3], answers[:3])
    torch.testing.assert_close(values.flatten()[:3], direct, atol=1e-5, rtol=0)
    monkeypatch.setattr(scoring, "answer_logliks", lambda *a, **k: pytest.fail("scored again"))
    torch.testing.assert_close(compute_lsr(*args, log=lambda *a: None), values)


def test_scoring_the_same_weights_again_reads_the_persisted_passage_reps(tiny, monkeypatch):
    """An evaluation keeps h(d) on disk under a key of everything it depends on: the same value
    reads it back bit for bit without running the top layers; other adapter weights, the adapter
    switched off, or a projection miss."""
    from invar_rag_lib.llm.backbone import RETRIEVER
    from invar_rag_lib.llm.retriever import TopEncoder
    from invar_rag_lib.paths import cache_dir

    _, bench, prepared = tiny
    initial = prepared.retriever(weights=prepared.backbone.initial[RETRIEVER], name="initial")
    pids = [row["id"] for row in bench.corpus][:12]
    first = initial.passage_reps(pids, persist=True)
    # the initial adapter (B = 0) is the frozen model, bit for bit: llm-zero's reps are the same either way
    zero = prepared.retriever()
    assert torch.equal(zero.passage_reps(pids), first)
    assert list((cache_dir() / "reps" / initial.key).glob("shard-*.safetensors"))
    calls, encode = [], TopEncoder.encode
    monkeypatch.setattr(TopEncoder, "encode", lambda self, states: calls.append(len(states)) or encode(self, states))
    again = initial.replace(name="the same weights again").passage_reps(pids, persist=True)
    assert calls == [] and torch.equal(again, first)
    assert torch.equal(initial.passage_reps(pids), first) and calls  # the unpersisted path: same values
    moved = {k: (v + 0.05 if "lora_B" in k else v) for k, v in initial.weights.items()}
    other = initial.replace(weights=moved)
    assert other.key != initial.key
    calls.clear()
    assert not torch.equal(other.passage_reps(pids, persist=True), first) and calls
    calls.clear()
    assert torch.equal(initial.passage_reps(pids, persist=True), first) and calls == []  # its own weights again
    assert zero.key != initial.key
    mapped = initial.replace(projection=torch.eye(first.shape[1]))
    assert mapped.key != initial.key
    off = zero.replace(projection=torch.eye(first.shape[1]))
    assert off.key != zero.key
    assert off.replace(projection=2 * off.projection).key != off.key  # the map itself is in the key, adapter on or off


def test_a_retriever_value_is_never_changed_by_another(tiny):
    """Two values over one backbone keep their own weights: using one, then the other, then the
    first again gives the first's reps back exactly (the slot is reloaded when another's are in it)."""
    from invar_rag_lib.llm.backbone import RETRIEVER

    _, bench, prepared = tiny
    pids = [row["id"] for row in bench.corpus][:6]
    a = prepared.retriever(weights=prepared.backbone.initial[RETRIEVER], name="a")
    b = a.replace(weights={k: (v + 0.1 if "lora_B" in k else v) for k, v in a.weights.items()}, name="b")
    ra = a.passage_reps(pids)
    rb = b.passage_reps(pids)
    assert not torch.equal(ra, rb)
    assert torch.equal(a.passage_reps(pids), ra)
    assert prepared.backbone.loaded[RETRIEVER] == a.digest
