"""The one training loop of both adapters (`train_adapter`: the `retriever` of stage 1 and the
`generator` of stage 2 each supply a named batch-loss function), and what it rests on: the lr
schedule, the epoch order, the LoRA state, and checkpoint I/O with exact resume.

A checkpoint is a folder `<run>/checkpoint-latest` holding the adapter weights (safetensors, and in
peft's `save_pretrained` layout under `peft/<adapter>/`), the optimizer state (`torch.load(weights_only=True)`), every RNG state (python, numpy, torch CPU and
each CUDA device: tensors in safetensors, the rest in JSON, nothing pickled), the step, the
history and the config, sealed by a manifest of digests (`integrity.seal_dir`). Loading verifies
the manifest first. Resuming compares the saved config with the current one and refuses, naming
the fields that differ, so a run is never continued under another configuration.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .integrity import CheckpointError, IntegrityError, check_dir, seal_dir
from .io_utils import ExclusiveLock, atomic_write_json, jsonable, replace_dir, writing

CHECKPOINT = "checkpoint-latest"


def checkpoint_path(out_dir: str | Path) -> Path:
    """The one place a run's checkpoint lives."""
    return Path(out_dir) / CHECKPOINT


def get_lr(step: int, max_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up to `max_lr`, then cosine decay to 10% of it at `total` steps."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}:epoch:{epoch}").shuffle(order)
    return order


def micro_batch(order: list[int], step_in_epoch: int, micro: int, world: int, rank: int,
                accum_index: int = 0, grad_accum: int = 1) -> list[int]:
    """The examples of one process's micro-batch: a global batch is `micro × world × grad_accum`
    consecutive positions of the epoch's `order`; accumulation step `a` of process `r` reads the
    `(a × world + r)`-th block of `micro`. The blocks of one global batch are disjoint and cover it,
    so W processes compute what one process computes with grad_accum = W."""
    start = ((step_in_epoch * grad_accum + accum_index) * world + rank) * micro
    return order[start:start + micro]


def lora_state(model, adapter_name: str) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in
            get_peft_model_state_dict(model, adapter_name=adapter_name).items()}


# ----------------------------------------------------------------------------- RNG states
def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss = random.getstate()
    plain = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "state": list(py_state), "gauss": gauss}}
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    n = plain["numpy"]
    np.random.set_state((n["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = plain["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, model, optimizer, step: int, config: dict, history: list,
                    adapter_name: str) -> None:
    """Write the whole checkpoint in a temp folder, seal it, then swap it in (never half-written)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        with writing(path):  # a full disk is named with the checkpoint's path
            save_file(lora_state(model, adapter_name), str(tmp / "adapter.safetensors"))
            # The same weights in peft's own layout, for `PeftModel.from_pretrained(base, <ckpt>/peft/<adapter>)`.
            model.save_pretrained(str(tmp / "peft"), selected_adapters=[adapter_name], safe_serialization=True)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            tensors, plain = _rng_state()
            save_file(tensors, str(tmp / "rng.safetensors"))
            atomic_write_json(tmp / "rng.json", plain)
            atomic_write_json(tmp / "state.json", {"step": step, "config": config, "history": history})
            seal_dir(tmp, "checkpoint")
            replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def config_diff(saved, current, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two JSON-like configs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current)):
            out += config_diff(saved.get(k, "<absent>"), current.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if saved == current else [f"{prefix[:-1]} ({saved!r} -> {current!r})"]


def _verified_state(path: Path) -> dict:
    try:
        check_dir(path, "checkpoint")
        return json.loads((path / "state.json").read_text())
    except (IntegrityError, json.JSONDecodeError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged ({e}); delete that folder "
                              "and train again (without --resume)") from e


def load_checkpoint(path: Path, model, optimizer, adapter_name: str, config: dict) -> tuple[int, list]:
    """Restore a checkpoint saved under exactly `config`: adapter, optimizer, every RNG state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    state = _verified_state(path)
    diff = config_diff(state.get("config"), config)
    if diff:
        raise CheckpointError(f"cannot resume from {path}: it was saved under another configuration "
                              f"({'; '.join(diff[:6])}{' …' if len(diff) > 6 else ''}). Start fresh (run without "
                              f"--resume) or restore the old settings")
    set_peft_model_state_dict(model, load_file(str(path / "adapter.safetensors")), adapter_name=adapter_name)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    _set_rng_state(load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text()))
    return state["step"], state["history"]


def finished_checkpoint(out_dir: str | Path, config: dict) -> dict | None:
    """The state of `out_dir`'s checkpoint if it finished training with exactly `config`
    (objective, hyper-parameters, seed, data key) and is intact; None if there is none or it was
    made under another config; `CheckpointError` if it is damaged (never reused, never silent)."""
    path = checkpoint_path(out_dir)
    if not (path / "state.json").exists():
        return None
    try:
        state = json.loads((path / "state.json").read_text())
    except json.JSONDecodeError:
        state = {}
    if state.get("config") != config or state.get("step") != config.get("total_steps"):
        return None
    return _verified_state(path)


def load_adapter(model, out_dir: str | Path, adapter_name: str) -> None:
    """Load the adapter weights of a checkpoint that `finished_checkpoint` has verified."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(checkpoint_path(out_dir) / "adapter.safetensors")),
                              adapter_name=adapter_name)


def clean_leftovers(folder: str | Path, log=print) -> int:
    """Delete the temp folders of writes that a killed run left behind under `folder`."""
    n = 0
    for leftover in Path(folder).rglob(f".{CHECKPOINT}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
        n += 1
    if n:
        log(f"removed {n} unfinished checkpoint write(s) left by an interrupted run under {folder}")
    return n


# ----------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Schedule:
    """How one adapter is optimised: AdamW, `get_lr`, clipping, and the global batch of
    `batch_size × processes × grad_accum` examples."""
    lr: float
    weight_decay: float
    warmup_steps: int
    max_grad_norm: float
    batch_size: int
    grad_accum: int
    epochs: int
    checkpoint_every: int
    gradient_checkpointing: bool = False  # recompute the trained layers' activations in the backward pass


def adapter_parameters(model, adapter: str) -> list[torch.nn.Parameter]:
    """The LoRA weights of `adapter`, made trainable; every other weight frozen."""
    params = []
    for name, p in model.named_parameters():
        mine = f".{adapter}." in name
        p.requires_grad_(mine)
        if mine:
            params.append(p)
    return params


def train_adapter(module: torch.nn.Module, model, adapter: str, n_examples: int, batch_loss: Callable,
                  schedule: Schedule, seed: int, out_dir: str | Path, config: dict, *, what: str = "examples",
                  resume: bool = False, reuse: bool = False, stop_after: int | None = None,
                  on_start: Callable[[], None] | None = None, on_checkpoint: Callable[[int], dict] | None = None,
                  desc: str = "training", log=print) -> dict:
    """The one training loop of both adapters (nanoGPT-style, top to bottom, with `accelerate`).

    `module` is the trainable forward (it holds `model`, the peft model); `batch_loss(module, idx,
    micro)` returns (loss, logs) for the examples `idx` of global micro-batch number `micro`. One
    optimizer step per global batch: gradient accumulation is written out (loss / grad_accum, no
    all-reduce until the last micro-batch), so W processes compute what one process computes with
    grad_accum = W. The lr is set by `get_lr` at every step. A checkpoint (every `checkpoint_every`
    steps and at the end) is written by the main process, then every process waits; `resume`
    continues from it to the same weights as an uninterrupted run; with `reuse`, a finished
    checkpoint made under exactly `config` is loaded instead of training. `on_start()` runs once
    before the first step of a run that trains (e.g. reading cached trunk states); `on_checkpoint(step)`
    (an evaluation hook) returns numbers added to that step's record. Returns the history and config."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .llm.device import compute_device
    from .llm.encoder import layer_checkpointing
    from .paths import shown
    from .progress import step_bar

    out_dir = Path(out_dir)
    set_seed(seed)
    accelerator = Accelerator(cpu=compute_device().type == "cpu")
    params = adapter_parameters(model, adapter)
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    module, optimizer = accelerator.prepare(module, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro, accum = schedule.batch_size, schedule.grad_accum
    per_epoch = n_examples // (micro * world * accum)  # whole global batches only
    total_steps = per_epoch * schedule.epochs
    if total_steps == 0:
        raise ValueError(f"{n_examples} {what} are fewer than one global batch "
                         f"({micro} x {world} processes x {accum} accumulation)")
    config = jsonable({**config, "processes": world, "total_steps": total_steps})
    if reuse and (done := finished_checkpoint(out_dir, config)):
        load_adapter(model, out_dir, adapter)
        log(f"reused the finished {adapter} checkpoint in {shown(out_dir)} (same config and data)")
        return {"history": done["history"], "config": config, "reused": True}
    step, history = 0, []
    latest = checkpoint_path(out_dir)
    # One writer per checkpoint folder: a second training into the same folder is refused.
    lock = (ExclusiveLock(Path(out_dir) / ".training.lock",
                          f"another training (pid {{pid}}) is writing {shown(out_dir)}; wait for it, "
                          "or train into another folder (--out)")
            if accelerator.is_main_process else contextlib.nullcontext())
    with lock, layer_checkpointing(schedule.gradient_checkpointing):
        if on_start is not None:
            on_start()
        clean_leftovers(out_dir, log)
        if resume and (latest / "state.json").exists():
            step, history = load_checkpoint(latest, model, optimizer, adapter, config)
            log(f"resumed from {latest.name} at step {step}")
        elif resume:
            log(f"--resume: no checkpoint in {shown(out_dir)}; starting at step 0")
        module.train()
        bar = step_bar(total_steps, step, desc, show=accelerator.is_main_process)
        while step < total_steps:
            epoch, in_epoch = divmod(step, per_epoch)
            order = epoch_order(n_examples, seed, epoch)
            logs_acc: list[dict] = []
            for a in range(accum):
                last = a == accum - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(module):
                    loss, logs = batch_loss(module, micro_batch(order, in_epoch, micro, world, rank, a, accum),
                                            (step * accum + a) * world + rank)
                    accelerator.backward(loss / accum)  # gradients sum to the global-batch mean
                logs_acc.append(logs)
            accelerator.clip_grad_norm_(params, schedule.max_grad_norm)
            lr = get_lr(step, schedule.lr, schedule.warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            optimizer.zero_grad()
            local = torch.tensor([float(np.mean([l[k] for l in logs_acc])) for k in logs_acc[0]])
            means = accelerator.reduce(local.to(accelerator.device), reduction="mean").cpu()  # over processes
            record = {"step": step + 1, "lr": lr, **{k: float(v) for k, v in zip(logs_acc[0], means)}}
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
            bar.update()
            step += 1
            if step % schedule.checkpoint_every == 0 or step == total_steps:
                if on_checkpoint is not None:
                    record.update(on_checkpoint(step))
                if accelerator.is_main_process:
                    save_checkpoint(latest, model, optimizer, step, config, history, adapter)
                accelerator.wait_for_everyone()
            if stop_after is not None and step >= stop_after:
                break
        bar.close()
        module.eval()
        return {"history": history, "config": config, "reused": False}
