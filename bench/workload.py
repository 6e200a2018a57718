"""The benchmark workload: layer specification and random graphs.

Standard workload: one point-convolution layer whose input and output are
``C`` fields of the O(3) irreps 0e ⊕ 1o restricted to the group (C = 16:
D = 64), on a random graph with ``E = 16·N`` directed edges — every node is the
target of 16 edges (targets sorted) whose sources are drawn uniformly from
the other nodes — positions standard normal, features standard normal, fp32, TF32 off.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["DEGREE", "STANDARD_GROUP", "DEFAULT_GROUPS", "DEFAULT_EDGES", "QUICK_EDGES", "PRECISIONS", "LayerSpec",
           "Graph", "make_graph", "nodes_for_edges", "parse_edges", "cpu_model_parser", "at_least"]

DEGREE = 16                      # incoming edges per node: E = 16 N
STANDARD_GROUP = "so3"
DEFAULT_GROUPS = ("so3", "Cinf", "O", "o3")
DEFAULT_EDGES = (1_000, 10_000, 100_000, 400_000, 1_000_000)
PRECISIONS = ("ieee", "tf32x3", "tf32")   # matmul precision modes of fastik's Triton kernels
QUICK_EDGES = (1_000, 3_000)


@dataclass(frozen=True)
class LayerSpec:
    """What every implementation builds: one layer ``C x (0e + 1o) -> C x (0e + 1o)`` for ``group``.

    ``group`` is a :func:`fastik.group` name (3D). ``hidden_channels`` and
    ``hidden_layers`` size the G-MLP of the implicit kernels (fastik and
    escnn-implicit); the plain-torch baseline keeps its fixed MLP 3 -> 64 -> 64 -> D².
    ``precision`` is the matmul precision of the implementations that have one
    (``Impl.precisions``: fastik's Triton kernels); the others run fp32 with TF32 off
    and are skipped for any other precision than "ieee".
    """

    group: str = STANDARD_GROUP
    channels: int = 16
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    hidden_channels: int = 16
    hidden_layers: int = 2
    precision: str = "ieee"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def fields(self) -> str:
        """The field type in fastik / e3nn notation."""
        return f"{self.channels}x0e + {self.channels}x1o"

    @property
    def dim(self) -> int:
        """D = Din = Dout."""
        return 4 * self.channels


@dataclass
class Graph:
    """Inputs of one layer call: x (N, D), pos (N, 3), edge_index (2, E) = [source j; target i]."""

    x: torch.Tensor
    pos: torch.Tensor
    edge_index: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]


def nodes_for_edges(edges: int) -> int:
    """N with 16 N ≈ edges (at least 1)."""
    return max(1, round(edges / DEGREE))


def make_graph(edges: int, dim: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> Graph:
    """A random graph with ``16·N ≈ edges`` edges, generated on the CPU (reproducible) and moved to ``device``."""
    n = nodes_for_edges(edges)
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=gen, dtype=torch.float64).to(dtype)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64).to(dtype)
    tgt = torch.arange(n).repeat_interleave(DEGREE)
    if n > 1:  # uniform over the other nodes: no self loops (r = 0 has no direction for Y_l(r̂))
        src = torch.randint(0, n - 1, (n * DEGREE,), generator=gen)
        src = src + (src >= tgt).long()
    else:
        src = torch.zeros(DEGREE, dtype=torch.long)
    edge_index = torch.stack([src, tgt])
    return Graph(x.to(device), pos.to(device), edge_index.to(device))


def parse_edges(text: str) -> list[int]:
    """``"1e3,1e4,100000"`` -> [1000, 10000, 100000] (sorted, deduplicated)."""
    values = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        value = float(part)
        if value < 1 or value != int(value):
            raise ValueError(f"edge counts must be positive integers, got {part!r}")
        values.append(int(value))
    if not values:
        raise ValueError("no edge counts given")
    return sorted(set(values))


def cpu_model_parser(prog: str, doc: str, least_edges: int = 1) -> argparse.ArgumentParser:
    """The options of the CPU models of the fused op (``python -m bench.precision``, ``bench.second_order``):
    --edges (≥ ``least_edges``, the standard workload's, E ≈ 3 000), --widths (hidden_channels), --json; the
    caller adds its own (integers with ``type=at_least(m)``)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--edges", type=at_least(least_edges), default=3000,
                   help=f"edges of the standard workload (≥ {least_edges})")
    p.add_argument("--widths", default="5,16", help="hidden_channels to run (5: the anchors' width, 16: default)")
    p.add_argument("--json", help="also write the rows as JSON to this path")
    return p


def at_least(least: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ≥ ``least``, else the option's usage error."""
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be ≥ {least}, got {value}")
        return value
    return parse
