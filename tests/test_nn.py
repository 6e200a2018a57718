"""Equivariance, gradients and input validation of the G-MLP pieces and the point convolution."""
import warnings

import pytest
import torch

import fastik
from fastik.nn import EquivariantLinear, EquivariantNorm, FourierELU, GatedNonlinearity, ImplicitKernel

from conftest import FIELDS, GROUPS_2D, GROUPS_3D, relative_error

# tests here run in float64 (conftest.float64_default)
pytestmark = pytest.mark.usefixtures("float64_default")


# exact constructions: float64 round-off only; sampled Fourier-ELU on continuous groups: aliasing
EXACT = 1e-10
FOURIER_CONTINUOUS = 5e-2


def check(f, t_in, t_out, x, g, tol):
    for gi in g:
        a, b = t_in.representation(gi), t_out.representation(gi)
        assert relative_error(f(x @ a.T), f(x) @ b.T) < tol


def field(G, dim_spec=None):
    return fastik.FieldType(G, dim_spec or FIELDS[G.dim])


def test_equivariant_linear(any_group):
    t_in = field(any_group)
    t_out = fastik.FieldType(any_group, "3x0e + 1x1e + 2x1o + 1x3o" if any_group.dim == 3 else "1x0 + 2x1 + 1x3 + 1x0-")
    lin = EquivariantLinear(t_in, t_out)
    with torch.no_grad():
        lin.bias.coefficients.normal_()
    check(lin, t_in, t_out, torch.randn(7, t_in.dim), any_group.sample(3, seed=0), EXACT)
    bias = lin.bias.bias(torch.float64)
    for g in any_group.sample(3, seed=1):
        assert torch.allclose(t_out.representation(g) @ bias, bias, atol=1e-12)


def test_bias_only_on_invariant_subspace():
    so3 = fastik.group("so3")
    lin = EquivariantLinear(fastik.FieldType(so3, "2x1o"), fastik.FieldType(so3, "3x0e + 2x1o"))
    assert lin.bias.coefficients.shape == (3,)  # no bias for vectors under SO(3)
    c1 = fastik.group("C1")
    lin = EquivariantLinear(fastik.FieldType(c1, "2x1o"), fastik.FieldType(c1, "3x0e + 2x1o"))
    assert lin.bias.coefficients.shape == (9,)  # every direction is invariant under C1


def test_gated_nonlinearity_exact(any_group):
    ft = field(any_group)
    gate = GatedNonlinearity(ft)
    x = torch.randn(11, gate.in_type.dim)
    check(gate, gate.in_type, ft, x, any_group.sample(3, seed=2), EXACT)


def test_fourier_elu(any_group):
    act = FourierELU(any_group, channels=3, lmax=2)
    x = torch.randn(13, act.in_type.dim)
    tol = EXACT if any_group.is_finite else FOURIER_CONTINUOUS
    check(act, act.in_type, act.out_type, x, any_group.sample(3, seed=3), tol)
    assert relative_error(act(x), x) > 1e-2  # it is not the identity


def test_norm_is_equivariant_and_per_sample(any_group):
    ft = field(any_group)
    norm = EquivariantNorm(ft)
    x = torch.randn(9, ft.dim) * 3 + 1
    check(norm, ft, ft, x, any_group.sample(3, seed=4), EXACT)
    assert torch.allclose(norm(x[:1]), norm(x)[:1])  # no coupling between samples
    norm.eval()
    assert torch.allclose(norm(x[:1]), norm(x)[:1])


def _norm_per_block(norm: EquivariantNorm, x: torch.Tensor) -> torch.Tensor:
    """EquivariantNorm's definition, block by block (the module computes all blocks at once)."""
    parts, f0, b0 = [], 0, 0
    for (m, r), sl in zip(norm.field_type.blocks, norm.field_type.slices()):
        v = x[:, sl].reshape(-1, m, r.dim)
        if r.is_trivial and m > 1:
            v = v - v.mean(1, keepdim=True)
        v = v * v.pow(2).mean((1, 2)).add(norm.eps).rsqrt()[:, None, None] * norm.scale[f0:f0 + m, None]
        if r.is_trivial:
            v, b0 = v + norm.bias[b0:b0 + m, None], b0 + m
        parts.append(v.reshape(len(x), -1))
        f0 += m
    return torch.cat(parts, 1)


def _gate_per_block(gate: GatedNonlinearity, x: torch.Tensor) -> torch.Tensor:
    """GatedNonlinearity's definition, block by block: SiLU on scalars, the k-th other field times σ(gate k)."""
    from fastik.nn.nonlinearities import _GATE_SCALE, _SILU_SCALE
    gates, parts, g0 = torch.sigmoid(x[:, gate.out_type.dim:]) * _GATE_SCALE, [], 0
    for (m, r), sl in zip(gate.out_type.blocks, gate.out_type.slices()):
        if r.is_trivial:
            parts.append(torch.nn.functional.silu(x[:, sl]) * _SILU_SCALE)
        else:
            parts.append((x[:, sl].reshape(-1, m, r.dim) * gates[:, g0:g0 + m, None]).reshape(len(x), -1))
            g0 += m
    return torch.cat(parts, 1)


@pytest.mark.parametrize("fields", [None, {3: "3x1o + 2x0e + 1x2e + 1x0e", 2: "3x1 + 2x0 + 1x2 + 1x0"},
                                    {3: "3x0e", 2: "3x0"}], ids=["table", "interleaved", "no-gates"])
def test_norm_and_gate_match_their_per_block_definition(any_group, fields):
    """Float64, forward and every gradient, with trained-looking scale and bias."""
    ft = field(any_group) if fields is None else fastik.FieldType(any_group, fields[any_group.dim])
    norm, gate = EquivariantNorm(ft).double(), GatedNonlinearity(ft)
    with torch.no_grad():
        norm.scale.normal_()
        norm.bias.normal_()
    for module, reference, width in ((norm, _norm_per_block, ft.dim), (gate, _gate_per_block, gate.in_type.dim)):
        x = (torch.randn(7, width, dtype=torch.float64) * 2 + 0.5).requires_grad_()
        got, want = module(x), reference(module, x)
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
        g = torch.randn_like(want)
        inputs = [x, *module.parameters()]
        for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
            assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)
        assert module(x[:, None].expand(7, 2, width)).shape[:2] == (7, 2)  # any leading shape


@pytest.mark.parametrize("spec, degenerate", [("1x0e + 3x1o", "1x0e"), ("2x0e", "2x0e"), ("1x0o + 3x0e", "1x0o"),
                                              ("3x0e + 1x1o + 2x0o", None)])
def test_norm_warns_about_blocks_that_normalise_to_a_sign(spec, degenerate):
    """One invariant scalar (divided by its own magnitude), two (centred: ±d), one copy of any other
    one-dimensional irrep: ±1 whatever the input. The warning names them; larger blocks keep their information."""
    ft = fastik.FieldType(fastik.group("o3"), spec)
    if degenerate is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            EquivariantNorm(ft)
        return
    with pytest.warns(UserWarning, match=rf"block\(s\) {degenerate} of .*hidden_channels ≥ 3"):
        norm = EquivariantNorm(ft)
    sl = ft.slices()[[f"{m}x{r}" for m, r in ft.blocks].index(degenerate)]
    y = norm(torch.randn(50, ft.dim) * 3 + 0.5)[:, sl]
    assert (y.abs() - 1).abs().median() < 1e-4  # what the warning says: only a sign is left (eps aside)


def test_small_g_mlp_warns_once_per_norm():
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "2x0e + 1x1o")
    with pytest.warns(UserWarning, match="hidden_channels ≥ 3") as record:
        fastik.ImplicitPointConv(ft, ft, hidden_channels=2, hidden_layers=2)
    assert len([w for w in record if "EquivariantNorm" in str(w.message)]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastik.ImplicitPointConv(ft, ft, hidden_channels=2, norm=False)
        fastik.ImplicitPointConv(ft, ft, hidden_channels=3)


def test_parameter_gradients_have_the_parameters_strides(any_group):
    """Size-1 dimensions (the head's bias column, single copies) used to come back with odd strides, which
    DistributedDataParallel warns about on every step; tests/test_train.py checks the warning is gone."""
    ft = field(any_group)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=3, backend="reference")
    pos = torch.randn(8, any_group.dim)
    conv(torch.randn(8, ft.dim), pos, fastik.graphs.radius_graph(pos, 3.0)).square().sum().backward()
    odd = {n: (p.grad.stride(), p.stride()) for n, p in conv.named_parameters() if p.grad.stride() != p.stride()}
    assert not odd and all(p.is_contiguous() for p in conv.parameters())


@pytest.mark.parametrize("nonlinearity", ["gate", "fourier_elu"])
def test_implicit_kernel_equivariance(any_group, nonlinearity):
    G = any_group
    ft = field(G)
    attr = fastik.FieldType(G, "2x0e + 1x1o" if G.dim == 3 else "2x0 + 1x1")
    node = fastik.FieldType(G, "1x0e" if G.dim == 3 else "1x0")
    k = ImplicitKernel(ft, ft, edge_attr_type=attr, node_attr_type=node, hidden_channels=2,
                       nonlinearity=nonlinearity)
    r, z = torch.randn(6, G.dim), torch.randn(6, attr.dim)
    zi, zj = torch.randn(6, 1), torch.randn(6, 1)
    base = k(r, z, zi, zj)
    assert base.shape == (6, ft.dim, ft.dim)
    tol = EXACT if nonlinearity == "gate" or G.is_finite else FOURIER_CONTINUOUS
    for g in G.sample(3, seed=5):
        rho = ft.representation(g)
        moved = k(r @ g.T, z @ attr.representation(g).T, zi, zj)
        assert relative_error(moved, rho @ base @ rho.T) < tol


REQUIRED = [("so3", 3), ("o3", 3), ("Cinf", 3), ("Cinfv", 3), ("Dinfh", 3), ("C4", 3), ("D6h", 3), ("Td", 3),
            ("Th", 3), ("Oh", 3), ("Ih", 3), ("so2", 2), ("o2", 2), ("C8", 2), ("D4", 2)]
ALL = REQUIRED + [(g, 3) for g in GROUPS_3D if (g, 3) not in REQUIRED] + [(g, 2) for g in GROUPS_2D if (g, 2) not in REQUIRED]


def random_graph(n, e, dim, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randint(0, n, (2, e), generator=gen)


@pytest.mark.parametrize("name,dim", ALL, ids=[f"{n}-{d}d" for n, d in ALL])
def test_point_conv_equivariance(name, dim):
    G = fastik.group(name, dim=dim)
    ft = field(G)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, backend="reference")
    with torch.no_grad():
        conv.bias.coefficients.normal_()
    pos, ei = random_graph(15, 60, dim)
    x = torch.randn(15, ft.dim)
    y = conv(x, pos, ei)
    for g in G.sample(4, seed=6):
        rho = ft.representation(g)
        assert relative_error(conv(x @ rho.T, pos @ g.T, ei), y @ rho.T) < EXACT


def test_point_conv_equivariance_with_attributes_bipartite_mean():
    G = fastik.group("D6h")
    t_in, t_out = fastik.FieldType(G, "3x0e + 1x1o"), fastik.FieldType(G, "2x0e + 1x2e + 1x1e")
    ea, na = fastik.FieldType(G, "1x0e + 1x1o"), fastik.FieldType(G, "2x0e")
    conv = fastik.ImplicitPointConv(t_in, t_out, edge_attr_type=ea, node_attr_type=na, hidden_channels=2,
                                    aggr="mean", nonlinearity="fourier_elu")
    pos, ei = random_graph(12, 40, 3)
    pos_t = torch.randn(5, 3)
    ei[1] %= 5
    x, z, n, nt = torch.randn(12, t_in.dim), torch.randn(40, ea.dim), torch.randn(12, 2), torch.randn(5, 2)
    y = conv(x, pos, ei, edge_attr=z, node_attr=n, pos_target=pos_t, node_attr_target=nt)
    assert y.shape == (5, t_out.dim)
    for g in G.sample(3, seed=7):
        y2 = conv(x @ t_in.representation(g).T, pos @ g.T, ei, edge_attr=z @ ea.representation(g).T,
                  node_attr=n, pos_target=pos_t @ g.T, node_attr_target=nt)
        assert relative_error(y2, y @ t_out.representation(g).T) < EXACT


def test_translation_invariance():
    G = fastik.group("so3")
    ft = field(G)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    pos, ei = random_graph(10, 30, 3)
    x = torch.randn(10, ft.dim)
    assert relative_error(conv(x, pos + torch.tensor([1.0, -2.0, 3.0]), ei), conv(x, pos, ei)) < 1e-12


def test_gradcheck():
    G = fastik.group("Oh")
    ft = fastik.FieldType(G, "2x0e + 1x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=1, hidden_layers=1)
    pos, ei = random_graph(5, 9, 3)
    x = torch.randn(5, ft.dim, requires_grad=True)
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, p: conv(x, p, ei), (x, pos))
    y = conv(x, pos, ei).square().sum()
    y.backward()
    assert all(p.grad is not None for p in conv.parameters() if p.requires_grad)


def test_chunking_matches_single_pass_forward_and_backward():
    G = fastik.group("Td")
    ft = field(G)
    pos, ei = random_graph(20, 100, 3)
    x = torch.randn(20, ft.dim, requires_grad=True)
    torch.manual_seed(0)
    a = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, chunk_size=7, mlp_chunk_size=11)
    b = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    b.load_state_dict(a.state_dict())
    ya, yb = a(x, pos, ei), b(x, pos, ei)
    assert relative_error(ya, yb) < 1e-12
    ga = torch.autograd.grad(ya.square().sum(), [x, *a.parameters()])
    gb = torch.autograd.grad(yb.square().sum(), [x, *b.parameters()])
    assert all(relative_error(p, q) < 1e-9 for p, q in zip(ga, gb))


def test_reproducible_with_seed():
    G = fastik.group("Ih")
    ft = field(G)
    pos, ei = random_graph(8, 20, 3)
    x = torch.randn(8, ft.dim)
    torch.manual_seed(123)
    y1 = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)(x, pos, ei)
    torch.manual_seed(123)
    y2 = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)(x, pos, ei)
    assert torch.equal(y1, y2)


def test_state_dict_stable_and_portable():
    G = fastik.group("Cinfv")
    ft = field(G)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    keys_train = list(conv.state_dict().keys())
    conv.eval()
    assert list(conv.state_dict().keys()) == keys_train
    other = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, backend="triton")
    assert list(other.state_dict().keys()) == keys_train  # the backend is not part of the model
    other.load_state_dict(conv.state_dict())
    assert not any("basis" in k for k in keys_train)  # derived constants are not saved
    conv.float()
    x = torch.randn(4, ft.dim)
    pos, ei = random_graph(4, 6, 3)
    y32 = conv(x.float(), pos.float(), ei)
    conv.double()  # bases keep float64 precision after a float32 round trip
    rho, g = ft.representation(G.sample(1, seed=0)[0]), G.sample(1, seed=0)[0]
    assert relative_error(conv(x @ rho.T, pos @ g.T, ei), conv(x, pos, ei) @ rho.T) < EXACT
    assert relative_error(y32.double(), conv(x, pos, ei)) < 1e-4


def test_to_device_moves_everything():
    G = fastik.group("C4")
    ft = field(G)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2).to("meta")
    assert all(t.device.type == "meta" for t in [*conv.parameters(), *conv.buffers()])


def test_edge_cases_empty_and_isolated():
    G = fastik.group("O")
    ft = field(G)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    with torch.no_grad():
        conv.bias.coefficients.normal_()
    bias = conv.bias.bias(torch.float64)
    x, pos = torch.randn(6, ft.dim), torch.randn(6, 3)
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert torch.allclose(conv(x, pos, empty), bias.expand(6, -1))
    y0 = conv(torch.zeros(0, ft.dim), torch.zeros(0, 3), empty)
    assert y0.shape == (0, ft.dim)
    ei = torch.tensor([[0, 1], [2, 2]])  # nodes 0, 1, 3, 4, 5 receive nothing
    y = conv(x, pos, ei)
    assert torch.allclose(y[[0, 1, 3, 4, 5]], bias.expand(5, -1))
    assert not torch.allclose(y[2], bias)
    mean = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, aggr="mean", bias=False)
    assert torch.equal(mean(x, pos, ei)[0], torch.zeros(ft.dim))


def test_bad_inputs_raise_clear_errors():
    G = fastik.group("so3")
    ft = field(G)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    x, pos = torch.randn(5, ft.dim), torch.randn(5, 3)
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="x must be"):
        conv(torch.randn(5, ft.dim + 1), pos, ei)
    with pytest.raises(ValueError, match="pos must be"):
        conv(x, torch.randn(5, 2), ei)
    with pytest.raises(ValueError, match="pos must be"):
        conv(x, torch.randn(4, 3), ei)
    with pytest.raises(TypeError, match="int64 .* or int32, got torch.int16"):
        conv(x, pos, ei.short())
    with pytest.raises(TypeError, match="int64 .* or int32, got torch.float32"):
        conv(x, pos, ei.float())
    assert torch.equal(conv(x, pos, ei.int()), conv(x, pos, ei))  # int32 indices are taken as int64
    with pytest.raises(IndexError, match="sources"):
        conv(x, pos, torch.tensor([[0, 5], [1, 2]], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        conv(x, pos, ei.T.contiguous()[:, :1].T.repeat(3, 1))
    with pytest.raises(IndexError, match="sources"):
        conv(x, pos, torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(IndexError, match="targets"):
        conv(x, pos, torch.tensor([[0, 1], [-1, 2]]))
    with pytest.raises(TypeError, match="parameters are"):
        conv(x.float(), pos.float(), ei)
    with pytest.raises(ValueError, match="edge_attr"):
        conv(x, pos, ei, edge_attr=torch.randn(2, 1))
    with pytest.raises(ValueError, match="one device"):
        conv(x, pos.to("meta"), ei)
    with pytest.raises(ValueError, match="aggr"):
        fastik.ImplicitPointConv(ft, ft, aggr="max")
    with pytest.raises(ValueError, match="backend"):
        fastik.ImplicitPointConv(ft, ft, backend="cuda")
    with pytest.raises(ValueError, match="one group"):
        fastik.ImplicitPointConv(ft, fastik.FieldType(fastik.group("O"), "1x0e"))
    attr_conv = fastik.ImplicitPointConv(ft, ft, edge_attr_type=fastik.FieldType(G, "2x0e"), hidden_channels=1)
    with pytest.raises(ValueError, match="pass edge_attr"):
        attr_conv(x, pos, ei)
    with pytest.raises(ValueError, match=r"edge_attr must be \(2, 2\)"):
        attr_conv(x, pos, ei, edge_attr=torch.randn(3, 2))


def test_triton_backend_unavailable_is_explained(monkeypatch):
    G = fastik.group("C2x")
    ft = field(G)
    monkeypatch.setattr(fastik.ops.dispatch, "_triton_usable", lambda x: False)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=1, backend="triton")
    with pytest.raises(RuntimeError, match="triton"):
        conv(torch.randn(3, ft.dim), torch.randn(3, 3), torch.tensor([[0], [1]]))


def test_initial_output_variance_is_about_one():
    """Unit-variance inputs on a 16-NN graph with |r| ≈ σ give outputs of variance ≈ 1 (measured 0.6–1.0)."""
    torch.manual_seed(0)
    for name, dim, spec in (("so3", 3, "16x0e + 16x1o"), ("Oh", 3, "4x0e + 2x1o + 1x2e"), ("o2", 2, "4x0 + 4x1")):
        G = fastik.group(name, dim=dim)
        ft = fastik.FieldType(G, spec)
        conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=4).float()
        pos = torch.randn(1500, dim, dtype=torch.float32) * 2
        nbr = torch.cdist(pos, pos).topk(17, largest=False).indices[:, 1:]
        ei = torch.stack([nbr.reshape(-1), torch.arange(1500).repeat_interleave(16)])
        with torch.no_grad():
            var = conv(torch.randn(1500, ft.dim, dtype=torch.float32), pos, ei).var().item()
        assert 0.3 < var < 3.0, (name, var)


def test_csr_aggregation_matches_scatter_and_is_deterministic():
    from fastik.ops.aggregate import build_csr
    G = fastik.group("D3")
    ft = field(G)
    for aggr in ("sum", "mean"):
        conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, aggr=aggr, chunk_size=9)
        pos, ei = random_graph(12, 50, 3, seed=4)
        x = torch.randn(12, ft.dim, requires_grad=True)
        csr = build_csr(ei[1], 12)
        y_csr, y = conv(x, pos, ei, csr=csr), conv(x, pos, ei)
        assert relative_error(y_csr, y) < 1e-12
        assert torch.equal(y_csr, conv(x, pos, ei, csr=csr))
        g1, = torch.autograd.grad(y_csr.sum(), x)
        g2, = torch.autograd.grad(y.sum(), x)
        assert relative_error(g1, g2) < 1e-12
    with pytest.raises(ValueError, match="csr describes"):
        conv(x, pos, ei[:, :10], csr=csr)


def test_regular_fields_get_enough_harmonics():
    """A kernel between regular fields of C8 must vary with the angle of r at every frequency up
    to 4 (with harmonics ≤ 1 the gated G-MLP only reaches angular frequencies ≤ 1)."""
    G = fastik.group("C8", dim=2)
    reg = fastik.FieldType(G, "1xreg")
    theta = torch.arange(64) * (2 * torch.pi / 64)
    circle = torch.stack([torch.cos(theta), torch.sin(theta)], -1)

    def angular_spectrum(harmonics):
        k = ImplicitKernel(reg, reg, hidden_channels=2, harmonics=harmonics)
        spec = torch.fft.fft(k(circle).detach(), dim=0).abs()  # (64, 8, 8) over frequencies
        return spec.amax((1, 2)) / spec.max()

    assert ImplicitKernel(reg, reg, hidden_channels=1).harmonics == 4
    assert bool((angular_spectrum(None)[2:5] > 1e-3).all())
    assert bool((angular_spectrum(1)[2:5] < 1e-9).all())  # the failure mode this guards against


def test_mlp_chunking_stores_less_for_backward():
    """With mlp_chunk_size < E only the G-MLP's inputs are kept for backward (it is recomputed)."""
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "4x0e + 2x1o")
    pos, ei = random_graph(30, 400, 3)
    x = torch.randn(30, ft.dim, requires_grad=True)

    def saved_numel(conv):
        total = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel()) or t, lambda t: t):
            y = conv(x, pos, ei)
        y.sum().backward()
        return sum(total)

    torch.manual_seed(0)
    whole = fastik.ImplicitPointConv(ft, ft, hidden_channels=4)
    chunked = fastik.ImplicitPointConv(ft, ft, hidden_channels=4, mlp_chunk_size=100)
    chunked.load_state_dict(whole.state_dict())
    assert saved_numel(chunked) < 0.5 * saved_numel(whole)


def test_mean_aggregation_starts_with_unit_variance():
    torch.manual_seed(0)
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "16x0e + 16x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=4, aggr="mean").float()
    pos = torch.randn(1500, 3, dtype=torch.float32) * 2
    nbr = torch.cdist(pos, pos).topk(17, largest=False).indices[:, 1:]
    ei = torch.stack([nbr.reshape(-1), torch.arange(1500).repeat_interleave(16)])
    with torch.no_grad():
        var = conv(torch.randn(1500, ft.dim, dtype=torch.float32), pos, ei).var().item()
    assert 0.3 < var < 3.0, var
