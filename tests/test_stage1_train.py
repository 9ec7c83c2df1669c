"""The one training loop (both adapters): LoRA-only updates, resume == uninterrupted, 2 processes == 1."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from invar_rag_lib.training import get_lr

SCRIPT = Path(__file__).with_name("train_tiny_script.py")


def run_script(out, accum, stop="-", resume=False, processes=1, flags=(), expect_ok=True):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    args = [str(SCRIPT), str(out), str(accum), stop] + (["--resume"] if resume else []) + list(flags)
    if processes == 1:
        cmd = [sys.executable] + args
    else:
        # accelerate 1.15's `launch --cpu` starts one process unless given an MPI hostfile; the
        # multi-process launcher (torchrun underneath) on a machine without GPUs runs gloo CPU
        # processes, and Accelerator(cpu=...) in the loop keeps them on the CPU.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
               str(processes), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no"] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if not expect_ok:
        return proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(Path(out) / "final.safetensors")), json.loads((Path(out) / "history.json").read_text())


def test_get_lr_warms_up_then_decays_to_a_tenth():
    lrs = [get_lr(s, 1.0, 4, 20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert get_lr(20, 1.0, 4, 20) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return run_script(out, accum=2)


def test_training_changes_lora_and_loss_is_logged(uninterrupted):
    weights, history = uninterrupted
    from train_tiny_script import make_setup  # the same initial weights (tests/ is on sys.path)
    from invar_rag_lib.training import lora_state

    _, backbone, _ = make_setup(2)
    init = lora_state(backbone.model, "retriever")
    assert set(weights) == set(init)
    assert any(not torch.equal(weights[k], init[k]) for k in weights if "lora_B" in k)
    assert [h["step"] for h in history] == list(range(1, len(history) + 1))
    assert {"ctr", "align", "inv", "loss", "lr"} <= set(history[0])


def test_resume_continues_to_the_same_result(uninterrupted, tmp_path):
    first, _ = run_script(tmp_path, accum=2, stop="2")
    assert (tmp_path / "checkpoint-latest" / "adapter.safetensors").exists()
    resumed, history = run_script(tmp_path, accum=2, resume=True)
    weights, full_history = uninterrupted
    assert len(history) == len(full_history)
    for k in weights:
        torch.testing.assert_close(resumed[k], weights[k], atol=1e-6, rtol=0)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in full_history], abs=1e-5)


def test_resume_with_dropout_restores_every_rng_state(tmp_path):
    """LoRA dropout draws from torch's RNG at every step: a resumed run equals an uninterrupted
    one only if the checkpoint restored that RNG (and python's and numpy's) exactly."""
    full, full_history = run_script(tmp_path / "full", accum=1, flags=["--dropout=0.3"])
    run_script(tmp_path / "cut", accum=1, stop="3", flags=["--dropout=0.3"])
    resumed, history = run_script(tmp_path / "cut", accum=1, resume=True, flags=["--dropout=0.3"])
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in full_history], abs=1e-6)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0)
    assert not (tmp_path / "cut" / "checkpoint-latest" / "rng.pt").exists()  # nothing pickled
    assert (tmp_path / "cut" / "checkpoint-latest" / "MANIFEST.sha256").exists()


def test_resume_under_another_config_is_refused_naming_the_field(tmp_path):
    run_script(tmp_path, accum=2, stop="2")
    proc = run_script(tmp_path, accum=2, resume=True, flags=["--lr=0.5"], expect_ok=False)
    assert proc.returncode != 0
    assert "cannot resume" in proc.stderr and "stage1.lr" in proc.stderr


def test_resume_under_another_lora_dropout_is_refused(tmp_path):
    run_script(tmp_path, accum=1, stop="2")
    proc = run_script(tmp_path, accum=1, resume=True, flags=["--dropout=0.3"], expect_ok=False)
    assert proc.returncode != 0
    assert "cannot resume" in proc.stderr and "retriever.lora_dropout" in proc.stderr


def test_resume_from_a_damaged_checkpoint_is_refused(tmp_path):
    run_script(tmp_path, accum=2, stop="2")
    adapter = tmp_path / "checkpoint-latest" / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-8] + b"\0" * 8)  # same size, other values
    proc = run_script(tmp_path, accum=2, resume=True, expect_ok=False)
    assert proc.returncode != 0 and "is damaged" in proc.stderr and "adapter.safetensors" in proc.stderr


def test_two_processes_match_one_process_with_accumulation(uninterrupted, tmp_path):
    two, history = run_script(tmp_path, accum=1, processes=2)
    one, one_history = uninterrupted
    assert len(history) == len(one_history)  # one global step each: the same global batch
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in one_history], abs=1e-4)


def test_micro_batches_of_processes_and_accumulation_steps_partition_the_global_batch():
    from invar_rag_lib.training import micro_batch

    order = list(range(100, 148))
    for world, accum in ((1, 1), (2, 1), (1, 2), (2, 3)):
        for step in range(2):
            blocks = [micro_batch(order, step, 4, world, r, a, accum) for a in range(accum) for r in range(world)]
            flat = [i for b in blocks for i in b]
            size = 4 * world * accum
            assert flat == sorted(flat) == order[step * size:(step + 1) * size]  # disjoint, covering, in order
    assert micro_batch(order, 0, 4, 2, 1, 1, 2) == micro_batch(order, 0, 4, 4, 3)  # accumulation = more processes


def test_the_generator_trains_in_the_same_loop_two_processes_matching_one_with_accumulation(tmp_path):
    """The generator adapter goes through the same loop: its 2-process run equals 1 process with
    grad_accum = 2 (same global batches), and only its own LoRA weights move."""
    from train_tiny_script import make_generator_setup
    from invar_rag_lib.training import lora_state

    one, one_history = run_script(tmp_path / "one", accum=2, flags=["--adapter=generator"])
    two, history = run_script(tmp_path / "two", accum=1, processes=2, flags=["--adapter=generator"])
    assert len(history) == len(one_history) >= 2
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0)
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in one_history], abs=1e-4)
    _, backbone, _ = make_generator_setup(2)
    init = lora_state(backbone.model, "generator")
    assert set(one) == set(init) and any(not torch.equal(one[k], init[k]) for k in one)


def test_a_checkpoint_also_loads_with_peft_from_pretrained(tmp_path):
    """Every checkpoint carries the adapter in peft's own layout: `PeftModel.from_pretrained` on the
    base model gives the trained weights back."""
    from peft import PeftModel

    from invar_rag_lib.llm.weights import tiny_llama
    from invar_rag_lib.training import lora_state

    weights, _ = run_script(tmp_path, accum=2)
    folder = tmp_path / "checkpoint-latest" / "peft" / "retriever"
    assert (folder / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), str(folder), adapter_name="retriever")
    state = lora_state(loaded, "retriever")
    assert set(state) == set(weights)
    for k, v in weights.items():
        torch.testing.assert_close(state[k], v, atol=0, rtol=0)
