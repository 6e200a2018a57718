"""escnn gspaces as fastik groups: :func:`convert_gspace` and :class:`GroupConversion`.

fastik needs G as matrices acting on R^d; escnn's ``gspace.basespace_action`` gives
exactly those.  Finite fibre groups become ``fastik.group_from_generators`` of the
action matrices (a named fastik group when the matrix sets coincide).  Continuous
ones become the matching named fastik group (``so2``, ``o2``, ``so3``, ``o3``,
``Cinf``, ``Cinfv``, ``Dinf``, ``Cinfh``, ``Dinfh``), checked numerically; a rotation
axis other than z (escnn's ``adjoint`` argument) is moved to z by an orthogonal
change of coordinates C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from escnn.group import GroupElement
from escnn.gspaces import GSpace
from torch import Tensor

import fastik
from ..groups import Group, group_from_generators

__all__ = ["GroupConversion", "convert_gspace"]

_F64 = torch.float64


@dataclass(frozen=True, eq=False)
class GroupConversion:
    """How an escnn gspace maps to fastik.

    Attributes:
        group: the fastik group, as matrices acting on fastik coordinates.
        coords: C (d, d) orthogonal: fastik coordinates are ``coords_escnn @ C.T`` and the
            element e of escnn's fibre group acts as ``C · basespace_action(e) · Cᵀ`` in G.
        solver_elements: escnn elements that generate (a dense subgroup of) the fibre group.
        solver_matrices: (k, d, d) float64 — their matrices in fastik coordinates.
    """

    gspace: Any
    group: Group
    coords: Tensor
    solver_elements: tuple
    solver_matrices: Tensor

    @property
    def identity_coords(self) -> bool:
        return bool(torch.equal(self.coords, torch.eye(self.group.dim, dtype=_F64)))

    def matrix(self, element: GroupElement) -> Tensor:
        """Matrix of an escnn fibre-group element in fastik coordinates: (d, d) float64."""
        return self.coords @ _action(self.gspace, element) @ self.coords.T


def _action(gspace: GSpace, element: GroupElement) -> Tensor:
    return torch.as_tensor(np.asarray(gspace.basespace_action(element), dtype=np.float64))


def _key(m: Tensor) -> tuple[int, ...]:
    return tuple(torch.round(m.flatten() * 1e6).to(torch.int64).tolist())


def _seeded_samples(fibergroup, k: int, seed: int = 0) -> list:
    """k random elements of a continuous escnn group, without disturbing numpy's global RNG."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return [fibergroup.sample() for _ in range(k)]
    finally:
        np.random.set_state(state)


def _named_finite_candidates(dim: int, order: int, has_reflection: bool) -> list[str]:
    """fastik group names that may be the same matrix set as a finite escnn group of this order."""
    if dim == 2:
        if order == 1:
            return ["trivial"]
        return (["flip", f"D{order // 2}"] if has_reflection else []) + [f"C{order}"]
    names = {1: ["C1"], 2: ["Ci", "Cs", "C2x"], 12: ["T"], 24: ["O", "Td", "Th"], 48: ["Oh"], 60: ["I"], 120: ["Ih"]}
    out = list(names.get(order, [])) + [f"C{order}", f"S{order}"]
    if order % 2 == 0:
        out += [f"D{order // 2}", f"C{order // 2}v", f"C{order // 2}h"]
    if order % 4 == 0:
        out += [f"D{order // 4}h", f"D{order // 4}d"]
    return out


def _finite_conversion(gspace: GSpace) -> GroupConversion:
    fg, d = gspace.fibergroup, gspace.dimensionality
    elements = list(fg.elements)
    mats = torch.stack([_action(gspace, e) for e in elements])
    if len({_key(m) for m in mats}) != len(elements):
        raise ValueError(f"escnn gspace {gspace} acts on R^{d} unfaithfully (two elements of {fg} give the same "
                         "matrix): fastik groups are matrix groups, so such a gspace cannot be converted")
    # a small generating set: add elements until their closure is the whole group
    chosen: list[int] = []
    reached: set = {_key(torch.eye(d, dtype=_F64))}
    for i, m in enumerate(mats):
        if _key(m) in reached:
            continue
        chosen.append(i)
        sub = group_from_generators(mats[chosen])
        reached = {_key(x) for x in sub.elements}
        if len(reached) == len(elements):
            break
    if not chosen:  # trivial group
        chosen = [0]
    target = {_key(m) for m in mats}
    group = None
    has_reflection = bool((torch.linalg.det(mats) < 0).any())
    for name in _named_finite_candidates(d, len(elements), has_reflection):
        try:
            cand = fastik.group(name, dim=d)
        except ValueError:
            continue
        if cand.order == len(elements) and {_key(m) for m in cand.elements} == target:
            group = cand
            break
    if group is None:
        group = group_from_generators(mats[chosen], name=f"escnn:{fg.name}")
    return GroupConversion(gspace, group, torch.eye(d, dtype=_F64), tuple(elements[i] for i in chosen),
                           mats[chosen].clone())


def _rotation_angle_axis(r: Tensor) -> tuple[float, Tensor]:
    angle = math.acos(max(-1.0, min(1.0, (float(torch.trace(r)) - 1) / 2)))
    w = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return angle, w / w.norm().clamp_min(1e-300)


def _continuous_conversion(gspace: GSpace) -> GroupConversion:
    fg, d = gspace.fibergroup, gspace.dimensionality
    samples = _seeded_samples(fg, 96)
    mats = torch.stack([_action(gspace, e) for e in samples])
    dets = torch.linalg.det(mats)
    coords = torch.eye(d, dtype=_F64)
    if d == 2:
        name = "o2" if bool((dets < 0).any()) else "so2"
    else:
        rots = mats * dets.sign()[:, None, None]
        axes = []
        for r in rots:
            angle, axis = _rotation_angle_axis(r)
            if 0.2 < angle < math.pi - 0.2:
                axes.append(axis)
        if len(axes) < 2:
            raise ValueError(f"cannot identify the continuous group {fg} of gspace {gspace} from its action")
        axes_t = torch.stack(axes)
        if bool(((axes_t @ axes_t[0]).abs() > 1 - 1e-8).all()):  # every generic rotation about one axis
            a = axes_t[0]
            sign = next((float(c) for c in a.flip(0) if abs(float(c)) > 1e-9), 1.0)  # the axis up to sign: prefer +z
            a = a * math.copysign(1.0, sign)
            if not bool(torch.allclose(a, torch.tensor([0, 0, 1.0], dtype=_F64), atol=1e-12)):
                # an orthonormal, right-handed basis (u, v, a): C maps a to z
                helper = torch.tensor([1.0, 0, 0] if abs(float(a[0])) < 0.9 else [0, 1.0, 0], dtype=_F64)
                u = helper - (helper @ a) * a
                u = u / u.norm()
                coords = torch.stack([u, torch.linalg.cross(a, u), a])
            local = coords @ mats @ coords.T
            kinds = {(int(round(float(m[2, 2]))), int(round(float(dt)))) for m, dt in zip(local, dets)}
            table = {frozenset({(1, 1)}): "Cinf", frozenset({(1, 1), (1, -1)}): "Cinfv",
                     frozenset({(1, 1), (-1, 1)}): "Dinf", frozenset({(1, 1), (-1, -1)}): "Cinfh",
                     frozenset({(1, 1), (1, -1), (-1, 1), (-1, -1)}): "Dinfh"}
            name = table.get(frozenset(kinds))
            if name is None:
                raise ValueError(f"the continuous group {fg} of gspace {gspace} is no subgroup of O(3) fastik knows "
                                 f"(coset kinds {sorted(kinds)})")
        else:
            name = "o3" if bool((dets < 0).any()) else "so3"
    group = fastik.group(name, dim=d)
    local = coords @ mats @ coords.T
    if not bool(group.contains(local).all()):
        raise ValueError(f"escnn's {fg} (gspace {gspace}) does not act as fastik's {name}: unsupported gspace")
    # solver elements: the first sample of every coset of G₀ plus generic elements of G₀
    chosen: list[int] = []
    hit = set()
    for i, m in enumerate(local):
        c = next((j for j, cs in enumerate(group.cosets) if _in_identity_component(group, cs.T @ m)), None)
        if c is not None and c not in hit:
            hit.add(c)
            chosen.append(i)
    if len(hit) != len(group.cosets):
        raise ValueError(f"escnn's {fg} (gspace {gspace}) misses components of fastik's {name}: unsupported gspace")
    generic = [i for i, m in enumerate(local) if _in_identity_component(group, m) and i not in chosen][:4]
    chosen += generic
    return GroupConversion(gspace, group, coords, tuple(samples[i] for i in chosen), local[chosen].clone())


def _in_identity_component(group: Group, h: Tensor, atol: float = 1e-6) -> bool:
    if float(torch.linalg.det(h)) <= 0:
        return False
    if group.continuous == "so3" or group.dim == 2:
        return True
    return bool((h[2] - torch.tensor([0, 0, 1.0], dtype=h.dtype)).abs().max() < atol)



_GROUP_CACHE: dict = {}


def convert_gspace(gspace: GSpace, recompute: bool = False) -> GroupConversion:
    """The fastik group of an escnn gspace on R² or R³ (cached per gspace).

    ``recompute=True`` rebuilds the conversion instead of reusing the cached one (and
    caches the new one).  Raises ValueError for gspaces fastik cannot represent (other
    base spaces, unfaithful actions, continuous groups other than SO(2)/O(2)/SO(3)/O(3)
    and the SO(2)-type subgroups of O(3)).
    """
    if not isinstance(gspace, GSpace):
        raise TypeError(f"expected an escnn GSpace, got {type(gspace).__name__}")
    if gspace in _GROUP_CACHE and not recompute:
        return _GROUP_CACHE[gspace]
    d = gspace.dimensionality
    if d not in (2, 3):
        raise ValueError(f"fastik supports escnn gspaces on R^2 and R^3, got {gspace} on R^{d}")
    act = gspace.basespace_action
    if act.size != d:
        raise ValueError(f"basespace_action of {gspace} has size {act.size}, expected {d}")
    conv = _finite_conversion(gspace) if not gspace.fibergroup.continuous else _continuous_conversion(gspace)
    _GROUP_CACHE[gspace] = conv
    return conv
