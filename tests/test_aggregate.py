"""Aggregation ops (fastik.ops.aggregate): segment_sum, scatter_sum, CSR, aggregate.

Every numerical test runs twice: with the compiled extension fastik._C (skipped
when it is not built) and with the pure-torch fallback (forced through the
module-level switch ``_FORCE_FALLBACK``). CUDA variants are marked ``cuda`` and
skipped without a GPU.
"""
import threading
import warnings

import pytest
import torch

from fastik.ops import aggregate as agg

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _devices():
    return ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


@pytest.fixture(params=_devices())
def device(request):
    return torch.device(request.param)


def _select_backend(which, device, monkeypatch):
    """Select the implementation; fail loudly if the other one is used by mistake."""
    if which == "extension":
        if not agg.has_extension():
            pytest.skip(f"fastik._C is not built ({agg._ext_error})")
        if device.type == "cuda" and not agg.extension_has_cuda():
            pytest.skip("fastik._C was built without CUDA")
        monkeypatch.setattr(agg, "_FORCE_FALLBACK", False)

        def _no_fallback(*args, **kwargs):
            raise AssertionError("the pure-torch fallback ran although the extension is selected")

        for name in ("_segment_sum_fallback", "_scatter_sum_fallback", "_segment_gather_fallback"):
            monkeypatch.setattr(agg, name, _no_fallback)
    else:
        monkeypatch.setattr(agg, "_FORCE_FALLBACK", True)
    return which


@pytest.fixture(params=["extension", "fallback"])
def backend(request, monkeypatch, device):
    """Extension or fallback, on every device of the ``device`` fixture."""
    return _select_backend(request.param, device, monkeypatch)


@pytest.fixture(params=["extension", "fallback"])
def cpu_backend(request, monkeypatch):
    """Extension or fallback, for CPU-only tests."""
    return _select_backend(request.param, torch.device("cpu"), monkeypatch)


# ----------------------------------------------------------------------------- helpers


def _graph(num_edges, num_targets, seed=0, device="cpu"):
    """Random targets (E,) int64, many empty rows when num_targets is large."""
    g = torch.Generator().manual_seed(seed)
    if num_targets == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    return torch.randint(0, num_targets, (num_edges,), generator=g).to(device)


def _rowptr(sorted_target, num_targets, dtype=torch.int64):
    counts = torch.bincount(sorted_target.cpu(), minlength=num_targets)
    rowptr = torch.zeros(num_targets + 1, dtype=torch.int64)
    rowptr[1:] = counts.cumsum(0)
    return rowptr.to(dtype=dtype, device=sorted_target.device)


def _reference(src, index, num_targets):
    """float64 index_add_ reference."""
    out = torch.zeros(num_targets, src.shape[1], dtype=torch.float64, device=src.device)
    return out.index_add_(0, index.long(), src.double())


def _randn(shape, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


SHAPES = [
    # (E, N, D)
    (200, 17, 8),     # several edges per row
    (50, 300, 5),     # mostly empty rows, odd D
    (1000, 40, 64),   # the vectorised layout
    (333, 7, 67),     # D not a multiple of the vector width
    (64, 9, 1),
    (0, 5, 4),        # E = 0
    (0, 0, 4),        # N = 0
    (10, 3, 0),       # D = 0
]


# ----------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "E{}-N{}-D{}".format(*s))
def test_segment_sum_matches_index_add(shape, dtype, index_dtype, backend, device):
    E, N, D = shape
    target = torch.sort(_graph(E, N, device=device)).values
    rowptr = _rowptr(target, N, index_dtype)
    src = _randn((E, D), dtype, device)
    out = agg.segment_sum(src, rowptr)
    assert out.shape == (N, D) and out.dtype == dtype and out.device == device
    tol = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), _reference(src, target, N), **tol)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "E{}-N{}-D{}".format(*s))
def test_scatter_sum_matches_index_add(shape, dtype, index_dtype, backend, device):
    E, N, D = shape
    index = _graph(E, N, seed=3, device=device).to(index_dtype)
    src = _randn((E, D), dtype, device)
    out = agg.scatter_sum(src, index, N)
    assert out.shape == (N, D) and out.dtype == dtype and out.device == device
    tol = {} if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), _reference(src, index, N), **tol)


def test_one_huge_segment(backend, device):
    E, N, D = 60_000, 3, 16
    rowptr = torch.tensor([0, 0, E, E], device=device)
    src = _randn((E, D), torch.float64, device)
    out = agg.segment_sum(src, rowptr)
    torch.testing.assert_close(out[1], src.sum(0))
    assert torch.count_nonzero(out[0]) == 0 and torch.count_nonzero(out[2]) == 0
    index = torch.ones(E, dtype=torch.int64, device=device)
    torch.testing.assert_close(agg.scatter_sum(src, index, N), out)


@pytest.mark.parametrize("op", ["segment", "scatter"])
def test_bfloat16_against_fp32(op, backend, device):
    E, N, D = 4000, 50, 32
    target = torch.sort(_graph(E, N, device=device)).values
    src = _randn((E, D), torch.bfloat16, device)
    if op == "segment":
        out = agg.segment_sum(src, _rowptr(target, N))
    else:
        out = agg.scatter_sum(src, target, N)
    assert out.dtype == torch.bfloat16
    ref = _reference(src.float(), target, N).float()
    # fp32 accumulation + one bf16 rounding at the end: ~2^-8 relative.
    torch.testing.assert_close(out.float(), ref, rtol=1.6e-2, atol=1e-2)
    # Accumulating in bf16 (80 terms per row) would be far worse than this.
    assert (out.float() - ref).abs().max() <= 2 ** -7 * ref.abs().max()


def test_non_contiguous_src(backend, device):
    E, N, D = 120, 10, 6
    target = torch.sort(_graph(E, N, device=device)).values
    src = _randn((D, E), torch.float64, device).t()  # (E, D), not contiguous
    assert not src.is_contiguous()
    torch.testing.assert_close(agg.segment_sum(src, _rowptr(target, N)), _reference(src, target, N))
    torch.testing.assert_close(agg.scatter_sum(src, target, N), _reference(src, target, N))


# ----------------------------------------------------------------------------- determinism


def test_segment_sum_is_deterministic(backend, device):
    E, N, D = 50_000, 700, 64
    target = torch.sort(_graph(E, N, device=device)).values
    rowptr = _rowptr(target, N)
    src = _randn((E, D), torch.float32, device)
    a = agg.segment_sum(src, rowptr)
    b = agg.segment_sum(src, rowptr)
    assert torch.equal(a, b)


def test_cpu_results_independent_of_thread_count(cpu_backend):
    E, N, D = 20_000, 300, 33
    target = _graph(E, N, seed=5)
    target_sorted = torch.sort(target).values
    rowptr = _rowptr(target_sorted, N)
    src = _randn((E, D), torch.float32, "cpu")
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seg1, sca1 = agg.segment_sum(src, rowptr), agg.scatter_sum(src, target, N)
        torch.set_num_threads(max(2, old))
        seg2, sca2 = agg.segment_sum(src, rowptr), agg.scatter_sum(src, target, N)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(seg1, seg2)
    assert torch.equal(sca1, sca2)


def test_cpu_scatter_sum_is_deterministic(cpu_backend):
    E, N, D = 30_000, 100, 16
    index = _graph(E, N, seed=9)
    src = _randn((E, D), torch.float32, "cpu")
    assert torch.equal(agg.scatter_sum(src, index, N), agg.scatter_sum(src, index, N))


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_gradcheck_segment_sum(index_dtype, backend, device):
    E, N, D = 30, 7, 3
    target = torch.sort(_graph(E, N, seed=2, device=device)).values
    rowptr = _rowptr(target, N, index_dtype)
    src = _randn((E, D), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: agg.segment_sum(s, rowptr), (src,))
    assert torch.autograd.gradgradcheck(lambda s: agg.segment_sum(s, rowptr), (src,))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_gradcheck_scatter_sum(index_dtype, backend, device):
    E, N, D = 30, 7, 3
    index = _graph(E, N, seed=4, device=device).to(index_dtype)
    src = _randn((E, D), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: agg.scatter_sum(s, index, N), (src,))
    assert torch.autograd.gradgradcheck(lambda s: agg.scatter_sum(s, index, N), (src,))


def test_gradcheck_aggregate_with_csr(backend, device):
    E, N, D = 40, 9, 2
    target = _graph(E, N, seed=6, device=device)
    csr = agg.build_csr(target, N)
    src = _randn((E, D), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: agg.aggregate(s, target, N, csr), (src,))


def test_backward_of_empty_inputs(backend, device):
    src = torch.zeros(0, 4, dtype=torch.float64, device=device, requires_grad=True)
    agg.segment_sum(src, torch.zeros(6, dtype=torch.int64, device=device)).sum().backward()
    assert src.grad.shape == (0, 4)
    src.grad = None
    agg.scatter_sum(src, torch.zeros(0, dtype=torch.int64, device=device), 5).sum().backward()
    assert src.grad.shape == (0, 4)


def test_opcheck_custom_ops(backend, device):
    E, N, D = 25, 6, 4
    target = torch.sort(_graph(E, N, seed=8, device=device)).values
    rowptr = _rowptr(target, N)
    src = _randn((E, D), torch.float64, device).requires_grad_()
    node = _randn((N, D), torch.float64, device).requires_grad_()
    torch.library.opcheck(torch.ops.fastik.segment_sum.default, (src, rowptr))
    torch.library.opcheck(torch.ops.fastik.scatter_sum.default, (src, target, N))
    torch.library.opcheck(torch.ops.fastik.segment_gather.default, (node, rowptr, E))


def test_torch_compile_fullgraph(cpu_backend):
    """segment_sum and scatter_sum trace into one graph (forward and backward)."""
    torch._dynamo.reset()

    def f(x, w, rowptr, index):
        m = torch.tanh(x @ w)
        return agg.segment_sum(m, rowptr).square().sum() + agg.scatter_sum(m, index, 4).sum()

    cf = torch.compile(f, fullgraph=True)
    x = _randn((40, 8), torch.float32, "cpu")
    w = _randn((8, 8), torch.float32, "cpu", seed=2).requires_grad_()
    rowptr = torch.tensor([0, 5, 5, 22, 40])
    index = _graph(40, 4, seed=11)
    y = cf(x, w, rowptr, index)
    (gw,) = torch.autograd.grad(y, w)
    y_ref = f(x, w, rowptr, index)
    (gw_ref,) = torch.autograd.grad(y_ref, w)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gw, gw_ref)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- CSR / aggregate


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_build_csr(index_dtype, device):
    target = torch.tensor([3, 0, 3, 1, 0, 3], dtype=index_dtype, device=device)
    csr = agg.build_csr(target, 5)
    assert isinstance(csr, agg.CSR)
    assert csr.num_targets == 5 and csr.num_edges == 6
    assert csr.perm.dtype == torch.int64 and csr.rowptr.dtype == torch.int64
    assert csr.perm.tolist() == [1, 4, 3, 0, 2, 5]  # stable
    assert csr.rowptr.tolist() == [0, 2, 3, 3, 6, 6]
    empty = agg.build_csr(torch.zeros(0, dtype=index_dtype, device=device), 0)
    assert empty.perm.numel() == 0 and empty.rowptr.tolist() == [0]


@pytest.mark.parametrize("shape", [(500, 40, 16), (0, 5, 3), (30, 200, 4)])
def test_aggregate_with_and_without_csr(shape, backend, device):
    E, N, D = shape
    target = _graph(E, N, seed=12, device=device)
    src = _randn((E, D), torch.float64, device)
    csr = agg.build_csr(target, N)
    a = agg.aggregate(src, target, N)
    b = agg.aggregate(src, target, N, csr=csr)
    ref = _reference(src, target, N)
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)


# ----------------------------------------------------------------------------- fallback warning


def test_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(agg, "_FORCE_FALLBACK", False)
    monkeypatch.setattr(agg, "_load_extension", lambda: None)
    monkeypatch.setattr(agg, "_ext_error", "ImportError: simulated")
    monkeypatch.setattr(agg, "_fallback_warned", False)
    src = _randn((10, 3), torch.float64, "cpu")
    index = _graph(10, 4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        agg.scatter_sum(src, index, 4)
        agg.segment_sum(src, torch.tensor([0, 4, 10]))
    msgs = [str(w.message) for w in record if "fallback" in str(w.message)]
    assert len(msgs) == 1 and "simulated" in msgs[0]
    assert issubclass(record[0].category, RuntimeWarning)


def test_forced_fallback_does_not_warn(monkeypatch):
    monkeypatch.setattr(agg, "_FORCE_FALLBACK", True)
    monkeypatch.setattr(agg, "_fallback_warned", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg.scatter_sum(_randn((4, 2), torch.float64, "cpu"), torch.tensor([0, 1, 1, 0]), 2)


def test_extension_flags_are_bools():
    assert isinstance(agg.has_extension(), bool)
    assert isinstance(agg.extension_has_cuda(), bool)
    if not agg.has_extension():
        assert not agg.extension_has_cuda()


# ----------------------------------------------------------------------------- validation

_S = torch.zeros(6, 3)
_RP = torch.tensor([0, 2, 6])
_IX = torch.tensor([0, 1, 1, 0, 2, 2])

SEGMENT_ERRORS = [
    (lambda: agg.segment_sum(_S[:, 0], _RP), ValueError, r"src must be 2-D.*shape=\(6,\)"),
    (lambda: agg.segment_sum(_S.unsqueeze(0), _RP), ValueError, r"2-D.*shape=\(1, 6, 3\)"),
    (lambda: agg.segment_sum(_S.long(), _RP), TypeError, r"float32, float64 or bfloat16.*torch.int64"),
    (lambda: agg.segment_sum(_S.half(), _RP), TypeError, r"float32, float64 or bfloat16.*torch.float16"),
    (lambda: agg.segment_sum(_S.numpy(), _RP), TypeError, r"src must be a torch.Tensor"),
    (lambda: agg.segment_sum(_S, _RP.float()), TypeError, r"rowptr must be int32 or int64.*float32"),
    (lambda: agg.segment_sum(_S, _RP.short()), TypeError, r"rowptr must be int32 or int64.*int16"),
    (lambda: agg.segment_sum(_S, _RP[None]), ValueError, r"rowptr must be 1-D.*\(1, 3\)"),
    (lambda: agg.segment_sum(_S, _RP[:0]), ValueError, r"N\+1 >= 1"),
    (lambda: agg.segment_sum(_S, torch.tensor([1, 2, 6])), ValueError, r"rowptr\[0\] must be 0, got 1"),
    (lambda: agg.segment_sum(_S, torch.tensor([0, 2, 5])), ValueError,
     r"rowptr\[-1\] must equal .*E=src.shape\[0\]=6, got 5"),
    (lambda: agg.segment_sum(_S, torch.tensor([0, 4, 3, 6])), ValueError,
     r"monotone non-decreasing.*rowptr\[2\]=3 < rowptr\[1\]=4"),
    (lambda: agg.segment_sum(torch.zeros(0, 3), torch.tensor([0, 0, 3])), ValueError,
     r"rowptr\[-1\] must equal"),
    (lambda: agg.segment_sum(_S, _RP.to("meta")), ValueError, r"device=cpu.*device=meta.*same device"),
]

SCATTER_ERRORS = [
    (lambda: agg.scatter_sum(_S[:, 0], _IX, 3), ValueError, r"src must be 2-D"),
    (lambda: agg.scatter_sum(_S.int(), _IX, 3), TypeError, r"float32, float64 or bfloat16.*int32"),
    (lambda: agg.scatter_sum(_S, _IX.double(), 3), TypeError, r"index must be int32 or int64.*float64"),
    (lambda: agg.scatter_sum(_S, _IX[None], 3), ValueError, r"index must be 1-D"),
    (lambda: agg.scatter_sum(_S, _IX[:5], 3), ValueError, r"length E=src.shape\[0\]=6, got shape=\(5,\)"),
    (lambda: agg.scatter_sum(_S, _IX, -1), ValueError, r"dim_size must be >= 0, got -1"),
    (lambda: agg.scatter_sum(_S, _IX, 3.0), TypeError, r"dim_size must be an int.*float"),
    (lambda: agg.scatter_sum(_S, _IX, True), TypeError, r"dim_size must be an int.*bool"),
    (lambda: agg.scatter_sum(_S, _IX, 2), ValueError, r"\[0, dim_size=2\), got min=0, max=2"),
    (lambda: agg.scatter_sum(_S, _IX - 1, 3), ValueError, r"\[0, dim_size=3\), got min=-1, max=1"),
    (lambda: agg.scatter_sum(_S, _IX, 0), ValueError, r"6 entries but dim_size=0"),
    (lambda: agg.scatter_sum(_S, _IX.to("meta"), 3), ValueError, r"same device"),
]

CSR_ERRORS = [
    (lambda: agg.build_csr(_IX.float(), 3), TypeError, r"target_index must be int32 or int64"),
    (lambda: agg.build_csr(_IX[None], 3), ValueError, r"target_index must be 1-D"),
    (lambda: agg.build_csr(_IX, -2), ValueError, r"num_targets must be >= 0"),
    (lambda: agg.build_csr(_IX, 2), ValueError, r"target_index values must lie in \[0, dim_size=2\)"),
    (lambda: agg.aggregate(_S, _IX, 4, csr=agg.build_csr(_IX, 3)), ValueError,
     r"csr was built for num_targets=3, got num_targets=4"),
    (lambda: agg.aggregate(_S[:4], _IX[:4], 3, csr=agg.build_csr(_IX, 3)), ValueError,
     r"csr has E=6 edges but messages has shape=\(4, 3\)"),
    (lambda: agg.aggregate(_S, _IX, 3, csr=(1, 2, 3)), TypeError, r"csr must be"),
    (lambda: agg.aggregate(_S.long(), _IX, 3, csr=agg.build_csr(_IX, 3)), TypeError, r"messages must be"),
]


@pytest.mark.parametrize("fn, exc, match", SEGMENT_ERRORS + SCATTER_ERRORS + CSR_ERRORS)
def test_invalid_inputs_raise(fn, exc, match, cpu_backend):
    with pytest.raises(exc, match=match):
        fn()


def test_raw_extension_ops_validate_on_cpu():
    """The C++ entry points re-check inputs (they are reachable via torch.ops)."""
    if not agg.has_extension():
        pytest.skip("fastik._C is not built")
    raw = torch.ops.fastik
    with pytest.raises(ValueError, match=r"rowptr\[-1\] must equal"):
        raw.segment_sum_raw(_S, torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match=r"monotone"):
        raw.segment_sum_raw(_S, torch.tensor([0, 4, 3, 6]))
    with pytest.raises(ValueError, match=r"index\[4\]=7 is out of range for dim_size=3"):
        raw.scatter_sum_raw(_S, torch.tensor([0, 1, 1, 0, 7, 2]), 3)
    with pytest.raises(TypeError, match=r"float32, float64 or bfloat16"):
        raw.scatter_sum_raw(_S.half(), _IX, 3)
    with pytest.raises(ValueError, match=r"2-D"):
        raw.segment_sum_raw(_S[:, 0], _RP)


def test_ops_are_thread_safe(cpu_backend):
    """Concurrent calls from Python threads (e.g. data loaders) give correct results."""
    E, N, D = 5000, 60, 8
    target = torch.sort(_graph(E, N)).values
    rowptr = _rowptr(target, N)
    src = _randn((E, D), torch.float64, "cpu")
    ref = _reference(src, target, N)
    errors = []

    def work():
        try:
            for _ in range(5):
                torch.testing.assert_close(agg.segment_sum(src, rowptr), ref)
        except Exception as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ----------------------------------------------------------------------------- CUDA-only


@pytest.mark.cuda
@CUDA
def test_cuda_segment_sum_bitwise_deterministic_large():
    if not agg.extension_has_cuda():
        pytest.skip("fastik._C was built without CUDA")
    E, N, D = 1_000_000, 62_500, 64
    target = torch.sort(torch.randint(0, N, (E,), device="cuda")).values
    rowptr = _rowptr(target, N)
    src = torch.randn(E, D, device="cuda")
    a = agg.segment_sum(src, rowptr)
    b = agg.segment_sum(src, rowptr)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.double(), _reference(src, target, N), rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("D", [1, 3, 8, 64, 100, 257])
@pytest.mark.parametrize("avg_degree", [0.5, 16, 700])
def test_cuda_kernel_layouts(dtype, D, avg_degree):
    """Warp- and block-per-row teams, vector and scalar widths, misaligned views."""
    if not agg.extension_has_cuda():
        pytest.skip("fastik._C was built without CUDA")
    N = 64
    E = int(avg_degree * N)
    target = torch.sort(torch.randint(0, N, (E,), device="cuda")).values
    rowptr = _rowptr(target, N)
    flat = torch.randn(E * D + 1, device="cuda").to(dtype)
    # aligned; contiguous but misaligned by one element (scalar path); non-contiguous (copied)
    for src in (flat[:-1].view(E, D), flat[1:].view(E, D), flat[1:].view(D, E).t()):
        ref = _reference(src.float(), target, N)
        tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(agg.segment_sum(src, rowptr).double(), ref, **tol)
        torch.testing.assert_close(agg.scatter_sum(src, target, N).double(), ref, **tol)
        node = src[:N].contiguous() if E >= N else torch.randn(N, D, device="cuda").to(dtype)
        out = agg._segment_gather_op(node, rowptr, E)
        assert torch.equal(out, node[target])
