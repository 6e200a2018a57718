"""The common training loop: progress bars, validation, metrics, atomic checkpoints, exact resume, DDP.

A :class:`Task` supplies data sets, a model and a ``step`` that returns the loss and
metric sums of one batch; :func:`train` does the rest.  Resuming (``resume=True``)
restores the model, optimiser, scheduler, every RNG (torch, numpy, python; per rank)
and the position in the epoch's data order, so on CPU a resumed run is bit-identical
to an uninterrupted one.  Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped
in DistributedDataParallel (gloo on CPU, nccl on CUDA) and each rank takes its
DistributedSampler shard of every epoch.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler

from ..data.batch import collate, to_device

__all__ = ["TrainConfig", "Task", "train", "evaluate", "Metrics", "atomic_save", "load_checkpoint",
           "distributed_setup", "write_metrics", "seed_everything"]

Metrics = dict[str, tuple[float, float]]  # name -> (sum over samples, number of samples)


@dataclass
class TrainConfig:
    """Loop settings (all plain values, stored in checkpoints and metrics.json)."""

    out: str
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lr_step: int = 10          # StepLR: multiply the LR by lr_gamma every lr_step epochs
    lr_gamma: float = 0.5
    seed: int = 0
    device: str = "cpu"
    val_every: int = 1         # validate every this many epochs (and after the last)
    ckpt_every: int = 0        # also checkpoint every this many steps inside an epoch (0: only at epoch ends)
    resume: bool = False
    progress: bool = True
    max_steps_per_epoch: int = 0  # 0: whole epoch (quick runs cap it)
    select_metric: str = "loss"   # validation metric that picks the best checkpoint (lower is better)


@dataclass
class Task:
    """What :func:`train` needs from one study.

    ``step(model, batch) -> (loss, metrics)``: ``loss`` a scalar tensor (mean over the
    batch), ``metrics`` name -> (sum, count) for reporting.  ``batch`` is a collated dict
    (:func:`fastik.data.batch.collate`) already on the device.  ``dtype`` converts floating
    batch tensors.  ``info`` is recorded in metrics.json.
    """

    name: str
    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset | None
    step: Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, Metrics]]
    dtype: torch.dtype = torch.float32
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- distributed


def distributed_setup(device: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, created): under torchrun (WORLD_SIZE > 1) the process group is
    initialised here unless it already exists (``created`` says whether this call made it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = world > 1 and not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return rank, world, dev, created


def _all_reduce_metrics(metrics: Metrics, world: int) -> Metrics:
    if world == 1 or not metrics:
        return metrics
    names = sorted(metrics)
    t = torch.tensor([v for n in names for v in metrics[n]], dtype=torch.float64)
    dist.all_reduce(t)
    return {n: (t[2 * i].item(), t[2 * i + 1].item()) for i, n in enumerate(names)}


# --------------------------------------------------------------------------- RNG and checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` via a temporary file and os.replace (never a half-written checkpoint)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` (``weights_only=True``: tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- evaluation


def _shard(n: int, rank: int, world: int) -> list[int]:
    return list(range(rank, n, world))


def _batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
             rank: int = 0, world: int = 1) -> dict[str, float]:
    """Mean of every metric (and of the loss) over ``dataset`` (each rank a strided shard, summed)."""
    was_training = model.training
    model.eval()
    sums: Metrics = {}
    for idx in _batches(_shard(len(dataset), rank, world), batch_size):
        batch = to_device(collate([dataset[i] for i in idx]), device, task.dtype)
        loss, metrics = task.step(model, batch)
        metrics = dict(metrics, loss=(loss.item() * len(idx), float(len(idx))))
        for k, (s, c) in metrics.items():
            a, b = sums.get(k, (0.0, 0.0))
            sums[k] = (a + s, b + c)
    model.train(was_training)
    return {k: s / max(c, 1.0) for k, (s, c) in _all_reduce_metrics(sums, world).items()}


# --------------------------------------------------------------------------- metrics files


def write_metrics(out: Path, history: list[dict[str, float]], summary: dict[str, Any]) -> None:
    """metrics.csv (one row per validation), metrics.json (history + summary), metrics.png (if matplotlib)."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    tmp = out / "metrics.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, out / "metrics.csv")
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps({"history": history, **summary}, indent=1, default=str))
    os.replace(tmp, out / "metrics.json")
    _plot(out / "metrics.png", history, summary.get("task", ""))


def _plot(path: Path, history: list[dict[str, float]], title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional: metrics.csv / .json carry the same numbers
        return
    if not history:
        return
    series = [k for k in history[0] if k not in ("epoch", "lr", "time_s")]
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.8), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes[0], series):
        ax.plot(epochs, [row.get(key, math.nan) for row in history], marker="o")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the loop


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(task: Task, cfg: TrainConfig) -> dict[str, Any]:
    """Train ``task.model`` and return the summary written to ``<out>/metrics.json``.

    Writes ``<out>/last.pt`` (every epoch end and every ``ckpt_every`` steps),
    ``<out>/best.pt`` (best validation ``select_metric``), metrics.csv / .json / .png.
    The final test metrics are those of the best checkpoint.
    """
    rank, world, device, created_group = distributed_setup(cfg.device)
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed + rank)
    model = task.model.to(device=device, dtype=task.dtype)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    sampler = DistributedSampler(task.train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)

    # step: batches done in the current epoch; loss_sum / seen: its running training loss
    state = {"epoch": 0, "step": 0, "global_step": 0, "loss_sum": 0.0, "seen": 0, "history": [],
             "best": math.inf, "best_epoch": -1, "train_time_s": 0.0}
    best_state = copy.deepcopy(model.state_dict())
    last = out / "last.pt"
    if cfg.resume and last.exists():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        rngs = ck["rng"]
        if len(rngs) != world:
            raise ValueError(f"{last} was written by {len(rngs)} process(es) but this run has {world}; "
                             "resume with the same number of processes")
        _set_rng_state(rngs[rank])
        if (out / "best.pt").exists():
            best_state = load_checkpoint(out / "best.pt")["model"]
    elif cfg.resume and rank == 0:
        print(f"--resume: no checkpoint at {last}; starting from scratch")

    def checkpoint() -> None:
        rngs = [_rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, _rng_state())
        if rank == 0:
            atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "state": state, "rng": rngs, "config": asdict(cfg)}, last)

    n_params = sum(p.numel() for p in model.parameters())
    summary: dict[str, Any] = {"task": task.name, "config": asdict(cfg), "parameters": n_params,
                               "world_size": world, **task.info}
    bar_ctor = _progress_bar(cfg.progress and rank == 0)
    model.train()
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch)
        batches = _batches(list(sampler), cfg.batch_size)
        if cfg.max_steps_per_epoch:
            batches = batches[:cfg.max_steps_per_epoch]
        t0, seen_before = time.perf_counter(), state["seen"]
        bar = bar_ctor(total=len(batches), initial=state["step"], desc=f"{task.name} epoch {epoch + 1}/{cfg.epochs}")
        for b in range(state["step"], len(batches)):
            batch = to_device(collate([task.train_set[i] for i in batches[b]]), device, task.dtype)
            loss, _ = task.step(net, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["seen"] += len(batches[b])
            state["loss_sum"] += loss.item() * len(batches[b])
            state["step"], state["global_step"] = b + 1, state["global_step"] + 1
            bar.update(1)
            rate = (state["seen"] - seen_before) * world / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss.item():.4g}", samples_s=f"{rate:.1f}")
            if cfg.ckpt_every and (b + 1) % cfg.ckpt_every == 0 and b + 1 < len(batches):
                checkpoint()
        bar.close()
        state["train_time_s"] += time.perf_counter() - t0
        sched.step()
        train_loss = state["loss_sum"] / max(state["seen"], 1)
        state.update(epoch=epoch + 1, step=0, loss_sum=0.0, seen=0)
        if (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs:
            # the unwrapped model: evaluation runs no collective, so uneven shards cannot hang
            val = evaluate(task, model, task.val_set, cfg.batch_size, device, rank, world)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"],
                   "time_s": state["train_time_s"], **{f"val_{k}": v for k, v in val.items()}}
            state["history"].append(row)
            if val[cfg.select_metric] < state["best"]:
                state["best"], state["best_epoch"] = val[cfg.select_metric], epoch + 1
                best_state = copy.deepcopy(model.state_dict())
                if rank == 0:
                    atomic_save({"model": best_state, "epoch": epoch + 1, "config": asdict(cfg)}, out / "best.pt")
            if rank == 0:
                print(f"[{task.name}] epoch {epoch + 1}: " + ", ".join(f"{k}={v:.5g}" for k, v in row.items()
                                                                       if k != "epoch"), flush=True)
                write_metrics(out, state["history"], summary)
        checkpoint()

    summary.update(best_epoch=state["best_epoch"], best_val=state["best"], train_time_s=state["train_time_s"],
                   epochs_done=state["epoch"])
    if task.test_set is not None and len(task.test_set):
        final = copy.deepcopy(model.state_dict())
        model.load_state_dict(best_state)
        summary["test"] = evaluate(task, model, task.test_set, cfg.batch_size, device, rank, world)
        model.load_state_dict(final)
        if rank == 0:
            print(f"[{task.name}] test (best epoch {state['best_epoch']}): "
                  + ", ".join(f"{k}={v:.5g}" for k, v in summary["test"].items()), flush=True)
    if rank == 0:
        write_metrics(out, state["history"], summary)
    if created_group:
        dist.barrier()  # rank 0 may still be writing metrics: tearing gloo down under a live peer can abort
        dist.destroy_process_group()
    return summary


class _NoBar:
    def __init__(self, **_: Any) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool) -> Callable[..., Any]:
    """tqdm when enabled and installed (the ``experiments`` extra), else a silent stand-in."""
    if enabled:
        try:
            from tqdm.auto import tqdm
            return lambda **kw: tqdm(**kw, leave=False, dynamic_ncols=True)
        except ImportError:
            pass
    return _NoBar
