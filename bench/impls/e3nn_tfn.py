"""e3nn tensor-field-network convolution: x_j ⊗ Y(r̂) (l ≤ 2) -> output, weights per edge from a radial MLP.

Only for O(3) and SO(3) (e3nn knows no other groups); the layer is O(3)-equivariant.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..workload import LayerSpec
from .base import Impl

__all__ = ["E3nnTFN"]

RADIAL_BASIS, RADIAL_WIDTH, LMAX = 8, 64, 2


class _Layer(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        from e3nn import o3

        self._sh = o3.spherical_harmonics
        irreps = o3.Irreps(spec.fields.replace(" ", ""))
        self.sh_irreps = o3.Irreps.spherical_harmonics(LMAX)
        self.tp = o3.FullyConnectedTensorProduct(irreps, self.sh_irreps, irreps, shared_weights=False,
                                                 internal_weights=False)
        self.radial = nn.Sequential(nn.Linear(RADIAL_BASIS, RADIAL_WIDTH), nn.SiLU(),
                                    nn.Linear(RADIAL_WIDTH, self.tp.weight_numel))
        self.register_buffer("freq", torch.arange(1, RADIAL_BASIS + 1) * math.pi / 4.0, persistent=False)
        self.dim = irreps.dim

    def forward(self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, tgt = edge_index[0], edge_index[1]
        r = pos[src] - pos[tgt]
        sh = self._sh(self.sh_irreps, r, normalize=True, normalization="component")
        w = self.radial(torch.cos(r.norm(dim=1, keepdim=True) * self.freq))
        msg = self.tp(x[src], sh, w)
        return torch.zeros(x.shape[0], self.dim, dtype=x.dtype, device=x.device).index_add_(0, tgt, msg)


class E3nnTFN(Impl):
    name = "e3nn-tfn"
    summary = "e3nn FullyConnectedTensorProduct with Y_l≤2(r̂) and per-edge radial-MLP weights"
    requires = ("e3nn",)
    groups = ("so3", "o3")

    def build(self, spec: LayerSpec) -> nn.Module:
        return _Layer(spec).to(device=spec.device, dtype=spec.dtype)
