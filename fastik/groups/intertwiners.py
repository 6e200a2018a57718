"""Numerical solver for G-intertwiners: bases of {W : ρout(g) W = W ρin(g) for all g ∈ G}.

The constraint is imposed on ``group.solver_elements()`` — generators for finite
groups, plus fixed generic elements of the identity component for continuous
ones (they generate a dense subgroup, so the commutant is exact).  The null space
of the stacked constraint is found from its Gram matrix's eigenvectors, then made
canonical (independent of the eigensolver's arbitrary choice within the null
space) through its orthogonal projector, so the basis — and with it a saved
model — is reproducible.  Entries below ``ZERO_TOL`` (round-off of the numerical
solver, ~1e-16) are set to exactly zero, so the sparsity of a weight is its
structural sparsity.  Results are cached per (group, ρout, ρin).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from .field_type import Rep
from .point_groups import Group

__all__ = ["intertwiner_basis"]

_TOL = 1e-10  # on eigenvalues of CᵀC, i.e. singular values below 1e-5 of the largest
ZERO_TOL = 1e-12  # basis entries below this (each basis element has unit norm) are round-off: set to exactly 0


def _canonical_basis(null: np.ndarray) -> np.ndarray:
    """Orthonormal basis (t, n) of the span of ``null`` (n, t) that depends only on the span.

    The projector P = N Nᵀ is basis independent; P applied to a fixed (seeded)
    Gaussian matrix and orthonormalised (Cholesky QR, twice for accuracy; the
    same result as QR with a positive diagonal of R) gives a reproducible basis.  Any orthonormal basis gives the same
    distribution of weights under the isotropic Gaussian initialisation.
    """
    n, t = null.shape
    probe = torch.randn(n, t, generator=torch.Generator().manual_seed(n * 7919 + t), dtype=torch.float64)
    q = null @ (null.T @ probe.numpy())
    for _ in range(2):
        chol = np.linalg.cholesky(q.T @ q)
        q = np.linalg.solve(chol, q.T).T  # q · L⁻ᵀ
    return q.T


@functools.lru_cache(maxsize=None)
def _solver_matrices(group: Group, rep: Rep) -> np.ndarray:
    """``rep`` on ``group.solver_elements()``: (k, d, d) float64, cached (every pair of reps reuses them)."""
    return rep.matrix(group.solver_elements()).numpy()


@functools.lru_cache(maxsize=None)
def intertwiner_basis(group: Group, rep_out: Rep, rep_in: Rep) -> Tensor:
    """Orthonormal (Frobenius) basis of G-equivariant maps ρin -> ρout: (t, d_out, d_in) float64."""
    a, b = _solver_matrices(group, rep_out), _solver_matrices(group, rep_in)  # (k, do, do), (k, di, di)
    do, di = a.shape[-1], b.shape[-1]
    # row-major vec(A W - W B) = (A ⊗ I - I ⊗ Bᵀ) vec(W)
    kron_a = np.einsum("kab,cd->kacbd", a, np.eye(di))
    kron_b = np.einsum("ab,kdc->kacbd", np.eye(do), b)
    c = (kron_a - kron_b).reshape(-1, do * di)
    evals, evecs = np.linalg.eigh(c.T @ c)  # (numpy: torch's eigh is slow on small matrices with threads)
    null = evecs[:, evals <= _TOL * max(1.0, evals[-1])]  # (n, t)
    if null.shape[1] == 0:
        return torch.zeros(0, do, di, dtype=torch.float64)
    basis = _canonical_basis(null)
    basis[np.abs(basis) < ZERO_TOL] = 0.0  # structural zeros exactly 0 (Schur's lemma), not ~1e-16
    return torch.from_numpy(basis).reshape(-1, do, di)
