"""Profiles: loading, strict keys and types, overrides, validation."""
from __future__ import annotations

import dataclasses

import pytest

from invar_rag_lib.config import (
    ConfigError,
    DataConfig,
    Profile,
    RetrievalConfig,
    available_profiles,
    deep_update,
    load_profile,
    profile_from_dict,
)

from conftest import tiny_profile_dict


def test_shipped_profiles_are_the_expected_ones():
    assert {"smoke", "cpu", "paper"} <= set(available_profiles())


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads(name):
    p = load_profile(name)
    assert isinstance(p, Profile) and p.name == name
    assert isinstance(p.data, DataConfig) and isinstance(p.retrieval, RetrievalConfig)
    assert isinstance(p.retrieval.ks, tuple) and isinstance(p.data.eval_datasets, tuple)
    assert p.data.eval_questions_per_dataset <= p.data.corpus_pool_questions_per_dataset
    hash(p)  # frozen and hashable (tuples, not lists)


def test_shipped_profile_values():
    smoke = load_profile("smoke")
    assert smoke.reports_dir == "build/smoke/reports"
    assert smoke.data.eval_questions_per_dataset == 20
    assert smoke.retrieval.bootstrap_resamples == 200
    assert smoke.retrieval.ks == (1, 5, 20, 100)  # default kept
    assert load_profile("cpu").reports_dir == "reports"
    assert load_profile("paper").retrieval.minilm_batch_size == 128


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_profile("gpu-huge")
    msg = str(info.value)
    assert "'gpu-huge'" in msg
    assert str(available_profiles()) in msg


def test_profile_from_toml_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nseed = 3\n[data]\neval_datasets = ["nq"]\n'
                    "eval_questions_per_dataset = 5\ncorpus_pool_questions_per_dataset = 5\n"
                    "[retrieval]\nks = [1, 3]\nbm25_k1 = 1\n")
    p = load_profile(path)
    assert p.name == "mine" and p.seed == 3
    assert p.data.eval_datasets == ("nq",)
    assert p.retrieval.ks == (1, 3)
    assert p.retrieval.bm25_k1 == 1.0 and isinstance(p.retrieval.bm25_k1, float)  # int promoted
    assert load_profile(str(path)) == p


def test_missing_or_malformed_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nseed = \n')
    with pytest.raises(ConfigError, match=str(bad)):
        load_profile(bad)


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        profile_from_dict({"name": "x", "sede": 1})
    msg = str(info.value)
    assert "['sede']" in msg
    assert str(sorted(f.name for f in dataclasses.fields(Profile))) in msg


def test_unknown_section_key_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        profile_from_dict({"name": "x", "data": {"distractors": 5}})
    msg = str(info.value)
    assert "profile.data" in msg and "['distractors']" in msg
    assert str(sorted(f.name for f in dataclasses.fields(DataConfig))) in msg
    with pytest.raises(ConfigError, match=r"profile\.retrieval: unknown key\(s\) \['k'\]"):
        profile_from_dict({"name": "x", "retrieval": {"k": [1]}})


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['model'\]"):
        profile_from_dict({"name": "x", "model": {"lr": 1e-4}})


def test_missing_name_and_non_table_section():
    with pytest.raises(ConfigError, match="missing key 'name'"):
        profile_from_dict({"seed": 1})
    with pytest.raises(ConfigError, match=r"profile\.data: expected a table"):
        profile_from_dict({"name": "x", "data": 5})


@pytest.mark.parametrize("values, key", [
    ({"data": {"distractor_passages": "100"}}, "data.distractor_passages"),
    ({"data": {"distractor_passages": 10.0}}, "data.distractor_passages"),
    ({"data": {"distractor_passages": True}}, "data.distractor_passages"),
    ({"retrieval": {"bm25_k1": "0.9"}}, "retrieval.bm25_k1"),
    ({"retrieval": {"passage_format": 3}}, "retrieval.passage_format"),
    ({"retrieval": {"ks": 5}}, "retrieval.ks"),
    ({"retrieval": {"ks": ["5", "20"]}}, "retrieval.ks"),
    ({"data": {"eval_datasets": "nq"}}, "data.eval_datasets"),
    ({"seed": "0"}, "seed"),
    ({"reports_dir": 7}, "reports_dir"),
], ids=["str-for-int", "float-for-int", "bool-for-int", "str-for-float", "int-for-str", "int-for-tuple",
        "tuple-of-str-for-ints", "str-for-tuple", "top-level-str-seed", "top-level-int-reports_dir"])
def test_wrong_type_is_rejected(values, key):
    with pytest.raises(ConfigError) as info:
        profile_from_dict({"name": "x", **values})
    assert key in str(info.value)


def test_dotted_overrides():
    p = load_profile("smoke", {"data.distractor_passages": 7, "retrieval.ks": [1, 2], "seed": 5})
    assert p.data.distractor_passages == 7
    assert p.retrieval.ks == (1, 2)
    assert p.seed == 5
    assert p.data.eval_questions_per_dataset == 20  # untouched keys keep the file's value
    assert load_profile("smoke").data.distractor_passages == 100  # the file is not modified


def test_override_errors():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bogus'\]"):
        load_profile("smoke", {"data.bogus": 1})
    with pytest.raises(ConfigError, match="does not name a section"):
        load_profile("smoke", {"nosuch.key": 1})
    with pytest.raises(ConfigError, match="expected int"):
        load_profile("smoke", {"data.distractor_passages": "many"})


def test_deep_update_does_not_mutate_its_input():
    base = {"name": "x", "data": {"a": 1}}
    out = deep_update(base, {"data.a": 2, "data.b": 3})
    assert out == {"name": "x", "data": {"a": 2, "b": 3}}
    assert base == {"name": "x", "data": {"a": 1}}


@pytest.mark.parametrize("data, retrieval, match", [
    ({"eval_questions_per_dataset": 30, "corpus_pool_questions_per_dataset": 20}, {},
     "corpus_pool_questions_per_dataset must be >= eval_questions_per_dataset"),
    ({"eval_questions_per_dataset": 0}, {}, r"eval_questions_per_dataset must be in 1\.\.1000"),
    ({"eval_questions_per_dataset": 1001, "corpus_pool_questions_per_dataset": 2000}, {},
     r"eval_questions_per_dataset must be in 1\.\.1000"),
    ({"eval_datasets": ["nq", "hotpotqa"]}, {}, r"unknown \['hotpotqa'\]"),
    ({}, {"ks": [0, 5]}, "ks must be positive"),
])
def test_validation_errors(data, retrieval, match):
    with pytest.raises(ConfigError, match=match):
        profile_from_dict({"name": "x", "data": data, "retrieval": retrieval})


def test_to_dict_round_trips(tmp_path):
    p = profile_from_dict(tiny_profile_dict(tmp_path / "reports"))
    assert profile_from_dict(p.to_dict()) == p


@pytest.mark.parametrize("key, value, message", [
    ("name", "", "must be a plain folder name"),
    ("name", "..", "must be a plain folder name"),
    ("name", "a/b", "must be a plain folder name"),
    ("reports_dir", "", "reports_dir must not be empty"),
    ("reports_dir", ".", "is the checkout itself"),
    ("reports_dir", "..", "leaves the checkout"),
    ("reports_dir", "/", "is the checkout itself"),
    ("reports_dir", "data/reports", "inside the checkout's data/"),
    ("reports_dir", "invar_rag_lib", "inside the checkout's invar_rag_lib/"),
    ("stage1.max_grad_norm", -1.0, "max_grad_norm must be > 0"),
    ("stage1.max_grad_norm", 0.0, "max_grad_norm must be > 0"),
    ("generator.max_grad_norm", 0.0, "max_grad_norm must be > 0"),
    ("stage1.alpha", -0.5, "must be >= 0"),
    ("stage1.lam", -1.0, "must be >= 0"),
    ("stage1.warmup_steps", -1, "warmup_steps and weight_decay must be >= 0"),
    ("generator.weight_decay", -0.1, "warmup_steps and weight_decay must be >= 0"),
    ("retrieval.ks", [], "must list at least one k"),
    ("data.eval_datasets", [], "must name at least one"),
    ("generator.lora_layers", -1, "lora_layers >= 0"),
    ("generator.context_mix", "all", "context_mix must be"),
    ("generator.adapter_prompt", "few", "adapter_prompt must be"),
    ("generator.instruction", "  ", "instruction must not be empty"),
])
def test_values_that_would_destroy_data_or_train_backwards_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("smoke", overrides={key: value})


def test_a_profile_file_reusing_a_built_in_name_with_other_values_is_refused(tmp_path):
    import tomllib

    from invar_rag_lib.config import PROFILE_DIR

    text = (PROFILE_DIR / "smoke.toml").read_text()
    same = tmp_path / "same.toml"
    same.write_text(text)
    assert load_profile(same) == load_profile("smoke")  # an identical copy is the same profile
    other = tmp_path / "other.toml"
    other.write_text(text.replace("eval_questions_per_dataset = 20", "eval_questions_per_dataset = 10"))
    assert tomllib.loads(other.read_text())["name"] == "smoke"
    with pytest.raises(ConfigError, match="is a built-in profile's, with other values"):
        load_profile(other)
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(other.read_text().replace('name = "smoke"', 'name = "smoke-10"'))
    assert load_profile(renamed).data.eval_questions_per_dataset == 10
