"""escnn interop: fastik's implicit point convolution as a drop-in escnn module.

``fastik.escnn.ImplicitPointConv`` takes escnn ``FieldType`` s, is an
``escnn.nn.EquivariantModule`` and is called like escnn's ``R2PointConv`` /
``R3PointConv`` (and like the paper's ``ImplicitPointConv``)::

    conv = fastik.escnn.ImplicitPointConv(in_type, out_type)
    y = conv(x, edge_index)            # x: GeometricTensor with x.coords (N, d); y: GeometricTensor

Internally the escnn types are converted once, at construction, into fastik types
and the layer runs a plain :class:`fastik.ImplicitPointConv` (every fastik backend
is available): ``y = fastik_layer(x.tensor @ Q_in, coords @ Cᵀ, edge_index) @ Q_out``.

How the conversion works (see ``docs/escnn.md``):

* **Group.**  fastik needs G as matrices acting on R^d; escnn's
  ``gspace.basespace_action`` gives exactly those.  Finite fibre groups become
  ``fastik.group_from_generators`` of the action matrices (a named fastik group
  when the matrix sets coincide).  Continuous ones become the matching named fastik
  group (``so2``, ``o2``, ``so3``, ``o3``, ``Cinf``, ``Cinfv``, ``Dinf``,
  ``Cinfh``, ``Dinfh``), checked numerically; a rotation axis other than z (escnn's
  ``adjoint`` argument) is moved to z by an orthogonal change of coordinates C.
* **Representations.**  Every escnn field is split into escnn irreps (its
  ``change_of_basis``), and every irrep ψ is matched, by solving
  ``ρ(g) E = E ψ(g)`` on generators of G, to O(3) / O(2) irreps ρ restricted to G
  (fastik's native ``O3Irrep`` / ``O2Irrep``).  Irreps are then packed into as few
  and as small ρ as possible, over the whole field type: an escnn SO(3) irrep l
  is ``O3Irrep(l)`` up to a basis change, the icosahedral 3' ⊕ 4 fill one ``3``,
  two C8 "sign" irreps fill one O(2) frequency-4 irrep.  An irrep left alone is
  embedded isometrically into the smallest ρ containing it (a few padding
  dimensions, reported as ``conv.padding``): inputs are embedded, outputs
  projected, so the layer stays exactly equivariant and its kernel space is the
  full space of equivariant kernels (every G-equivariant kernel between the escnn
  fields is the compression of an equivariant kernel between the ρ's).  Keeping
  fastik's own irreps (rather than wrapping escnn's) is what lets fastik pick the
  hidden irreps, harmonic degree and nonlinearity grid of its G-MLP exactly as it
  does for its own field types.
* **Positions.**  escnn's point convolutions use ``edge_delta = pos[row] -
  pos[col]`` with ``edge_index = (row, col) = (source j, target i)`` (PyG's
  source-to-target flow), i.e. ``pos_j - pos_i`` — fastik's ``r_e`` as well.

escnn is an optional extra (``pip install 'fastik[escnn]'``): ``import fastik``
never imports it; importing this module without escnn raises ImportError.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    import escnn  # noqa: F401
    from escnn import nn as enn
    from escnn.group import GroupElement, Representation
    from escnn.gspaces import GSpace
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fastik.escnn needs the optional escnn extra: pip install 'fastik[escnn]' "
        "(escnn>=1.0.11 with numpy<2; its py3nj dependency needs a Fortran compiler, e.g. "
        "apt-get install gfortran; scripts/setup.sh shows a recipe). "
        f"Original error: {_err}"
    ) from _err

import fastik
from .groups import FieldType, Group, O2Irrep, O3Irrep, group_from_generators
from .groups.field_type import Rep
from .nn._buffers import constant, register_constant

__all__ = ["ImplicitPointConv", "convert_gspace", "convert_field_type", "replace_point_convs",
           "radius_graph", "knn_graph", "GroupConversion", "TypeConversion"]

_F64 = torch.float64
_NULL_TOL = 1e-8  # relative singular-value threshold of the intertwiner solver
_MAX_DEGREE = 32  # largest O(3) degree / O(2) frequency searched for an escnn irrep


# ----------------------------------------------------------------------------------------------------------------------
# group conversion
# ----------------------------------------------------------------------------------------------------------------------

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


def convert_gspace(gspace: GSpace) -> GroupConversion:
    """The fastik group of an escnn gspace on R² or R³ (cached per gspace).

    Raises ValueError for gspaces fastik cannot represent (other base spaces, unfaithful
    actions, continuous groups other than SO(2)/O(2)/SO(3)/O(3) and the SO(2)-type
    subgroups of O(3)).
    """
    if not isinstance(gspace, GSpace):
        raise TypeError(f"expected an escnn GSpace, got {type(gspace).__name__}")
    if gspace in _GROUP_CACHE:
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


# ----------------------------------------------------------------------------------------------------------------------
# representation conversion
# ----------------------------------------------------------------------------------------------------------------------

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


def _context(gc: GroupConversion) -> _GroupContext:
    if gc.gspace not in _CONTEXTS:
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


def convert_field_type(field_type, group_conversion: GroupConversion | None = None) -> TypeConversion:
    """Convert an escnn ``FieldType`` (any orthogonal fields, non-uniform allowed) to fastik (cached)."""
    if not isinstance(field_type, enn.FieldType):
        raise TypeError(f"expected an escnn FieldType, got {type(field_type).__name__}")
    if field_type in _TYPE_CACHE:
        return _TYPE_CACHE[field_type]
    gc = group_conversion or convert_gspace(field_type.gspace)
    ctx = _context(gc)
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


# ----------------------------------------------------------------------------------------------------------------------
# graphs (for use inside escnn.nn.SequentialModule, which passes one argument)
# ----------------------------------------------------------------------------------------------------------------------

def radius_graph(pos: Tensor, radius: float, loop: bool = True, pos_target: Tensor | None = None) -> Tensor:
    """Edges (2, E) = (source j, target i) for every pair with ``|pos_j - pos_i| <= radius`` (O(N·M) memory)."""
    tgt_pos = pos if pos_target is None else pos_target
    dist = torch.cdist(tgt_pos, pos)  # (M, N)
    mask = dist <= radius
    if not loop and pos_target is None:
        mask.fill_diagonal_(False)
    tgt, src = mask.nonzero(as_tuple=True)
    return torch.stack([src, tgt])


def knn_graph(pos: Tensor, k: int, loop: bool = True, pos_target: Tensor | None = None) -> Tensor:
    """Edges (2, M·k) from the k nearest points of ``pos`` to every target (itself included when ``loop``)."""
    tgt_pos = pos if pos_target is None else pos_target
    dist = torch.cdist(tgt_pos, pos)
    if not loop and pos_target is None:
        dist.fill_diagonal_(float("inf"))
    k = min(k, pos.shape[0])
    src = dist.topk(k, dim=1, largest=False).indices  # (M, k)
    tgt = torch.arange(tgt_pos.shape[0], device=pos.device)[:, None].expand_as(src)
    return torch.stack([src.reshape(-1), tgt.reshape(-1)])


# ----------------------------------------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------------------------------------

class ImplicitPointConv(enn.EquivariantModule):
    """Steerable point convolution with an implicit G-MLP kernel, as an escnn module.

    A drop-in for escnn's ``R2PointConv`` / ``R3PointConv`` with the signature of the
    paper's ``ImplicitPointConv``: it maps a ``GeometricTensor`` of ``in_type`` (tensor
    (N, in_type.size), coords (N, d)) to one of ``out_type`` on the same points, and is
    equivariant under every element of the gspace's fibre group acting on both the
    features and the coordinates (``GeometricTensor.transform``).

    Args:
        in_type, out_type: escnn ``FieldType`` s of one gspace on R² or R³ (any fields,
            non-uniform types included; representations must be orthogonal, as escnn's are).
        edge_attr_type: optional escnn ``FieldType`` of edge attributes fed to the kernel.
        n_layers: linear layers of the kernel G-MLP, the output layer included (the
            paper's convention): fastik's ``hidden_layers = n_layers - 1``.
        n_channels: copies of each hidden irrep (fastik's ``hidden_channels``).
        init_scheme: ``"he"``: fastik's fan-in scaled Gaussian initialisation (the only one).
        knn, radius: how to build edges from ``x.coords`` when ``forward`` gets no
            ``edge_index`` (needed inside ``escnn.nn.SequentialModule``, which passes only x).
        **fastik_kwargs: passed to :class:`fastik.ImplicitPointConv` (``aggr``, ``backend``,
            ``avg_degree``, ``bias``, ``nonlinearity``, ``harmonics``, ``norm``, ``sigma``,
            ``chunk_size``).  escnn's ``R3PointConv`` averages messages: pass
            ``aggr="mean"`` for the same normalisation; fastik's default sums them, scaled by
            ``1/sqrt(avg_degree)``.

    Attributes:
        fastik: the inner :class:`fastik.ImplicitPointConv` (all parameters live there).
        in_conversion, out_conversion, edge_conversion: :class:`TypeConversion` s.
        group_conversion: :class:`GroupConversion` (fastik group, coordinate change C).
    """

    def __init__(self, in_type, out_type, edge_attr_type=None, n_layers: int = 2, n_channels: int = 16,
                 init_scheme: str = "he", *, knn: int | None = None, radius: float | None = None,
                 **fastik_kwargs) -> None:
        super().__init__()
        for name, t in (("in_type", in_type), ("out_type", out_type), ("edge_attr_type", edge_attr_type)):
            if t is not None and not isinstance(t, enn.FieldType):
                raise TypeError(f"{name} must be an escnn FieldType, got {type(t).__name__}")
        if out_type.gspace != in_type.gspace or (edge_attr_type is not None and edge_attr_type.gspace != in_type.gspace):
            raise ValueError("in_type, out_type and edge_attr_type must belong to the same gspace")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers (linear layers of the kernel MLP, output layer included) must be >= 1, got {n_layers}")
        if init_scheme != "he":
            raise ValueError(f"init_scheme must be 'he' (fastik's fan-in scaled initialisation), got {init_scheme!r}")
        if "hidden_layers" in fastik_kwargs or "hidden_channels" in fastik_kwargs:
            raise TypeError("pass n_layers / n_channels (escnn-style names) instead of hidden_layers / hidden_channels")
        if knn is not None and radius is not None:
            raise ValueError("give at most one of knn and radius")
        self.in_type, self.out_type, self.edge_attr_type = in_type, out_type, edge_attr_type
        self.space = in_type.gspace
        self.d = self.space.dimensionality
        self.knn, self.radius = knn, radius
        self.n_layers, self.n_channels, self.init_scheme = n_layers, n_channels, init_scheme
        self.group_conversion = convert_gspace(self.space)
        self.in_conversion = convert_field_type(in_type, self.group_conversion)
        self.out_conversion = convert_field_type(out_type, self.group_conversion)
        self.edge_conversion = None if edge_attr_type is None else convert_field_type(edge_attr_type, self.group_conversion)
        self.fastik = fastik.ImplicitPointConv(
            self.in_conversion.fastik_type, self.out_conversion.fastik_type,
            None if self.edge_conversion is None else self.edge_conversion.fastik_type,
            hidden_channels=n_channels, hidden_layers=n_layers - 1, **fastik_kwargs)
        register_constant(self, "in_change", self.in_conversion.matrix.T)    # x_fastik = x @ in_change
        register_constant(self, "out_change", self.out_conversion.matrix)    # y = y_fastik @ out_change
        if self.edge_conversion is not None:
            register_constant(self, "edge_change", self.edge_conversion.matrix.T)
        self._move_coords = not self.group_conversion.identity_coords
        if self._move_coords:
            register_constant(self, "coords_change", self.group_conversion.coords.T)  # pos_fastik = pos @ Cᵀ

    # --- conversions, public so that the inner fastik layer can be used (and tested) directly ---

    @property
    def padding(self) -> tuple[int, int]:
        """Unused dimensions of the fastik (input, output) types (see :class:`TypeConversion`)."""
        return self.in_conversion.padding, self.out_conversion.padding

    def to_fastik(self, x: Tensor) -> Tensor:
        """escnn features (…, in_type.size) -> fastik features (…, fastik.in_type.dim)."""
        return x @ constant(self, "in_change", x.dtype)

    def from_fastik(self, y: Tensor) -> Tensor:
        """fastik output features (…, fastik.out_type.dim) -> escnn features (…, out_type.size)."""
        return y @ constant(self, "out_change", y.dtype)

    def coords_to_fastik(self, pos: Tensor) -> Tensor:
        """escnn coordinates (…, d) -> fastik coordinates (identity unless the gspace's axis is not z)."""
        return pos @ constant(self, "coords_change", pos.dtype) if self._move_coords else pos

    def edge_attr_to_fastik(self, edge_attr: Tensor) -> Tensor:
        return edge_attr @ constant(self, "edge_change", edge_attr.dtype)

    # --- escnn module API ---

    def forward(self, x, edge_index: Tensor | None = None, edge_delta: Tensor | None = None,
                edge_attr: Tensor | None = None, *, idx_downsampled: Tensor | None = None):
        """Convolve; returns a ``GeometricTensor`` of ``out_type``.

        Args:
            x: ``GeometricTensor`` of ``in_type``; ``x.coords`` (N, d) holds the positions.
            edge_index: (2, E) int64, row 0 the source j, row 1 the target i (PyG / escnn).
                None: built from ``x.coords`` with the layer's ``knn`` / ``radius`` rule.
            edge_delta: (E, d) relative positions; default ``coords[j] - coords[i]`` (escnn's).
            edge_attr: (E, edge_attr_type.size) tensor or ``GeometricTensor`` of ``edge_attr_type``.
            idx_downsampled: (M,) indices of the target points (the paper's downsampling
                variant): targets index ``coords[idx_downsampled]`` and the output lives there.
        """
        if not isinstance(x, enn.GeometricTensor):
            raise TypeError(f"x must be an escnn GeometricTensor, got {type(x).__name__}")
        if x.type != self.in_type:
            raise ValueError(f"x has type {x.type}, the layer expects {self.in_type}")
        if x.tensor.dim() != 2:
            raise ValueError(f"point convolutions take (N, C) tensors, got {tuple(x.tensor.shape)}")
        coords = x.coords
        if coords is None and (edge_delta is None or edge_index is None or idx_downsampled is not None):
            raise ValueError("x.coords is None: give the GeometricTensor coordinates (N, d), "
                             "or pass both edge_index and edge_delta")
        coords_out = None if coords is None else (coords if idx_downsampled is None else coords[idx_downsampled])
        if edge_index is None:
            edge_index = self._build_graph(coords, coords_out if idx_downsampled is not None else None)
        if self.edge_attr_type is not None:
            if isinstance(edge_attr, enn.GeometricTensor):
                if edge_attr.type != self.edge_attr_type:
                    raise ValueError(f"edge_attr has type {edge_attr.type}, the layer expects {self.edge_attr_type}")
                edge_attr = edge_attr.tensor
            if edge_attr is None:
                raise ValueError(f"the layer was built with edge_attr_type={self.edge_attr_type}; pass edge_attr")
            if edge_attr.dim() != 2 or edge_attr.shape[-1] != self.edge_attr_type.size:
                raise ValueError(f"edge_attr must be (E, {self.edge_attr_type.size}), got {tuple(edge_attr.shape)}")
            edge_attr = self.edge_attr_to_fastik(edge_attr)
        elif edge_attr is not None:
            raise ValueError("edge_attr was given but the layer was built without edge_attr_type")
        xf = self.to_fastik(x.tensor)
        if edge_delta is None:
            pos = self.coords_to_fastik(coords)
            pos_t = None if idx_downsampled is None else pos[idx_downsampled]
            y = self.fastik(xf, pos, edge_index, edge_attr, pos_target=pos_t)
        else:
            # explicit relative positions: one virtual source per edge at r_e, targets at the origin,
            # so that the fastik layer's r = pos[src] - pos_target[tgt] is exactly edge_delta
            if edge_delta.shape != (edge_index.shape[1], self.d):
                raise ValueError(f"edge_delta must be (E, {self.d}) = ({edge_index.shape[1]}, {self.d}), got {tuple(edge_delta.shape)}")
            num_targets = x.tensor.shape[0] if idx_downsampled is None else idx_downsampled.shape[0]
            src, tgt = edge_index[0], edge_index[1]
            virtual = torch.stack([torch.arange(src.shape[0], device=src.device), tgt])
            origin = edge_delta.new_zeros(num_targets, self.d)
            y = self.fastik(xf[src], self.coords_to_fastik(edge_delta), virtual, edge_attr, pos_target=origin)
        return enn.GeometricTensor(self.from_fastik(y), self.out_type, coords=coords_out)

    def _build_graph(self, coords: Tensor, coords_target: Tensor | None) -> Tensor:
        if self.radius is not None:
            return radius_graph(coords, self.radius, pos_target=coords_target)
        if self.knn is not None:
            return knn_graph(coords, self.knn, pos_target=coords_target)
        raise ValueError("no edge_index given and the layer has no graph rule: pass edge_index, or build the "
                         "layer with radius=... or knn=... (needed inside escnn.nn.SequentialModule)")

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        if len(input_shape) < 2 or input_shape[1] != self.in_type.size:
            raise ValueError(f"expected an input shape (N, {self.in_type.size}), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size, *input_shape[2:])

    def check_equivariance(self, atol: float = 1e-5, rtol: float = 5e-6, assertion: bool = True,
                           verbose: bool = False, points: int = 30) -> list:
        """Equivariance on a random point cloud for every testing element of the gspace (escnn's protocol).

        Returns [(element, mean absolute error)]; with ``assertion`` raises AssertionError when an
        error exceeds ``atol + rtol·|output|``.
        """
        param = next(self.parameters())
        gen = torch.Generator().manual_seed(0)
        pos = torch.randn(points, self.d, generator=gen, dtype=param.dtype).to(param.device)
        feats = torch.randn(points, self.in_type.size, generator=gen, dtype=param.dtype).to(param.device)
        x = enn.GeometricTensor(feats, self.in_type, pos)
        dist = torch.cdist(pos, pos)
        thr = sorted(dist.reshape(-1).tolist())[points * points // 16]
        edge_index = (dist < thr).nonzero().T.contiguous()
        edge_attr = None
        if self.edge_attr_type is not None:
            ea = torch.randn(edge_index.shape[1], self.edge_attr_type.size, generator=gen, dtype=param.dtype)
            delta = pos[edge_index[0]] - pos[edge_index[1]]  # escnn wants coordinates for (E, C) tensors
            edge_attr = enn.GeometricTensor(ea.to(param.device), self.edge_attr_type, delta)
        errors = []
        with torch.no_grad():
            y = self(x, edge_index, edge_attr=edge_attr)
            for el in self.space.testing_elements:
                ea_t = None if edge_attr is None else edge_attr.transform_fibers(el)
                out1 = y.transform(el).tensor.cpu().numpy()
                out2 = self(x.transform(el), edge_index, edge_attr=ea_t).tensor.cpu().numpy()
                errs = np.abs(out1 - out2)
                tol = rtol * np.maximum(np.abs(out1), np.abs(out2)) + atol
                if verbose and np.any(errs > tol):
                    print(el, errs.max())
                if assertion:
                    assert np.all(errs <= tol), (f'The error found during equivariance check with element "{el}" is too '
                                                 f"high: max = {errs.max()}, mean = {errs.mean()} var ={errs.var()}")
                errors.append((el, float(errs.mean())))
        return errors

    def extra_repr(self) -> str:
        pad = self.padding
        s = f"{self.in_type} -> {self.out_type}, group={self.group_conversion.group.name}"
        if any(pad):
            s += f", padding={pad}"
        if self.radius is not None:
            s += f", radius={self.radius}"
        if self.knn is not None:
            s += f", knn={self.knn}"
        return s


def replace_point_convs(module, **kwargs):
    """Replace every escnn ``R2PointConv`` / ``R3PointConv`` inside ``module`` (in place) by
    :class:`ImplicitPointConv` with the same field types and bias setting; returns ``module``.

    ``kwargs`` go to :class:`ImplicitPointConv` (n_layers, n_channels, aggr, backend, ...).
    Messages are averaged over incoming edges (``aggr="mean"``) unless ``kwargs`` say
    otherwise, as in the escnn layers being replaced.  A module that is itself a point
    convolution is returned converted.
    """
    point_convs = tuple(getattr(enn, n) for n in ("R2PointConv", "R3PointConv") if hasattr(enn, n))

    def convert(conv):
        opts = dict(kwargs)
        opts.setdefault("bias", conv.bias is not None)
        opts.setdefault("aggr", "mean")
        return ImplicitPointConv(conv.in_type, conv.out_type, **opts)

    if point_convs and isinstance(module, point_convs):
        return convert(module)
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if point_convs and isinstance(child, point_convs):
                setattr(parent, name, convert(child))
    return module
