"""ModelNet-40 study (paper §5.3): point-cloud classification with the group chosen by name."""
from __future__ import annotations

import argparse

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.modelnet import ModelNetDataset, find_meshes
from ..groups import group
from .loop import Metrics, Task
from .models import PointCloudClassifier

__all__ = ["build_task"]


def build_task(args: argparse.Namespace) -> Task:
    """The ModelNet-40 task for ``args`` (see ``fastik train modelnet --help``)."""
    classes, parts = find_meshes(args.data)
    train = parts["train"]
    perm = np.random.default_rng(args.split_seed).permutation(len(train))
    n_val = max(1, round(0.2 * len(train))) if len(train) > 1 else 0
    val_items = [train[i] for i in perm[:n_val]]
    train_items = [train[i] for i in perm[n_val:]]
    model = PointCloudClassifier(group(args.group), len(classes), args.hidden, args.layers, k=args.knn,
                                 keep=args.keep, hidden_channels=args.hidden_channels, backend=args.backend)

    def step(net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Metrics]:
        logits = net(batch["x"], batch["pos"], batch["batch"], int(batch["num_graphs"]))
        loss = F.cross_entropy(logits, batch["y"])
        wrong = (logits.argmax(-1) != batch["y"]).sum().item()
        n = float(len(batch["y"]))
        return loss, {"error": (wrong, n), "accuracy": (n - wrong, n)}

    sets = [ModelNetDataset(items, args.points, augment, args.seed)
            for items, augment in ((train_items, True), (val_items, False), (parts["test"], False))]
    return Task(f"modelnet-{args.group}", model, *sets, step,
                info={"classes": classes, "group": args.group, "points": args.points,
                      "meshes": {"train": len(train_items), "val": len(val_items), "test": len(parts["test"])},
                      "select_metric": "error"})
