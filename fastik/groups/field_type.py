"""Field types: direct sums of representations of a point group G, laid out field by field.

``FieldType(G, "16x0e + 8x1o + 4x2e")`` is 16 scalar fields, then 8 vector fields,
then 4 rank-2 fields; a feature vector of ``ft.dim`` numbers stores them in that
order, each field's components contiguous.  G acts on features (rows) by
``x -> x @ ft.representation(g).T``.  e3nn's ``Irreps`` / ``Irrep`` objects are
accepted wherever a string is (same labels, same basis).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor

from .irreps import O2Irrep, O3Irrep, as_irrep
from .point_groups import Group

__all__ = ["FieldType", "RegularRep", "TensorProductRep", "Rep", "require_field_type"]


@dataclass(frozen=True, eq=False)
class RegularRep:
    """The regular representation of a finite group: g permutes the basis e_h -> e_{gh}."""

    group: Group

    def __post_init__(self) -> None:
        if not self.group.is_finite:
            raise ValueError(f"'reg' needs a finite group; {self.group.name} is continuous")

    @property
    def dim(self) -> int:
        return self.group.order

    @property
    def label(self) -> str:
        return "reg"

    def __str__(self) -> str:
        return "reg"

    @property
    def degree(self) -> int:
        """Smallest band limit with as many harmonics as |G| elements: (l+1)² ≥ |G| in 3D (capped at 6),
        2k+1 ≥ |G| in 2D — the harmonic degree needed to tell G's elements apart."""
        n = self.dim
        return min(6, math.ceil(math.sqrt(n)) - 1) if self.group.dim == 3 else n // 2

    @property
    def is_trivial(self) -> bool:
        """False: never the trivial irrep object (even when one-dimensional)."""
        return False

    def tensor_irreps(self, other: "Rep") -> list["Rep"]:
        """``[reg]``: reg ⊗ ρ is dim(ρ) copies of the regular representation."""
        return [self]

    def matrix(self, g: Tensor) -> Tensor:
        elems = self.group.elements.to(g)
        prod = g[..., None, :, :] @ elems  # (..., |G|, n, n): g·h for every h
        idx = self.group.element_index(prod)  # (..., |G|)
        out = torch.zeros(*idx.shape, self.dim, dtype=g.dtype, device=g.device)
        out.scatter_(-1, idx[..., None], 1.0)  # row h has a one at column idx(g h)
        return out.transpose(-1, -2)


@dataclass(frozen=True)
class TensorProductRep:
    """ρa ⊗ ρb acting on row-major flattened (da × db) matrices."""

    a: "Rep"
    b: "Rep"

    @property
    def dim(self) -> int:
        return self.a.dim * self.b.dim

    @property
    def label(self) -> str:
        return f"({self.a.label}x{self.b.label})"

    @property
    def degree(self) -> int:
        """Largest harmonic degree among the irreps of a ⊗ b (for irreps: a.degree + b.degree)."""
        return max(r.degree for r in self.a.tensor_irreps(self.b))

    @property
    def is_trivial(self) -> bool:
        """False: never the trivial irrep object (even when one-dimensional)."""
        return False

    def tensor_irreps(self, other: "Rep") -> list["Rep"]:
        """Distinct irreps (or regular reps) of (a ⊗ b) ⊗ other, in order of first appearance."""
        out: list[Rep] = []
        for r in self.a.tensor_irreps(self.b):
            out += [s for s in r.tensor_irreps(other) if s not in out]
        return out

    def matrix(self, g: Tensor) -> Tensor:
        ma, mb = self.a.matrix(g), self.b.matrix(g)
        out = ma[..., :, None, :, None] * mb[..., None, :, None, :]
        return out.reshape(*g.shape[:-2], self.dim, self.dim)


Rep = Union[O3Irrep, O2Irrep, RegularRep, TensorProductRep]

_TERM_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\S+)\s*$")


def _parse(group: Group, spec: str) -> list[tuple[int, Rep]]:
    blocks: list[tuple[int, Rep]] = []
    if not spec.strip():
        return blocks
    for term in spec.split("+"):
        m = _TERM_RE.match(term)
        if not m:
            raise ValueError(f"bad field type term {term!r} in {spec!r}: expected like '16x0e'")
        mul = int(m.group(1)) if m.group(1) is not None else 1
        blocks.append((mul, _as_rep(group, m.group(2))))
    return blocks


def _as_rep(group: Group, rep: object) -> Rep:
    if isinstance(rep, (RegularRep, TensorProductRep)):
        return rep
    if isinstance(rep, str) and rep.strip() == "reg":
        return RegularRep(group)
    return as_irrep(rep, group.dim)


def _blocks(group: Group, irreps: object) -> list[tuple[int, Rep]]:
    """(mul, rep) pairs from a spec string, an e3nn Irreps / Irrep, or a sequence of (mul, rep) pairs."""
    if isinstance(irreps, str):
        return _parse(group, irreps)
    if hasattr(irreps, "l") and hasattr(irreps, "p"):  # a single e3nn Irrep
        return [(1, _as_rep(group, irreps))]
    try:
        pairs = [tuple(pair) for pair in irreps]  # e3nn Irreps iterate as (mul, Irrep)
    except TypeError:
        raise TypeError(f"field type spec must be a string like '16x0e + 8x1o', an e3nn Irreps or a list of "
                        f"(multiplicity, irrep) pairs, got {type(irreps).__name__}") from None
    out = []
    for pair in pairs:
        if len(pair) != 2 or isinstance(pair[0], bool) or not isinstance(pair[0], int):
            raise TypeError(f"field type blocks must be (multiplicity: int, irrep) pairs, got {pair!r}")
        out.append((pair[0], _as_rep(group, pair[1])))
    return out


class FieldType:
    """A direct sum of G-representations: ``blocks = [(multiplicity, rep), ...]`` in order.

    Args:
        group: the point group G acting.
        irreps: e.g. ``"16x0e + 8x1o + 4x2e"`` (3D, O(3) irreps restricted to G;
            ``"1x1y"`` is l = 1 with the parity of the spherical harmonics, as in e3nn),
            ``"4x0 + 2x0- + 3x1 + 1xreg"`` (2D, O(2) irreps; ``reg`` = regular rep
            of a finite G), an ``e3nn.o3.Irreps`` / ``Irrep``, or a list of
            ``(mul, rep)`` pairs (rep: a fastik representation, a label or an e3nn Irrep).

    Raises:
        ValueError: a string or e3nn spec with no fields (``""``, ``"0x0e"``).  An
            explicit list of pairs may be empty (the zero field type, for composing).
    """

    def __init__(self, group: Group, irreps: str | Sequence[tuple[int, Rep | str]]) -> None:
        if not isinstance(group, Group):
            raise TypeError(f"group must be a fastik Group, got {type(group).__name__}")
        self.group = group
        blocks = _blocks(group, irreps)
        for mul, rep in blocks:
            if mul < 0:
                raise ValueError(f"negative multiplicity {mul}")
            if isinstance(rep, O3Irrep) and group.dim != 3 or isinstance(rep, O2Irrep) and group.dim != 2:
                raise ValueError(f"irrep {rep} does not match a {group.dim}D group")
        self.blocks: list[tuple[int, Rep]] = [(m, r) for m, r in blocks if m > 0]
        self.dim: int = sum(m * r.dim for m, r in self.blocks)
        if self.dim == 0 and not isinstance(irreps, list):
            raise ValueError(f"field type {str(irreps)!r} has no fields (dimension 0): give at least one, "
                             "e.g. '1x0e' (3D) or '1x0' (2D)")

    def __repr__(self) -> str:
        return f"FieldType({self.group.name}, {str(self)!r})"

    def __str__(self) -> str:
        return " + ".join(f"{m}x{r.label}" for m, r in self.blocks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FieldType) and other.group is self.group and other.blocks == self.blocks

    def __hash__(self) -> int:
        return hash((id(self.group), tuple(self.blocks)))

    def __add__(self, other: "FieldType") -> "FieldType":
        if other.group is not self.group:
            raise ValueError(f"cannot add field types of different groups {self.group.name} and {other.group.name}")
        return FieldType(self.group, self.blocks + other.blocks)

    def __iter__(self) -> Iterator[tuple[int, Rep]]:
        return iter(self.blocks)

    def slices(self) -> list[slice]:
        """The feature slice of each block."""
        out, start = [], 0
        for m, r in self.blocks:
            out.append(slice(start, start + m * r.dim))
            start += m * r.dim
        return out

    @property
    def lmax(self) -> int:
        """Largest harmonic degree of the blocks (each representation's ``degree``; 0 if none)."""
        return max((r.degree for _, r in self.blocks), default=0)

    def representation(self, g: Tensor) -> Tensor:
        """ρ(g): (dim, dim) -> (self.dim, self.dim), batched (k, dim, dim) -> (k, self.dim, self.dim)."""
        g = torch.as_tensor(g)
        if g.shape[-2:] != (self.group.dim, self.group.dim):
            raise ValueError(f"expected group elements (..., {self.group.dim}, {self.group.dim}), got {tuple(g.shape)}")
        if not g.is_floating_point():
            g = g.to(torch.float64)
        out = torch.zeros(*g.shape[:-2], self.dim, self.dim, dtype=g.dtype, device=g.device)
        for (m, r), sl in zip(self.blocks, self.slices()):
            d = r.matrix(g)
            for u in range(m):
                a = sl.start + u * r.dim
                out[..., a:a + r.dim, a:a + r.dim] = d
        return out


def require_field_type(value: object, name: str) -> FieldType:
    """``value`` if it is a :class:`FieldType`, else a TypeError naming the argument and the fix."""
    if isinstance(value, FieldType):
        return value
    spec_like = isinstance(value, str) or type(value).__name__ in ("Irreps", "Irrep")  # e3nn, duck-typed
    hint = f": build one with fastik.FieldType(group, {str(value)!r})" if spec_like else ""
    raise TypeError(f"{name} must be a fastik FieldType, got {type(value).__name__} {value!r}{hint}")
