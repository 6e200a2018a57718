"""ImplicitPointConv on the triton backend against the reference backend (CPU: Triton interpreter)."""
import pytest
import torch

import fastik
from fastik.ops.aggregate import build_csr
from fastik.ops.fused import triton_available

from conftest import LargestTensor, relative_error
from fused_helpers import OutputSizes, op_bodies, words

pytestmark = pytest.mark.skipif(not triton_available(torch.device("cpu")) and not torch.cuda.is_available(),
                                reason="triton cannot run here (no CUDA and TRITON_INTERPRET unset)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [  # group, dim, in, out, edge attributes
    ("so3", 3, "3x0e + 2x1o", "2x0e + 1x1o + 1x2e", None),
    ("Oh", 3, "2x0e + 1x1o + 1x2e", "1x0e + 2x1o", "1x0e + 1x1o"),
    ("Cinfv", 3, "2x0e + 1x1e", "1x0o + 1x1o", None),
    ("D4", 2, "2x0 + 1x1 + 1xreg", "1x0 + 1x0- + 1x2", "1x0"),
    ("o2", 2, "1x0 + 2x1", "2x0 + 1x1", None),
]


def pair(group, dim, t_in, t_out, attr, **kw):
    G = fastik.group(group, dim=dim)
    a, b = fastik.FieldType(G, t_in), fastik.FieldType(G, t_out)
    ea = fastik.FieldType(G, attr) if attr else None
    torch.manual_seed(0)
    # hidden_channels ≥ 3: with 2 the norm's 2-copy scalar blocks normalise to ±1 (EquivariantNorm warns), an
    # ill-conditioned gradient whose fp32 error depends on the summation order of each backend
    ref = fastik.ImplicitPointConv(a, b, edge_attr_type=ea, hidden_channels=3, backend="reference", **kw).to(DEVICE)
    fused = fastik.ImplicitPointConv(a, b, edge_attr_type=ea, hidden_channels=3, backend="triton", **kw).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ref.bias.coefficients.normal_() if ref.bias is not None else None
        fused.load_state_dict(ref.state_dict())
    return ref, fused, a, ea


def inputs(a, ea, n, e, seed=0, isolated=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, a.dim, generator=g)
    pos = torch.randn(n, a.group.dim, generator=g)
    ei = torch.randint(0, max(n - isolated, 1), (2, e), generator=g)
    z = torch.randn(e, ea.dim, generator=g) if ea is not None else None
    to = lambda t: None if t is None else t.to(DEVICE).requires_grad_(t.is_floating_point())
    return to(x), to(pos), ei.to(DEVICE), to(z)


def grads(conv, x, pos, ei, z, **kw):
    y = conv(x, pos, ei, edge_attr=z, **kw)
    wrt = [t for t in (x, pos, z) if t is not None] + list(conv.parameters())
    g = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum(), wrt,
                            allow_unused=True)
    return y, g


def flat(gs):
    return torch.cat([g.reshape(-1) for g in gs if g is not None])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_matches_reference_forward_and_backward(case):
    """Outputs, input gradients and parameter gradients of fp32 triton vs the reference.

    Both fp32 backends are measured against the float64 reference (the truth): triton
    must be within 1e-5 of it, or — where the problem itself is ill-conditioned in
    fp32 — no worse than 10× the fp32 reference's own error.
    """
    ref, fused, a, ea = pair(*case)
    x, pos, ei, z = inputs(a, ea, n=9, e=30, isolated=2)
    y_tri, g_tri = grads(fused, x, pos, ei, z)
    y_32, g_32 = grads(ref, x, pos, ei, z)
    assert relative_error(y_tri, y_32) < 1e-5
    ref.double()
    d = lambda t: None if t is None else t.detach().double().requires_grad_()
    y_64, g_64 = grads(ref, d(x), d(pos), ei, d(z))
    n = 2 + (z is not None)  # x, pos, edge_attr; then one error over all parameters
    pairs = [(g_tri[i], g_32[i], g_64[i]) for i in range(n)] + [(flat(g_tri[n:]), flat(g_32[n:]), flat(g_64[n:]))]
    assert [p is None for p in g_tri[n:]] == [q is None for q in g_64[n:]]
    for tri, r32, truth in pairs:
        assert_as_accurate(tri, r32, truth)
    assert torch.all(y_tri[-2:] == y_tri[-1])  # isolated targets: bias only


def assert_as_accurate(tri, r32, truth):
    """fp32 triton within 1e-5 of the float64 truth, or no worse than 10× the fp32 reference."""
    assert relative_error(tri.double(), truth) <= max(1e-5, 10 * relative_error(r32.double(), truth))


def test_self_loops_have_exact_gradients():
    """A self-loop's r is identically zero, so it contributes nothing to the position gradient;
    both backends then agree with the float64 reference as on any other graph."""
    ref, fused, a, ea = pair(*CASES[3])
    x, pos, ei, z = inputs(a, ea, n=6, e=20)
    ei[0, :4] = ei[1, :4]
    y_tri, g_tri = grads(fused, x, pos, ei, z)
    y_32, g_32 = grads(ref, x, pos, ei, z)
    assert relative_error(y_tri, y_32) < 1e-5
    ref.double()
    d = lambda t: None if t is None else t.detach().double().requires_grad_()
    _, g_64 = grads(ref, d(x), d(pos), ei, d(z))
    assert relative_error(g_32[1].double(), g_64[1]) < 1e-5  # pos: no cancelling ±huge self-loop terms
    for i in range(3):  # x, pos, edge_attr
        assert_as_accurate(g_tri[i], g_32[i], g_64[i])


def test_triton_with_csr_bipartite_and_empty():
    ref, fused, a, ea = pair("Td", 3, "2x0e + 1x1o", "1x0e + 1x2e", None, aggr="mean")
    x, pos, ei, _ = inputs(a, None, n=8, e=25)
    pos_t = torch.randn(3, 3, device=DEVICE)
    ei[1] %= 3
    csr = build_csr(ei[1], 3)
    y_ref = ref(x, pos, ei, pos_target=pos_t)
    y_tri = fused(x, pos, ei, pos_target=pos_t, csr=csr)
    assert relative_error(y_tri, y_ref) < 1e-5
    assert torch.equal(y_tri, fused(x, pos, ei, pos_target=pos_t, csr=csr))  # deterministic forward
    empty = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    assert relative_error(fused(x, pos, empty), ref(x, pos, empty)) < 1e-6
    assert fused(x[:0], pos[:0], empty).shape == (0, fused.out_type.dim)


def test_layer_never_allocates_per_edge_kernels():
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "8x0e + 4x1o")  # D = 20: E·D·D = 400 E
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=1, backend="triton").to(DEVICE)
    x, pos, ei, _ = inputs(ft, None, n=12, e=48)
    limit = ei.shape[1] * ft.dim * ft.dim
    with OutputSizes(op_bodies(), size=words) as rec:  # inside the custom ops too
        conv(x, pos, ei).square().sum().backward()
    op, size = rec.largest()
    assert 0 < size < limit, (op, size)
    assert rec.allocated()
    with LargestTensor() as rec:  # control: materialising the kernels (the paper's algorithm) does exceed it
        conv.kernel(pos[ei[0]] - pos[ei[1]]).square().sum().backward()
    assert rec.numel >= limit


def test_auto_backend_choice():
    from fastik.ops.dispatch import resolve_backend
    assert resolve_backend("auto", torch.zeros(1)) == "reference"  # CPU tensors: reference
    if torch.cuda.is_available():
        assert resolve_backend("auto", torch.zeros(1, device="cuda")) == "triton"
    with pytest.raises(ValueError):
        resolve_backend("fast", torch.zeros(1))


def test_float64_on_triton_is_explained():
    ref, fused, a, ea = pair("C4", 3, "1x0e + 1x1o", "1x0e", None)
    x, pos, ei, _ = inputs(a, None, n=4, e=6)
    with pytest.raises(TypeError, match="reference"):
        fused.double()(x.double(), pos.double(), ei)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_layer_real_size_gpu():
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "16x0e + 16x1o")
    torch.manual_seed(0)
    ref = fastik.ImplicitPointConv(ft, ft, backend="reference").cuda()
    fused = fastik.ImplicitPointConv(ft, ft, backend="triton").cuda()
    fused.load_state_dict(ref.state_dict())
    n, e = 6250, 100_000
    x = torch.randn(n, ft.dim, device="cuda", requires_grad=True)
    pos = torch.randn(n, 3, device="cuda") * 3
    ei = torch.stack([torch.randint(0, n, (e,)), torch.arange(n).repeat_interleave(16)]).cuda()
    torch.backends.cuda.matmul.allow_tf32 = False
    y_ref, g_ref = grads(ref, x, pos, ei, None)
    y_tri, g_tri = grads(fused, x, pos, ei, None)
    assert relative_error(y_tri, y_ref) < 1e-4
    assert relative_error(g_tri[0], g_ref[0]) < 1e-4


def test_layer_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the whole layer (G-MLP, custom ops, autograd)."""
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "2x0e + 1x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=1, backend="triton").to(DEVICE)
    x, pos, ei, _ = inputs(ft, None, n=6, e=12)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    y = compiled(x, pos, ei)
    g, = torch.autograd.grad(y.square().sum(), x)
    y_eager = conv(x, pos, ei)
    g_eager, = torch.autograd.grad(y_eager.square().sum(), x)
    assert relative_error(y, y_eager) < 1e-6 and relative_error(g, g_eager) < 1e-6


def test_precision_auto_is_tf32x3_only_where_the_fused_backend_runs_float32_on_cuda():
    """``precision="auto"`` (the layer's default) resolves by backend, device and dtype; explicit ones pass."""
    from types import SimpleNamespace

    from fastik.ops.dispatch import resolve_precision

    def x(cuda, dtype=torch.float32):
        return SimpleNamespace(is_cuda=cuda, dtype=dtype)

    assert resolve_precision("auto", "fused", x(True)) == "tf32x3"
    assert resolve_precision("auto", "fused", x(True, torch.float64)) == "ieee"
    assert resolve_precision("auto", "fused", x(False)) == "ieee"  # the interpreter
    assert [resolve_precision("auto", b, x(True)) for b in ("triton", "reference")] == ["ieee", "ieee"]
    assert [resolve_precision(p, "fused", x(True)) for p in ("ieee", "tf32")] == ["ieee", "tf32"]
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "1x0e + 1x1o")
    assert fastik.ImplicitPointConv(ft, ft, hidden_channels=1).precision == "auto"
    with pytest.raises(ValueError, match="precision must be 'auto'"):
        fastik.ImplicitPointConv(ft, ft, hidden_channels=1, precision="fp16")


@pytest.mark.parametrize("backend", ["fused", "triton"])
def test_layer_passes_the_resolved_precision(monkeypatch, backend):
    """The layer hands the op what ``resolve_precision`` says for its concrete backend (the fused one's, or —
    with a Fourier ELU, which does not fuse — the triton backend's), not its own setting."""
    from fastik.nn import point_conv
    from fastik.ops import dispatch

    G = fastik.group("so3")
    ft = fastik.FieldType(G, "1x0e + 1x1o")
    kw = {} if backend == "fused" else {"nonlinearity": "fourier_elu"}
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=1, backend="fused", **kw).to(DEVICE)
    asked, got = [], []
    monkeypatch.setattr(dispatch, "resolve_precision", lambda p, b, x: asked.append((p, b)) or "tf32x3")

    def record(*args, **kwargs):
        got.append("tf32x3" in args)
        raise StopIteration

    monkeypatch.setattr(point_conv, "fused_gmlp_conv", record)
    monkeypatch.setattr(dispatch, "implicit_conv", record)
    x, pos, ei, _ = inputs(ft, None, n=5, e=10)
    with pytest.raises(StopIteration):
        conv(x, pos, ei)
    assert asked == [("auto", backend)] and got == [True]
