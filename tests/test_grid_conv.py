import pytest
import torch

import fastik
from fastik.nn import ImplicitR2Conv, ImplicitR3Conv
from fastik.nn.grid_conv import transform_grid

from conftest import ALL_GROUPS, group_id, relative_error


def grid_elements(G):
    """Elements of G that map the cubic grid onto itself (signed permutation matrices)."""
    cube = fastik.group("Oh").elements if G.dim == 3 else fastik.group("D4", dim=2).elements
    return cube[G.contains(cube)].round()


@pytest.mark.parametrize("name,spec_in,spec_out", [
    ("D4", "2x0 + 1x1", "1x0 + 1x0- + 1x2"), ("C4", "1x0 + 1xreg", "2x1"), ("o2", "1x0 + 1x1", "1x1 + 1x2"),
    ("flip", "1x0 + 1x0-", "1x1"),
])
def test_r2_conv_equivariant_on_grid_symmetries(name, spec_in, spec_out):
    G = fastik.group(name, dim=2)
    a, b = fastik.FieldType(G, spec_in), fastik.FieldType(G, spec_out)
    conv = ImplicitR2Conv(a, b, kernel_size=5, hidden_channels=2).double()
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.coefficients.normal_()
    x = torch.randn(2, a.dim, 9, 9, dtype=torch.float64)
    y = conv(x)
    assert y.shape == (2, b.dim, 9, 9)
    els = grid_elements(G)
    assert len(els) > 1
    for g in els:
        moved = conv(transform_grid(x, g, a.representation(g)))
        assert relative_error(moved, transform_grid(y, g, b.representation(g))) < 1e-10


@pytest.mark.parametrize("name", ["Oh", "so3", "D4h"])
def test_r3_conv_equivariant_on_grid_symmetries(name):
    G = fastik.group(name)
    a, b = fastik.FieldType(G, "1x0e + 1x1o"), fastik.FieldType(G, "1x0e + 1x2e")
    conv = ImplicitR3Conv(a, b, kernel_size=3, hidden_channels=1).double()
    x = torch.randn(1, a.dim, 5, 5, 5, dtype=torch.float64)
    y = conv(x)
    els = grid_elements(G)
    assert len(els) > 1
    for g in els[:6]:
        moved = conv(transform_grid(x, g, a.representation(g)))
        assert relative_error(moved, transform_grid(y, g, b.representation(g))) < 1e-10


def test_grid_conv_errors_and_shapes():
    G2 = fastik.group("C4", dim=2)
    t = fastik.FieldType(G2, "2x0")
    with pytest.raises(ValueError, match="3D group"):
        ImplicitR3Conv(t, t)
    conv = ImplicitR2Conv(t, t, kernel_size=3, stride=2, hidden_channels=1)
    assert conv(torch.randn(1, 2, 8, 8)).shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="expects"):
        conv(torch.randn(1, 3, 8, 8))
    assert conv.to("meta").weight(torch.float32).device.type == "meta"


@pytest.mark.parametrize("name,dim", ALL_GROUPS, ids=[group_id(p) for p in ALL_GROUPS])
def test_grid_conv_equivariance_every_group(name, dim):
    """Every group of the table, on the elements of G that map the grid onto itself
    (for some groups, e.g. C3, that is only the identity: then only shapes are checked)."""
    G = fastik.group(name, dim=dim)
    spec = ("1x0e + 1x1o", "1x0e + 1x2e") if dim == 3 else ("1x0 + 1x1", "1x1 + 1x0-")
    a, b = fastik.FieldType(G, spec[0]), fastik.FieldType(G, spec[1])
    conv = (ImplicitR3Conv if dim == 3 else ImplicitR2Conv)(a, b, kernel_size=3, hidden_channels=1).double()
    x = torch.randn(1, a.dim, *[5] * dim, dtype=torch.float64)
    y = conv(x)
    for g in grid_elements(G):
        moved = conv(transform_grid(x, g, a.representation(g)))
        assert relative_error(moved, transform_grid(y, g, b.representation(g))) < 1e-10
