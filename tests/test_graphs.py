"""fastik.graphs against brute-force float64 references (and torch_cluster where installed)."""
import importlib.util
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastik
from fastik import graphs

# --------------------------------------------------------------------------- references


def _masked_sq_dist(pos, batch, loop):
    """(N, N) squared distances (target, source); inf across graphs and, without loop, on the diagonal."""
    d2 = (pos[None, :] - pos[:, None]).square().sum(-1)
    if batch is not None:
        d2[batch[:, None] != batch[None, :]] = float("inf")
    if not loop:
        d2.fill_diagonal_(float("inf"))
    return d2


def _edges(mask):
    """Edges (source, target) of a (target, source) mask, sorted by target then source."""
    tgt, src = mask.nonzero(as_tuple=True)
    return torch.stack([src, tgt])


def ref_radius(pos, r, batch=None, loop=False, max_num_neighbors=None):
    d2 = _masked_sq_dist(pos, batch, loop)
    mask = d2 <= r * r
    if max_num_neighbors is not None:
        # nearest first, ties by smaller source index: stable sort of each row by distance
        order = torch.sort(torch.where(mask, d2, float("inf")), dim=1, stable=True).indices
        keep = torch.zeros_like(mask)
        keep.scatter_(1, order[:, :max_num_neighbors], True)
        mask &= keep
    return _edges(mask)


def ref_knn(pos, k, batch=None, loop=False):
    d2 = _masked_sq_dist(pos, batch, loop)
    order = torch.sort(d2, dim=1, stable=True).indices[:, :k]
    mask = torch.zeros_like(d2, dtype=torch.bool).scatter_(1, order, True) & d2.isfinite()
    return _edges(mask)


def random_batch(n, num_graphs, generator):
    return torch.sort(torch.randint(0, num_graphs, (n,), generator=generator)).values


# --------------------------------------------------------------------------- radius / knn


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_radius_graph_matches_brute_force(dim, loop, batched):
    gen = torch.Generator().manual_seed(dim + 2 * loop + 4 * batched)
    pos = torch.rand(400, dim, generator=gen, dtype=torch.float64) * 3 - 1
    batch = random_batch(400, 5, gen) if batched else None
    r = 0.6 if dim == 3 else 0.3
    got = graphs.radius_graph(pos, r, batch, loop=loop)
    assert got.dtype == torch.int64 and got.shape[0] == 2 and got.shape[1] > 400
    assert torch.equal(got, ref_radius(pos, r, batch, loop))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("max_num", [1, 4, 50])
def test_radius_graph_max_num_neighbors_keeps_nearest(dim, max_num):
    gen = torch.Generator().manual_seed(max_num)
    pos = torch.rand(300, dim, generator=gen, dtype=torch.float64)
    batch = random_batch(300, 3, gen)
    got = graphs.radius_graph(pos, 0.3, batch, max_num_neighbors=max_num)
    assert torch.equal(got, ref_radius(pos, 0.3, batch, max_num_neighbors=max_num))
    assert torch.bincount(got[1]).max() <= max_num


def test_ties_break_towards_smaller_source_index():
    # integer lattice: many equal distances, exactly representable
    g = torch.arange(6, dtype=torch.float64)
    pos = torch.cartesian_prod(g, g, g)
    for loop in (False, True):
        assert torch.equal(graphs.radius_graph(pos, 1.0, max_num_neighbors=3, loop=loop),
                           ref_radius(pos, 1.0, loop=loop, max_num_neighbors=3))
        assert torch.equal(graphs.knn_graph(pos, 5, loop=loop), ref_knn(pos, 5, loop=loop))
    # the boundary is inclusive: |r| == 1 exactly is an edge
    assert graphs.radius_graph(pos[:2], 1.0).shape[1] == 2


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("k", [1, 7])
def test_knn_graph_matches_brute_force(dim, loop, k):
    gen = torch.Generator().manual_seed(dim * 10 + k + loop)
    pos = torch.randn(500, dim, generator=gen, dtype=torch.float64)  # non-uniform density
    batch = random_batch(500, 4, gen)
    got = graphs.knn_graph(pos, k, batch, loop=loop)
    assert torch.equal(got, ref_knn(pos, k, batch, loop))
    assert torch.equal(torch.bincount(got[1], minlength=500), torch.full((500,), k))


def test_knn_graph_clustered_flat_and_small_graphs():
    gen = torch.Generator().manual_seed(3)
    clusters = torch.randn(8, 3, generator=gen, dtype=torch.float64) * 100
    blobs = torch.cat([c + 1e-3 * torch.randn(40, 3, generator=gen, dtype=torch.float64) for c in clusters])
    flat = torch.cat([torch.rand(200, 2, generator=gen, dtype=torch.float64), torch.zeros(200, 1)], 1)
    line = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2.0, 0.5]])
    tiny = torch.randn(3, 3, generator=gen, dtype=torch.float64)   # fewer than k points
    single = torch.zeros(1, 3, dtype=torch.float64)                # one point, no neighbour
    b = graphs.batch_graphs([blobs, flat, line, tiny, single])
    for loop in (False, True):
        assert torch.equal(graphs.knn_graph(b.pos, 6, b.batch, loop=loop), ref_knn(b.pos, 6, b.batch, loop))
        assert torch.equal(graphs.radius_graph(b.pos, 0.05, b.batch, loop=loop),
                           ref_radius(b.pos, 0.05, b.batch, loop))


def test_float32_distances_are_computed_in_float32():
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(600, 3, generator=gen)
    batch = random_batch(600, 2, gen)
    assert torch.equal(graphs.radius_graph(pos, 0.2, batch), ref_radius(pos, 0.2, batch))
    assert torch.equal(graphs.knn_graph(pos, 8, batch), ref_knn(pos, 8, batch))


def test_far_apart_and_huge_coordinates():
    # a spread of 1e12 radii per axis would overflow a dense cell index: cells are enlarged instead
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1e12, 1e12, 1e12], [1e12, 1e12, 1e12 + 0.5]],
                       dtype=torch.float64)
    assert torch.equal(graphs.radius_graph(pos, 1.0), ref_radius(pos, 1.0))
    assert torch.equal(graphs.knn_graph(pos, 1), ref_knn(pos, 1))


def test_empty_inputs():
    for dim in (2, 3):
        empty = torch.zeros(0, dim)
        for out in (graphs.radius_graph(empty, 1.0), graphs.knn_graph(empty, 3),
                    graphs.radius_graph(empty, 1.0, torch.zeros(0, dtype=torch.int64))):
            assert out.shape == (2, 0) and out.dtype == torch.int64
    # isolated points give no edges without loops, only loops with them
    pos = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    assert graphs.radius_graph(pos, 1.0).shape == (2, 0)
    assert torch.equal(graphs.radius_graph(pos, 1.0, loop=True), torch.tensor([[0, 1], [0, 1]]))


def test_deterministic_and_ready_for_build_csr():
    gen = torch.Generator().manual_seed(5)
    pos = torch.rand(1000, 3, generator=gen)
    a, b = graphs.radius_graph(pos, 0.15), graphs.radius_graph(pos.clone(), 0.15)
    assert torch.equal(a, b)
    csr = fastik.ops.build_csr(a[1], 1000)
    assert torch.equal(csr.perm, torch.arange(a.shape[1]))  # already sorted by target


class _LargestAllocation(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_is_linear_in_points_and_edges():
    """200k points: an N×N (or N×chunk brute force) implementation allocates >= 2e8 elements."""
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    pos = torch.rand(n, 3, generator=gen)
    with _LargestAllocation() as rec:
        ei = graphs.radius_graph(pos, 0.012)
    bound = 4 * (n + ei.shape[1]) + 4 * graphs._CHUNK_PAIRS
    assert 0 < ei.shape[1] and rec.largest <= bound < n * n // 1000
    # spot check: every edge is within the radius, and one target's neighbours are complete
    assert ((pos[ei[0]] - pos[ei[1]]).norm(dim=1) <= 0.012).all()
    d = (pos - pos[123]).norm(dim=1)
    expected = torch.nonzero((d <= 0.012) & (torch.arange(n) != 123)).flatten()
    assert torch.equal(ei[0, ei[1] == 123], expected)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call,exc,match", [
    (lambda: graphs.radius_graph(torch.rand(5, 3), 0.0), ValueError, "r must be"),
    (lambda: graphs.radius_graph(torch.rand(5, 3), -1.0), ValueError, "r must be"),
    (lambda: graphs.radius_graph(torch.rand(5, 3), float("nan")), ValueError, "r must be"),
    (lambda: graphs.radius_graph(torch.rand(5, 3), torch.tensor(1.0)), TypeError, "r must be a number"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 0), ValueError, "k must be >= 1"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 2.5), TypeError, "k must be an int"),
    (lambda: graphs.radius_graph(torch.rand(5, 3), 1.0, max_num_neighbors=0), ValueError, "max_num_neighbors"),
    (lambda: graphs.radius_graph(torch.rand(5, 4), 1.0), ValueError, r"\(N, 2\) or \(N, 3\)"),
    (lambda: graphs.radius_graph(torch.rand(5), 1.0), ValueError, r"\(N, 2\) or \(N, 3\)"),
    (lambda: graphs.knn_graph(torch.randint(0, 3, (5, 3)), 2), TypeError, "float32 or float64"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 2, torch.tensor([0, 0, 1, 0, 1])), ValueError, "sorted"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 2, torch.tensor([0, 0, 1, 1, 1], dtype=torch.int32)),
     TypeError, "int64"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 2, torch.tensor([0, 0, 1])), ValueError, r"shape \(5,\)"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 2, torch.tensor([-1, 0, 0, 1, 1])), ValueError, ">= 0"),
    (lambda: graphs.knn_graph(torch.rand(5, 3), 2, torch.zeros(5, dtype=torch.int64, device="meta")),
     ValueError, "device"),
    (lambda: graphs.radius_graph("points", 1.0), TypeError, "Data / Batch"),
    (lambda: graphs.pool(torch.rand(5, 2), torch.zeros(5, dtype=torch.int64), reduce="max"), ValueError, "reduce"),
    (lambda: graphs.pool(torch.rand(5, 2), torch.tensor([0, 0, 1, 1, 2]), num_graphs=2), ValueError, "num_graphs"),
    (lambda: graphs.batch_graphs([]), ValueError, "at least one"),
    (lambda: graphs.batch_graphs([torch.rand(2, 3)], x=[]), ValueError, "x tensors"),
    (lambda: graphs.batch_graphs([torch.rand(2, 3), torch.rand(2, 2)]), ValueError, r"pos\[1\]"),
    (lambda: graphs.batch_graphs([torch.rand(2, 3)], x=[torch.rand(3, 1)]), ValueError, "3 rows"),
    (lambda: graphs.batch_graphs([torch.rand(2, 3)], edge_index=[torch.tensor([[0], [2]])]), ValueError,
     r"indices in \[0, 2\)"),
    (lambda: graphs.radius_graph(torch.tensor([[0.0, float("nan")]]), 1.0), ValueError, "NaN"),
    (lambda: graphs.from_pyg(object()), TypeError, "Data / Batch"),
])
def test_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- batching, readout, PyG


def test_batch_graphs_and_pool():
    gen = torch.Generator().manual_seed(1)
    pos = [torch.rand(n, 3, generator=gen) for n in (4, 0, 6)]
    x = [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (4, 0, 6)]
    ei = [torch.tensor([[1, 2], [0, 0]]), torch.zeros(2, 0, dtype=torch.int64), torch.tensor([[5], [4]])]
    b = graphs.batch_graphs(pos, x, ei)
    assert torch.equal(b.batch, torch.tensor([0] * 4 + [2] * 6))
    assert torch.equal(b.ptr, torch.tensor([0, 4, 4, 10]))
    assert torch.equal(b.edge_index, torch.tensor([[1, 2, 9], [0, 0, 8]]))
    s = graphs.pool(b.x, b.batch, "sum", num_graphs=3)
    m = graphs.pool(b.x, b.batch, "mean", num_graphs=3)
    assert torch.allclose(s, torch.stack([x[0].sum(0), torch.zeros(5, dtype=torch.float64), x[2].sum(0)]))
    assert torch.allclose(m, torch.stack([x[0].mean(0), torch.zeros(5, dtype=torch.float64), x[2].mean(0)]))
    assert graphs.pool(b.x, b.batch).shape == (3, 5)
    assert torch.allclose(graphs.pool(x[0], reduce="mean"), x[0].mean(0, keepdim=True))
    # differentiable
    xs = b.x.clone().requires_grad_()
    graphs.pool(xs, b.batch, "mean", num_graphs=3).sum().backward()
    assert torch.allclose(xs.grad, torch.tensor([0.25] * 4 + [1 / 6] * 6, dtype=torch.float64)[:, None].expand(10, 5))


def test_pyg_objects_are_accepted_duck_typed():
    gen = torch.Generator().manual_seed(2)
    pos, batch = torch.rand(50, 3, generator=gen), torch.sort(torch.randint(0, 3, (50,), generator=gen)).values
    data = types.SimpleNamespace(pos=pos, batch=batch, x=torch.randn(50, 4), edge_index=None)
    assert torch.equal(graphs.radius_graph(data, 0.4), graphs.radius_graph(pos, 0.4, batch))
    assert torch.equal(graphs.knn_graph(data, 3), graphs.knn_graph(pos, 3, batch))
    x, p, ei, b, ea = graphs.from_pyg(data)
    assert x is data.x and p is pos and ei is None and b is batch and ea is None
    with pytest.raises(ValueError, match="not both"):
        graphs.radius_graph(data, 0.4, batch)


@pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None, reason="torch_geometric not installed")
def test_real_pyg_batch():
    from torch_geometric.data import Batch, Data
    gen = torch.Generator().manual_seed(4)
    datas = [Data(x=torch.randn(n, 2, generator=gen), pos=torch.rand(n, 3, generator=gen)) for n in (5, 9)]
    pyg = Batch.from_data_list(datas)
    x, pos, ei, batch, ea = graphs.from_pyg(pyg)
    b = graphs.batch_graphs([d.pos for d in datas], [d.x for d in datas])
    assert torch.equal(pos, b.pos) and torch.equal(batch, b.batch) and torch.equal(x, b.x)
    assert torch.equal(graphs.knn_graph(pyg, 2), ref_knn(pos.double(), 2, batch))


@pytest.mark.skipif(importlib.util.find_spec("torch_cluster") is None, reason="torch_cluster not installed")
def test_against_torch_cluster():
    import torch_cluster
    gen = torch.Generator().manual_seed(6)
    pos = torch.rand(2000, 3, generator=gen, dtype=torch.float64)
    batch = random_batch(2000, 4, gen)

    def canon(ei):
        return ei[:, torch.sort(ei[1] * 2000 + ei[0]).indices]

    assert torch.equal(graphs.radius_graph(pos, 0.1, batch),
                       canon(torch_cluster.radius_graph(pos, 0.1, batch, max_num_neighbors=2000)))
    assert torch.equal(graphs.knn_graph(pos, 6, batch), canon(torch_cluster.knn_graph(pos, 6, batch)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(7)
    pos = torch.rand(5000, 3, generator=gen)
    batch = random_batch(5000, 6, gen)
    for f in (lambda p, b: graphs.radius_graph(p, 0.08, b, max_num_neighbors=10),
              lambda p, b: graphs.knn_graph(p, 9, b)):
        cpu = f(pos, batch)
        gpu = f(pos.cuda(), batch.cuda())
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
    x = torch.randn(5000, 4, generator=gen)
    assert torch.allclose(graphs.pool(x.cuda(), batch.cuda(), "mean").cpu(), graphs.pool(x, batch, "mean"), atol=1e-5)
