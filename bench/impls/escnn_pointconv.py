"""escnn's R3PointConv: point convolution with escnn's analytical (steerable-basis) kernels, not implicit."""
from __future__ import annotations

import torch
from torch import nn

from ..workload import LayerSpec
from ._escnn import ESCNN_GROUPS, escnn_setup
from .base import Impl, Unavailable

__all__ = ["EscnnPointConv"]


class _Layer(nn.Module):
    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        try:
            from escnn.nn.modules.pointconv import R3PointConv
        except ImportError as exc:  # escnn exports it only when torch_geometric imports
            raise Unavailable(f"escnn R3PointConv needs torch_geometric: {exc}") from exc
        from escnn.nn import GeometricTensor

        self._gt = GeometricTensor
        _, _, _, self.ftype = escnn_setup(spec.group, spec.channels)
        self.conv = R3PointConv(self.ftype, self.ftype, width=2.0, n_rings=3, bias=True)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        delta = pos[edge_index[0]] - pos[edge_index[1]]
        return self.conv(self._gt(x, self.ftype, coords=pos), edge_index, edge_delta=delta).tensor


class EscnnPointConv(Impl):
    name = "escnn-pointconv"
    summary = "escnn R3PointConv (analytical steerable basis, width=2, 3 rings)"
    requires = ("escnn", "torch_geometric")
    groups = ESCNN_GROUPS

    def build(self, spec: LayerSpec) -> nn.Module:
        return _Layer(spec).to(device=spec.device, dtype=spec.dtype)
