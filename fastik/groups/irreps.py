"""Irreducible representations of O(3) and O(2), evaluated exactly on group elements.

An irrep here is a small immutable label with a ``matrix(g)`` method taking
orthogonal matrices ``g`` of shape (..., n, n) to representation matrices
(..., d, d).  Restricting to a subgroup G is just evaluating on G's elements.

* ``O3Irrep(l, p)`` — e3nn label ``"{l}e"`` (p = +1) or ``"{l}o"`` (p = -1).
  ``D(g) = Y_l(g X) Y_l(X)^+`` computed from real spherical harmonics on a fixed
  point set X (no lookup tables), times ``det(g)`` when ``p ≠ (-1)^l``.
  ``"1o"`` is exactly the standard representation: ``D(g) = g``.
* ``O2Irrep(k, s)`` — label ``"0"`` (trivial), ``"0-"`` (determinant), ``"k"``
  (k ≥ 1): ``rot(kθ) F^[det g < 0]`` for ``g = rot(θ) F^[det g < 0]``,
  ``F = diag(1, -1)``.  ``"1"`` is exactly the standard representation.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from .harmonics import spherical_harmonics

__all__ = ["O3Irrep", "O2Irrep", "Irrep", "parse_irrep"]


@functools.lru_cache(maxsize=None)
def _sh_points_pinv(l: int) -> tuple[Tensor, Tensor]:
    """A fixed generic point set X (3, P) and the pseudo-inverse of Y_l(X) (P, 2l+1)."""
    gen = torch.Generator().manual_seed(1234 + l)
    pts = torch.randn(3 * (2 * l + 1), 3, generator=gen, dtype=torch.float64)
    pts = pts / pts.norm(dim=1, keepdim=True)
    return pts, torch.linalg.pinv(spherical_harmonics(l, pts))


def _det_sign(g: Tensor) -> Tensor:
    return torch.sign(torch.linalg.det(g))


@dataclass(frozen=True, order=True)
class O3Irrep:
    """Irrep of O(3) of degree ``l`` and parity ``p`` (+1 even, -1 odd)."""

    l: int
    p: int

    def __post_init__(self) -> None:
        if self.l < 0 or self.p not in (1, -1):
            raise ValueError(f"invalid O(3) irrep l={self.l}, p={self.p}")

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    @property
    def label(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    def __str__(self) -> str:
        return self.label

    def matrix(self, g: Tensor) -> Tensor:
        """(..., 3, 3) orthogonal -> (..., 2l+1, 2l+1)."""
        if g.shape[-2:] != (3, 3):
            raise ValueError(f"O(3) irrep {self.label} needs (..., 3, 3) matrices, got {tuple(g.shape)}")
        if self.l == 0:
            d = torch.ones(*g.shape[:-2], 1, 1, dtype=g.dtype, device=g.device)
        elif self.l == 1:
            d = g.clone()
            if self.p == 1:  # 1e: pseudo-vector, g * det(g)
                d = d * _det_sign(g)[..., None, None]
            return d
        else:
            pts, pinv = _sh_points_pinv(self.l)
            pts, pinv = pts.to(g), pinv.to(g)
            d = spherical_harmonics(self.l, pts @ g.transpose(-1, -2)).transpose(-1, -2) @ pinv.T
        natural = 1 if self.l % 2 == 0 else -1
        if self.p != natural:
            d = d * _det_sign(g)[..., None, None]
        return d


@dataclass(frozen=True, order=True)
class O2Irrep:
    """Irrep of O(2): frequency ``k ≥ 0``; for ``k = 0`` ``s = -1`` is the determinant rep."""

    k: int
    s: int = 1

    def __post_init__(self) -> None:
        if self.k < 0 or self.s not in (1, -1) or (self.k > 0 and self.s != 1):
            raise ValueError(f"invalid O(2) irrep k={self.k}, s={self.s}")

    @property
    def dim(self) -> int:
        return 1 if self.k == 0 else 2

    @property
    def label(self) -> str:
        return "0-" if self.s == -1 else str(self.k)

    def __str__(self) -> str:
        return self.label

    def matrix(self, g: Tensor) -> Tensor:
        """(..., 2, 2) orthogonal -> (..., d, d)."""
        if g.shape[-2:] != (2, 2):
            raise ValueError(f"O(2) irrep {self.label} needs (..., 2, 2) matrices, got {tuple(g.shape)}")
        det = _det_sign(g)
        if self.k == 0:
            val = det if self.s == -1 else torch.ones_like(det)
            return val[..., None, None]
        # g = rot(θ) F^[det<0]  =>  first column of g is (cos θ, sin θ)
        c, s = g[..., 0, 0], g[..., 1, 0]
        re, im = c, s
        for _ in range(self.k - 1):
            re, im = re * c - im * s, re * s + im * c
        rot = torch.stack([torch.stack([re, -im], -1), torch.stack([im, re], -1)], -2)
        return torch.cat([rot[..., :1], rot[..., 1:] * det[..., None, None]], dim=-1)


Irrep = O3Irrep | O2Irrep

_O3_RE = re.compile(r"^(\d+)([eo])$")
_O2_RE = re.compile(r"^(\d+)(-?)$")


def parse_irrep(label: str, dim: int) -> Irrep:
    """Parse an irrep label: e3nn style (``"2e"``) for dim 3, frequency (``"0-"``, ``"3"``) for dim 2."""
    label = label.strip()
    if dim == 3:
        m = _O3_RE.match(label)
        if not m:
            raise ValueError(f"bad O(3) irrep label {label!r}: expected like '0e', '1o', '2e'")
        return O3Irrep(int(m.group(1)), 1 if m.group(2) == "e" else -1)
    if dim == 2:
        m = _O2_RE.match(label)
        if not m or (m.group(2) and m.group(1) != "0"):
            raise ValueError(f"bad O(2) irrep label {label!r}: expected like '0', '0-', '1', '2'")
        return O2Irrep(int(m.group(1)), -1 if m.group(2) else 1)
    raise ValueError(f"dim must be 2 or 3, got {dim}")
