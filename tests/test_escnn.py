"""fastik.escnn: the escnn drop-in layer (equivariance by escnn's own checks, identity with fastik)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastik

escnn = pytest.importorskip("escnn")
fe = pytest.importorskip("fastik.escnn")
from escnn import group as egroup  # noqa: E402
from escnn import gspaces  # noqa: E402
from escnn import nn as enn  # noqa: E402

# escnn's gspaces are slow to build (the icosahedral irreps most of all): build each once
GSPACES = {
    "so3": gspaces.rot3dOnR3(),
    "o3": gspaces.flipRot3dOnR3(),
    "so2": gspaces.rot2dOnR2(-1),
    "o2": gspaces.flipRot2dOnR2(-1),
    "c8": gspaces.rot2dOnR2(8),
    "ico": gspaces.icoOnR3(),
}


def _irreps(G, ids):
    return [G.irrep(*i) for i in ids]


def field_types(name):
    """Non-uniform (in, out) escnn field types for each tested gspace."""
    gs = GSPACES[name]
    G = gs.fibergroup
    if name == "so3":
        i0, i1, i2 = _irreps(G, [(0,), (1,), (2,)])
        return enn.FieldType(gs, [i0, i1, i0, i2, i1]), enn.FieldType(gs, [i1, i0, i2, i0])
    if name == "o3":
        e0, o0, o1, e1, e2 = _irreps(G, [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2)])
        return enn.FieldType(gs, [e0, o1, o0, e2]), enn.FieldType(gs, [o1, e0, e1, o0])
    if name == "so2":
        f0, f1, f2, f3 = _irreps(G, [(0,), (1,), (2,), (3,)])
        return enn.FieldType(gs, [f0, f1, f2, f1]), enn.FieldType(gs, [f3, f0, f1])
    if name == "o2":
        t, s, f1, f2 = _irreps(G, [(0, 0), (1, 0), (1, 1), (1, 2)])
        return enn.FieldType(gs, [t, f1, s, f2]), enn.FieldType(gs, [s, f1, t, t])
    if name == "c8":
        reg, q2 = G.regular_representation, G.quotient_representation(2)
        f1, f4 = _irreps(G, [(1,), (4,)])
        return enn.FieldType(gs, [reg, f1, q2]), enn.FieldType(gs, [f4, reg, G.trivial_representation])
    if name == "ico":
        a, t1, t2, g4, h5 = _irreps(G, [(0,), (1,), (3,), (4,), (2,)])
        return enn.FieldType(gs, [a, t1, g4, h5]), enn.FieldType(gs, [t2, a, t1])
    raise KeyError(name)


@pytest.fixture(autouse=True)
def float32_default():
    """escnn works in float32 (other test modules may switch torch's default dtype to float64);
    torch's and numpy's global RNG states are left as found, so other modules' draws do not change."""
    old = torch.get_default_dtype()
    np_state = np.random.get_state()
    torch.set_default_dtype(torch.float32)
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_default_dtype(old)
    np.random.set_state(np_state)


_LAYERS: dict = {}


def layer(name):
    """One drop-in layer per gspace (n_channels small: tests, not training)."""
    if name not in _LAYERS:
        torch.manual_seed(0)
        tin, tout = field_types(name)
        conv = fe.ImplicitPointConv(tin, tout, n_channels=4)
        bias = conv.fastik.bias
        with torch.no_grad():  # a non-zero bias, so that it is tested too
            for p in [bias] if isinstance(bias, torch.nn.Parameter) else bias.parameters():
                p.normal_()
        _LAYERS[name] = conv
    return _LAYERS[name]


def cloud(conv, n=24, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, conv.d, generator=gen, dtype=dtype)
    x = enn.GeometricTensor(torch.randn(n, conv.in_type.size, generator=gen, dtype=dtype), conv.in_type, pos)
    return x, fe.radius_graph(pos, 1.2)


def escnn_elements(gs, k, seed=0):
    G = gs.fibergroup
    if not G.continuous:
        return list(G.elements)[:: max(1, G.order() // k)]
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return [G.sample() for _ in range(k)]
    finally:
        np.random.set_state(state)


ALL = list(GSPACES)


# ----------------------------------------------------------------------------------------------------------------------


def test_import_fastik_does_not_import_escnn():
    code = "import fastik, sys; assert 'escnn' not in sys.modules, 'fastik imported escnn'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_escnn_gives_install_hint():
    code = ("import sys; sys.modules['escnn'] = None\n"
            "try:\n    import fastik.escnn\nexcept ImportError as e:\n    assert 'fastik[escnn]' in str(e), e\n"
            "else:\n    raise SystemExit('no ImportError')")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ALL)
def test_escnn_check_equivariance(name):
    """escnn's protocol (random cloud, every testing element, escnn's default tolerances)."""
    errors = layer(name).check_equivariance()
    assert len(errors) == len(list(GSPACES[name].testing_elements))


@pytest.mark.parametrize("name", ALL)
def test_equivariance_with_escnn_transform(name):
    """conv(x.transform(g)) == conv(x).transform(g): features and coordinates moved by escnn."""
    conv = layer(name).double()
    try:
        x, ei = cloud(conv, dtype=torch.float64)
        y = conv(x, ei)
        assert isinstance(y, enn.GeometricTensor) and y.type == conv.out_type
        assert torch.equal(y.coords, x.coords)
        for el in escnn_elements(GSPACES[name], 6):
            a = y.transform(el)
            b = conv(x.transform(el), ei)
            assert torch.allclose(a.coords, b.coords)
            assert torch.allclose(a.tensor, b.tensor, atol=1e-10, rtol=1e-9), f"{name}: {el}"
    finally:
        conv.float()


@pytest.mark.parametrize("name", ALL)
def test_identical_to_fastik_layer(name):
    """The drop-in layer is exactly the fastik layer on the converted types (same parameters)."""
    conv = layer(name)
    ref = fastik.ImplicitPointConv(conv.fastik.in_type, conv.fastik.out_type, hidden_channels=4, hidden_layers=1,
                                   aggr="mean", avg_degree=1.0)  # escnn's normalisation, the drop-in's default
    ref.load_state_dict(conv.fastik.state_dict())
    x, ei = cloud(conv, seed=1)
    want = conv.from_fastik(ref(conv.to_fastik(x.tensor), conv.coords_to_fastik(x.coords), ei))
    assert torch.equal(conv(x, ei).tensor, want)
    # the conversion is an isometry intertwining escnn's and fastik's actions
    gc = conv.group_conversion
    for tc in (conv.in_conversion, conv.out_conversion):
        m = tc.matrix
        assert torch.allclose(m @ m.T, torch.eye(m.shape[0], dtype=m.dtype), atol=1e-10) or \
            torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-10)
        assert tc.fastik_type.dim == tc.escnn_type.size + tc.padding
        for el in escnn_elements(GSPACES[name], 4, seed=3):
            psi = torch.as_tensor(np.asarray(tc.escnn_type.representation(el)), dtype=torch.float64)
            rho = tc.fastik_type.representation(gc.matrix(el))
            assert torch.allclose(m @ psi, rho @ m, atol=1e-9)


def test_group_conversion_names():
    expected = {"so3": "so3", "o3": "o3", "so2": "so2", "o2": "o2", "c8": "C8", "ico": "I"}
    for name, gs in GSPACES.items():
        gc = fe.convert_gspace(gs)
        assert gc.group.name == expected[name]
        assert gc.identity_coords
        assert fe.convert_gspace(gs) is gc  # cached: one fastik group per gspace


@pytest.mark.parametrize("make", [
    lambda: gspaces.conicalOnR3(), lambda: gspaces.cylindricalOnR3(), lambda: gspaces.fullCylindricalOnR3(),
    lambda: gspaces.dihedralOnR3(), lambda: gspaces.rot2dOnR3(), lambda: gspaces.rot2dOnR3(5),
    lambda: gspaces.octaOnR3(), lambda: gspaces.mirOnR3(), lambda: gspaces.invOnR3(), lambda: gspaces.trivialOnR3(),
    lambda: gspaces.flipRot2dOnR2(4), lambda: gspaces.flip2dOnR2(), lambda: gspaces.trivialOnR2(),
], ids=["cone", "cyl", "fullcyl", "dihedral", "rot2dOnR3", "C5onR3", "octa", "mir", "inv", "trivial3", "D4", "flip",
        "trivial2"])
def test_other_gspaces_convert_exactly(make):
    """Every field converts to an isometric, equivariant fastik embedding (all irreps of the group listed)."""
    gs = make()
    G = gs.fibergroup
    reps = [G.irrep(*irr.id) for irr in G.irreps()[:6]]
    if not G.continuous:
        reps.append(G.regular_representation)
    tc = fe.convert_field_type(enn.FieldType(gs, reps))
    gc = fe.convert_gspace(gs)
    m = tc.matrix
    assert torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype), atol=1e-10)
    for el in escnn_elements(gs, 5, seed=4):
        psi = torch.as_tensor(np.asarray(tc.escnn_type.representation(el)), dtype=torch.float64)
        assert torch.allclose(m @ psi, tc.fastik_type.representation(gc.matrix(el)) @ m, atol=1e-9)


def test_tilted_axis_uses_a_change_of_coordinates():
    q = np.array([0.3, -0.2, 0.5, 0.8])
    adjoint = egroup.o3_group().element((0, q / np.linalg.norm(q)), "Q")
    gs = gspaces.conicalOnR3(adjoint=adjoint)
    G = gs.fibergroup
    irr = _irreps(G, [(0, 0), (1, 0), (1, 1), (1, 2)])
    conv = fe.ImplicitPointConv(enn.FieldType(gs, irr), enn.FieldType(gs, irr[::-1]), n_channels=4)
    assert conv.group_conversion.group.name == "Cinfv" and not conv.group_conversion.identity_coords
    conv.check_equivariance()


def test_edge_delta_edge_attr_and_downsampling():
    gs = GSPACES["so3"]
    G = gs.fibergroup
    tin, tout = field_types("so3")
    tattr = enn.FieldType(gs, [G.irrep(0), G.irrep(1)])
    torch.manual_seed(0)
    conv = fe.ImplicitPointConv(tin, tout, tattr, n_layers=3, n_channels=4, aggr="mean")
    assert conv.fastik.kernel.edge_attr_type is conv.edge_conversion.fastik_type
    x, ei = cloud(conv, seed=2)
    attr = torch.randn(ei.shape[1], tattr.size)
    y = conv(x, ei, edge_attr=attr)
    # explicit edge_delta with escnn's convention (source - target) gives the same result
    delta = x.coords[ei[0]] - x.coords[ei[1]]
    attr_gt = enn.GeometricTensor(attr, tattr, delta)  # (E, C) GeometricTensors need coordinates in escnn
    assert torch.allclose(conv(x, ei, delta, attr_gt).tensor, y.tensor, atol=1e-6)
    # equivariance with edge attributes transformed by escnn
    for el in escnn_elements(gs, 3):
        attr_g = attr_gt.transform_fibers(el)
        assert torch.allclose(conv(x.transform(el), ei, edge_attr=attr_g).tensor, y.transform(el).tensor, atol=1e-5)
    assert len(conv.check_equivariance()) == len(list(gs.testing_elements))  # escnn's protocol, edge_attr too
    # downsampling (the paper's idx_downsampled): targets are a subset of the points
    idx = torch.arange(0, x.tensor.shape[0], 3)
    near = torch.cdist(x.coords[idx], x.coords) <= 1.2  # (targets, sources)
    ei_down = near.nonzero().flip(1).T.contiguous()    # rows: source j, target (position in idx)
    yd = conv(x, ei_down, edge_attr=torch.randn(ei_down.shape[1], tattr.size), idx_downsampled=idx)
    assert yd.tensor.shape == (len(idx), tout.size) and torch.equal(yd.coords, x.coords[idx])
    assert conv.evaluate_output_shape((x.tensor.shape[0], tin.size)) == (x.tensor.shape[0], tout.size)


def test_gradients_flow():
    conv = layer("o2")
    x, ei = cloud(conv, seed=5)
    x.tensor.requires_grad_(True)
    conv(x, ei).tensor.pow(2).sum().backward()
    assert x.tensor.grad is not None and x.tensor.grad.abs().sum() > 0
    assert all(p.grad is not None for p in conv.parameters() if p.requires_grad)
    conv.zero_grad()


def test_input_validation():
    conv = layer("so2")
    x, ei = cloud(conv)
    with pytest.raises(TypeError):
        conv(x.tensor, ei)
    with pytest.raises(ValueError, match="radius=... or knn=..."):
        conv(x)
    with pytest.raises(ValueError, match="init_scheme"):
        fe.ImplicitPointConv(conv.in_type, conv.out_type, init_scheme="deltaorthonormal")
    with pytest.raises(ValueError, match="same gspace"):
        fe.ImplicitPointConv(conv.in_type, field_types("o2")[1])


# ----------------------------------------------------------------------------------------------------------------------
# escnn's constructor arguments: each mapped to a fastik meaning, or refused with the reason


def test_escnn_arguments_mapped():
    tin, tout = field_types("so2")
    torch.manual_seed(0)
    conv = fe.ImplicitPointConv(tin, tout, n_channels=2, groups=1, bias=False, width=3.0, sigma=None, n_rings=None,
                                rings=None, frequencies_cutoff=None, basis_filter=None, recompute=False)
    assert conv.fastik.bias is None                                      # bias
    assert torch.isclose(conv.fastik.kernel.log_sigma.exp(), torch.tensor(1.5))  # width -> envelope σ = width / 2
    assert conv.fastik.aggr == "mean" and conv.fastik.scale == 1.0      # escnn's normalisation: plain mean
    # recompute: a fresh conversion, equal to the cached one
    again = fe.ImplicitPointConv(tin, tout, n_channels=2, recompute=True)
    assert again.in_conversion is not conv.in_conversion
    assert torch.equal(again.in_conversion.matrix, conv.in_conversion.matrix)
    assert fe.convert_field_type(tin) is again.in_conversion             # ... which replaces the cached one
    # initialize=False: the kernel's output layer starts at zero (escnn leaves its weights at zero): y = bias
    lazy = fe.ImplicitPointConv(tin, tout, n_channels=2, initialize=False)
    x, ei = cloud(lazy)
    assert all(not p.any() for p in lazy.fastik.kernel.head.parameters())
    bias_only = lazy.from_fastik(lazy.fastik.bias(torch.zeros(1, lazy.fastik.out_type.dim)))
    assert torch.allclose(lazy(x, ei).tensor, bias_only.expand(x.tensor.shape[0], -1))
    # fastik's own names still work
    env = fe.ImplicitPointConv(tin, tout, n_channels=2, envelope_sigma=0.5, aggr="sum", avg_degree=4.0)
    assert torch.isclose(env.fastik.kernel.log_sigma.exp(), torch.tensor(0.5)) and env.fastik.scale == 0.5


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigma=0.6), "sigma=0.6 is not supported: escnn's sigma is the thickness of the Gaussian rings"),
    (dict(n_rings=3), "n_rings=3 is not supported: .*radial resolution comes from the G-MLP"),
    (dict(rings=[0.0, 1.0]), "rings=.* is not supported: .*width="),
    (dict(frequencies_cutoff=3.0), "frequencies_cutoff=3.0 is not supported: .*harmonics="),
    (dict(basis_filter=lambda attr: True), "basis_filter=.* is not supported: .*nothing to filter"),
    (dict(groups=2), "groups=2: fastik has no grouped"),
    (dict(groups=0), "groups must be a positive int"),
    (dict(width=-1.0), "width .* must be a positive number"),
    (dict(width=2.0, envelope_sigma=1.0), "at most one of width .* and envelope_sigma"),
    (dict(maximum_offset=1), "maximum_offset is an argument of escnn's grid convolutions"),
    (dict(kernel_size=5), "kernel_size is an argument of escnn's grid convolutions"),
], ids=["sigma", "n_rings", "rings", "frequencies_cutoff", "basis_filter", "groups", "groups0", "width", "width+env",
        "maximum_offset", "kernel_size"])
def test_escnn_arguments_refused(kwargs, message):
    tin, tout = field_types("so2")
    with pytest.raises(ValueError, match=message):
        fe.ImplicitPointConv(tin, tout, n_channels=2, **kwargs)


def test_replace_point_convs_maps_or_refuses_escnn_arguments():
    pytest.importorskip("torch_geometric")  # escnn's point convolutions need it
    gs = GSPACES["c8"]
    t = enn.FieldType(gs, [gs.trivial_repr, gs.irrep(1)])
    torch.manual_seed(0)
    original = enn.R2PointConv(t, t, width=3.0, n_rings=2, sigma=0.5, frequencies_cutoff=1.0, bias=False)
    conv = fe.replace_point_convs(original, n_channels=2)
    assert isinstance(conv, fe.ImplicitPointConv) and (conv.in_type, conv.out_type) == (t, t)
    assert conv.fastik.bias is None                                                # bias carried over
    assert torch.isclose(conv.fastik.kernel.log_sigma.exp(), torch.tensor(1.5))  # width = outermost ring
    assert conv.fastik.aggr == "mean"                                              # escnn's normalisation
    with pytest.raises(ValueError, match="sigma=0.3 is not supported"):            # kwargs are checked too
        fe.replace_point_convs(enn.R2PointConv(t, t, width=1.0, n_rings=2), sigma=0.3)
    grouped = enn.R2PointConv(t + t, t + t, width=1.0, n_rings=2)
    grouped.groups = 2  # escnn 1.0.11 refuses groups != 1 itself; its development version builds grouped layers
    with pytest.raises(ValueError, match="groups=2: fastik has no grouped"):
        fe.replace_point_convs(enn.SequentialModule(grouped))


# ----------------------------------------------------------------------------------------------------------------------
# docs/escnn.md: replacing R3PointConv in an escnn SequentialModule model


class RadiusGraph(enn.EquivariantModule):
    """User-side glue (as in docs/escnn.md): runs a point conv on the radius graph of x.coords."""

    def __init__(self, conv, radius):
        super().__init__()
        self.conv, self.radius = conv, radius
        self.in_type, self.out_type = conv.in_type, conv.out_type

    def forward(self, x):
        return self.conv(x, fastik.graphs.radius_graph(x.coords, self.radius, loop=True))

    def evaluate_output_shape(self, input_shape):
        return self.conv.evaluate_output_shape(input_shape)


def _so3_model():
    gs = GSPACES["so3"]
    G = gs.fibergroup
    t0 = enn.FieldType(gs, [G.irrep(0)] * 2 + [G.irrep(1)])
    t1 = enn.FieldType(gs, [G.irrep(0)] * 3 + [G.irrep(1)] * 2)
    t2 = enn.FieldType(gs, [G.irrep(0), G.irrep(1)])
    torch.manual_seed(0)
    return enn.SequentialModule(
        RadiusGraph(enn.R3PointConv(t0, t1, width=1.0, n_rings=3, frequencies_cutoff=2.0), radius=1.2),
        enn.NormNonLinearity(t1),
        RadiusGraph(enn.R3PointConv(t1, t2, width=1.0, n_rings=3, frequencies_cutoff=2.0), radius=1.2),
    )


def _check_model(model, n=20):
    gen = torch.Generator().manual_seed(7)
    pos = torch.randn(n, 3, generator=gen)
    x = enn.GeometricTensor(torch.randn(n, model.in_type.size, generator=gen), model.in_type, pos)
    y = model(x)
    assert y.type == model.out_type and y.tensor.shape == (n, model.out_type.size)
    for el in escnn_elements(model.in_type.gspace, 4):
        assert torch.allclose(model(x.transform(el)).tensor, y.transform(el).tensor, atol=1e-5, rtol=1e-4)
    y.tensor.sum().backward()


def test_recipe_replace_r3pointconv_in_sequential_model():
    pytest.importorskip("torch_geometric")  # escnn's point convolutions need it
    model = _so3_model()
    _check_model(model)  # the escnn original
    types = [(m.in_type, m.out_type) for m in model.modules() if isinstance(m, enn.R3PointConv)]
    fe.replace_point_convs(model, n_channels=4)
    convs = [m for m in model.modules() if isinstance(m, fe.ImplicitPointConv)]
    assert len(convs) == 2 and not any(isinstance(m, enn.R3PointConv) for m in model.modules())
    assert [(c.in_type, c.out_type) for c in convs] == types
    _check_model(model)


def test_sequential_module_with_graph_rule():
    """No glue needed: the layer builds its radius / kNN graph from x.coords."""
    gs = GSPACES["so3"]
    G = gs.fibergroup
    t0 = enn.FieldType(gs, [G.irrep(0)] * 2 + [G.irrep(1)])
    t1 = enn.FieldType(gs, [G.irrep(0)] * 3 + [G.irrep(1)] * 2)
    torch.manual_seed(0)
    model = enn.SequentialModule(
        fe.ImplicitPointConv(t0, t1, n_channels=4, radius=1.2),
        enn.NormNonLinearity(t1),
        fe.ImplicitPointConv(t1, t0, n_channels=4, knn=6),
    )
    _check_model(model)


def test_graph_rule_matches_a_dense_reference():
    """radius= / knn= build fastik.graphs edges with self-loops; idx_downsampled keeps the edges into the targets."""
    assert fe.radius_graph is fastik.graphs.radius_graph and fe.knn_graph is fastik.graphs.knn_graph
    tin, tout = field_types("so2")
    torch.manual_seed(0)
    by_radius = fe.ImplicitPointConv(tin, tout, n_channels=2, radius=1.2)
    by_knn = fe.ImplicitPointConv(tin, tout, n_channels=2, knn=5)
    by_knn.load_state_dict(by_radius.state_dict())
    x, _ = cloud(by_radius, seed=3)
    dist = torch.cdist(x.coords, x.coords)  # (targets, sources)
    idx = torch.arange(0, x.tensor.shape[0], 4)
    near = dist <= 1.2
    knn = torch.zeros_like(near).scatter_(1, dist.topk(5, largest=False).indices, True)
    for conv, mask in ((by_radius, near), (by_knn, knn)):
        ref = mask.nonzero().flip(1).T.contiguous()  # rows: source j, target i
        assert torch.allclose(conv(x).tensor, conv(x, ref).tensor, atol=1e-6)
        ref_down = mask[idx].nonzero().flip(1).T.contiguous()
        assert torch.allclose(conv(x, idx_downsampled=idx).tensor, conv(x, ref_down, idx_downsampled=idx).tensor,
                              atol=1e-6)
