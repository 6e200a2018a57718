"""N-body study (paper §5.2): one model per plane-spring stiffness k, and the sweep over k."""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..data import nbody as nbody_data
from ..groups import FieldType, group
from .loop import Metrics, Task
from .models import NBodyMLP, SteerableGNN, count_parameters

__all__ = ["build_task", "build_model", "run_sweep", "write_sweep", "SPLITS"]

SPLITS = ("train", "val", "test")
LABELS = {"cinf": "Cinf (SO(2) about z)", "o3": "O(3)", "mlp": "MLP (not equivariant)"}


def build_model(name: str, hidden: str, layers: int, hidden_channels: int, backend: str,
                n_particles: int = 5) -> nn.Module:
    """``name``: a 3D group (e.g. ``cinf``, ``o3``) for the steerable model, or ``mlp`` for the baseline.

    The MLP's width is chosen so that its parameter count matches the ``cinf`` model of the same settings.
    """
    if name == "mlp":
        target = count_parameters(build_model("cinf", hidden, layers, hidden_channels, backend, n_particles))
        d_in, d_out, depth = n_particles * 7 + n_particles * (n_particles - 1), n_particles * 3, 3
        # params(w) = (d_in + 1) w + (depth - 1)(w + 1) w + (w + 1) d_out: solve the quadratic for w
        a, b, c = depth - 1, d_in + 1 + (depth - 1) + d_out, d_out - target
        width = max(4, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
        return NBodyMLP(n_particles, width, depth)
    G = group(name)
    return SteerableGNN(FieldType(G, "2x1o + 1x0e"), FieldType(G, hidden), FieldType(G, "1x1o"), layers,
                        edge_attr_type=FieldType(G, "2x0e"), node_attr_type=FieldType(G, "1x0e"),
                        hidden_channels=hidden_channels, backend=backend, avg_degree=float(n_particles - 1))


def _step(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Metrics]:
    """Predict positions at the later frame as pos + Δ; L1 loss; MSE reported (per coordinate)."""
    inner = getattr(model, "module", model)
    if isinstance(inner, NBodyMLP):
        delta = model(batch["x"], batch["edge_attr"])
    else:
        delta = model(batch["x"], batch["pos"], batch["edge_index"], batch["edge_attr"], batch["node_attr"])
    err = batch["pos"] + delta - batch["target"]
    n = err.shape[0]
    return err.abs().mean(), {"mse": (err.pow(2).mean(-1).sum().item(), float(n)),
                              "mae": (err.abs().mean(-1).sum().item(), float(n))}


def load_splits(args: argparse.Namespace) -> dict[str, dict]:
    """The train / val / test arrays: from ``args.data`` (written by ``fastik data nbody``) or generated now."""
    if args.data:
        root = Path(args.data)
        missing = [s for s in SPLITS if not (root / f"{s}.npz").exists()]
        if missing:
            raise FileNotFoundError(f"{root} lacks {', '.join(s + '.npz' for s in missing)}; "
                                    f"create it with `fastik data nbody --out {root} --k K`")
        return {s: nbody_data.load(root / f"{s}.npz") for s in SPLITS}
    sizes = dict(zip(SPLITS, (args.train_samples, args.val_samples, args.test_samples)))
    return {s: nbody_data.generate(sizes[s], args.k, seed=args.data_seed + i) for i, s in enumerate(SPLITS)}


def build_task(args: argparse.Namespace) -> Task:
    """The N-body task for ``args`` (see ``fastik train nbody --help``)."""
    data = load_splits(args)
    k = float(data["train"]["k"])
    model = build_model(args.model, args.hidden, args.layers, args.hidden_channels, args.backend)
    sets = {s: nbody_data.NBodyDataset(d) for s, d in data.items()}
    return Task(f"nbody-{args.model}-k{k:g}", model, sets["train"], sets["val"], sets["test"], _step,
                info={"k": k, "model": args.model, "samples": {s: len(v) for s, v in sets.items()}})


def run_sweep(args: argparse.Namespace, train_one) -> list[dict[str, Any]]:
    """Train every (k, model) pair into ``<out>/k<k>-<model>``; write sweep.csv, sweep.md and sweep.png.

    ``train_one(args) -> summary`` trains one configuration (the ``fastik train nbody`` path).
    """
    out = Path(args.out)
    rows = []
    for k in args.ks:
        for name in args.models:
            run = argparse.Namespace(**{**vars(args), "k": k, "model": name, "out": str(out / f"k{k:g}-{name}")})
            summary = train_one(run)
            rows.append({"k": k, "model": name, "parameters": summary["parameters"],
                         "test_mse": summary["test"]["mse"], "test_mae": summary["test"]["mae"],
                         "best_epoch": summary["best_epoch"], "train_time_s": round(summary["train_time_s"], 1)})
            write_sweep(out, rows)
    return rows


def write_sweep(out: Path, rows: list[dict[str, Any]]) -> None:
    """sweep.csv, sweep.md (test MSE per k and model) and sweep.png (log MSE vs k; needs matplotlib)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    ks = list(dict.fromkeys(r["k"] for r in rows))
    mse = {(r["k"], r["model"]): r["test_mse"] for r in rows}
    lines = ["| k | " + " | ".join(f"{m} test MSE" for m in models) + " |",
             "|---|" + "---|" * len(models)]
    for k in ks:
        lines.append(f"| {k:g} | " + " | ".join(f"{mse[k, m]:.3g}" if (k, m) in mse else "–" for m in models) + " |")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(4.5, 3.3))
    for m in models:
        pts = [(k, mse[k, m]) for k in ks if (k, m) in mse]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS.get(m, m))
    ax.set_xlabel("plane-spring stiffness k")
    ax.set_ylabel("test MSE (positions)")
    ax.set_yscale("log")
    ax.set_title("N-body with plane springs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=120)
    plt.close(fig)
