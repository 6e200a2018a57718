"""Real harmonic polynomials: the function spaces the irreps of O(3) and O(2) act on.

``spherical_harmonics(l, v)`` are the real spherical harmonics of degree ``l`` as
*homogeneous* polynomials of ``v`` (so they vanish at the origin for ``l > 0``),
orthonormal on the unit sphere, in e3nn's basis: the polar axis is ``y``, the
azimuth runs from ``z`` towards ``x``, order ``m = -l..l``, no Condon–Shortley
phase.  So ``l = 1`` is ``(x, y, z)`` (the degree-1 irrep is exactly the standard
representation), and on unit vectors they equal
``e3nn.o3.spherical_harmonics(l, v, normalize=True, normalization="integral")``
(e3nn's ``"component"`` normalisation is ``sqrt(4π)`` times these, for every ``l``).

``circular_harmonics(k, v)`` is ``|v|^k (cos kθ, sin kθ)`` (``k ≥ 1``) or ``1`` (``k = 0``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["spherical_harmonics", "circular_harmonics"]


def _legendre_q(l: int, m: int, z: Tensor, r2: Tensor) -> Tensor:
    """Homogeneous ``P_l^m(z/r) r^(l-m) / sin^m θ`` up to the Condon–Shortley sign."""
    q_prev = torch.full_like(z, float(math.prod(range(1, 2 * m, 2))))  # (2m-1)!!
    if l == m:
        return q_prev
    q = (2 * m + 1) * z * q_prev
    for n in range(m + 2, l + 1):
        q, q_prev = ((2 * n - 1) * z * q - (n + m - 1) * r2 * q_prev) / (n - m), q
    return q


def spherical_harmonics(l: int, v: Tensor) -> Tensor:
    """Real spherical harmonics of degree ``l``: (..., 3) -> (..., 2l+1).

    Homogeneous of degree ``l`` in ``v``; orthonormal over the unit sphere.
    For every orthogonal ``g``: ``Y_l(v @ g.T) = Y_l(v) @ D_l(g).T`` with ``D_l``
    the natural-parity irrep (see :mod:`fastik.groups.irreps`).
    """
    if l < 0:
        raise ValueError(f"degree must be >= 0, got {l}")
    y, z, x = v.unbind(-1)  # textbook (x, y, z) of the z-polar formulas = e3nn's (z, x, y)
    if l == 0:
        return torch.full_like(x, 0.5 / math.sqrt(math.pi)).unsqueeze(-1)
    r2 = x * x + y * y + z * z
    # (x + iy)^m as real and imaginary parts, m = 0..l
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(l):
        re.append(re[-1] * x - im[-1] * y)
        im.append(re[-2] * y + im[-1] * x)
    out = []
    for m in range(-l, l + 1):
        am = abs(m)
        norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
        if m != 0:
            norm *= math.sqrt(2.0)
        ang = re[am] if m >= 0 else im[am]
        out.append(norm * _legendre_q(l, am, z, r2) * ang)
    return torch.stack(out, dim=-1)


def circular_harmonics(k: int, v: Tensor) -> Tensor:
    """``|v|^k (cos kθ, sin kθ)`` for ``k ≥ 1`` (homogeneous), ``1`` for ``k = 0``: (..., 2) -> (..., 1 | 2)."""
    if k < 0:
        raise ValueError(f"frequency must be >= 0, got {k}")
    x, y = v.unbind(-1)
    if k == 0:
        return torch.ones_like(x).unsqueeze(-1)
    re, im = x, y
    for _ in range(k - 1):
        re, im = re * x - im * y, re * y + im * x
    return torch.stack([re, im], dim=-1)


def sphere_points(dim: int, n: int) -> Tensor:
    """n well-spread unit vectors (n, dim), float64, the domain of the harmonics: a Fibonacci sphere (dim 3)
    or equispaced angles (dim 2), both offset off every symmetry plane / axis of the point groups."""
    i = torch.arange(n, dtype=torch.float64)
    if dim == 2:
        theta = (i + 0.3183) * (2 * math.pi / n)
        return torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    z = 1 - 2 * (i + 0.5) / n
    phi = math.pi * (1 + math.sqrt(5)) * (i + 0.5) + 0.1234
    rho = torch.sqrt(1 - z * z)
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], -1)
