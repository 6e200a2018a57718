"""Tests of the aggregate-first fused op (fastik.ops.fused_segmented).

Without a GPU the Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1,
set by fused_helpers before anything imports triton); sizes are small. GPU tests (E = 1e5,
against the edge-wise fused op) are marked ``cuda`` and skipped without CUDA.
"""
import pytest
import torch
from fused_helpers import (  # sets the Triton launch mode: before triton is imported
    DEVICE,
    NO_TRITON_REASON,
    RTOL,
    OutputSizes,
    op_bodies,
    big_problem,
    check_compile_matches_eager,
    check_double_backward,
    check_grad_x_only,
    check_no_edges,
    check_op_against_reference,
    forward_backward,
    leaf_copies,
    reference64,
    rel_err,
    words,
)

pytest.importorskip("triton")

from fastik.ops.fused import csr_rowptr, triton_available  # noqa: E402
from fastik.ops.fused_segmented import implicit_message_passing_segmented as seg  # noqa: E402

if not triton_available(DEVICE):
    pytest.skip(NO_TRITON_REASON, allow_module_level=True)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
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


def seg_op(src, tgt, rowptr, m, **kw):
    """The segmented op on the graph src → tgt as a function of (h, x, weight)."""
    return lambda h, x, w: seg(h, x, w, src, tgt, rowptr, m, **kw)


def check_against_reference(h, x, w, src, tgt, rowptr, m, **kw):
    return check_op_against_reference(seg_op(src, tgt, rowptr, m, **kw), h, x, w, src, tgt, m)


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
    assert h.shape == (0, 5) and w.shape[0] == 12
    check_no_edges(seg_op(src, tgt, rowptr, m), h, x, w, m)


def test_deterministic_bitwise():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(33, 90, seed=4), n=11, k=5,
                                                din=12, dout=4, seed=4)
    runs = []
    for _ in range(2):
        runs.append(forward_backward(seg_op(src, tgt, rowptr, m), h, x, w,
                                     torch.ones(m, w.shape[0], device=DEVICE)))
    for a, b in zip(*runs):  # forward: each row written once; backward: no atomics
        assert torch.equal(a, b)


def test_noncontiguous_inputs_and_partial_grad():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(9, 50, seed=11), n=11, k=17,
                                                din=20, dout=12, seed=11)
    h_nc = h.t().contiguous().t()
    w_nc = w.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not (h_nc.is_contiguous() or w_nc.is_contiguous())
    check_grad_x_only(lambda xr: seg(h_nc, xr, w_nc, src, tgt, rowptr, m),
                      x, h, x, w, src, tgt, m)


def test_double_backward():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(8, 40, seed=2), n=10, k=3,
                                                din=12, dout=4, seed=2)
    check_double_backward(seg_op(src, tgt, rowptr, m), h, x, w, src, tgt, m)


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
    hf, xf, wf = leaf_copies(h, x, w)
    with OutputSizes(op_bodies(), size=words) as rec:
        seg(hf, xf, wf, src, tgt, rowptr, m).square().sum().backward()
    funcs = {f for f, _ in rec.records}
    assert any("sort" in f for f in funcs), funcs        # the backward's bodies were traced
    biggest = rec.largest()
    assert biggest[1] < limit, biggest
    assert hf.grad is not None and xf.grad is not None and wf.grad is not None
    with OutputSizes(op_bodies(), size=words) as rec_ref:  # the recorder does catch a materialised T
        torch.zeros(m, k * d).index_add_(0, tgt, (h[:, :, None] * x[src][:, None, :]).flatten(1))
    assert rec_ref.largest()[1] >= limit


# ----------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------
def test_opcheck():
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(5, 24, seed=6), n=7, k=3,
                                                din=4, dout=12, seed=6)
    hf, xf, wf = leaf_copies(h, x, w)
    torch.library.opcheck(torch.ops.fastik.implicit_message_passing_segmented.default,
                          (hf, xf, wf, src, tgt, rowptr, m, "ieee"))
    gout = torch.randn(m, 12).to(DEVICE)
    torch.library.opcheck(torch.ops.fastik.implicit_message_passing_segmented_backward.default,
                          (gout, hf, xf, wf, src, tgt, rowptr, "ieee", False, True, True, True))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    h, x, w, src, tgt, rowptr, m = make_problem(random_degrees(9, 32, seed=8), n=9, k=3,
                                                din=4, dout=4, seed=8)

    def fn(h, x, w):
        return torch.tanh(seg(h * 2.0, x, w, src, tgt, rowptr, m)).sum()

    check_compile_matches_eager(fn, h, x, w, dynamic=dynamic)


# ----------------------------------------------------------------------------
# GPU only: real sizes, against the edge-wise fused op
# ----------------------------------------------------------------------------
def _big_problem(**kw):
    """Target-sorted real-size problem with its CSR row pointer."""
    h, x, w, src, tgt, n = big_problem(sort_targets=True, **kw)
    return h, x, w, src, tgt, csr_rowptr(tgt, n), n


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision,tol", [("ieee", 1e-5), ("tf32", 2e-2)])
def test_cuda_against_edgewise(precision, tol):
    from fastik.ops.fused import implicit_message_passing_fused
    h, x, w, src, tgt, rowptr, n = _big_problem()
    gout = torch.randn(n, 64, device="cuda")
    mine = forward_backward(seg_op(src, tgt, rowptr, n, precision=precision), h, x, w, gout)
    edge = forward_backward(lambda a, b, c: implicit_message_passing_fused(a, b, c, src, tgt, n),
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
    first = forward_backward(seg_op(src, tgt, rowptr, n), h, x, w, gout)
    peak = torch.cuda.max_memory_allocated() - base
    # legitimate: a clone of h and grad_h (E·K each), partials, small tensors (≈ 160 MB);
    # T for all targets alone would be N·K·Din floats (309 MB)
    k, d = h.shape[1], x.shape[1]
    assert peak < n * k * d * 4, peak
    again = forward_backward(seg_op(src, tgt, rowptr, n), h, x, w, gout)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
