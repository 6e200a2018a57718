"""fastik's O(3) irreps and spherical harmonics are e3nn's: same labels, same basis (skipped without e3nn)."""
import math

import pytest
import torch

import fastik
from fastik.groups import FieldType, O3Irrep, as_irrep, spherical_harmonics

o3 = pytest.importorskip("e3nn.o3")


# e3nn builds Wigner matrices in the default dtype: float64 for 1e-12 comparisons
pytestmark = pytest.mark.usefixtures("float64_default")


def orthogonal(k: int, seed: int) -> torch.Tensor:
    """k random rotations and their k improper negatives: (2k, 3, 3) float64."""
    rot = fastik.group("so3").sample(k, seed=seed)
    return torch.cat([rot, -rot])


@pytest.mark.parametrize("l", range(7))
@pytest.mark.parametrize("p", [1, -1])
def test_representation_equals_e3nn_d_from_matrix(l, p):
    g = orthogonal(4, seed=l)
    expected = o3.Irrep(l, p).D_from_matrix(g)
    assert (O3Irrep(l, p).matrix(g) - expected).abs().max() < 1e-12
    rho = FieldType(fastik.group("o3"), f"2x{l}{'e' if p == 1 else 'o'}").representation(g)
    d = 2 * l + 1
    assert (rho[:, :d, :d] - expected).abs().max() < 1e-12 and (rho[:, d:, d:] - expected).abs().max() < 1e-12


@pytest.mark.parametrize("l", range(7))
def test_spherical_harmonics_equal_e3nn(l):
    v = torch.randn(32, 3, dtype=torch.float64)
    unit = v / v.norm(dim=1, keepdim=True)
    # "integral" normalisation (e3nn's default): equal; "component": sqrt(4π) times fastik's, for every l
    assert (spherical_harmonics(l, unit) - o3.spherical_harmonics(l, v, normalize=True)).abs().max() < 1e-12
    component = o3.spherical_harmonics(l, v, normalize=True, normalization="component")
    assert (math.sqrt(4 * math.pi) * spherical_harmonics(l, unit) - component).abs().max() < 1e-11
    g = orthogonal(2, seed=10 + l)
    d = o3.Irrep(l, (-1) ** l).D_from_matrix(g)  # the harmonics carry parity (-1)^l: e3nn's "y"
    assert (spherical_harmonics(l, unit @ g[0].T) - spherical_harmonics(l, unit) @ d[0].T).abs().max() < 1e-12
    assert (spherical_harmonics(l, unit @ g[3].T) - spherical_harmonics(l, unit) @ d[3].T).abs().max() < 1e-12


def test_e3nn_objects_and_y_label_accepted():
    G = fastik.group("o3")
    irreps = o3.Irreps("2x0e + 1x1y + 3x2o + 1x3y")
    ft = FieldType(G, irreps)
    assert str(ft) == "2x0e + 1x1o + 3x2o + 1x3o"
    assert ft == FieldType(G, "2x0e + 1x1y + 3x2o + 1x3y") == FieldType(G, str(irreps))
    g = orthogonal(3, seed=1)
    assert (ft.representation(g) - irreps.D_from_matrix(g)).abs().max() < 1e-12
    assert FieldType(G, o3.Irrep("2y")).blocks == [(1, O3Irrep(2, 1))]
    assert FieldType(G, [(4, o3.Irrep("1e")), (2, "0o")]).blocks == [(4, O3Irrep(1, 1)), (2, O3Irrep(0, -1))]
    assert as_irrep(o3.Irrep("5o"), 3) == O3Irrep(5, -1)
    with pytest.raises(ValueError, match="O\\(2\\) labels"):
        FieldType(fastik.group("so2", dim=2), o3.Irreps("1x1o"))
    with pytest.raises(ValueError, match="no fields"):
        FieldType(G, o3.Irreps(""))


def test_point_conv_between_e3nn_layers_is_equivariant():
    """e3nn spherical harmonics -> fastik ImplicitPointConv -> e3nn FullyConnectedTensorProduct, all l <= 2."""
    torch.manual_seed(0)
    G = fastik.group("o3")
    sh_irreps = o3.Irreps("1x0e + 1x1o + 1x2e")
    mid_irreps = o3.Irreps("1x0e + 1x1o + 1x2e + 1x2o")
    conv = fastik.ImplicitPointConv(FieldType(G, sh_irreps), FieldType(G, mid_irreps),
                                    edge_attr_type=FieldType(G, sh_irreps), hidden_channels=2, hidden_layers=1,
                                    backend="reference").double()
    tp = o3.FullyConnectedTensorProduct(mid_irreps, sh_irreps, "1x0e + 1x1o + 1x2e + 1x3o").double()
    n = 6
    pos = torch.randn(n, 3, dtype=torch.float64)
    src, tgt = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = src != tgt
    edge_index = torch.stack([src[keep], tgt[keep]])

    def model(p: torch.Tensor) -> torch.Tensor:
        centred = p - p.mean(0)
        x = o3.spherical_harmonics(sh_irreps, centred, normalize=True)  # node features: e3nn's basis
        edge = o3.spherical_harmonics(sh_irreps, p[edge_index[0]] - p[edge_index[1]], normalize=True)
        h = conv(x, p, edge_index, edge_attr=edge)
        return tp(h, x)

    out = model(pos)
    assert out.abs().max() > 1e-3
    for g in orthogonal(1, seed=3):  # a rotation and an improper element
        d = tp.irreps_out.D_from_matrix(g)
        assert (model(pos @ g.T) - out @ d.T).abs().max() < 1e-9 * out.abs().max()
