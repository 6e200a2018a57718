"""Models of the paper's studies, built from fastik layers.

* :class:`SteerableGNN` — embedding (EquivariantLinear) -> residual blocks
  ``h + gate(conv(h))`` of :class:`~fastik.ImplicitPointConv` on a fixed graph ->
  readout (EquivariantLinear).  Used for N-body (vector output per node) and
  QM9 (invariant output per node, summed per molecule, then an MLP).
* :class:`PointCloudClassifier` — ModelNet-40: kNN graph (k = 10) at each layer,
  random subsampling between layers, invariant mean pooling, MLP classifier.
* :class:`NBodyMLP` — the non-equivariant N-body baseline.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..graphs import knn_graph, pool
from ..groups import FieldType, Group
from ..nn import EquivariantLinear, GatedNonlinearity, ImplicitPointConv

__all__ = ["SteerableBlock", "SteerableGNN", "MoleculeRegressor", "NBodyMLP", "PointCloudClassifier",
           "count_parameters", "random_subset", "knn_to_subset"]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class SteerableBlock(nn.Module):
    """``y = gate(conv(x))``, plus ``x`` when ``residual`` and in_type == out_type (not bipartite).

    Shapes: x (N, in_type.dim), pos (N, 3), edge_index (2, E), edge_attr (E, ·), node_attr (N, ·),
    pos_target (M, 3) or None -> (N or M, out_type.dim).
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, edge_attr_type: FieldType | None = None,
                 node_attr_type: FieldType | None = None, hidden_channels: int = 8, hidden_layers: int = 2,
                 backend: str = "auto", avg_degree: float = 4.0, residual: bool = True) -> None:
        super().__init__()
        self.act = GatedNonlinearity(out_type)
        self.conv = ImplicitPointConv(in_type, self.act.in_type, edge_attr_type, node_attr_type, hidden_channels,
                                      hidden_layers, backend=backend, avg_degree=avg_degree)
        self.residual = residual and in_type == out_type

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                node_attr: Tensor | None = None, pos_target: Tensor | None = None) -> Tensor:
        y = self.act(self.conv(x, pos, edge_index, edge_attr, node_attr, pos_target=pos_target))
        return x + y if self.residual and pos_target is None else y


class SteerableGNN(nn.Module):
    """Embedding -> ``layers`` residual steerable blocks on a fixed graph -> per-node readout.

    Forward: x (N, in_type.dim), pos (N, 3), edge_index (2, E), edge_attr (E, ·),
    node_attr (N, ·) -> (N, out_type.dim).
    """

    def __init__(self, in_type: FieldType, hidden_type: FieldType, out_type: FieldType, layers: int,
                 edge_attr_type: FieldType | None = None, node_attr_type: FieldType | None = None,
                 hidden_channels: int = 8, hidden_layers: int = 2, backend: str = "auto",
                 avg_degree: float = 4.0) -> None:
        super().__init__()
        self.embed = EquivariantLinear(in_type, hidden_type)
        self.blocks = nn.ModuleList(
            SteerableBlock(hidden_type, hidden_type, edge_attr_type, node_attr_type, hidden_channels, hidden_layers,
                           backend, avg_degree) for _ in range(layers))
        self.readout = EquivariantLinear(hidden_type, out_type)

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                node_attr: Tensor | None = None) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, pos, edge_index, edge_attr, node_attr)
        return self.readout(h)


class MoleculeRegressor(nn.Module):
    """QM9: :class:`SteerableGNN` on the bond graph -> invariant node fields -> sum per molecule -> MLP.

    Forward: x (N, in_type.dim), pos (N, 3), edge_index (2, E), edge_attr (E, ·),
    node_attr (N, ·), batch (N,), num_graphs -> (B,) predictions (standardised units).
    """

    def __init__(self, in_type: FieldType, hidden_type: FieldType, layers: int, edge_attr_type: FieldType,
                 node_attr_type: FieldType, hidden_channels: int = 8, hidden_layers: int = 2,
                 backend: str = "auto", readout: int = 32, avg_degree: float = 2.0) -> None:
        super().__init__()
        group = in_type.group
        self.gnn = SteerableGNN(in_type, hidden_type, FieldType(group, f"{readout}x0e"), layers, edge_attr_type,
                                node_attr_type, hidden_channels, hidden_layers, backend, avg_degree)
        self.head = nn.Sequential(nn.Linear(readout, readout), nn.SiLU(), nn.Linear(readout, 1))

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor, node_attr: Tensor,
                batch: Tensor, num_graphs: int) -> Tensor:
        h = self.gnn(x, pos, edge_index, edge_attr, node_attr)
        return self.head(pool(h, batch, "sum", num_graphs)).squeeze(-1)


class NBodyMLP(nn.Module):
    """Non-equivariant baseline: an MLP on the whole flattened system.

    Forward: x (B·n, 7), spring one-hots (B·n(n-1), 2) -> displacement (B·n, 3).
    """

    def __init__(self, n_particles: int = 5, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.n = n_particles
        d_in = n_particles * 7 + n_particles * (n_particles - 1)
        dims = [d_in] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, n_particles * 3))

    def forward(self, x: Tensor, edge_attr: Tensor) -> Tensor:
        b = x.shape[0] // self.n
        inp = torch.cat([x.reshape(b, -1), edge_attr[:, 1].reshape(b, -1)], -1)
        return self.net(inp).reshape(b * self.n, 3)


class PointCloudClassifier(nn.Module):
    """ModelNet-40 classifier for any 3D point group G.

    Input per point: its normal (1o). Layer l runs on the current points (kNN graph with
    ``k`` neighbours); between layers a random ``keep`` fraction of the points is kept
    and the next layer aggregates from all current points to the kept ones (bipartite
    kNN).  The last layer's invariant fields are mean-pooled per cloud -> MLP -> logits.

    Forward: normals (N, 3), pos (N, 3), batch (N,) int64, num_graphs -> logits (B, classes).
    """

    def __init__(self, group: Group, num_classes: int, hidden: str = "8x0e + 4x1o + 2x2e", layers: int = 3,
                 k: int = 10, keep: float = 0.5, hidden_channels: int = 8, hidden_layers: int = 2,
                 backend: str = "auto") -> None:
        super().__init__()
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.k, self.keep = k, keep
        in_type = FieldType(group, "1x1o")
        hidden_type = FieldType(group, hidden)
        self.blocks = nn.ModuleList(
            SteerableBlock(in_type if i == 0 else hidden_type, hidden_type, hidden_channels=hidden_channels,
                           hidden_layers=hidden_layers, backend=backend, avg_degree=float(k), residual=False)
            for i in range(layers))
        self.invariant = EquivariantLinear(hidden_type, FieldType(group, "32x0e"))
        self.head = nn.Sequential(nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, num_classes))

    def forward(self, normals: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        # eval: the same subsets every call (a fixed generator); training: the global RNG
        gen = None if self.training else torch.Generator(pos.device).manual_seed(0)
        h = self.blocks[0](normals, pos, knn_graph(pos, self.k, batch, loop=True))
        for block in self.blocks[1:]:
            kept = random_subset(batch, self.keep, gen)
            h = block(h, pos, knn_to_subset(pos, self.k, batch, kept), pos_target=pos[kept])
            pos, batch = pos[kept], batch[kept]
        return self.head(pool(self.invariant(h), batch, "mean", num_graphs))


def random_subset(batch: Tensor, keep: float, generator: torch.Generator | None = None) -> Tensor:
    """Sorted indices (M,) of a random ``ceil(keep · n_b)`` points of every graph b (batch (N,) sorted)."""
    counts = torch.bincount(batch)
    key = batch.double() + torch.rand(batch.shape[0], generator=generator, device=batch.device, dtype=torch.float64)
    order = torch.argsort(key)  # graph by graph, random within each graph
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(batch.shape[0], device=batch.device) - first[batch[order]]
    take = (counts.double() * keep).ceil().long()
    return torch.sort(order[rank < take[batch[order]]]).values


def knn_to_subset(pos: Tensor, k: int, batch: Tensor, kept: Tensor) -> Tensor:
    """Edges (2, E) from each kept point's ``k`` nearest points (itself included) of its graph.

    Sources index ``pos`` (N, 3), targets index ``kept`` (M,) (i.e. ``pos[kept]``).
    """
    ei = knn_graph(pos, k, batch, loop=True)
    slot = torch.full((pos.shape[0],), -1, dtype=torch.long, device=pos.device)
    slot[kept] = torch.arange(kept.shape[0], device=pos.device)
    tgt = slot[ei[1]]
    mask = tgt >= 0
    return torch.stack([ei[0, mask], tgt[mask]])
