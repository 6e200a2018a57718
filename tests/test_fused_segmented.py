"""Tests of the aggregate-first fused op (fastik.ops.fused_segmented).

Without a GPU the Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1,
set before anything imports triton); sizes are small. GPU tests (E = 1e5,
against the edge-wise fused op) are marked ``cuda`` and skipped without CUDA.
"""
import os

import torch

if torch.cuda.is_available():  # real kernels; a fixed config keeps test start-up short
    os.environ.setdefault("FASTIK_TRITON_AUTOTUNE", "0")
else:  # must happen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

pytest.importorskip("triton")

from fastik.ops import fused_segmented as fs  # noqa: E402
from fastik.ops.fused import csr_rowptr, triton_available  # noqa: E402
from fastik.ops.fused_segmented import implicit_message_passing_segmented as seg  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

if not triton_available(DEVICE):
    pytest.skip("Triton cannot run on this device in this process "
                "(no CUDA and TRITON_INTERPRET was not set before triton was imported)",
                allow_module_level=True)

RTOL = 1e-5


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def reference64(h, x, weight, src, tgt, num_targets):
    """float64 einsum reference (differentiable)."""
    msg = torch.einsum("okc,ek,ec->eo", weight, h, x[src])
    return msg.new_zeros(num_targets, weight.shape[0]).index_add(0, tgt, msg)


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item() if b.numel() else 0.0
    if scale == 0.0:
        return a.abs().max().item() if a.numel() else 0.0
    return (a - b).abs().max().item() / scale


def make_problem(degrees, n, k, din, dout, seed=0):
    """Target-sorted edges with the given in-degree per target (M = len(degrees))."""
    g = torch.Generator().manual_seed(seed)
    m = len(degrees)
    tgt = torch.repeat_interleave(torch.arange(m), torch.tensor(degrees, dtype=torch.int64))
    e = tgt.numel()
    h = torch.randn(e, k, generator=g)
    x = torch.randn(n, din, generator=g)
    w = torch.randn(dout, k, din, generator=g) / (k * din) ** 0.5
    src = torch.randint(0, n, (e,), generator=g)
    rowptr = csr_rowptr(tgt, m)
    return [a.to(DEVICE) for a in (h, x, w, src, tgt, rowptr)] + [m]


def random_degrees(m, e, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.bincount(torch.randint(0, m, (e,), generator=g), minlength=m).tolist()


def check_against_reference(h, x, w, src, tgt, rowptr, m, **kw):
    hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
    out = seg(hf, xf, wf, src, tgt, rowptr, m, **kw)
    hd, xd, wd = (a.detach().double().requires_grad_() for a in (h, x, w))
    ref = reference64(hd, xd, wd, src, tgt, m)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) <= RTOL, rel_err(out, ref)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out.backward(gout)
    ref.backward(gout.double())
    for name, a, b in (("h", hf, hd), ("x", xf, xd), ("weight", wf, wd)):
        assert a.grad.shape == b.shape, name
        assert rel_err(a.grad, b.grad) <= RTOL, f"grad_{name}: {rel_err(a.grad, b.grad)}"
    return out


# ----------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 17])
@pytest.mark.parametrize("dout", [4, 12, 20])
@pytest.mark.parametrize("din", [4, 12, 20])
def test_forward_and_gradients(din, dout, k):
    seed = din + 3 * dout + 7 * k
    prob = make_problem(random_degrees(20, 64, seed), n=20, k=k, din=din, dout=dout, seed=seed)
    check_against_reference(*prob)


def test_uneven_degrees_hub_and_empty_targets():
    # 40 targets = 3 blocks of 16; zero-degree targets at both ends and inside a block;
    # one hub of degree 40 (> DEG_P, > BLOCK_N); M != N; several grad-weight splits.
    degrees = random_degrees(40, 60, seed=3)
    for i in (0, 5, 16, 17, 39):
        degrees[i] = 0
    degrees[21] = 40
    h, x, w, src, tgt, rowptr, m = make_problem(degrees, n=13, k=3, din=4, dout=4, seed=3)
    from fastik.triton_kernels.segmented_bwd import num_weight_splits
    assert num_weight_splits(m, h.shape[0], 3, 4, 4, DEVICE) > 1 or DEVICE.type == "cuda"
    out = check_against_reference(h, x, w, src, tgt, rowptr, m)
    assert torch.all(out[[0, 5, 16, 17, 39]] == 0)


@pytest.mark.parametrize("m,n", [(5, 23), (37, 6)])
def test_num_targets_differs_from_n(m, n):
    prob = make_problem(random_degrees(m, 48, seed=m), n=n, k=5, din=12, dout=4, seed=m)
    out = check_against_reference(*prob)
    assert out.shape == (m, 4)


@pytest.mark.parametrize("m", [0, 7])
def test_no_edges(m):
    h, x, w, src, tgt, rowptr, m = make_problem([0] * m, n=9, k=5, din=4, dout=12)
    hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
    out = seg(hf, xf, wf, src, tgt, rowptr, m)
    assert out.shape == (m, 12) and torch.all(out == 0)
    out.sum().backward()
    assert hf.grad.shape == (0, 5)
    assert xf.grad.shape == x.shape and torch.all(xf.grad == 0)
    assert wf.grad.shape == w.shape and torch.all(wf.grad == 0)


def test_deterministic_bitwise():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(33, 90, seed=4), n=11, k=5,
                                                din=12, dout=4, seed=4)
    runs = []
    for _ in range(2):
        hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
        out = seg(hf, xf, wf, src, tgt, rowptr, m)
        out.backward(torch.ones_like(out))
        runs.append((out.detach(), hf.grad, xf.grad, wf.grad))
    for a, b in zip(*runs):  # forward: each row written once; backward: no atomics
        assert torch.equal(a, b)


def test_noncontiguous_inputs_and_partial_grad():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(9, 50, seed=11), n=11, k=17,
                                                din=20, dout=12, seed=11)
    h_nc = h.t().contiguous().t()
    w_nc = w.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not (h_nc.is_contiguous() or w_nc.is_contiguous())
    xr = x.clone().requires_grad_()
    out = seg(h_nc, xr, w_nc, src, tgt, rowptr, m)
    xd = x.double().requires_grad_()
    ref = reference64(h.double(), xd, w.double(), src, tgt, m)
    assert rel_err(out, ref) <= RTOL
    out.square().sum().backward()
    ref.square().sum().backward()
    assert rel_err(xr.grad, xd.grad) <= RTOL


def test_double_backward():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(8, 40, seed=2), n=10, k=3,
                                                din=12, dout=4, seed=2)
    hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
    hd, xd, wd = (a.double().requires_grad_() for a in (h, x, w))
    out = seg(hf, xf, wf, src, tgt, rowptr, m)
    ref = reference64(hd, xd, wd, src, tgt, m)
    g1 = torch.autograd.grad(out.square().sum(), (hf, xf, wf), create_graph=True)
    g2 = torch.autograd.grad(ref.square().sum(), (hd, xd, wd), create_graph=True)
    probes = [torch.randn(a.shape, generator=torch.Generator().manual_seed(i)).to(DEVICE)
              for i, a in enumerate(g1)]
    s1 = sum((a * p).sum() for a, p in zip(g1, probes))
    s2 = sum((a * p.double()).sum() for a, p in zip(g2, probes))
    for a, b in zip(torch.autograd.grad(s1, (hf, xf, wf)), torch.autograd.grad(s2, (hd, xd, wd))):
        assert rel_err(a, b) <= RTOL


@pytest.mark.parametrize("precision", ["tf32", "tf32x3"])
def test_reduced_precision_options_run(precision):
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(8, 32, seed=4), n=8, k=3,
                                                din=12, dout=12, seed=4)
    out = seg(h, x, w, src, tgt, rowptr, m, precision=precision)
    ref = reference64(h.double(), x.double(), w.double(), src, tgt, m)
    assert rel_err(out, ref) <= 1e-2  # TF32: ~1e-3 expected; the interpreter is exact


def test_torch_statement_matches():
    from fastik.triton_kernels.segmented_fwd import segmented_fwd_torch
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(12, 50, seed=8), n=7, k=5,
                                                din=4, dout=12, seed=8)
    ref = reference64(h.double(), x.double(), w.double(), src, tgt, m)
    assert rel_err(segmented_fwd_torch(h, x, w, src, rowptr, m, block_n=5), ref) <= RTOL


# ----------------------------------------------------------------------------
# validation (before any kernel launch)
# ----------------------------------------------------------------------------
def test_invalid_rowptr_and_unsorted_edges_raise():
    h, x, w, src, tgt, rowptr, m = make_problem([3, 0, 2, 4, 1, 0], n=6, k=3, din=4, dout=4)
    e = h.shape[0]

    def call(rp, t=tgt):
        return seg(h, x, w, src, t, rp, m)

    with pytest.raises(ValueError, match="rowptr"):          # wrong length
        call(rowptr[:-1])
    with pytest.raises(ValueError, match="rowptr"):          # wrong dtype
        call(rowptr.int())
    with pytest.raises(ValueError, match="rowptr"):          # 2-D
        call(rowptr[None])
    bad = rowptr.clone()
    bad[0] = 1                                               # rowptr[0] != 0
    with pytest.raises(ValueError, match="sorted"):
        call(bad)
    bad = rowptr.clone()
    bad[-1] = e - 1                                          # rowptr[-1] != E
    with pytest.raises(ValueError, match="sorted"):
        call(bad)
    bad = rowptr.clone()
    bad[2], bad[3] = rowptr[3], rowptr[2] - 1                # not monotone
    with pytest.raises(ValueError, match="sorted"):
        call(bad)
    bad = rowptr.clone()
    bad[1] += 1                                              # monotone, but not tgt's CSR
    bad[2] += 1
    with pytest.raises(ValueError, match="sorted"):
        call(bad)
    unsorted = tgt.flip(0)                                   # same counts, not sorted
    with pytest.raises(ValueError, match="sorted"):
        call(csr_rowptr(unsorted, m), unsorted)
    with pytest.raises(ValueError, match="tgt_rowptr"):      # no edges, nonzero rowptr
        seg(h[:0], x, w, src[:0], tgt[:0], rowptr, m)


def test_bad_inputs_raise():
    h, x, w, src, tgt, rowptr, m = make_problem([2, 3, 1], n=6, k=3, din=4, dout=4)
    with pytest.raises(TypeError, match="float32"):
        seg(h.double(), x, w, src, tgt, rowptr, m)
    with pytest.raises(ValueError, match="Din"):
        seg(h, x[:, :3], w, src, tgt, rowptr, m)
    with pytest.raises(IndexError, match="src"):
        seg(h, x, w, src + 6, tgt, rowptr, m)
    with pytest.raises(IndexError, match="tgt"):
        seg(h, x, w, src, tgt + 1, rowptr, m)
    with pytest.raises(ValueError, match="precision"):
        seg(h, x, w, src, tgt, rowptr, m, precision="bf16")


# ----------------------------------------------------------------------------
# memory: nothing of size E·Din·Dout nor M·K·Din, forward or backward
# ----------------------------------------------------------------------------
class _OutputSizes(TorchDispatchMode):
    """Records the size of every op output in 4-byte words (the interpreter moves
    arguments through byte views of their storage, so numel alone would overcount
    those 4×); the segmented custom ops are made transparent (their bodies run under
    the mode, so what the launchers allocate is recorded too)."""

    def __init__(self):
        super().__init__()
        self.records = []
        self._bodies = {
            torch.ops.fastik.implicit_message_passing_segmented.default: fs._forward_impl,
            torch.ops.fastik.implicit_message_passing_segmented_backward.default:
                fs._backward_impl,
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        body = self._bodies.get(func)
        if body is not None:
            with self:
                out = body(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.records.append((str(func), t.numel() * t.element_size() // 4))
        return out


def test_never_materialises_edge_kernels_or_target_aggregates():
    n, k, d = 10, 5, 4
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(40, 96, seed=9), n=n, k=k,
                                                din=d, dout=d, seed=9)
    e = h.shape[0]
    # E·Din·Dout = 1536, M·K·Din = 800, per-edge outer products E·K·Din = 1920; every
    # legitimate tensor is smaller: E·K = 480, grad-weight partials S·Dout·K·Din ≤ 240.
    limit = min(e * d * d, m * k * d)
    from fastik.triton_kernels.segmented_bwd import num_weight_splits
    splits = num_weight_splits(m, e, k, d, d, DEVICE)
    assert max(e * k, splits * d * k * d) < limit
    hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
    with _OutputSizes() as rec:
        seg(hf, xf, wf, src, tgt, rowptr, m).square().sum().backward()
    funcs = {f for f, _ in rec.records}
    assert any("sort" in f for f in funcs), funcs        # the backward's bodies were traced
    biggest = max(rec.records, key=lambda r: r[1])
    assert biggest[1] < limit, biggest
    assert hf.grad is not None and xf.grad is not None and wf.grad is not None
    with _OutputSizes() as rec_ref:  # the recorder does catch a materialised T
        torch.zeros(m, k * d).index_add_(0, tgt, (h[:, :, None] * x[src][:, None, :]).flatten(1))
    assert max(s for _, s in rec_ref.records) >= limit


# ----------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------
def test_opcheck():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(5, 24, seed=6), n=7, k=3,
                                                din=4, dout=12, seed=6)
    hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
    torch.library.opcheck(torch.ops.fastik.implicit_message_passing_segmented.default,
                          (hf, xf, wf, src, tgt, rowptr, m, "ieee"))
    gout = torch.randn(m, 12).to(DEVICE)
    torch.library.opcheck(torch.ops.fastik.implicit_message_passing_segmented_backward.default,
                          (gout, hf, xf, wf, src, tgt, rowptr, "ieee", True, True, True))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    torch._dynamo.reset()
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(9, 32, seed=8), n=9, k=3,
                                                din=4, dout=4, seed=8)

    def fn(h, x, w):
        return torch.tanh(seg(h * 2.0, x, w, src, tgt, rowptr, m)).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    results = []
    for f in (fn, compiled):
        hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
        val = f(hf, xf, wf)
        val.backward()
        results.append((val.detach(), hf.grad, xf.grad, wf.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# GPU only: real sizes, against the edge-wise fused op
# ----------------------------------------------------------------------------
def _big_problem(e=100_000, d=64, k=65, seed=0):
    n = e // 16
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(e, k, device="cuda", generator=g)
    x = torch.randn(n, d, device="cuda", generator=g)
    w = torch.randn(d, k, d, device="cuda", generator=g) / (k * d) ** 0.5
    src = torch.randint(0, n, (e,), device="cuda", generator=g)
    tgt = torch.sort(torch.randint(0, n, (e,), device="cuda", generator=g)).values
    return h, x, w, src, tgt, csr_rowptr(tgt, n), n


def _run(fn, h, x, w, gout):
    hf, xf, wf = (a.clone().requires_grad_() for a in (h, x, w))
    out = fn(hf, xf, wf)
    out.backward(gout)
    return out.detach(), hf.grad, xf.grad, wf.grad


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision,tol", [("ieee", 1e-5), ("tf32", 2e-2)])
def test_cuda_against_edgewise(precision, tol):
    from fastik.ops.fused import implicit_message_passing_fused
    h, x, w, src, tgt, rowptr, n = _big_problem()
    gout = torch.randn(n, 64, device="cuda")
    mine = _run(lambda a, b, c: seg(a, b, c, src, tgt, rowptr, n, precision=precision),
                h, x, w, gout)
    edge = _run(lambda a, b, c: implicit_message_passing_fused(a, b, c, src, tgt, n),
                h, x, w, gout)  # IEEE edge-wise op as the reference
    for name, a, b in zip(("out", "grad_h", "grad_x", "grad_w"), mine, edge):
        assert rel_err(a, b) <= tol, (name, rel_err(a, b))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_deterministic_and_memory():
    h, x, w, src, tgt, rowptr, n = _big_problem(k=193)
    gout = torch.randn(n, 64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    first = _run(lambda a, b, c: seg(a, b, c, src, tgt, rowptr, n), h, x, w, gout)
    peak = torch.cuda.max_memory_allocated() - base
    # legitimate: a clone of h and grad_h (E·K each), partials, small tensors (≈ 160 MB);
    # T for all targets alone would be N·K·Din floats (309 MB)
    k, d = h.shape[1], x.shape[1]
    assert peak < n * k * d * 4, peak
    again = _run(lambda a, b, c: seg(a, b, c, src, tgt, rowptr, n), h, x, w, gout)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
