"""A small complete steerable model: batched point clouds -> an invariant and an equivariant target.

Each synthetic cloud is 8–16 points of an anisotropic Gaussian blob carrying a random scalar
"charge" q per point. The network predicts, per cloud,

- the radius of gyration ``sqrt(mean |p - c|²)`` (rotation invariant, ``0e``), and
- the dipole ``Σ q_i (p_i - c)`` (a vector, ``1o``: rotates with the cloud),

with three ``ImplicitPointConv`` layers (SO(3), normalised and gated in between) on radius graphs
built by ``fastik.graphs``; the invariant head is an MLP on the output scalars averaged per cloud,
the equivariant head the output vector summed per cloud (both poolings commute with rotations).
It trains on a CPU in well under a minute:

    python examples/steerable_model.py --steps 300
"""
from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import torch
from torch import Tensor, nn

import fastik
from fastik import graphs

RADIUS = 4.0  # larger than almost any cloud: each cloud is (nearly) a complete graph, clouds stay apart


class Clouds(NamedTuple):
    """A batch of clouds: nodes (N, ·), per-cloud targets (B, ·)."""

    pos: Tensor          # (N, 3)
    charge: Tensor       # (N, 1)
    batch: Tensor        # (N,) int64 sorted cloud ids
    gyration: Tensor     # (B,) radius of gyration
    dipole: Tensor       # (B, 3) Σ q (p - c)

    @property
    def num_graphs(self) -> int:
        return self.gyration.shape[0]


def make_clouds(num_clouds: int, generator: torch.Generator) -> Clouds:
    """Random anisotropic, randomly oriented blobs with random charges, and their targets."""
    pos, charge = [], []
    for _ in range(num_clouds):
        n = int(torch.randint(8, 17, (), generator=generator))
        axes = torch.linalg.qr(torch.randn(3, 3, generator=generator)).Q
        scales = 0.3 + 0.7 * torch.rand(3, generator=generator)
        pos.append((torch.randn(n, 3, generator=generator) * scales) @ axes.T)
        charge.append(torch.randn(n, 1, generator=generator))
    b = graphs.batch_graphs(pos, charge)
    centre = graphs.pool(b.pos, b.batch, "mean")[b.batch]
    rel = b.pos - centre
    gyration = graphs.pool(rel.square().sum(1, keepdim=True), b.batch, "mean").sqrt().squeeze(1)
    dipole = graphs.pool(b.x * rel, b.batch, "sum")
    return Clouds(b.pos, b.x, b.batch, gyration, dipole)


class SteerableNet(nn.Module):
    """Three SO(3) point convolutions (norm + gate between), then an invariant and a vector head.

    ``forward(charge (N, 1), pos (N, 3), batch (N,), num_graphs B) -> (gyration (B,), dipole (B, 3))``.
    """

    def __init__(self, hidden: str = "8x0e + 4x1o", head_scalars: int = 8) -> None:
        super().__init__()
        G = fastik.group("so3")
        conv = dict(hidden_channels=4, hidden_layers=1, aggr="mean", backend="reference", sigma=2.0)
        field = fastik.FieldType(G, "2x0e")  # input: charge, constant 1
        self.blocks = nn.ModuleList()
        for _ in range(2):
            gate = fastik.GatedNonlinearity(fastik.FieldType(G, hidden))  # gate.in_type: hidden + gates
            self.blocks.append(nn.ModuleList([fastik.ImplicitPointConv(field, gate.in_type, **conv),
                                              fastik.EquivariantNorm(gate.in_type), gate]))
            field = gate.out_type
        self.last = fastik.ImplicitPointConv(field, fastik.FieldType(G, f"{head_scalars}x0e + 1x1o"), **conv)
        self.head = nn.Sequential(nn.Linear(head_scalars, 32), nn.SiLU(), nn.Linear(32, 1))
        self.head_scalars = head_scalars

    def forward(self, charge: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
        edge_index = graphs.radius_graph(pos, RADIUS, batch, loop=True)
        x = torch.cat([charge, torch.ones_like(charge)], 1)
        for conv, norm, gate in self.blocks:
            x = gate(norm(conv(x, pos, edge_index)))
        x = self.last(x, pos, edge_index)
        s = self.head_scalars
        scalars = graphs.pool(x[:, :s], batch, "mean", num_graphs=num_graphs)  # (B, s) invariant
        vector = graphs.pool(x[:, s:], batch, "sum", num_graphs=num_graphs)    # (B, 3): 1o = (x, y, z)
        gyration = self.head(scalars).squeeze(1)
        return gyration, vector


def losses(model: SteerableNet, data: Clouds) -> tuple[Tensor, Tensor]:
    """Mean squared errors ``(gyration, dipole per component)``."""
    gyration, dipole = model(data.charge, data.pos, data.batch, data.num_graphs)
    return (gyration - data.gyration).square().mean(), (dipole - data.dipole).square().mean()


def train(steps: int = 300, seconds: float = 50.0, seed: int = 0, batch_size: int = 8,
          log_every: int = 25) -> tuple[SteerableNet, list[float]]:
    """Train on freshly sampled batches; returns the model and the held-out total MSE at every log.

    Stops after ``steps`` steps or ``seconds`` seconds, whichever comes first.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    test = make_clouds(32, torch.Generator().manual_seed(seed + 1))
    model = SteerableNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history: list[float] = []
    start = time.perf_counter()
    for step in range(steps + 1):
        last = step == steps or time.perf_counter() - start > seconds
        if step % log_every == 0 or last:
            with torch.no_grad():
                gyration, dipole = losses(model, test)
            history.append(gyration.item() + dipole.item())
            print(f"step {step:4d}  held-out MSE: gyration {gyration.item():.4f}  dipole {dipole.item():.4f}  "
                  f"({time.perf_counter() - start:4.1f}s)", flush=True)
        if last:
            break
        loss = sum(losses(model, make_clouds(batch_size, gen)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=50.0, help="wall-clock budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.steps, args.seconds, args.seed)


if __name__ == "__main__":
    main()
