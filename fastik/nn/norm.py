"""EquivariantNorm: a per-sample (per-edge) normalisation that never couples samples."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..groups import FieldType
from ._checks import check_field_type

__all__ = ["EquivariantNorm"]


class EquivariantNorm(nn.Module):
    """Layer-norm for fields: each block of ``field_type`` is normalised on its own.

    Invariant-scalar blocks (``0e`` / ``0``): mean over the block's channels
    removed (when it has more than one); then every block is divided by the
    root-mean-square of its components (field norms are G-invariant because the
    representations are orthogonal), giving unit-variance components.
    Then a learned scale per field and a learned bias on invariant scalars.
    Statistics are per sample, so train and eval mode compute the same function
    and the ``state_dict`` has the same keys in both.

    Shapes: (..., field_type.dim) -> (..., field_type.dim).
    """

    def __init__(self, field_type: FieldType, eps: float = 1e-5) -> None:
        super().__init__()
        check_field_type(field_type, "field_type")
        self.field_type, self.eps = field_type, eps
        n_fields = sum(m for m, _ in field_type.blocks)
        self.scale = nn.Parameter(torch.ones(n_fields))
        scalar = [r.is_trivial for _, r in field_type.blocks]
        self.bias = nn.Parameter(torch.zeros(sum(m for (m, _), s in zip(field_type.blocks, scalar) if s)))
        self._scalar = scalar

    def reset_parameters(self) -> None:
        """Scales back to one, biases to zero (their values at construction)."""
        with torch.no_grad():
            self.scale.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x (..., field_type.dim) -> normalised x, same shape."""
        if x.shape[-1] != self.field_type.dim:
            raise ValueError(f"EquivariantNorm expects (..., {self.field_type.dim}) inputs ({self.field_type}), "
                             f"got {tuple(x.shape)}")
        parts, f0, b0 = [], 0, 0
        for (m, r), sl, scalar in zip(self.field_type.blocks, self.field_type.slices(), self._scalar):
            v = x[..., sl].reshape(*x.shape[:-1], m, r.dim)
            if scalar and m > 1:
                v = v - v.mean(dim=-2, keepdim=True)
            rms = v.pow(2).mean((-1, -2))[..., None].add(self.eps).rsqrt()
            v = v * (rms * self.scale[f0:f0 + m])[..., None]
            if scalar:
                v = v + self.bias[b0:b0 + m, None]
                b0 += m
            f0 += m
            parts.append(v.reshape(*x.shape[:-1], m * r.dim))
        return torch.cat(parts, -1)
