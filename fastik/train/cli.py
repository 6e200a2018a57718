"""``fastik train {nbody,qm9,modelnet}``, ``fastik sweep nbody`` and ``fastik data nbody``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..ops.dispatch import BACKENDS
from .loop import TrainConfig, seed_everything, train

__all__ = ["add_commands"]

QUICK = {  # --quick: a smoke-test size that runs in seconds on a CPU
    "nbody": dict(epochs=2, batch_size=16, train_samples=64, val_samples=32, test_samples=32, layers=2,
                  hidden="4x0e + 2x1o", hidden_channels=4),
    "qm9": dict(epochs=2, batch_size=16, subset=96, layers=2, hidden="8x0e + 2x1o", hidden_channels=4),
    "modelnet": dict(epochs=2, batch_size=4, points=64, layers=2, hidden="4x0e + 2x1o", hidden_channels=4),
}


def _common(p: argparse.ArgumentParser, task: str, out: str) -> None:
    p.add_argument("--out", default=out,
                   help="output folder: checkpoints, metrics.{csv,json,png} (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--lr-step", type=int, default=None, help="halve the learning rate every this many epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="ImplicitPointConv backend (auto: triton on CUDA, else reference; fused: the whole "
                        "G-MLP in one Triton op)")
    p.add_argument("--quick", action="store_true", help="tiny data and model: a smoke test in seconds")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt (bit-identical on CPU)")
    p.add_argument("--val-every", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps within an epoch")
    p.add_argument("--max-steps-per-epoch", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--layers", type=int, default=None, help="steerable layers")
    p.add_argument("--hidden", default=None, help='hidden field type, e.g. "16x0e + 8x1o"')
    p.add_argument("--hidden-channels", type=int, default=None, help="width of the kernel G-MLPs")
    p.set_defaults(task=task)


def _nbody_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="folder with train/val/test.npz from `fastik data nbody` "
                                                "(default: generate in memory)")
    p.add_argument("--k", type=float, default=1.0, help="plane-spring stiffness (when generating)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated data (splits: +0, +1, +2)")
    p.add_argument("--train-samples", type=int, default=None, help="default 3000")
    p.add_argument("--val-samples", type=int, default=None, help="default 500")
    p.add_argument("--test-samples", type=int, default=None, help="default 500")


DEFAULTS = {
    "nbody": dict(epochs=30, batch_size=32, lr=3e-3, lr_step=10, layers=3, hidden="8x0e + 4x1o",
                  hidden_channels=8, train_samples=3000, val_samples=500, test_samples=500),
    "qm9": dict(epochs=30, batch_size=32, lr=1e-3, lr_step=10, layers=4, hidden="16x0e + 8x1o", hidden_channels=8),
    "modelnet": dict(epochs=30, batch_size=8, lr=1e-3, lr_step=10, layers=3, hidden="8x0e + 4x1o + 2x2e",
                     hidden_channels=8, points=1024),
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``sweep`` and ``data`` on the ``fastik`` parser; each sets ``func``."""
    tr = sub.add_parser("train", help="train a model of the paper's studies").add_subparsers(dest="task", required=True)
    p = tr.add_parser("nbody", help="N-body system with plane springs (paper §5.2)")
    _common(p, "nbody", "runs/nbody")
    _nbody_args(p)
    p.add_argument("--model", default="cinf", help="3D group of the steerable model (cinf, o3, ...) or mlp")
    p.set_defaults(func=_train_command)

    p = tr.add_parser("qm9", help="QM9 property regression on bond graphs (paper §5.4; needs qm9pack)")
    _common(p, "qm9", "runs/qm9")
    p.add_argument("--target", default="homo", help="homo, lumo, gap (meV), mu (D), alpha, cv, r2, zpve")
    p.add_argument("--subset", type=int, default=None,
                   help="train on the first N molecules of the standard training split (N//10 for val / test)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 110k / 10k / rest split")
    p.add_argument("--group", default="o3", help="3D point group of the model (default o3)")
    p.add_argument("--cache", default=None, help="parsed-data cache (.npz; default $FASTIK_CACHE or "
                                                 "~/.cache/fastik/qm9-v1.npz); only for full runs")
    p.set_defaults(func=_train_command)

    p = tr.add_parser("modelnet", help="ModelNet-40 classification (paper §5.3) from a local copy of the OFF meshes")
    _common(p, "modelnet", "runs/modelnet")
    p.add_argument("--data", required=True, help="ModelNet40 folder: <data>/<class>/{train,test}/*.off")
    p.add_argument("--group", default="cinfv", help="3D point group, e.g. cinf (SO(2) about z), cinfv (O(2)), "
                                                    "o3, c4, d4h (default %(default)s)")
    p.add_argument("--points", type=int, default=None, help="points sampled per mesh (default 1024)")
    p.add_argument("--knn", type=int, default=10, help="neighbours of the kNN graph at each layer")
    p.add_argument("--keep", type=float, default=0.5, help="fraction of points kept between layers")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 80 / 20 train / validation split")
    p.set_defaults(func=_train_command)

    sw = sub.add_parser("sweep", help="sweeps over a study's parameter").add_subparsers(dest="study", required=True)
    p = sw.add_parser("nbody", help="test error vs plane-spring stiffness k, one model per (k, group)")
    _common(p, "nbody", "runs/nbody-sweep")
    _nbody_args(p)
    p.add_argument("--ks", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--models", nargs="+", default=["cinf", "o3", "mlp"])
    p.set_defaults(func=_sweep_command)

    da = sub.add_parser("data", help="generate data sets").add_subparsers(dest="dataset", required=True)
    p = da.add_parser("nbody", help="write train/val/test.npz of the N-body system")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=float, default=1.0, help="plane-spring stiffness")
    p.add_argument("--seed", type=int, default=0, help="seed of the train split (val: +1, test: +2)")
    p.add_argument("--samples", type=int, nargs=3, default=[3000, 500, 500], metavar=("TRAIN", "VAL", "TEST"))
    p.set_defaults(func=_data_command)


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset (None) options: explicit values win, then ``--quick`` sizes, then the task's defaults."""
    values = {**DEFAULTS[args.task], **(QUICK[args.task] if args.quick else {})}
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def train_one(args: argparse.Namespace) -> dict[str, Any]:
    """Build the task named by ``args.task`` and train it (the body of ``fastik train``)."""
    args = _resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    if args.task == "nbody":
        from .nbody import build_task
    elif args.task == "qm9":
        from .qm9 import build_task
    else:
        from .modelnet import build_task
    task = build_task(args)
    cfg = TrainConfig(out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, lr_step=args.lr_step, seed=args.seed, device=args.device,
                      val_every=args.val_every, ckpt_every=args.ckpt_every, resume=args.resume,
                      progress=not args.no_progress, max_steps_per_epoch=args.max_steps_per_epoch,
                      select_metric=task.info.pop("select_metric", "loss"))
    task.info["command_args"] = {k: v for k, v in vars(args).items() if k != "func"}
    return train(task, cfg)


def _train_command(args: argparse.Namespace) -> int:
    try:
        train_one(args)
    except (FileNotFoundError, ModuleNotFoundError) as e:  # missing data or the experiments extra
        print(f"fastik train {args.task}: error: {e}", file=sys.stderr)
        return 2
    return 0


def _sweep_command(args: argparse.Namespace) -> int:
    from .nbody import run_sweep
    rows = run_sweep(args, train_one)
    print((Path(args.out) / "sweep.md").read_text())
    print(json.dumps(rows, indent=1))
    return 0


def _data_command(args: argparse.Namespace) -> int:
    from ..data import nbody
    for i, (split, n) in enumerate(zip(("train", "val", "test"), args.samples)):
        path = Path(args.out) / f"{split}.npz"
        nbody.save(nbody.generate(n, args.k, seed=args.seed + i), path)
        print(f"wrote {path} ({n} systems, k={args.k:g})")
    return 0
