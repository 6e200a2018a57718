"""Irreducible representations of O(3) and O(2), evaluated exactly on group elements.

An irrep here is a small immutable label with a ``matrix(g)`` method taking
orthogonal matrices ``g`` of shape (..., n, n) to representation matrices
(..., d, d).  Restricting to a subgroup G is just evaluating on G's elements.

* ``O3Irrep(l, p)`` — e3nn label ``"{l}e"`` (p = +1) or ``"{l}o"`` (p = -1);
  ``"{l}y"`` is the parity of the degree-l spherical harmonics, p = (-1)^l.
  ``D(g) = Y_l(g X) Y_l(X)^+`` computed from real spherical harmonics on a fixed
  point set X (no lookup tables), times ``det(g)`` when ``p ≠ (-1)^l``.  The
  harmonics are in e3nn's basis, so ``D`` equals e3nn's ``Irrep(l, p).D_from_matrix(g)``.
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

from .harmonics import circular_harmonics, spherical_harmonics

__all__ = ["O3Irrep", "O2Irrep", "Irrep", "parse_irrep", "as_irrep"]


@functools.lru_cache(maxsize=None)
def _sh_points_pinv(l: int) -> tuple[Tensor, Tensor]:
    """A fixed generic point set X (3, P) and the pseudo-inverse of Y_l(X) (P, 2l+1)."""
    gen = torch.Generator().manual_seed(1234 + l)
    pts = torch.randn(3 * (2 * l + 1), 3, generator=gen, dtype=torch.float64)
    pts = pts / pts.norm(dim=1, keepdim=True)
    return pts, torch.linalg.pinv(spherical_harmonics(l, pts))


def _det_sign(g: Tensor) -> Tensor:
    """Sign of det g for (..., n, n), n ∈ {2, 3}: (...,) (closed form: linalg.det is slow on tiny batches)."""
    if g.shape[-1] == 2:
        det = g[..., 0, 0] * g[..., 1, 1] - g[..., 0, 1] * g[..., 1, 0]
    else:
        det = (g[..., 0, :] * torch.linalg.cross(g[..., 1, :], g[..., 2, :])).sum(-1)
    return torch.sign(det)


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

    @property
    def degree(self) -> int:
        """Harmonic degree l: the smallest band limit of functions on the sphere carrying this irrep."""
        return self.l

    @property
    def is_trivial(self) -> bool:
        """``0e``: every element acts as 1 (invariant scalars)."""
        return self.l == 0 and self.p == 1

    def tensor_irreps(self, other: object) -> list:
        """Irreps of ``self ⊗ other`` (Clebsch–Gordan: |l₁ - l₂| ≤ l ≤ l₁ + l₂, parity p₁p₂), each once, by l.

        Representations that are not O(3) irreps (regular, tensor products) decide for themselves.
        """
        if isinstance(other, O3Irrep):
            return [O3Irrep(l, self.p * other.p) for l in range(abs(self.l - other.l), self.l + other.l + 1)]
        return _reflected_product(self, other)

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

    @property
    def degree(self) -> int:
        """Harmonic degree (frequency) k."""
        return self.k

    @property
    def is_trivial(self) -> bool:
        """``0``: every element acts as 1 (invariant scalars)."""
        return self.k == 0 and self.s == 1

    def tensor_irreps(self, other: object) -> list:
        """Irreps of ``self ⊗ other``: k₁ ⊗ k₂ = |k₁ - k₂| ⊕ (k₁ + k₂), where |k₁ - k₂| = 0 means ``0 ⊕ 0-``;
        with a one-dimensional factor, the other factor (signs multiplied when both are 1-d).

        Representations that are not O(2) irreps (regular, tensor products) decide for themselves.
        """
        if not isinstance(other, O2Irrep):
            return _reflected_product(self, other)
        if self.k == 0 or other.k == 0:
            return [O2Irrep(self.k + other.k, self.s * other.s if self.k + other.k == 0 else 1)]
        diff = abs(self.k - other.k)
        low = [O2Irrep(0, 1), O2Irrep(0, -1)] if diff == 0 else [O2Irrep(diff)]
        return low + [O2Irrep(self.k + other.k)]

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


def _reflected_product(irrep: Irrep, other: object) -> list:
    """``irrep ⊗ other`` for a representation ``other`` of another kind: asks ``other`` (⊗ commutes)."""
    if isinstance(other, (O3Irrep, O2Irrep)) or not hasattr(other, "tensor_irreps"):
        raise TypeError(f"cannot take the tensor product of {type(irrep).__name__} {irrep} and "
                        f"{type(other).__name__} {other}: both must act on the same space (2D or 3D)")
    return other.tensor_irreps(irrep)


_O3_RE = re.compile(r"^(\d+)([eoy])$")
_O2_RE = re.compile(r"^(\d+)(-?)$")


def parse_irrep(label: str, dim: int) -> Irrep:
    """Parse an irrep label: e3nn style for dim 3 (``"2e"``, ``"1o"``; ``"1y"``: parity (-1)^l, that of
    the spherical harmonics), frequency (``"0-"``, ``"3"``) for dim 2."""
    label = label.strip()
    if dim == 3:
        m = _O3_RE.match(label)
        if not m:
            raise ValueError(f"bad O(3) irrep label {label!r}: expected like '0e', '1o', '2e' or '1y'")
        l = int(m.group(1))
        return O3Irrep(l, {"e": 1, "o": -1, "y": (-1) ** l}[m.group(2)])
    if dim == 2:
        m = _O2_RE.match(label)
        if not m or (m.group(2) and m.group(1) != "0"):
            raise ValueError(f"bad O(2) irrep label {label!r}: expected like '0', '0-', '1', '2'")
        return O2Irrep(int(m.group(1)), -1 if m.group(2) else 1)
    raise ValueError(f"dim must be 2 or 3, got {dim}")


def as_irrep(rep: object, dim: int) -> Irrep:
    """An irrep of O(dim) from a fastik irrep, a label (see :func:`parse_irrep`) or any object with
    integer ``l`` and ``p`` attributes (an ``e3nn.o3.Irrep``; dim 3 only)."""
    if isinstance(rep, (O3Irrep, O2Irrep)):
        return rep
    if isinstance(rep, str):
        return parse_irrep(rep, dim)
    if hasattr(rep, "l") and hasattr(rep, "p"):
        if dim != 3:
            raise ValueError(f"irrep {rep} (l={rep.l}, p={rep.p}) is an O(3) irrep; a {dim}D group needs O(2) "
                             "labels like '0', '0-', '1'")
        return O3Irrep(int(rep.l), int(rep.p))
    raise TypeError(f"expected an irrep (fastik O3Irrep / O2Irrep, a label like '1o', or an e3nn Irrep), "
                    f"got {type(rep).__name__} {rep!r}")


def harmonic_irrep(dim: int, degree: int) -> Irrep:
    """The irrep of O(dim) that degree-``degree`` harmonics carry: O(3) irrep l with parity (-1)^l
    (3D), O(2) irrep of frequency k (2D); degree 0 is the trivial irrep."""
    return O3Irrep(degree, (-1) ** degree) if dim == 3 else O2Irrep(degree)


def trivial_irrep(dim: int) -> Irrep:
    """The trivial irrep of O(dim) (``0e`` / ``0``)."""
    return harmonic_irrep(dim, 0)


def harmonics(degree: int, v: Tensor) -> Tensor:
    """Harmonics of ``degree`` of vectors v (..., dim): spherical (dim 3, (..., 2l+1)) or circular
    (dim 2, (..., 2) or (..., 1) for degree 0); they transform by :func:`harmonic_irrep`."""
    return spherical_harmonics(degree, v) if v.shape[-1] == 3 else circular_harmonics(degree, v)

