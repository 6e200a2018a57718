"""Loading state dicts saved before fastik's O(3) irreps moved to e3nn's basis.

Version 1 (fastik 0.1.0, state-dict metadata ``version`` 1 or absent) built the irreps of
degree l ≥ 2 from textbook real spherical harmonics with polar axis z; version 2 uses e3nn's
(polar axis y).  The two are related by one orthogonal matrix per degree,
``D_l(g) = Q_l D_l^v1(g) Q_lᵀ`` with ``Q_l = D_l(P)`` for the cyclic permutation
``P: (x, y, z) -> (z, x, y)`` (the identity for l ≤ 1, which did not change).

Learned coefficients of intertwiner bases (``EquivariantLinear.weights``,
``KernelHead.weights``, ``InvariantBias.coefficients``) are converted exactly: the
version-1 basis is rebuilt (the solver's canonical basis depends only on the space, so it
is the canonical basis of the same space in version-1 coordinates), each coefficient
vector becomes a dense map, the map is transformed by the Q of every factor, and it is
projected on the version-2 orthonormal basis.  A converted layer maps ``Q x`` to ``Q y``
where the version-1 layer mapped ``x`` to ``y`` (so identically for fields of degree ≤ 1).
Rebuilding the version-1 basis relies on the solver's canonicalisation
(``intertwiners._canonical_basis``) staying as it was; tests/test_checkpoint_compat.py
loads a version-1 checkpoint and checks the outputs.
"""
from __future__ import annotations

import functools
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..groups import FieldType, O3Irrep, Rep, TensorProductRep
from ..groups.intertwiners import _canonical_basis

__all__ = ["legacy_basis_change", "convert_coefficients", "upgrade_state_dict", "CoefficientModule"]

_CYCLE = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float64)  # v -> (v_z, v_x, v_y)


def legacy_basis_change(rep: Rep | FieldType) -> Tensor:
    """Q (d, d) float64, orthogonal: ``rep.matrix(g) = Q · (version-1 matrix of g) · Qᵀ``.

    Features convert as ``x_new = x_old @ Q.T``.  Identity except on O(3) irreps of degree
    l ≥ 2 (and representations built from them); a FieldType gives the block-diagonal Q.
    """
    if isinstance(rep, FieldType):
        return torch.block_diag(*[legacy_basis_change(r) for m, r in rep.blocks for _ in range(m)]) \
            if rep.dim else torch.zeros(0, 0, dtype=torch.float64)
    if isinstance(rep, O3Irrep) and rep.l >= 2:
        return _o3_change(rep.l).clone()
    if isinstance(rep, TensorProductRep):
        return torch.kron(legacy_basis_change(rep.a), legacy_basis_change(rep.b))
    return torch.eye(rep.dim, dtype=torch.float64)


@functools.lru_cache(maxsize=None)
def _o3_change(l: int) -> Tensor:
    return O3Irrep(l, (-1) ** l).matrix(_CYCLE)


def convert_coefficients(coef: Tensor, basis: Tensor, qs: Sequence[Tensor]) -> Tensor:
    """Version-1 coefficients (..., t) -> version-2 coefficients (..., t) of the same map.

    basis: the version-2 orthonormal intertwiner basis (t, d_1, ..., d_K) float64 from
    :func:`~fastik.groups.intertwiner_basis`; qs: :func:`legacy_basis_change` of each factor.
    """
    t = basis.shape[0]
    q = functools.reduce(np.kron, [x.numpy() for x in qs])  # (n, n): Q of every factor on row-major vec
    new = basis.reshape(t, -1).numpy()
    old = _canonical_basis((new @ q).T)  # (t, n): the same space in version-1 coordinates, as version 1 solved it
    change = torch.from_numpy((old @ q.T) @ new.T)  # (t_old, t_new)
    return (coef.detach().to(torch.float64) @ change).to(coef.dtype)


def _coefficient_blocks(module: nn.Module) -> list[tuple[str, Tensor, list[Rep], slice]]:
    """(state-dict key without prefix, version-2 basis, factor reps, slice of the last axis) per coefficient block."""
    from .kernel import KernelHead
    from ..groups import trivial_irrep
    from .linear import EquivariantLinear, InvariantBias
    from ..groups import intertwiner_basis

    if isinstance(module, EquivariantLinear):
        out = []
        for o, i in module._pairs:
            ro, ri = module.out_type.blocks[o][1], module.in_type.blocks[i][1]
            out.append((f"weights.{o}_{i}", intertwiner_basis(module.in_type.group, ro, ri), [ro, ri], slice(None)))
        return out
    if isinstance(module, KernelHead):
        group, hidden = module.in_type.group, module.hidden_type.blocks + [(1, trivial_irrep(module.in_type.group.dim))]
        out = []
        for o, i, h in module._triples:
            ro, ri, rh = module.out_type.blocks[o][1], module.in_type.blocks[i][1], hidden[h][1]
            basis = intertwiner_basis(group, TensorProductRep(ro, ri), rh).reshape(-1, ro.dim, ri.dim, rh.dim)
            out.append((f"weights.{o}_{i}_{h}", basis, [ro, ri, rh], slice(None)))
        return out
    if isinstance(module, InvariantBias):
        ft, out, start = module.field_type, [], 0
        for m, r in ft.blocks:  # rows of the invariant basis: per block, per copy, that block's invariants
            inv = intertwiner_basis(ft.group, r, trivial_irrep(ft.group.dim))
            for _ in range(m):
                out.append(("coefficients", inv, [r, trivial_irrep(ft.group.dim)], slice(start, start + len(inv))))
                start += len(inv)
        return out
    raise TypeError(f"no version-1 conversion for {type(module).__name__}")


def upgrade_state_dict(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Convert ``module``'s coefficients in ``state_dict`` (in place) from version 1 to version 2.

    Called from ``_load_from_state_dict`` when the stored version is below 2.  A state dict
    without version metadata (e.g. rebuilt as a plain dict) is taken as version 1, with a warning.
    """
    blocks = [b for b in _coefficient_blocks(module) if prefix + b[0] in state_dict and len(b[1])]
    qs = [[legacy_basis_change(r) for r in reps] for _, _, reps, _ in blocks]
    blocks = [(b, q) for b, q in zip(blocks, qs) if any(not torch.equal(x, torch.eye(len(x), dtype=x.dtype)) for x in q)]
    if not blocks:
        return  # nothing of degree >= 2: both versions agree
    if "version" not in local_metadata:
        warnings.warn(f"state dict entry {prefix!r} ({type(module).__name__}) has no version metadata: taken as "
                      "saved by fastik 0.1.0 (version 1) and converted to e3nn's basis; load a state dict saved "
                      "with its metadata (torch.save(module.state_dict())) to avoid the guess", stacklevel=4)
    for (key, basis, _, sl), q in blocks:
        value = state_dict[prefix + key]
        converted = value.clone()
        converted[..., sl] = convert_coefficients(value[..., sl], basis, q)
        state_dict[prefix + key] = converted


class CoefficientModule(nn.Module):
    """Base of modules whose parameters are coefficients in intertwiner bases.

    State-dict version 2 (O(3) irreps in e3nn's basis); version-1 state dicts are converted on load.
    """

    _version = 2

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, *args, **kwargs) -> None:
        if local_metadata.get("version", 1) < 2:
            upgrade_state_dict(self, state_dict, prefix, local_metadata)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
