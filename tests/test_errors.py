"""Bad inputs to the layers: a clear exception (or warning) naming the fix, never a silent wrong answer."""
import contextlib
import warnings

import pytest
import torch

import fastik
import fastik.ops.aggregate as agg
from fastik.nn import EquivariantLinear, EquivariantNorm, FourierELU, GatedNonlinearity, ImplicitKernel

G3 = fastik.group("so3")
G2 = fastik.group("C4", dim=2)
FT = fastik.FieldType(G3, "2x0e + 1x1o")
FT2 = fastik.FieldType(G2, "1x0 + 1x1")
EMPTY = fastik.FieldType(G3, [])  # a list of pairs may be empty (for composing); layers refuse it


def conv(*args, **kw):
    return fastik.ImplicitPointConv(*args, **{"hidden_channels": 2, **kw})


BAD_INPUTS = [  # id, call, exception, message regex
    ("str-in_type", lambda: conv("16x0e", FT), TypeError,
     r"in_type must be a fastik FieldType, got str '16x0e': build one with fastik\.FieldType\(group, '16x0e'\)"),
    ("str-out_type", lambda: conv(FT, "1x0e"), TypeError, r"out_type must be a fastik FieldType"),
    ("str-edge_attr_type", lambda: conv(FT, FT, edge_attr_type="1x0e"), TypeError,
     r"edge_attr_type must be a fastik FieldType"),
    ("str-linear", lambda: EquivariantLinear(FT, "1x0e"), TypeError, r"out_type must be a fastik FieldType"),
    ("str-grid", lambda: fastik.ImplicitR2Conv("1x0", FT2), TypeError, r"in_type must be a fastik FieldType"),
    ("str-gate", lambda: GatedNonlinearity("1x1o"), TypeError, r"field_type must be a fastik FieldType"),
    ("empty-string", lambda: fastik.FieldType(G3, ""), ValueError, r"has no fields \(dimension 0\)"),
    ("zero-multiplicity", lambda: fastik.FieldType(G3, "0x0e"), ValueError, r"has no fields \(dimension 0\)"),
    ("empty-in_type", lambda: conv(EMPTY, FT), ValueError, r"in_type has no fields \(dimension 0\)"),
    ("empty-out_type", lambda: ImplicitKernel(FT, EMPTY), ValueError, r"out_type has no fields"),
    ("empty-edge_attr_type", lambda: conv(FT, FT, edge_attr_type=EMPTY), ValueError,
     r"edge_attr_type has no fields .* \(or pass edge_attr_type=None\)"),
    ("empty-linear", lambda: EquivariantLinear(EMPTY, FT), ValueError, r"in_type has no fields"),
    ("empty-norm", lambda: EquivariantNorm(EMPTY), ValueError, r"field_type has no fields"),
    ("empty-gate", lambda: GatedNonlinearity(EMPTY), ValueError, r"field_type has no fields"),
    ("hidden_channels-float", lambda: conv(FT, FT, hidden_channels=4.5), TypeError,
     r"hidden_channels must be an int >= 1, got float 4\.5"),
    ("hidden_channels-0", lambda: conv(FT, FT, hidden_channels=0), ValueError, r"hidden_channels must be >= 1, got 0"),
    ("hidden_layers-negative", lambda: conv(FT, FT, hidden_layers=-1), ValueError, r"hidden_layers must be >= 0"),
    ("harmonics-float", lambda: conv(FT, FT, harmonics=2.0), TypeError, r"harmonics must be an int >= 0 or None"),
    ("sigma-0", lambda: conv(FT, FT, sigma=0), ValueError,
     r"sigma must be a finite number > 0 \(the envelope width.*\) or None \(no envelope\), got 0"),
    ("sigma-negative", lambda: conv(FT, FT, sigma=-1.0), ValueError, r"sigma must be a finite number > 0"),
    ("sigma-nan", lambda: conv(FT, FT, sigma=float("nan")), ValueError, r"sigma must be a finite number > 0"),
    ("sigma-str", lambda: conv(FT, FT, sigma="1"), TypeError, r"sigma must be a number > 0"),
    ("chunk_size-0", lambda: conv(FT, FT, chunk_size=0), ValueError, r"chunk_size must be >= 1, got 0"),
    ("chunk_size-negative", lambda: conv(FT, FT, chunk_size=-4), ValueError, r"chunk_size must be >= 1, got -4"),
    ("chunk_size-float", lambda: conv(FT, FT, chunk_size=1e4), TypeError, r"chunk_size must be an int >= 1 or None"),
    ("mlp_chunk_size-0", lambda: conv(FT, FT, mlp_chunk_size=0), ValueError, r"mlp_chunk_size must be >= 1"),
    ("kernel_size-float", lambda: fastik.ImplicitR2Conv(FT2, FT2, kernel_size=2.5), TypeError,
     r"kernel_size must be an int >= 1"),
    ("stride-0", lambda: fastik.ImplicitR2Conv(FT2, FT2, stride=0), ValueError, r"stride must be >= 1"),
    ("fourier-channels", lambda: FourierELU(G3, 2.0, 1), TypeError, r"channels must be an int >= 1"),
    ("gate-missing-gates", lambda: GatedNonlinearity(FT)(torch.randn(4, FT.dim)), ValueError,
     r"GatedNonlinearity expects \(\.\.\., 6\) inputs: the 5 components of 2x0e \+ 1x1o followed by 1 gate "
     r"scalars .*got \(4, 5\)"),
    ("gate-too-wide", lambda: GatedNonlinearity(FT)(torch.randn(4, FT.dim + 3)), ValueError,
     r"GatedNonlinearity expects \(\.\.\., 6\) inputs.*got \(4, 8\)"),
    ("norm-wrong-width", lambda: EquivariantNorm(FT)(torch.randn(3, 4)), ValueError,
     r"EquivariantNorm expects \(\.\.\., 5\) inputs \(2x0e \+ 1x1o\), got \(3, 4\)"),
    ("fourier-wrong-width", lambda: FourierELU(G3, 2, 1)(torch.randn(3, 7)), ValueError,
     r"FourierELU expects \(\.\.\., 8\) inputs"),
]


@pytest.mark.parametrize("call, exc, message", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_naming_the_fix(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def graph(n=6, seed=0):
    """Positions (n, 3) float64 and 2n edges, two per source, no self-loops."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64)
    src = torch.arange(n).repeat(2)
    return pos, torch.stack([src, (src + torch.randint(1, n, (2 * n,), generator=g)) % n])


def test_csr_of_another_graph_with_the_same_sizes_is_refused():
    torch.manual_seed(0)
    layer = conv(FT, FT, backend="reference").double()
    pos, ei = graph()
    x = torch.randn(6, FT.dim, dtype=torch.float64)
    other = ei.clone()
    other[1] = other[1].roll(1)  # same E and N, different targets
    assert not torch.equal(other[1], ei[1])
    csr = agg.build_csr(other[1], 6)
    with pytest.raises(ValueError, match=r"csr was built from another graph.*build_csr\(edge_index\[1\], num_targets\)"):
        layer(x, pos, ei, csr=csr)
    with pytest.raises(ValueError, match=r"csr was built from another graph"):
        agg.aggregate(torch.randn(ei.shape[1], 2), ei[1], 6, csr=csr)
    with pytest.raises(ValueError, match=r"csr describes 12 edges / 6 targets, expected 11 / 6: build one"):
        layer(x, pos, ei[:, :11], csr=agg.build_csr(ei[1], 6))
    # a CSR depends only on the targets: another graph with the same targets gets the right answer
    same_targets = torch.stack([ei[0].flip(0), ei[1].clone()])
    expected = layer(x, pos, same_targets)
    assert torch.allclose(layer(x, pos, same_targets, csr=agg.build_csr(ei[1], 6)), expected, rtol=1e-12, atol=1e-12)


def test_csr_check_is_free_for_its_own_targets_and_catches_in_place_edits(monkeypatch):
    _, ei = graph()
    csr = agg.build_csr(ei[1], 6)
    calls = []
    fingerprint = agg._fingerprint
    monkeypatch.setattr(agg, "_fingerprint", lambda t: calls.append(1) or fingerprint(t))
    csr.check(12, 6, ei[1])  # a new view of the same memory: recognised without any device work
    assert calls == []
    csr.check(12, 6, ei[1].clone())  # equal copy: compared by fingerprint, accepted
    assert calls == [1]
    j = int((ei[1] != ei[1, 0]).nonzero()[0])
    ei[1, [0, j]] = ei[1, [j, 0]]  # swap two different targets in place
    with pytest.raises(ValueError, match=r"different targets edge_index\[1\] \(or they were edited in place\)"):
        csr.check(12, 6, ei[1])


def test_envelope_underflow_warns_and_names_the_fix():
    torch.manual_seed(0)
    layer = conv(FT, FT, backend="reference").double()
    with torch.no_grad():
        layer.bias.coefficients.normal_()
    pos, ei = graph()
    x = torch.randn(6, FT.dim, dtype=torch.float64)
    no_envelope = conv(FT, FT, sigma=None).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # positions in units of sigma: no warning
        layer(x, pos, ei)
        no_envelope(x, pos * 1e6, ei)  # no envelope: nothing can underflow
    with pytest.warns(RuntimeWarning, match=r"envelope .* below 1e-30 .* rescale the positions .* larger sigma= or "
                                            r"sigma=None"):
        y = layer(x, pos * 1e6, ei)
    assert torch.equal(y, layer.bias(torch.zeros_like(y)))  # no self-loops: every message vanished
    kernel = layer.kernel.float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel.check_envelope(torch.zeros(3, 3))  # only self-loops: their envelope is 1
    with pytest.warns(RuntimeWarning, match=r"at least inf long"):
        kernel.check_envelope(torch.randn(4, 3) * 1e20)  # |r|² overflows float32


def test_csr_moved_or_on_another_device():
    _, ei = graph()
    csr = agg.build_csr(ei[1], 6)
    csr.to("cpu").check(12, 6, ei[1])
    with pytest.raises(ValueError, match=r"csr is on cpu but the edges are on meta: move it with csr\.to\('meta'\)"):
        csr.check(12, 6, ei[1].to("meta"))
    ei[1] = ei[1].roll(1)  # edited in place, then moved: the stale reference is dropped, the checksum refuses
    with pytest.raises(ValueError, match=r"csr was built from another graph"):
        csr.to("cpu").check(12, 6, ei[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_csr_check_and_envelope_warning_on_cuda():
    pos, ei = graph()
    csr = agg.build_csr(ei[1], 6).to("cuda")  # checksum computed on the CPU, compared on the GPU
    csr.check(12, 6, ei[1].cuda())
    with pytest.raises(ValueError, match=r"csr was built from another graph"):
        csr.check(12, 6, ei[1].roll(1).cuda())
    layer = conv(FT, FT, backend="reference").double().cuda()
    x = torch.randn(6, FT.dim, dtype=torch.float64, device="cuda")
    with pytest.warns(RuntimeWarning, match=r"below 1e-30"):
        layer(x, pos.cuda() * 1e6, ei.cuda())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on CUDA only a layer's first call is checked (a host sync)
        layer(x, pos.cuda() * 1e6, ei.cuda())


def test_numpy_scalars_are_accepted_as_sizes_and_sigma():
    np = pytest.importorskip("numpy")
    layer = conv(FT, FT, hidden_channels=np.int64(2), sigma=np.float32(0.5), chunk_size=np.int32(8))
    assert type(layer.chunk_size) is int and layer.kernel.hidden_channels == 2
    assert layer.kernel.log_sigma.exp().item() == pytest.approx(0.5)


def _count_index_checks(monkeypatch) -> dict:
    """Counts the backend ops' own index checks (one host sync each on CUDA)."""
    import fastik.ops.fused as fused
    import fastik.ops.fused_gmlp as fused_gmlp
    import fastik.ops.fused_segmented as segmented

    counts = {"ops": 0}

    def counting(f):
        def wrapped(*args, **kwargs):
            counts["ops"] += 1
            return f(*args, **kwargs)
        return wrapped

    for mod, name in ((agg, "_check_index_values"), (agg, "_check_rowptr_values"), (fused, "check_indices"),
                      (segmented, "check_indices"), (fused_gmlp, "check_indices")):
        monkeypatch.setattr(mod, name, counting(getattr(mod, name)))
    return counts


@pytest.mark.parametrize("backend", ["reference", "triton", "fused"])
@pytest.mark.parametrize("use_csr", [False, True], ids=["scatter", "csr"])
def test_layer_checks_indices_once_per_call_not_per_chunk(monkeypatch, backend, use_csr):
    """The layer validates edge_index once and a build_csr CSR's row pointer not at all (it is its targets' by
    construction); its chunks' ops — forward, recomputation and backward — skip their own checks, which on CUDA
    are a host sync each (3 per chunk in training)."""
    torch.manual_seed(0)
    n = 12
    pos, x = torch.randn(n, 3), torch.randn(n, FT.dim, requires_grad=True)
    ei = fastik.graphs.radius_graph(pos, 10.0)  # complete: 132 edges
    layer = conv(FT, FT, hidden_channels=3, backend=backend, chunk_size=40)  # 4 chunks
    csr = fastik.ops.build_csr(ei[1], n) if use_csr else None
    counts = _count_index_checks(monkeypatch)
    layer(x, pos, ei, csr=csr).square().sum().backward()
    assert counts["ops"] == 0
    if use_csr:  # edited in place, the row pointer is checked again, once per call
        csr.rowptr.add_(0)
        layer(x, pos, ei, csr=csr).square().sum().backward()
        assert counts["ops"] == 1
    counts["ops"] = 0
    fastik.ops.scatter_sum(torch.ones(3, 2), torch.tensor([0, 1, 1]), 2)  # a direct call still checks
    assert counts["ops"] == 1


@pytest.mark.parametrize("backend", ["reference", "triton", "fused"])
def test_indices_edited_in_place_after_forward_never_reach_a_kernel(backend):
    """Chunks are recomputed in backward and the ops skip their index checks there: edited in place since the
    forward, the indices must not reach a kernel. The triton and fused backends recompute from views of
    edge_index, which autograd refuses once edited; the reference backend recomputes from the target-sorted
    copies it took in forward, so its backward is the gradient of the loss that was computed."""
    torch.manual_seed(0)
    n = 12
    pos, x = torch.randn(n, 3), torch.randn(n, FT.dim, requires_grad=True)
    ei = fastik.graphs.radius_graph(pos, 10.0)
    layer = conv(FT, FT, hidden_channels=3, backend=backend, chunk_size=40)
    want = torch.autograd.grad(layer(x, pos, ei).square().sum(), x)[0] if backend == "reference" else None
    loss = layer(x, pos, ei).square().sum()
    ei[1, 5] = n  # an out-of-range target
    if backend == "reference":
        assert torch.equal(torch.autograd.grad(loss, x)[0], want)
        return
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_hand_assembled_csr_that_is_not_the_graphs_is_refused(backend):
    """A CSR assembled by hand carries no fingerprint of its graph: its row pointer is checked against the
    permuted targets once per call (the chunks' ops no longer check it)."""
    torch.manual_seed(0)
    n = 12
    pos, x = torch.randn(n, 3), torch.randn(n, FT.dim)
    ei = fastik.graphs.radius_graph(pos, 10.0)
    good = fastik.ops.build_csr(ei[1], n)
    layer = conv(FT, FT, hidden_channels=3, backend=backend, chunk_size=40)
    by_hand = agg.CSR(good.perm, good.rowptr, n)
    assert torch.allclose(layer(x, pos, ei, csr=by_hand), layer(x, pos, ei, csr=good), atol=1e-5)
    bad = good.rowptr.clone()
    bad[1:-1] = good.rowptr[2:]  # monotone and ending at E, but not the targets' row pointer
    with pytest.raises(ValueError, match="not their CSR row pointer"):
        layer(x, pos, ei, csr=agg.CSR(good.perm, bad, n))
    worse = good.rowptr.clone()
    worse[3] = 10 ** 6  # out of bounds
    with pytest.raises(ValueError, match="rowptr must be monotone"):
        layer(x, pos, ei, csr=agg.CSR(good.perm, worse, n))
    with pytest.raises(ValueError, match="rowptr must be monotone"):  # build_csr's own CSR, its rowptr replaced
        layer(x, pos, ei, csr=good._replace(rowptr=worse))
    good.rowptr[3] = 10 ** 6  # or edited in place
    with pytest.raises(ValueError, match="rowptr must be monotone"):
        layer(x, pos, ei, csr=good)


def test_index_checks_with_a_row_pointer_sync_once(monkeypatch):
    """An op given a row pointer checks the indices' range and that the row pointer is the sorted edges' in one
    host sync (on CUDA each sync waits for the queued kernels) — with an op's own check too —, and still refuses
    every wrong row pointer."""
    from fastik.ops._contract import check_indices, check_rowptr

    tgt = torch.tensor([0, 0, 2, 2, 2, 4])
    x, rowptr = torch.zeros(5, 2), agg.csr_rowptr(tgt, 6)
    syncs = []
    for name in ("tolist", "item", "__bool__"):
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _m=method, _n=name: syncs.append(_n) or _m(t, *a))
    monkeypatch.setattr(torch, "equal", lambda *a: pytest.fail("torch.equal syncs"))
    check_indices(x, tgt, tgt, 6, rowptr)
    assert len(syncs) == 1, syncs
    syncs.clear()
    check_rowptr(tgt, rowptr, 6)
    assert len(syncs) == 1, syncs
    for flag in (True, False):  # an op's own check in the same sync (the fused op's packed indices)
        syncs.clear()
        with contextlib.nullcontext() if flag else pytest.raises(IndexError, match="own check"):
            check_indices(x, tgt, tgt, 6, rowptr, (torch.tensor(flag), IndexError("own check")))
        assert len(syncs) == 1, syncs
        with contextlib.nullcontext() if flag else pytest.raises(IndexError, match="own check"):
            check_indices(x, tgt[:0], tgt[:0], 6, None, (torch.tensor(flag), IndexError("own check")))  # no edges
        for zeros in (True, False):  # no edges with a row pointer: it and the own check, one sync
            syncs.clear()
            empty = torch.zeros(7, dtype=torch.long) if zeros else torch.arange(7)
            error = (None if flag else IndexError) if zeros else ValueError
            with pytest.raises(error, match="own check|all zeros") if error else contextlib.nullcontext():
                check_indices(x, tgt[:0], tgt[:0], 6, empty, (torch.tensor(flag), IndexError("own check")))
            assert len(syncs) == 1, syncs
    wrong = [(tgt, rowptr.flip(0)), (tgt, rowptr + 1), (tgt, rowptr[1:]), (tgt.flip(0), agg.csr_rowptr(tgt.flip(0), 6))]
    wrong.append((tgt, torch.tensor([0, 1, 2, 5, 5, 6, 6])))  # monotone, from 0 to E, not the targets' row pointer
    for targets, bad in wrong:
        with pytest.raises(ValueError, match="not their CSR row pointer"):
            check_indices(x, targets, targets, 6, bad)
        with pytest.raises(ValueError, match="not their CSR row pointer"):
            check_rowptr(targets, bad, 6)
