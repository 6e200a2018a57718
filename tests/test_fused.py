"""Tests of the fused Triton message-passing op (fastik.ops.fused).

Without a GPU the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1,
set by fused_helpers before anything imports triton); sizes are kept small. GPU-only tests
(real sizes) are marked ``cuda`` and skipped without CUDA.
"""
import os
import subprocess
import sys

import pytest
import torch
from fused_helpers import (  # sets the Triton launch mode: before triton is imported
    DEVICE,
    NO_TRITON_REASON,
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
)

pytest.importorskip("triton")

from fastik.ops.fused import (  # noqa: E402
    csr_rowptr,
    implicit_message_passing_fused,
    triton_available,
)

if not triton_available(DEVICE):  # e.g. kernels imported earlier without the interpreter
    pytest.skip(NO_TRITON_REASON, allow_module_level=True)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def make_problem(e, n, t, k, din, dout, seed=0, isolated=()):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(e, k, generator=g)
    x = torch.randn(n, din, generator=g)
    w = torch.randn(dout, k, din, generator=g) / (k * din) ** 0.5
    src = torch.randint(0, n, (e,), generator=g)
    allowed = torch.tensor([i for i in range(t) if i not in set(isolated)], dtype=torch.int64)
    tgt = allowed[torch.randint(0, len(allowed), (e,), generator=g)] if e else \
        torch.zeros(0, dtype=torch.int64)
    return [a.to(DEVICE) for a in (h, x, w, src, tgt)]


def fused_op(src, tgt, t, **kw):
    """The fused op on the graph src → tgt as a function of (h, x, weight)."""
    return lambda h, x, w: implicit_message_passing_fused(h, x, w, src, tgt, t, **kw)


def check_against_reference(h, x, w, src, tgt, t, **kw):
    return check_op_against_reference(fused_op(src, tgt, t, **kw), h, x, w, src, tgt, t)


# ----------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 17])
@pytest.mark.parametrize("dout", [4, 12, 20])
@pytest.mark.parametrize("din", [4, 12, 20])
def test_forward_and_gradients(din, dout, k):
    h, x, w, src, tgt = make_problem(e=64, n=20, t=20, k=k, din=din, dout=dout, seed=din + dout + k)
    check_against_reference(h, x, w, src, tgt, 20)


@pytest.mark.parametrize("din,dout,k", [(12, 20, 17), (4, 4, 3), (20, 12, 5)])
def test_segmented_sorted_edges(din, dout, k):
    h, x, w, src, tgt = make_problem(e=60, n=15, t=18, k=k, din=din, dout=dout, seed=3,
                                     isolated=(0, 7, 17))
    perm = torch.argsort(tgt, stable=True)
    h, src, tgt = h[perm].contiguous(), src[perm], tgt[perm]
    rowptr = csr_rowptr(tgt, 18)
    out = check_against_reference(h, x, w, src, tgt, 18, tgt_rowptr=rowptr)
    assert torch.all(out[[0, 7, 17]] == 0)
    again = implicit_message_passing_fused(h, x, w, src, tgt, 18, tgt_rowptr=rowptr)
    assert torch.equal(out.detach(), again)  # every row written once: bitwise reproducible


def test_segmented_rejects_unsorted_edges():
    h, x, w, src, tgt = make_problem(e=20, n=6, t=6, k=3, din=4, dout=4)
    tgt = torch.tensor([5, 0] * 10, device=DEVICE)
    with pytest.raises(ValueError, match="sorted"):
        implicit_message_passing_fused(h, x, w, src, tgt, 6, tgt_rowptr=csr_rowptr(tgt, 6))


def test_isolated_targets_get_zero_rows():
    h, x, w, src, tgt = make_problem(e=40, n=12, t=12, k=5, din=12, dout=12, seed=5,
                                     isolated=(1, 4, 11))
    out = check_against_reference(h, x, w, src, tgt, 12)
    assert torch.all(out[[1, 4, 11]] == 0)


@pytest.mark.parametrize("t", [5, 31])
def test_bipartite_num_targets_differs_from_n(t):
    h, x, w, src, tgt = make_problem(e=48, n=13, t=t, k=3, din=12, dout=4, seed=t)
    out = check_against_reference(h, x, w, src, tgt, t)
    assert out.shape == (t, 4)


@pytest.mark.parametrize("t", [0, 7])
def test_no_edges(t):
    h, x, w, src, tgt = make_problem(e=0, n=9, t=t, k=5, din=4, dout=12)
    assert h.shape == (0, 5) and w.shape[0] == 12
    check_no_edges(fused_op(src, tgt, t), h, x, w, t)
    if t:
        out2 = implicit_message_passing_fused(h, x, w, src, tgt, t, tgt_rowptr=csr_rowptr(tgt, t))
        assert torch.all(out2 == 0)


def test_partial_requires_grad_and_noncontiguous_inputs():
    h, x, w, src, tgt = make_problem(e=50, n=11, t=9, k=17, din=20, dout=12, seed=11)
    h_nc = h.t().contiguous().t()                  # (E, K) with strides (1, E)
    x_nc = torch.stack([x, -x], dim=-1)[..., 0]   # strided view, equal to x
    w_nc = w.permute(1, 0, 2).contiguous().permute(1, 0, 2)
    assert not (h_nc.is_contiguous() or x_nc.is_contiguous() or w_nc.is_contiguous())
    check_grad_x_only(lambda xr: implicit_message_passing_fused(h_nc, xr, w_nc, src, tgt, 9),
                      x_nc, h, x, w, src, tgt, 9)


def test_double_backward():
    h, x, w, src, tgt = make_problem(e=40, n=10, t=8, k=3, din=12, dout=4, seed=2)
    check_double_backward(fused_op(src, tgt, 8), h, x, w, src, tgt, 8)


@pytest.mark.parametrize("kw", [dict(precision="tf32"), dict(precision="tf32x3")])
def test_reduced_precision_options_run(kw):
    h, x, w, src, tgt = make_problem(e=32, n=8, t=8, k=3, din=12, dout=12, seed=4)
    out = implicit_message_passing_fused(h, x, w, src, tgt, 8, **kw)
    ref = reference64(h.double(), x.double(), w.double(), src, tgt, 8)
    assert rel_err(out, ref) <= 1e-2  # TF32: ~1e-3 expected; the interpreter is exact


# ----------------------------------------------------------------------------
# validation (all before any kernel launch)
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,pos,values", [("src", 3, (6, -1)), ("tgt", 0, (4, -2))])
def test_index_out_of_range_raises(name, pos, values):
    h, x, w, src, tgt = make_problem(e=16, n=6, t=4, k=3, din=4, dout=4)
    index = {"src": src, "tgt": tgt}
    index[name] = bad = index[name].clone()
    for value in values:  # one past the end, then negative
        bad[pos] = value
        with pytest.raises(IndexError, match=name):
            implicit_message_passing_fused(h, x, w, index["src"], index["tgt"], 4)


def test_edges_without_targets_raise():
    h, x, w, src, tgt = make_problem(e=16, n=6, t=4, k=3, din=4, dout=4)
    with pytest.raises(IndexError, match="tgt"):
        implicit_message_passing_fused(h, x, w, src, tgt, 0)


def test_bad_shapes_and_dtypes_raise():
    h, x, w, src, tgt = make_problem(e=16, n=6, t=4, k=3, din=4, dout=4)
    f = implicit_message_passing_fused
    with pytest.raises(TypeError, match="float64"):
        f(h.double(), x.double(), w.double(), src, tgt, 4)
    with pytest.raises(TypeError, match="float32"):
        f(h, x.half(), w, src, tgt, 4)
    with pytest.raises(TypeError, match="int64"):
        f(h, x, w, src.int(), tgt, 4)
    with pytest.raises(ValueError, match="hidden"):
        f(h[:, :2], x, w, src, tgt, 4)
    with pytest.raises(ValueError, match="Din"):
        f(h, x[:, :3], w, src, tgt, 4)
    with pytest.raises(ValueError, match="length E"):
        f(h, x, w, src[:-1], tgt, 4)
    with pytest.raises(ValueError, match="length E"):
        f(h, x, w, src, tgt[None], 4)
    with pytest.raises(ValueError, match="Dout, K, Din"):
        f(h, x, w[0], src, tgt, 4)
    with pytest.raises(ValueError, match="num_targets"):
        f(h, x, w, src, tgt, -1)
    with pytest.raises(ValueError, match="precision"):
        f(h, x, w, src, tgt, 4, precision="bf16")
    with pytest.raises(ValueError, match="tgt_rowptr"):
        f(h, x, w, src, tgt, 4, tgt_rowptr=torch.zeros(3, dtype=torch.int64, device=DEVICE))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch_raises():
    h, x, w, src, tgt = make_problem(e=16, n=6, t=4, k=3, din=4, dout=4)
    with pytest.raises(ValueError, match="device"):
        implicit_message_passing_fused(h, x, w, src.cpu(), tgt, 4)


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "import fastik.ops.fused as f\n"
        "assert not f.triton_available()\n"
        "h = torch.zeros(2, 3); x = torch.zeros(4, 5); w = torch.zeros(6, 3, 5)\n"
        "i = torch.zeros(2, dtype=torch.int64)\n"
        "try:\n"
        "    f.implicit_message_passing_fused(h, x, w, i, i, 4)\n"
        "except RuntimeError as exc:\n"
        "    assert 'Triton' in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('no error without triton')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


# ----------------------------------------------------------------------------
# memory: nothing of size E·Din·Dout, forward or backward
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("segmented", [False, True])
def test_never_materialises_edge_kernels(segmented):
    e, n, k, d = 48, 10, 5, 12
    limit = e * d * d  # 6912 > every legitimate tensor (E·K = 240, Dout·K·Din = 720)
    h, x, w, src, tgt = make_problem(e=e, n=n, t=n, k=k, din=d, dout=d, seed=9)
    kw = {}
    if segmented:
        perm = torch.argsort(tgt, stable=True)
        h, src, tgt = h[perm].contiguous(), src[perm], tgt[perm]
        kw["tgt_rowptr"] = csr_rowptr(tgt, n)
    hf, xf, wf = leaf_copies(h, x, w)
    with OutputSizes(op_bodies()) as rec:
        implicit_message_passing_fused(hf, xf, wf, src, tgt, n, **kw).square().sum().backward()
    assert rec.allocated(), {f for f, _ in rec.records}
    biggest = rec.largest()
    assert biggest[1] < limit, biggest
    assert hf.grad is not None and xf.grad is not None and wf.grad is not None
    # the recorder does catch the materialising reference algorithm
    with OutputSizes(op_bodies()) as rec_ref:
        msg = torch.einsum("okc,ek->eoc", w, h)
        del msg
    assert rec_ref.largest()[1] >= limit


# ----------------------------------------------------------------------------
# torch.library integration
# ----------------------------------------------------------------------------
def test_opcheck():
    h, x, w, src, tgt = make_problem(e=24, n=7, t=5, k=3, din=4, dout=12, seed=6)
    hf, xf, wf = leaf_copies(h, x, w)
    torch.library.opcheck(torch.ops.fastik.implicit_message_passing.default,
                          (hf, xf, wf, src, tgt, 5, "ieee", None))
    gout = torch.randn(5, 12).to(DEVICE)
    torch.library.opcheck(torch.ops.fastik.implicit_message_passing_backward.default,
                          (gout, hf, xf, wf, src, tgt, "ieee", False, True, True, True))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    h, x, w, src, tgt = make_problem(e=32, n=9, t=9, k=3, din=4, dout=4, seed=8)

    def fn(h, x, w, src, tgt):
        out = implicit_message_passing_fused(h * 2.0, x, w, src, tgt, x.shape[0])
        return torch.tanh(out).sum()

    check_compile_matches_eager(fn, h, x, w, src, tgt, dynamic=dynamic)


def test_triton_available():
    assert triton_available(DEVICE)
    assert triton_available(torch.zeros(1, device=DEVICE))


# ----------------------------------------------------------------------------
# GPU only: real sizes
# ----------------------------------------------------------------------------
def _chunked_reference64(h, x, w, src, tgt, n, gout):
    hd, xd, wd = (a.double().requires_grad_() for a in (h, x, w))
    from fastik.triton_kernels.message_fwd import message_fwd_torch
    ref = message_fwd_torch(hd, xd, wd, src, tgt, n, block_e=8192)
    ref.backward(gout.double())
    return ref.detach(), hd.grad, xd.grad, wd.grad


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kw,tol", [(dict(), 1e-5), (dict(precision="tf32"), 2e-2)])
def test_cuda_large(kw, tol):
    h, x, w, src, tgt, n = big_problem()
    gout = torch.randn(n, 64, device="cuda")
    mine = forward_backward(fused_op(src, tgt, n, **kw), h, x, w, gout)
    ref = _chunked_reference64(h, x, w, src, tgt, n, gout)
    for a, b in zip(mine, ref):
        assert rel_err(a, b) <= tol


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_segmented_deterministic_and_memory():
    h, x, w, src, tgt, n = big_problem(seed=1)
    perm = torch.argsort(tgt, stable=True)
    h, src, tgt = h[perm].contiguous(), src[perm], tgt[perm]
    rowptr = csr_rowptr(tgt, n)
    a = implicit_message_passing_fused(h, x, w, src, tgt, n, tgt_rowptr=rowptr)
    b = implicit_message_passing_fused(h, x, w, src, tgt, n, tgt_rowptr=rowptr)
    assert torch.equal(a, b)
    c = implicit_message_passing_fused(h, x, w, src, tgt, n)
    assert rel_err(a, c) <= 1e-5
    # peak extra memory of forward + backward stays far below one (E, Dout, Din) tensor
    hf, xf, wf = leaf_copies(h, x, w)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    implicit_message_passing_fused(hf, xf, wf, src, tgt, n).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < h.shape[0] * 64 * 64 * 4 / 8, extra
