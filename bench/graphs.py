"""Time ``fastik.graphs`` radius / kNN graph construction (and torch_cluster's, when installed).

    python -m bench.graphs                      # CPU, 10k and 100k uniform points in the unit cube
    python -m bench.graphs --sizes 1e6 --device cuda --batch 8

The radius is chosen for about ``--degree`` neighbours per point, so both builders make graphs of
the same size. Prints one Markdown table row per (builder, size): median wall time over
``--repeat`` runs after one warm-up, and the number of edges.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time
from typing import Callable

import torch

from fastik import graphs


def _time(fn: Callable[[], torch.Tensor], repeat: int, device: torch.device) -> tuple[float, int]:
    edges = fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), edges.shape[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5], help="points per run")
    parser.add_argument("--degree", type=int, default=16, help="neighbours per point (k, and ≈ for the radius)")
    parser.add_argument("--batch", type=int, default=1, help="clouds per run (equal sizes)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cluster = importlib.util.find_spec("torch_cluster") is not None
    if cluster:
        import torch_cluster
    print("| builder | N | clouds | median time (s) | edges |\n|---|---|---|---|---|")
    for size in args.sizes:
        n = int(size)
        gen = torch.Generator().manual_seed(0)
        pos = torch.rand(n, 3, generator=gen).to(device)
        batch = (torch.arange(n) * args.batch // n).to(device)
        # a ball of radius r holds `degree` points of a cloud of n / batch uniform points
        r = (args.degree * args.batch / n / (4 / 3 * math.pi)) ** (1 / 3)
        runs = {
            "fastik radius_graph": lambda: graphs.radius_graph(pos, r, batch),
            "fastik knn_graph": lambda: graphs.knn_graph(pos, args.degree, batch),
        }
        if cluster:
            runs["torch_cluster radius_graph"] = lambda: torch_cluster.radius_graph(
                pos, r, batch, max_num_neighbors=4 * args.degree)
            runs["torch_cluster knn_graph"] = lambda: torch_cluster.knn_graph(pos, args.degree, batch)
        for name, fn in runs.items():
            seconds, edges = _time(fn, args.repeat, device)
            print(f"| {name} | {n} | {args.batch} | {seconds:.4f} | {edges} |", flush=True)
    if not cluster:
        print("\n(torch_cluster is not installed: no comparison)")


if __name__ == "__main__":
    main()
