"""escnn field types as fastik field types: :func:`convert_field_type` and :class:`TypeConversion`.

Every escnn field is split into escnn irreps (its ``change_of_basis``), and every
irrep ψ is matched, by solving ``ρ(g) E = E ψ(g)`` on generators of G, to O(3) /
O(2) irreps ρ restricted to G (fastik's native ``O3Irrep`` / ``O2Irrep``).  Irreps
are then packed into as few and as small ρ as possible, over the whole field type:
an escnn SO(3) irrep l is ``O3Irrep(l)`` up to a basis change, the icosahedral
3' ⊕ 4 fill one ``3``, two C8 "sign" irreps fill one O(2) frequency-4 irrep.  An
irrep left alone is embedded isometrically into the smallest ρ containing it (a
few padding dimensions, :attr:`TypeConversion.padding`): inputs are embedded,
outputs projected, so a layer stays exactly equivariant and its kernel space is the
full space of equivariant kernels (every G-equivariant kernel between the escnn
fields is the compression of an equivariant kernel between the ρ's).  Keeping
fastik's own irreps (rather than wrapping escnn's) is what lets fastik pick the
hidden irreps, harmonic degree and nonlinearity grid of its G-MLP exactly as it
does for its own field types.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from escnn import nn as enn
from escnn.group import Representation
from torch import Tensor

from ..groups import FieldType, O2Irrep, O3Irrep
from ..groups.field_type import Rep
from .groups import GroupConversion, convert_gspace

__all__ = ["TypeConversion", "convert_field_type"]

_F64 = torch.float64
_NULL_TOL = 1e-8  # relative singular-value threshold of the intertwiner solver
_MAX_DEGREE = 32  # largest O(3) degree / O(2) frequency searched for an escnn irrep


def _hom(a: Tensor, b: Tensor) -> Tensor:
    """Orthonormal basis (t, da, db) of {X : a_k X = X b_k for all k}; a (k, da, da), b (k, db, db)."""
    da, db = a.shape[-1], b.shape[-1]
    eye_a, eye_b = torch.eye(da, dtype=_F64), torch.eye(db, dtype=_F64)
    # row-major vec(a X - X b) = (a ⊗ I - I ⊗ bᵀ) vec(X)
    kron_a = (a[:, :, None, :, None] * eye_b[None, None, :, None, :]).reshape(-1, da * db, da * db)
    kron_b = (eye_a[None, :, None, :, None] * b.transpose(1, 2)[:, None, :, None, :]).reshape(-1, da * db, da * db)
    c = (kron_a - kron_b).reshape(-1, da * db).numpy()
    _, s, vh = np.linalg.svd(c, full_matrices=True)
    s_full = np.zeros(da * db)
    s_full[: len(s)] = s
    null = vh[s_full <= _NULL_TOL * max(1.0, float(s.max(initial=0.0)))]
    return torch.from_numpy(np.ascontiguousarray(null)).reshape(-1, da, db)


def _isometric_copies(basis: Tensor, what: str) -> list[Tensor]:
    """Mutually orthogonal isometric intertwiners ψ -> ρ spanning the ψ-isotypic part of ρ.

    ``basis`` (t, dρ, dψ) spans Hom_G(ψ, ρ) for an irreducible orthogonal ψ.  Projecting a
    basis element off the images found so far keeps it an intertwiner; for an irreducible
    orthogonal ψ, Bᵀ B is then a multiple of the identity, so B / ‖·‖ is an isometry.
    """
    copies: list[Tensor] = []
    for b in basis:
        for e in copies:
            b = b - e @ (e.T @ b)
        gram = b.T @ b
        c = float(torch.trace(gram)) / gram.shape[0]
        if c < 1e-8:
            continue
        if not torch.allclose(gram, c * torch.eye(gram.shape[0], dtype=_F64), atol=1e-7 * max(1.0, c)):
            raise ValueError(f"{what}: intertwiner is not a scaled isometry (is the representation orthogonal "
                             "and irreducible?)")
        copies.append(b / math.sqrt(c))
    return copies


def _candidates(dim: int, degree: int) -> list[Rep]:
    """fastik irreps of O(dim) of degree / frequency ``degree``, natural parity first."""
    if dim == 3:
        natural = 1 if degree % 2 == 0 else -1
        return [O3Irrep(degree, natural), O3Irrep(degree, -natural)]
    return [O2Irrep(0, 1), O2Irrep(0, -1)] if degree == 0 else [O2Irrep(degree)]


class _GroupContext:
    """Per-gspace cache of irrep matrices on the solver elements and of irrep embeddings."""

    def __init__(self, gc: GroupConversion) -> None:
        self.gc = gc
        self.fibergroup = gc.gspace.fibergroup
        self._irrep_mats: dict = {}
        self._embeddings: dict = {}
        self._first_degree: dict = {}

    def escnn_matrices(self, rep: Representation) -> Tensor:
        return torch.stack([torch.as_tensor(np.asarray(rep(e), dtype=np.float64)) for e in self.gc.solver_elements])

    def irrep_matrices(self, irrep_id) -> Tensor:
        if irrep_id not in self._irrep_mats:
            self._irrep_mats[irrep_id] = self.escnn_matrices(self.fibergroup.irrep(*irrep_id))
        return self._irrep_mats[irrep_id]

    def embeddings(self, rho: Rep, irrep_id) -> list[Tensor]:
        """Orthogonal isometric copies E (dρ, dψ) of escnn irrep ψ inside ρ restricted to G."""
        key = (rho, irrep_id)
        if key not in self._embeddings:
            basis = _hom(rho.matrix(self.gc.solver_matrices), self.irrep_matrices(irrep_id))
            self._embeddings[key] = _isometric_copies(basis, f"escnn irrep {irrep_id} in fastik {rho.label}")
        return self._embeddings[key]

    def first_degree(self, irrep_id) -> int:
        """Smallest degree / frequency of an O(d) irrep whose restriction to G contains ψ."""
        if irrep_id not in self._first_degree:
            for deg in range(_MAX_DEGREE + 1):
                if any(self.embeddings(rho, irrep_id) for rho in _candidates(self.gc.group.dim, deg)):
                    self._first_degree[irrep_id] = deg
                    break
            else:
                raise ValueError(f"escnn irrep {irrep_id} of {self.fibergroup} appears in no O({self.gc.group.dim}) "
                                 f"irrep of degree <= {_MAX_DEGREE}")
        return self._first_degree[irrep_id]


_CONTEXTS: dict = {}


def _context(gc: GroupConversion, recompute: bool = False) -> _GroupContext:
    cached = _CONTEXTS.get(gc.gspace)
    if cached is None or cached.gc is not gc or recompute:
        _CONTEXTS[gc.gspace] = _GroupContext(gc)
    return _CONTEXTS[gc.gspace]


@dataclass(frozen=True, eq=False)
class TypeConversion:
    """An escnn FieldType as a fastik FieldType.

    ``matrix`` M (fastik.dim, escnn.size) is an isometry intertwining the two actions:
    ``M ψ(e) = ρ(C A(e) Cᵀ) M``; features convert as ``x_fastik = x_escnn @ M.T`` and back as
    ``x_escnn = x_fastik @ M``.  ``padding = fastik.dim - escnn.size`` dimensions of the
    fastik type are not used by the escnn fields (0 when every irrep packed exactly).
    """

    escnn_type: Any
    fastik_type: FieldType
    matrix: Tensor

    @property
    def padding(self) -> int:
        return self.fastik_type.dim - self.escnn_type.size


def _field_occurrences(ctx: _GroupContext, rep: Representation) -> list[tuple[Any, Tensor]]:
    """escnn field ψ -> [(irrep id, B (dψ, d_irrep))]: orthonormal intertwiners irrep -> ψ spanning ψ."""
    mats = ctx.escnn_matrices(rep)
    eye = torch.eye(rep.size, dtype=_F64)
    if not torch.allclose(mats @ mats.transpose(1, 2), eye.expand_as(mats), atol=1e-8):
        raise ValueError(f"representation {rep.name} is not orthogonal; fastik.escnn needs orthogonal representations")
    q = torch.as_tensor(np.asarray(rep.change_of_basis, dtype=np.float64))
    out, start, done = [], 0, []
    for irrep_id in rep.irreps:
        irrep_id = tuple(irrep_id) if isinstance(irrep_id, (tuple, list)) else (irrep_id,)
        size = ctx.fibergroup.irrep(*irrep_id).size
        b = q[:, start:start + size]
        start += size
        for prev in done:  # equivariant Gram–Schmidt (a no-op when change_of_basis is orthogonal)
            b = b - prev @ (prev.T @ b)
        gram = b.T @ b
        c = float(torch.trace(gram)) / size
        if c < 1e-10 or not torch.allclose(gram, c * torch.eye(size, dtype=_F64), atol=1e-7 * max(1.0, c)):
            raise ValueError(f"could not split representation {rep.name} into orthogonal irreps")
        b = b / math.sqrt(c)
        if not torch.allclose(mats @ b, b @ ctx.irrep_matrices(irrep_id), atol=1e-7):
            raise ValueError(f"change_of_basis of representation {rep.name} does not intertwine its irreps")
        done.append(b)
        out.append((irrep_id, b))
    if start != rep.size:
        raise ValueError(f"irreps of representation {rep.name} do not add up to its size")
    return out


def _pack(ctx: _GroupContext, counts: dict) -> list[tuple[Rep, dict]]:
    """Choose copies of fastik irreps ρ holding ``counts[irrep_id]`` copies of each escnn irrep.

    A small covering integer program: x_ρ copies of each candidate ρ (degree up to the largest
    degree any present irrep needs) with Σ_ρ x_ρ·mult(ψ in ρ) ≥ counts[ψ], minimising first the
    total dimension Σ x_ρ dim ρ (padding), then Σ x_ρ·degree.  Returns [(ρ, {irrep_id: copies
    used})], one entry per copy.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    dim = ctx.gc.group.dim
    present = list(counts)
    top = max(ctx.first_degree(i) for i in present)
    cands, seen = [], set()
    for deg in range(top + 1):
        for rho in _candidates(dim, deg):
            content = tuple(len(ctx.embeddings(rho, i)) for i in present)
            if any(content) and (rho.dim, content) not in seen:  # e.g. 1o and 1e agree on rotation groups
                seen.add((rho.dim, content))
                cands.append((rho, deg, content))
    a = np.array([c for _, _, c in cands], dtype=np.float64).T  # (irreps, candidates)
    need = np.array([counts[i] for i in present], dtype=np.float64)
    dims = np.array([rho.dim for rho, _, _ in cands], dtype=np.float64)
    degs = np.array([deg for _, deg, _ in cands], dtype=np.float64)
    integrality = np.ones(len(cands))
    bounds = Bounds(0, float(need.max()))
    cover = LinearConstraint(a, lb=need, ub=np.inf)
    first = milp(dims, constraints=[cover], integrality=integrality, bounds=bounds)
    if not first.success:
        raise RuntimeError(f"could not pack escnn irreps into fastik irreps: {first.message}")
    best = float(np.round(first.fun))
    second = milp(degs, constraints=[cover, LinearConstraint(dims[None], lb=-np.inf, ub=best + 0.5)],
                  integrality=integrality, bounds=bounds)
    x = np.round((second if second.success else first).x).astype(int)
    left = dict(counts)
    chosen: list[tuple[Rep, dict]] = []
    for (rho, _, content), n in zip(cands, x):
        for _ in range(n):
            use = {i: min(m, left[i]) for i, m in zip(present, content) if min(m, left[i])}
            for i, m in use.items():
                left[i] -= m
            if use:
                chosen.append((rho, use))
    assert not any(left.values()), "internal error: packing left escnn irreps unplaced"
    return chosen


_TYPE_CACHE: dict = {}


def convert_field_type(field_type, group_conversion: GroupConversion | None = None,
                       recompute: bool = False) -> TypeConversion:
    """Convert an escnn ``FieldType`` (any orthogonal fields, non-uniform allowed) to fastik (cached).

    ``recompute=True`` rebuilds the conversion (and the escnn irrep embeddings it uses)
    instead of reusing cached ones, and caches the new one.
    """
    if not isinstance(field_type, enn.FieldType):
        raise TypeError(f"expected an escnn FieldType, got {type(field_type).__name__}")
    if field_type in _TYPE_CACHE and not recompute:
        return _TYPE_CACHE[field_type]
    gc = group_conversion or convert_gspace(field_type.gspace, recompute)
    ctx = _context(gc, recompute)
    occurrences = []  # (irrep id, column offset in the escnn vector, B)
    offset = 0
    per_rep: dict = {}
    for rep in field_type.representations:
        if rep.name not in per_rep:
            per_rep[rep.name] = _field_occurrences(ctx, rep)
        for irrep_id, b in per_rep[rep.name]:
            occurrences.append((irrep_id, offset, b))
        offset += rep.size
    counts: dict = {}
    for irrep_id, _, _ in occurrences:
        counts[irrep_id] = counts.get(irrep_id, 0) + 1
    chosen = _pack(ctx, counts) if counts else []
    # group copies of the same ρ into one block, blocks ordered by (degree, parity) as chosen
    order: list[Rep] = []
    for rho, _ in chosen:
        if rho not in order:
            order.append(rho)
    order.sort(key=lambda r: (getattr(r, "l", getattr(r, "k", 0)), -getattr(r, "p", getattr(r, "s", 1))))
    blocks = [(sum(1 for r, _ in chosen if r == rho), rho) for rho in order]
    ft = FieldType(gc.group, blocks)
    starts, pos = {}, 0
    for m, rho in blocks:
        starts[rho] = pos
        pos += m * rho.dim
    matrix = torch.zeros(ft.dim, field_type.size, dtype=_F64)
    queue: dict = {}
    for irrep_id, off, b in occurrences:
        queue.setdefault(irrep_id, deque()).append((off, b))
    used_copies = {rho: 0 for rho in order}
    for rho, use in chosen:
        row = starts[rho] + used_copies[rho] * rho.dim
        used_copies[rho] += 1
        for irrep_id, m in use.items():
            for e in ctx.embeddings(rho, irrep_id)[:m]:
                off, b = queue[irrep_id].popleft()
                matrix[row:row + rho.dim, off:off + b.shape[0]] += e @ b.T
    result = TypeConversion(field_type, ft, matrix)
    _check_conversion(gc, ctx, result)
    _TYPE_CACHE[field_type] = result
    return result


def _check_conversion(gc: GroupConversion, ctx: _GroupContext, tc: TypeConversion) -> None:
    m = tc.matrix
    if not torch.allclose(m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m,
                          torch.eye(min(m.shape), dtype=_F64), atol=1e-8):
        raise AssertionError("internal error: the escnn -> fastik change of basis is not an isometry")
    psi = torch.stack([torch.as_tensor(np.asarray(tc.escnn_type.representation(e), dtype=np.float64))
                       for e in gc.solver_elements])
    rho = tc.fastik_type.representation(gc.solver_matrices)
    if not torch.allclose(m @ psi, rho @ m, atol=1e-7):
        raise AssertionError("internal error: the escnn -> fastik change of basis is not equivariant")

