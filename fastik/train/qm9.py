"""QM9 study (paper §5.4): an O(3) steerable CNN on the bond graph, kernels conditioned on bond and atom types."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from ..data import qm9
from ..groups import FieldType, group
from .loop import Metrics, Task
from .models import MoleculeRegressor

__all__ = ["build_task", "default_cache"]


def default_cache() -> Path:
    """Where the parsed data set is cached: ``$FASTIK_CACHE`` or ``~/.cache/fastik``, file qm9-v1.npz."""
    return Path(os.environ.get("FASTIK_CACHE", Path.home() / ".cache" / "fastik")) / "qm9-v1.npz"


def load_splits(subset: int | None, split_seed: int, cache: Path | None) -> dict[str, dict[str, np.ndarray]]:
    """Standard split (110k / 10k / rest, seeded); ``subset`` N keeps the first N training and N//10
    validation / test molecules of it (parsing only those)."""
    train, val, test = qm9.split_indices(seed=split_seed)
    if subset:
        m = max(subset // 10, 1)
        parts = (train[:subset], val[:m], test[:m])
        data = qm9.load_qm9(rows=np.concatenate(parts))
        bounds = np.cumsum([0] + [len(p) for p in parts])
        return {s: qm9.select_molecules(data, np.arange(bounds[k], bounds[k + 1]))
                for k, s in enumerate(("train", "val", "test"))}
    data = qm9.load_qm9(cache=cache)
    return {s: qm9.select_molecules(data, np.asarray(idx))
            for s, idx in zip(("train", "val", "test"), (train, val, test))}


def build_task(args: argparse.Namespace) -> Task:
    """The QM9 task for ``args`` (see ``fastik train qm9 --help``)."""
    splits = load_splits(args.subset, args.split_seed, Path(args.cache) if args.cache else default_cache())
    y = splits["train"][args.target]
    mean, std = float(y.mean()), float(y.std())
    sets = {s: qm9.QM9Dataset(d, args.target, mean, std) for s, d in splits.items()}
    G = group(args.group)
    model = MoleculeRegressor(FieldType(G, "5x0e"), FieldType(G, args.hidden), args.layers,
                              edge_attr_type=FieldType(G, "4x0e"), node_attr_type=FieldType(G, "5x0e"),
                              hidden_channels=args.hidden_channels, backend=args.backend)

    def step(net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Metrics]:
        pred = net(batch["x"], batch["pos"], batch["edge_index"], batch["edge_attr"], batch["node_attr"],
                   batch["batch"], int(batch["num_graphs"]))
        loss = (pred - batch["y"]).abs().mean()  # L1 on the standardised target
        mae = ((pred.double() * std + mean) - batch["y_raw"].double()).abs().sum().item()
        return loss, {"mae": (mae, float(len(pred)))}

    unit = qm9.TARGETS[args.target][2]
    return Task(f"qm9-{args.target}", model, sets["train"], sets["val"], sets["test"], step,
                info={"target": args.target, "unit": unit, "target_mean": mean, "target_std": std,
                      "molecules": {s: len(v) for s, v in sets.items()}, "select_metric": "mae"})
