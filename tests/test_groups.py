import math

import numpy as np
import pytest
import torch

import fastik
from fastik.groups import (FieldType, O2Irrep, O3Irrep, RegularRep, TensorProductRep, circular_harmonics,
                           harmonic_irrep, harmonics, intertwiner_basis, spherical_harmonics, trivial_irrep)
from fastik.groups.intertwiners import _canonical_basis

from conftest import ALL_GROUPS, group_id, relative_error

ORDERS = {("C1", 3): 1, ("Ci", 3): 2, ("Cs", 3): 2, ("C2x", 3): 2, ("C4", 3): 4, ("C3v", 3): 6, ("C2h", 3): 4,
          ("D3", 3): 6, ("D6h", 3): 24, ("D2d", 3): 8, ("S4", 3): 4, ("S6", 3): 6, ("T", 3): 12, ("Td", 3): 24,
          ("Th", 3): 24, ("O", 3): 24, ("Oh", 3): 48, ("I", 3): 60, ("Ih", 3): 120, ("C8", 2): 8, ("D4", 2): 8,
          ("flip", 2): 2, ("trivial", 2): 1, ("D3d", 3): 12, ("C6v", 3): 12, ("D4h", 3): 16, ("C3h", 3): 6}


def rand_orthogonal(k: int, n: int, seed: int = 0) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(k, n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]


@pytest.mark.parametrize("name,dim", ALL_GROUPS, ids=[group_id(p) for p in ALL_GROUPS])
def test_group_elements_are_orthogonal_and_closed(name, dim):
    g = fastik.group(name, dim=dim)
    assert g.dim == dim
    s = g.sample(16, seed=0)
    assert s.shape == (16, dim, dim) and s.dtype == torch.float64
    eye = torch.eye(dim, dtype=torch.float64)
    assert torch.allclose(s @ s.transpose(1, 2), eye, atol=1e-12)
    assert bool(g.contains(s).all())
    assert bool(g.contains(s[:8] @ s[8:]).all()), "products of elements must stay in the group"
    assert torch.equal(g.sample(5, seed=3), g.sample(5, seed=3))


@pytest.mark.parametrize("key,order", ORDERS.items(), ids=[f"{k[0]}-{k[1]}d" for k in ORDERS])
def test_finite_group_orders(key, order):
    assert fastik.group(key[0], dim=key[1]).order == order


def test_group_names_case_insensitive_and_errors():
    assert fastik.group("oh") is fastik.group("OH") is fastik.group("Oh")
    assert fastik.group("D6H").name == "D6h"
    for bad in ("X7", "C0", "C3d", "S3", "so4", ""):
        with pytest.raises(ValueError):
            fastik.group(bad)
    with pytest.raises(ValueError):
        fastik.group("so3", dim=4)
    with pytest.raises(TypeError):
        fastik.group(3)


def test_axial_families_for_large_n():
    for name, order in (("C12", 12), ("C5v", 10), ("C7h", 14), ("D9", 18), ("D5h", 20), ("D5d", 20), ("S10", 10)):
        assert fastik.group(name).order == order


def test_group_from_generators():
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    flip = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])
    g = fastik.group_from_generators(torch.stack([rot, flip]))
    assert g.order == 8 and g.dim == 2
    with pytest.raises(ValueError, match="orthogonal"):
        fastik.group_from_generators(torch.tensor([[[2.0, 0.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError):
        fastik.group_from_generators(torch.zeros(1, 4, 4))


def test_haar_sampling_so3_is_uniform():
    s = fastik.group("so3").sample(20000, seed=0)
    # E[R] = 0 and E[R_ij^2] = 1/3 under the Haar measure
    assert s.mean(0).abs().max() < 0.02
    assert (s.pow(2).mean(0) - 1 / 3).abs().max() < 0.01
    s = fastik.group("Oh").sample(4800, seed=0)
    counts = torch.bincount(fastik.group("Oh").element_index(s), minlength=48)
    assert counts.min() > 50


@pytest.mark.parametrize("l", range(7))
@pytest.mark.parametrize("p", [1, -1])
def test_o3_irreps_are_orthogonal_homomorphisms(l, p):
    a, b = rand_orthogonal(6, 3, 1), rand_orthogonal(6, 3, 2)
    ir = O3Irrep(l, p)
    da, db = ir.matrix(a), ir.matrix(b)
    assert torch.allclose(da @ db, ir.matrix(a @ b), atol=1e-12)
    assert torch.allclose(da @ da.transpose(1, 2), torch.eye(ir.dim, dtype=torch.float64).expand_as(da), atol=1e-12)
    inv = ir.matrix(-torch.eye(3, dtype=torch.float64))
    assert torch.allclose(inv, p * torch.eye(ir.dim, dtype=torch.float64))  # parity = action of inversion


def test_standard_representations_are_identity_maps():
    g3, g2 = rand_orthogonal(5, 3), rand_orthogonal(5, 2)
    assert torch.allclose(O3Irrep(1, -1).matrix(g3), g3)
    assert torch.allclose(O2Irrep(1).matrix(g2), g2)


@pytest.mark.parametrize("label", ["0", "0-", "1", "2", "5"])
def test_o2_irreps_are_orthogonal_homomorphisms(label):
    from fastik.groups import parse_irrep
    ir = parse_irrep(label, 2)
    a, b = rand_orthogonal(8, 2, 3), rand_orthogonal(8, 2, 4)
    assert torch.allclose(ir.matrix(a) @ ir.matrix(b), ir.matrix(a @ b), atol=1e-13)
    m = ir.matrix(a)
    assert torch.allclose(m @ m.transpose(1, 2), torch.eye(ir.dim, dtype=torch.float64).expand_as(m), atol=1e-13)


@pytest.mark.parametrize("l", range(6))
def test_spherical_harmonics_orthonormal_and_equivariant(l):
    # exact quadrature: Gauss-Legendre in cos(theta) x uniform in phi integrates degree-2l polynomials exactly
    z, w = np.polynomial.legendre.leggauss(l + 2)
    phi = torch.arange(2 * l + 3, dtype=torch.float64) * 2 * math.pi / (2 * l + 3)
    z, w = torch.tensor(z), torch.tensor(w)
    rho = torch.sqrt(1 - z ** 2)
    pts = torch.stack([rho[:, None] * torch.cos(phi), rho[:, None] * torch.sin(phi), z[:, None].expand(-1, len(phi))], -1).reshape(-1, 3)
    wts = (w[:, None] * (2 * math.pi / len(phi))).expand(-1, len(phi)).reshape(-1)
    y = spherical_harmonics(l, pts)
    gram = (y * wts[:, None]).T @ y
    assert torch.allclose(gram, torch.eye(2 * l + 1, dtype=torch.float64), atol=1e-12)
    g = rand_orthogonal(1, 3, 5)[0]
    v = torch.randn(10, 3, dtype=torch.float64)
    d = O3Irrep(l, (-1) ** l).matrix(g)
    assert torch.allclose(spherical_harmonics(l, v @ g.T), spherical_harmonics(l, v) @ d.T, atol=1e-11)
    assert torch.allclose(spherical_harmonics(l, 2 * v), 2 ** l * spherical_harmonics(l, v))  # homogeneous


def test_circular_harmonics_equivariant():
    g = rand_orthogonal(4, 2, 7)
    v = torch.randn(9, 2, dtype=torch.float64)
    for k in range(4):
        d = O2Irrep(k).matrix(g)
        assert torch.allclose(circular_harmonics(k, v @ g[0].T), circular_harmonics(k, v) @ d[0].T, atol=1e-12)


def test_regular_representation():
    G = fastik.group("D3")
    reg = RegularRep(G)
    a, b = G.sample(4, seed=0), G.sample(4, seed=1)
    ra, rb = reg.matrix(a), reg.matrix(b)
    assert torch.equal(ra @ rb, reg.matrix(a @ b))
    assert torch.equal(ra.sum(-1), torch.ones(4, 6, dtype=torch.float64))  # permutation matrices
    with pytest.raises(ValueError, match="finite"):
        RegularRep(fastik.group("so3"))
    with pytest.raises(ValueError, match="not an element"):
        reg.matrix(rand_orthogonal(1, 3))


def test_field_type_layout_and_representation():
    G = fastik.group("Oh")
    ft = FieldType(G, "16x0e + 8x1o + 4x2e")
    assert ft.dim == 16 + 24 + 20 and str(ft) == "16x0e + 8x1o + 4x2e"
    g = G.sample(3, seed=0)
    rho = ft.representation(g)
    assert rho.shape == (3, 60, 60)
    assert torch.allclose(ft.representation(g[0]), rho[0])
    assert torch.allclose(rho[:, 16:19, 16:19], g)  # the first vector field transforms like positions
    assert torch.allclose(rho[0] @ rho[1], ft.representation(g[0] @ g[1]), atol=1e-12)
    assert (ft + FieldType(G, "1x1e")).dim == 63
    with pytest.raises(ValueError):
        FieldType(G, "16x3")
    with pytest.raises(ValueError):
        FieldType(fastik.group("so2", 2), "2x1o")
    with pytest.raises(ValueError):
        ft.representation(torch.eye(2))
    ft2 = FieldType(fastik.group("C8", 2), "2x0 + 1x0- + 1x3 + 1xreg")
    assert ft2.dim == 2 + 1 + 2 + 8


# dim Hom_G(a, b) from character theory
HOM_DIMS = [
    ("so3", "1o", "1o", 1), ("o3", "1o", "1e", 0), ("so3", "1o", "1e", 1), ("Cinf", "1o", "1o", 3),
    ("Cinf", "1o", "0e", 1), ("Cinfv", "1o", "1o", 2), ("Oh", "2e", "2e", 2), ("Ih", "2e", "2e", 1),
    ("C1", "2e", "1o", 15), ("Td", "1o", "1o", 1), ("Td", "2e", "1o", 1), ("T", "2e", "2e", 3),
]


@pytest.mark.parametrize("name,a,b,expected", HOM_DIMS)
def test_intertwiner_dimensions(name, a, b, expected):
    from fastik.groups import parse_irrep
    G = fastik.group(name)
    basis = intertwiner_basis(G, parse_irrep(b, 3), parse_irrep(a, 3))
    assert len(basis) == expected


@pytest.mark.parametrize("name,dim", ALL_GROUPS, ids=[group_id(p) for p in ALL_GROUPS])
def test_intertwiners_commute_with_every_element(name, dim):
    G = fastik.group(name, dim=dim)
    labels = ["1o", "2e"] if dim == 3 else ["1", "2"]
    from fastik.groups import parse_irrep
    a, b = parse_irrep(labels[0], dim), parse_irrep(labels[1], dim)
    tp = TensorProductRep(a, a)  # contains b
    basis = intertwiner_basis(G, tp, b)
    assert len(basis) > 0
    g = G.sample(8, seed=11)
    lhs = tp.matrix(g)[:, None] @ basis
    rhs = basis @ b.matrix(g)[:, None]
    assert (lhs - rhs).abs().max() < 1e-12
    flat = basis.reshape(len(basis), -1)
    assert torch.allclose(flat @ flat.T, torch.eye(len(basis), dtype=torch.float64), atol=1e-12)


def test_intertwiner_basis_is_canonical():
    null = torch.linalg.qr(torch.randn(20, 4, dtype=torch.float64))[0].numpy()
    rotated = null @ torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0].numpy()
    assert abs(_canonical_basis(null) - _canonical_basis(rotated)).max() < 1e-12
    G = fastik.group("D6h")
    reg_dim = len(intertwiner_basis(G, RegularRep(G), RegularRep(G)))
    assert reg_dim == 24  # End_G(reg) has dimension |G|
    assert relative_error(intertwiner_basis(G, O3Irrep(2, 1), O3Irrep(2, 1)),
                          intertwiner_basis.__wrapped__(G, O3Irrep(2, 1), O3Irrep(2, 1))) < 1e-12


def test_contains_continuous_groups():
    from fastik.groups.point_groups import rot_axis
    tilted = rot_axis([1.0, 0.0, 0.0], 0.3)[None]
    inversion = -torch.eye(3, dtype=torch.float64)[None]
    scaled = 2 * torch.eye(3, dtype=torch.float64)[None]
    expect = {"so3": (True, False), "o3": (True, True), "Cinf": (False, False), "Dinfh": (False, True)}
    for name, (has_tilted, has_inversion) in expect.items():
        G = fastik.group(name)
        assert bool(G.contains(tilted)) == has_tilted and bool(G.contains(inversion)) == has_inversion
        assert not bool(G.contains(scaled))  # not orthogonal


def test_y_parity_label():
    from fastik.groups import parse_irrep
    assert [parse_irrep(f"{l}y", 3) for l in range(4)] == [O3Irrep(0, 1), O3Irrep(1, -1), O3Irrep(2, 1), O3Irrep(3, -1)]
    assert FieldType(fastik.group("o3"), "2x1y + 1x2y") == FieldType(fastik.group("o3"), "2x1o + 1x2e")


PRODUCTS = [
    ("o3", "1o", "1o", ["0e", "1e", "2e"]), ("o3", "2e", "1o", ["1o", "2o", "3o"]), ("o3", "0o", "2o", ["2e"]),
    ("o3", "3e", "2o", ["1o", "2o", "3o", "4o", "5o"]),
    ("o2", "1", "1", ["0", "0-", "2"]), ("o2", "2", "1", ["1", "3"]), ("o2", "0-", "0-", ["0"]),
    ("o2", "0-", "2", ["2"]), ("o2", "3", "3", ["0", "0-", "6"]),
]


@pytest.mark.parametrize("name,a,b,expected", PRODUCTS)
def test_tensor_irreps_are_the_clebsch_gordan_decomposition(name, a, b, expected):
    """a ⊗ b contains each listed irrep exactly once and nothing else (dimensions add up)."""
    from fastik.groups import parse_irrep
    dim = 3 if name == "o3" else 2
    G = fastik.group(name, dim=dim)
    ra, rb = parse_irrep(a, dim), parse_irrep(b, dim)
    found = ra.tensor_irreps(rb)
    assert [r.label for r in found] == expected
    assert sum(r.dim for r in found) == ra.dim * rb.dim
    for r in found:
        assert len(intertwiner_basis(G, TensorProductRep(ra, rb), r)) == 1


def test_tensor_irreps_of_regular_and_product_reps_and_degrees():
    G = fastik.group("D6h")
    reg, v, t = RegularRep(G), O3Irrep(1, -1), O3Irrep(2, 1)
    assert reg.tensor_irreps(v) == [reg] and v.tensor_irreps(reg) == [reg]
    assert [r.label for r in TensorProductRep(v, v).tensor_irreps(v)] == ["1o", "0o", "2o", "3o"]
    assert [r.degree for r in (v, t, O2Irrep(3), O2Irrep(0, -1))] == [1, 2, 3, 0]
    assert RegularRep(fastik.group("Oh")).degree == 6 and RegularRep(fastik.group("T")).degree == 3  # (l+1)² ≥ |G|
    assert RegularRep(fastik.group("C8", 2)).degree == 4  # 2k + 1 ≥ 8
    assert TensorProductRep(v, t).degree == 3
    assert FieldType(G, "2x0e + 1x3o").lmax == 3
    with pytest.raises(TypeError, match="same space"):
        v.tensor_irreps(O2Irrep(1))


@pytest.mark.parametrize("name,dim", [("o3", 3), ("o2", 2)])
def test_harmonics_transform_by_their_harmonic_irrep(name, dim):
    G = fastik.group(name, dim=dim)
    v = torch.randn(9, dim, dtype=torch.float64)
    assert harmonic_irrep(dim, 0) == trivial_irrep(dim)
    for g in G.sample(3, seed=0):
        for degree in range(4):
            d = fastik.FieldType(G, [(1, harmonic_irrep(dim, degree))]).representation(g)
            assert torch.allclose(harmonics(degree, v @ g.T), harmonics(degree, v) @ d.T, atol=1e-10)


def test_is_trivial_only_for_the_invariant_scalar_irreps():
    assert O3Irrep(0, 1).is_trivial and O2Irrep(0, 1).is_trivial
    assert not any(r.is_trivial for r in (O3Irrep(0, -1), O3Irrep(1, -1), O2Irrep(0, -1), O2Irrep(1)))
    c4 = fastik.group("C4")
    assert not RegularRep(c4).is_trivial
    assert not TensorProductRep(O3Irrep(0, 1), O3Irrep(0, 1)).is_trivial
