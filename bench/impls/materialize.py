"""Plain torch, no symmetry: an MLP 3 -> 64 -> 64 -> D² gives a D × D kernel per edge (materialised).

The anchors' "materialize" row (docs/design.md §6): the cost of the paper's algorithm
when nothing is fused — every edge's kernel matrix is written to memory.
``materialize-compiled`` is the same layer under ``torch.compile``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..workload import LayerSpec
from .base import Impl

__all__ = ["Materialize", "MaterializeCompiled"]

WIDTH = 64


class _Layer(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.d = spec.dim
        self.mlp = nn.Sequential(nn.Linear(3, WIDTH), nn.SiLU(), nn.Linear(WIDTH, WIDTH), nn.SiLU(),
                                 nn.Linear(WIDTH, self.d * self.d))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, tgt = edge_index[0], edge_index[1]
        k = self.mlp(pos[src] - pos[tgt]).view(-1, self.d, self.d)   # (E, Dout, Din)
        msg = torch.einsum("eoi,ei->eo", k, x[src])
        return torch.zeros(x.shape[0], self.d, dtype=x.dtype, device=x.device).index_add_(0, tgt, msg)


class Materialize(Impl):
    name = "materialize"
    summary = "plain torch MLP 3->64->64->D², per-edge D×D kernel materialised (no symmetry)"
    group_agnostic = True

    def build(self, spec: LayerSpec) -> nn.Module:
        return _Layer(spec).to(device=spec.device, dtype=spec.dtype)

    def estimate_step_bytes(self, spec: LayerSpec, edges: int, training: bool) -> int:
        # the (E, D²) kernel and, training, its gradient (measured ≈ 2.1× on an H200, docs/design.md §6)
        return int(edges * spec.dim ** 2 * torch.finfo(spec.dtype).bits // 8 * (2.5 if training else 1.2))


class _Compiled(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.compiled = torch.compile(layer)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.compiled(x, pos, edge_index)


class MaterializeCompiled(Materialize):
    name = "materialize-compiled"
    summary = "the materialize layer under torch.compile (compilation happens in the warm-up calls)"
    default = False  # compiling for every size takes long; ask for it with --impls

    def build(self, spec: LayerSpec) -> nn.Module:
        return _Compiled(_Layer(spec).to(device=spec.device, dtype=spec.dtype))
