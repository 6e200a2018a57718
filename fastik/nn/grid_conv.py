"""Steerable convolutions on dense grids with implicit kernels (paper §3.5).

The G-MLP kernel is sampled on the K^n points of the grid ``linspace(-1, 1, K)^n``
and used as an ordinary ``conv2d`` / ``conv3d`` weight.  Coordinates: the i-th
spatial axis of a tensor is the i-th coordinate of R^n (for an image (…, H, W):
x₀ runs along H, x₁ along W), and the kernel offset is r = source − target, as in
:class:`~fastik.nn.ImplicitPointConv`.  The layer is exactly equivariant to the
elements of G that map the grid onto itself (signed permutation matrices: the
90° rotations and axis flips, with odd kernel sizes and symmetric padding); other
elements of a continuous G are approximated by the sampled kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..groups import FieldType
from ._buffers import constant, register_constant
from ._checks import check_field_type, check_int
from .kernel import ImplicitKernel, compact_repr
from .linear import invariant_bias, reset_children

__all__ = ["ImplicitR2Conv", "ImplicitR3Conv", "transform_grid"]


def transform_grid(x: Tensor, g: Tensor, rho: Tensor) -> Tensor:
    """Act on a field on a grid: ``(g·x)(p) = ρ(g) x(g⁻¹ p)`` for a signed permutation matrix g.

    x: (B, C, *spatial) with equal spatial sizes; g: (n, n); rho: (C, C).  Returns the same shape.
    """
    n = g.shape[0]
    size = x.shape[-1]
    if x.shape[-n:] != (size,) * n or not torch.allclose(g.abs().sum(0), torch.ones(n, dtype=g.dtype)):
        raise ValueError("transform_grid needs a cubic grid and a signed permutation matrix")
    centre = (size - 1) / 2
    axes = torch.meshgrid(*[torch.arange(size, dtype=g.dtype)] * n, indexing="ij")
    p = torch.stack(axes, -1) - centre  # (*spatial, n)
    src = torch.round(p @ g + centre).long()  # g⁻¹ p = gᵀ p for orthogonal g (row vectors: p @ g)
    flat = src.reshape(-1, n)
    index = sum(flat[:, i] * size ** (n - 1 - i) for i in range(n))
    moved = x.reshape(*x.shape[:2], -1)[..., index].reshape(x.shape)
    return torch.einsum("dc,bc...->bd...", rho.to(x.dtype), moved)


class _ImplicitGridConv(nn.Module):
    n: int = 0

    def __init__(self, in_type: FieldType, out_type: FieldType, kernel_size: int = 5, padding: int | None = None,
                 stride: int = 1, hidden_channels: int = 16, hidden_layers: int = 2, bias: bool = True,
                 **kernel_kwargs) -> None:
        super().__init__()
        check_field_type(in_type, "in_type")
        check_field_type(out_type, "out_type")
        if in_type.group.dim != self.n:
            raise ValueError(f"{type(self).__name__} needs a {self.n}D group, got {in_type.group.name} (dim {in_type.group.dim})")
        kernel_size = check_int(kernel_size, "kernel_size", 1)
        stride = check_int(stride, "stride", 1)
        padding = check_int(padding, "padding", 0, optional=True)
        self.in_type, self.out_type = in_type, out_type
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.kernel = ImplicitKernel(in_type, out_type, hidden_channels=hidden_channels, hidden_layers=hidden_layers,
                                     **kernel_kwargs)
        line = torch.linspace(-1.0, 1.0, kernel_size) if kernel_size > 1 else torch.zeros(1)
        grid = torch.stack(torch.meshgrid(*[line] * self.n, indexing="ij"), -1).reshape(-1, self.n)
        register_constant(self, "grid", grid)
        self.scale = 1.0 / kernel_size ** (self.n / 2)  # ≈ unit-variance outputs: K^n terms per output
        self.bias = invariant_bias(out_type, bias)

    def reset_parameters(self) -> None:
        """Re-draw every parameter as at construction (same random draws for the same seed)."""
        reset_children(self)

    def __repr__(self) -> str:
        return compact_repr(self, self.kernel, f"kernel_size={self.kernel_size}, stride={self.stride}, "
                                               f"padding={self.padding}, bias={self.bias is not None}")

    def weight(self, dtype: torch.dtype) -> Tensor:
        """The sampled kernel as a conv weight (Dout, Din, K, …, K)."""
        r = constant(self, "grid", dtype)
        k = self.kernel(r) * self.scale  # (K^n, Dout, Din)
        return k.permute(1, 2, 0).reshape(self.out_type.dim, self.in_type.dim, *[self.kernel_size] * self.n)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, in_type.dim, *spatial) -> (B, out_type.dim, *spatial')."""
        if x.dim() != self.n + 2 or x.shape[1] != self.in_type.dim:
            raise ValueError(f"{type(self).__name__} expects (B, {self.in_type.dim}, {', '.join(['S'] * self.n)}), "
                             f"got {tuple(x.shape)}")
        conv = F.conv2d if self.n == 2 else F.conv3d
        bias = None if self.bias is None else self.bias.bias(x.dtype)
        return conv(x, self.weight(x.dtype), bias, stride=self.stride, padding=self.padding)


class ImplicitR2Conv(_ImplicitGridConv):
    """Steerable conv on 2D images; G ≤ O(2) acts on the plane and on the channels by in/out_type.

    Shapes: (B, in_type.dim, H, W) -> (B, out_type.dim, H', W').  See module docstring for axes.
    """

    n = 2


class ImplicitR3Conv(_ImplicitGridConv):
    """Steerable conv on 3D voxel grids; G ≤ O(3) acts on space and on the channels by in/out_type.

    Shapes: (B, in_type.dim, D, H, W) -> (B, out_type.dim, D', H', W').  See module docstring for axes.
    """

    n = 3
