"""EquivariantNorm: a per-sample (per-edge) normalisation that never couples samples."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..groups import FieldType
from ._buffers import constant, register_constant
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
        # per component: its field (into scale) and its rank among scalar fields (into [bias; 0]); per block:
        # the averaging weights of its mean (scalar blocks with m > 1) and mean square, and its 0/1 spread
        field, shift, n_fields, n_scalar = [], [], 0, 0
        mean = torch.zeros(field_type.dim, len(field_type.blocks), dtype=torch.float64)
        square, expand = torch.zeros_like(mean), torch.zeros_like(mean.T)
        for b, ((m, r), sl, s) in enumerate(zip(field_type.blocks, field_type.slices(), scalar)):
            expand[b, sl] = 1.0
            field += [n_fields + u for u in range(m) for _ in range(r.dim)]
            shift += [n_scalar + u if s else self.bias.numel() for u in range(m) for _ in range(r.dim)]
            n_fields, n_scalar = n_fields + m, n_scalar + (m if s else 0)
            square[sl, b] = 1.0 / (m * r.dim)
            if s and m > 1:
                mean[sl, b] = 1.0 / m
        self._centre = bool(mean.any())
        _warn_if_degenerate(field_type)
        # stored (blocks, dim) and used transposed: CPU GEMMs with few output columns are ≈ 3× faster on that layout
        register_constant(self, "block_mean_t", mean.T)
        register_constant(self, "block_square_t", square.T)
        register_constant(self, "block_expand", expand)
        for name, index in (("_field", field), ("_shift", shift)):
            self.register_buffer(name, torch.tensor(index, dtype=torch.long), persistent=False)

    def reset_parameters(self) -> None:
        """Scales back to one, biases to zero (their values at construction)."""
        with torch.no_grad():
            self.scale.fill_(1.0)
            self.bias.zero_()

    def affine(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Per-component scale and shift, each (field_type.dim,): a field's scale on its components, a scalar
        field's bias on its own (zero elsewhere); differentiable."""
        shift = torch.cat([self.bias, self.bias.new_zeros(1)])[self._shift]
        return self.scale.to(dtype)[self._field], shift.to(dtype)

    def block_matrices(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """The constant block matrices: mean (dim, blocks) (1/m on the fields of scalar blocks with m > 1 copies),
        mean square (dim, blocks) (1/(m·r) on a block's components), expand (blocks, dim) (0/1 spread)."""
        return (constant(self, "block_mean_t", dtype).T, constant(self, "block_square_t", dtype).T,
                constant(self, "block_expand", dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., field_type.dim) -> normalised x, same shape.

        Block statistics as small matmuls with constant (dim, blocks) averaging and (blocks, dim) 0/1
        spreading matrices: a fixed handful of ops whatever the number of blocks.
        """
        if x.shape[-1] != self.field_type.dim:
            raise ValueError(f"EquivariantNorm expects (..., {self.field_type.dim}) inputs ({self.field_type}), "
                             f"got {tuple(x.shape)}")
        flat = x.reshape(-1, x.shape[-1])
        mean, square, expand = self.block_matrices(x.dtype)
        c = torch.addmm(flat, flat @ mean, expand, alpha=-1) if self._centre else flat
        ms = (c * c) @ square
        scale, shift = self.affine(x.dtype)
        gain = (ms + self.eps).rsqrt() @ (expand * scale)
        return torch.addcmul(shift, c, gain).reshape(x.shape)


def _warn_if_degenerate(field_type: FieldType) -> None:
    """Warn about blocks whose normalised values are only a sign (±1, gradient ≈ 0): one copy of a
    one-dimensional irrep, or at most two copies of the invariant scalar (centred, two values are ±d)."""
    degenerate = [f"{m}x{r}" for m, r in field_type.blocks
                  if (r.is_trivial and m <= 2) or (not r.is_trivial and m * r.dim == 1)]
    if degenerate:
        warnings.warn(f"EquivariantNorm: the block(s) {', '.join(degenerate)} of {field_type} normalise to ±1 "
                      "before the affine part: their values carry only a sign and pass almost no gradient. Use ≥ 3 copies of an invariant scalar "
                      "and ≥ 2 of any other one-dimensional irrep (in an implicit kernel's G-MLP: hidden_channels ≥ 3, "
                      "or norm=False).", UserWarning, stacklevel=3)
