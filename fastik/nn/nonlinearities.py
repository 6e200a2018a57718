"""Equivariant nonlinearities for the G-MLP.

* :class:`GatedNonlinearity` — exact for every G: invariant scalars (``0e`` /
  ``0``) go through SiLU; every other field is scaled by ``sigmoid`` of its own
  gate scalar.  Gates are extra ``0e`` / ``0`` fields appended to the input.
  Both are rescaled to unit second moment for standard normal inputs, so unit
  variance pre-activations give unit variance activations.
* :class:`FourierELU` — the paper's quotient ELU: fields are band-limited
  functions on the sphere (3D: ``0e + 1o + 2e + …``) or circle (2D: ``0 + 1 + 2 + …``);
  they are sampled on a grid, passed through ELU, and projected back by least
  squares.  The grid is the orbit of fixed points under G's finite part, so it is
  exactly equivariant for finite groups and approximately (band-limit aliasing
  only) for continuous ones: with the default ``oversampling=10`` (≈10 samples per
  coefficient) the relative equivariance error of one layer, measured on random
  float64 inputs, is ≈0.2–0.5 % for so3 / Cinf, ≈0.5 % for o3, ≈1.5 % for Dinfh
  (``tests/test_nn.py`` asserts < 5 %); 30 samples per coefficient give ≈0.05–0.15 %.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..groups import FieldType, Group, harmonic_irrep, harmonics, trivial_irrep
from ..groups.harmonics import sphere_points
from ._buffers import constant, register_constant
from ._checks import check_field_type, check_int

__all__ = ["GatedNonlinearity", "FourierELU"]


def _second_moment(f) -> float:
    """E[f(z)²] for z ~ N(0, 1) (Gauss–Hermite quadrature)."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return float((w * f(torch.from_numpy(z)).numpy() ** 2).sum() / w.sum())


_SILU_SCALE = _second_moment(F.silu) ** -0.5
_GATE_SCALE = _second_moment(torch.sigmoid) ** -0.5  # E[(x σ(g))²] = E[σ(g)²] for independent x, g


class GatedNonlinearity(nn.Module):
    """Gate: ``in_type = field_type + n×(trivial)`` gates -> ``field_type``.

    Shapes: (..., in_type.dim) -> (..., field_type.dim).
    """

    def __init__(self, field_type: FieldType) -> None:
        super().__init__()
        check_field_type(field_type, "field_type")
        self.out_type = field_type
        trivial = [r.is_trivial for m, r in field_type.blocks for _ in range(m * r.dim)]  # SiLU, else gated
        n_gates = sum(m for m, r in field_type.blocks if not r.is_trivial)
        self.in_type = field_type + FieldType(field_type.group, [(n_gates, trivial_irrep(field_type.group.dim))])
        spread = torch.zeros(n_gates, field_type.dim, dtype=torch.float64)  # gate k -> its field's components
        k = 0
        for (m, r), sl in zip(field_type.blocks, field_type.slices()):
            for u in range(0 if r.is_trivial else m):
                spread[k, sl.start + u * r.dim: sl.start + (u + 1) * r.dim] = _GATE_SCALE
                k += 1
        register_constant(self, "gate_spread", spread)
        self.register_buffer("_trivial", torch.tensor(trivial), persistent=False)
        # the forward's multipliers in one product: SiLU(y) = y·σ(y), so every output component is y times
        # σ(selected input columns) @ multiplier_spread — σ(y_i)·SiLU scale for scalars, σ(gate)·gate scale otherwise
        scalars = torch.tensor(trivial).nonzero().flatten()
        select = torch.cat([scalars, field_type.dim + torch.arange(n_gates)])
        silu_rows = torch.zeros(len(scalars), field_type.dim, dtype=torch.float64)
        silu_rows[torch.arange(len(scalars)), scalars] = _SILU_SCALE
        register_constant(self, "multiplier_spread", torch.cat([silu_rows, spread]))
        self.register_buffer("_select", select, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_type.dim) -> (..., out_type.dim); the gates are the last ``in_type.dim - out_type.dim`` columns."""
        if x.shape[-1] != self.in_type.dim:
            raise ValueError(f"GatedNonlinearity expects (..., {self.in_type.dim}) inputs: the {self.out_type.dim} "
                             f"components of {self.out_type} followed by {self.in_type.dim - self.out_type.dim} gate "
                             f"scalars (produce them with e.g. EquivariantLinear(..., gate.in_type)), "
                             f"got {tuple(x.shape)}")
        flat = x.reshape(-1, x.shape[-1])  # index_select: ≈ 3× faster than advanced indexing on CPU
        multiplier = torch.sigmoid(flat.index_select(1, self._select)) @ constant(self, "multiplier_spread", x.dtype)
        return (flat[:, :self.out_type.dim] * multiplier).reshape(*x.shape[:-1], self.out_type.dim)


def sampling_grid(group: Group, n_points: int) -> Tensor:
    """Unit vectors (S, dim): orbits of ``≈ n_points/|cosets|`` generic points under G's finite part."""
    cosets = group.cosets
    base = sphere_points(group.dim, max(1, math.ceil(n_points / len(cosets))))
    return (base @ cosets.transpose(1, 2)).reshape(-1, group.dim)


class FourierELU(nn.Module):
    """Quotient Fourier ELU on ``channels`` band-limited sphere / circle functions.

    ``field_type`` is ``channels×0e + channels×1o + … + channels×{L}`` (3D, parity
    (-1)^l) or ``channels×0 + … + channels×L`` (2D); each channel is one function.
    Shapes: (..., field_type.dim) -> (..., field_type.dim).
    """

    def __init__(self, group: Group, channels: int, lmax: int, oversampling: float = 10.0) -> None:
        super().__init__()
        channels, lmax = check_int(channels, "channels", 1), check_int(lmax, "lmax", 0)
        irreps = [harmonic_irrep(group.dim, l) for l in range(lmax + 1)]
        self.in_type = self.out_type = FieldType(group, [(channels, r) for r in irreps])
        psi_dim = sum(r.dim for r in irreps)
        grid = sampling_grid(group, int(oversampling * psi_dim) + 8)
        fourier = torch.cat([harmonics(l, grid) for l in range(lmax + 1)], -1)  # (S, psi_dim)
        register_constant(self, "fourier", fourier)
        register_constant(self, "inverse", torch.linalg.pinv(fourier))  # (psi_dim, S)
        # perm[c, j]: feature index of component j of channel c
        perm, start = [], 0
        for r in irreps:
            perm.append(start + torch.arange(channels)[:, None] * r.dim + torch.arange(r.dim))
            start += channels * r.dim
        self.register_buffer("perm", torch.cat(perm, 1), persistent=False)
        self.channels, self.psi_dim = channels, psi_dim

    def forward(self, x: Tensor) -> Tensor:
        """x (..., field_type.dim) -> (..., field_type.dim): ELU applied pointwise on the sampled functions."""
        if x.shape[-1] != self.in_type.dim:
            raise ValueError(f"FourierELU expects (..., {self.in_type.dim}) inputs ({self.in_type}), "
                             f"got {tuple(x.shape)}")
        coeffs = x[..., self.perm]  # (..., C, psi_dim)
        samples = F.elu(coeffs @ constant(self, "fourier", x.dtype).T)
        coeffs = samples @ constant(self, "inverse", x.dtype).T
        out = torch.empty_like(x)
        out[..., self.perm] = coeffs
        return out
