"""Aggregate first on the reference backend (fastik.ops.pooled): the pooled outer products, applied once per
target, equal the edge-wise messages — forward, every gradient, second derivatives — on every group."""
import pytest
import torch

import fastik
from fastik.ops import dispatch, pooled
from fastik.ops.reference import aggregated_messages

from conftest import ALL_GROUPS, FIELDS, group_id, relative_error

pytestmark = pytest.mark.usefixtures("float64_default")


def _graph(n, e, dim, seed=0, loops=True):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=gen)
    if loops:
        ei[0, :3] = ei[1, :3]  # a few self-loops
    return torch.randn(n, dim, generator=gen), ei


def _edge_wise(monkeypatch):
    monkeypatch.setattr(dispatch, "plan_pooling", lambda head, tgt, chunk_size: None)


def test_group_by_degree_orders_edges_by_degree_then_target():
    tgt = torch.tensor([3, 0, 3, 5, 0, 3, 2, 5, 5, 5])  # degrees: 0:2, 2:1, 3:3, 5:4; 1 and 4 isolated
    plan = pooled.group_by_degree(tgt)
    assert sorted(plan.order.tolist()) == list(range(10))
    assert plan.groups == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert plan.targets.tolist() == [2, 0, 3, 5]
    assert tgt[plan.order].tolist() == [2, 0, 0, 3, 3, 3, 5, 5, 5, 5]
    assert plan.order[1:3].tolist() == [1, 4]  # stable: a target's edges keep their order


def test_group_by_degree_groups_equal_degrees():
    tgt = torch.tensor([4, 1, 1, 4, 7, 7, 9])
    plan = pooled.group_by_degree(tgt)
    assert plan.groups == [(1, 1), (2, 3)]
    assert plan.targets.tolist() == [9, 1, 4, 7]


def test_pooled_conv_matches_edge_wise_messages_with_every_gradient_and_double_backward():
    ft = fastik.FieldType(fastik.group("o3"), "3x0e + 2x1o + 1x2e")
    kernel = fastik.nn.ImplicitKernel(ft, ft, hidden_channels=2)
    head_params = list(kernel.head.parameters())
    head = kernel.head.structured(torch.float64)
    _, ei = _graph(9, 40, 3)
    src, tgt = ei
    h = torch.randn(40, head.k, requires_grad=True)
    x = torch.randn(9, head.din, requires_grad=True)
    plan = pooled.group_by_degree(tgt)
    got = pooled.pooled_conv(head, h[plan.order], x, src[plan.order], plan.targets, plan.groups, 11)
    want = aggregated_messages(head, h, x, src, tgt, None, 11)
    assert got.shape == (11, head.dout) and relative_error(got, want) < 1e-13
    assert torch.equal(got[9:], torch.zeros(2, head.dout))  # no edges into 9, 10
    g = torch.randn_like(want)
    have = torch.autograd.grad(got, [h, x, *head_params], g, create_graph=True)
    need = torch.autograd.grad(want, [h, x, *head_params], g, create_graph=True)
    for a, b in zip(have, need):
        assert relative_error(a, b) < 1e-12
    # second derivatives (forces in a loss): d/dh of <grad_x, v>
    v = torch.randn_like(x)
    dd_have, = torch.autograd.grad((have[1] * v).sum(), h)
    dd_need, = torch.autograd.grad((need[1] * v).sum(), h)
    assert relative_error(dd_have, dd_need) < 1e-12


@pytest.mark.parametrize("group", ALL_GROUPS, ids=group_id)
def test_layer_pooled_equals_edge_wise_on_every_group(group, monkeypatch):
    G = fastik.group(group[0], dim=group[1])
    ft = fastik.FieldType(G, FIELDS[G.dim])
    ea = fastik.FieldType(G, "1x0e + 1x1o" if G.dim == 3 else "1x0 + 1x1")
    na = fastik.FieldType(G, "2x0e" if G.dim == 3 else "2x0")
    conv = fastik.ImplicitPointConv(ft, ft, edge_attr_type=ea, node_attr_type=na, hidden_channels=2)
    pos, ei = _graph(10, 48, G.dim)
    x = torch.randn(10, ft.dim, requires_grad=True)
    pos.requires_grad_(True)
    z, n = torch.randn(48, ea.dim, requires_grad=True), torch.randn(10, 2, requires_grad=True)
    inputs = [x, pos, z, n, *conv.parameters()]

    def run():
        y = conv(x, pos, ei, edge_attr=z, node_attr=n)
        return y, torch.autograd.grad(y, inputs, torch.ones_like(y) + y.detach())

    calls = []
    plan = pooled.plan_pooling
    monkeypatch.setattr(dispatch, "plan_pooling",
                        lambda head, tgt, chunk_size: calls.append(1) or pooled.group_by_degree(tgt))
    y_pooled, g_pooled = run()
    assert calls
    monkeypatch.setattr(dispatch, "plan_pooling", plan)
    _edge_wise(monkeypatch)
    y_edge, g_edge = run()
    assert relative_error(y_pooled, y_edge) < 1e-12
    for a, b in zip(g_pooled, g_edge):
        assert relative_error(a, b) < 1e-10


@pytest.mark.parametrize("aggr", ["sum", "mean"])
def test_pooled_layer_bipartite_chunked_csr_and_empty(aggr, monkeypatch):
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "4x0e + 2x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=3, aggr=aggr, chunk_size=13)
    pos, ei = _graph(12, 60, 3, loops=False)
    ei[1] %= 5  # bipartite: 5 targets, degree ≈ 12
    pos_t = torch.randn(5, 3)
    x = torch.randn(12, ft.dim, requires_grad=True)
    csr = fastik.ops.build_csr(ei[1], 5)
    outs = {}
    for mode in ("pooled", "edge-wise"):
        if mode == "edge-wise":
            _edge_wise(monkeypatch)
        for use_csr in (False, True):
            y = conv(x, pos, ei, pos_target=pos_t, csr=csr if use_csr else None)
            outs[mode, use_csr] = (y, torch.autograd.grad(y.square().sum(), [x, *conv.parameters()]))
    ref_y, ref_g = outs["edge-wise", False]
    for y, g in outs.values():
        assert relative_error(y, ref_y) < 1e-12
        assert all(relative_error(a, b) < 1e-10 for a, b in zip(g, ref_g))
    empty = conv(x, pos, ei[:, :0], pos_target=pos_t)
    assert torch.equal(empty, conv.bias(torch.zeros(5, ft.dim)))


def test_pooling_is_chosen_where_it_pays():
    ft = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    head = fastik.nn.ImplicitKernel(ft, ft, hidden_channels=4).head.structured(torch.float64)
    dense = torch.arange(40).repeat_interleave(16)     # degree 16: pooled
    sparse = torch.arange(640)                          # degree 1: edge-wise
    assert pooled.plan_pooling(head, dense) is not None
    assert pooled.plan_pooling(head, sparse) is None
    assert pooled.plan_pooling(head, dense[:0]) is None
    # in-degree 2: fewer FLOPs, but a pooled tensor larger than the edge-wise intermediates — only small ones pass
    pairs = torch.arange(20_000).repeat_interleave(2)
    assert pooled.plan_pooling(head, pairs[:2000]) is not None
    assert 20_000 * head.k * head.din > pooled.ALWAYS_FITS and pooled.plan_pooling(head, pairs) is None


def test_pooled_result_is_deterministic_and_independent_of_edge_order():
    ft = fastik.FieldType(fastik.group("O"), "2x0e + 1x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    pos, ei = _graph(10, 80, 3)
    x = torch.randn(10, ft.dim)
    y = conv(x, pos, ei)
    assert torch.equal(y, conv(x, pos, ei))
    perm = torch.randperm(80)
    assert relative_error(conv(x, pos, ei[:, perm]), y) < 1e-13


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 100])
def test_chunks_of_a_plan_are_runs_of_whole_or_cut_targets(chunk):
    tgt = torch.randint(0, 9, (61,), generator=torch.Generator().manual_seed(3))
    plan = pooled.group_by_degree(tgt)
    ordered = tgt[plan.order]
    for start in range(0, 61, chunk):
        targets, runs = plan.chunk(start, start + chunk)
        piece = ordered[start:start + chunk]
        want_targets, want_counts = torch.unique_consecutive(piece, return_counts=True)
        assert torch.equal(targets, want_targets)
        assert [d for d, n in runs for _ in range(n)] == want_counts.tolist()
        assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))  # equal neighbouring runs are merged


def test_one_grouping_per_call_and_chunked_equals_whole(monkeypatch):
    ft = fastik.FieldType(fastik.group("so3"), "2x0e + 1x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, chunk_size=16)
    pos, ei = _graph(12, 100, 3)
    x = torch.randn(12, ft.dim, requires_grad=True)
    calls = []
    plan = pooled.plan_pooling
    monkeypatch.setattr(dispatch, "plan_pooling", lambda *args: calls.append(plan(*args)) or calls[-1])
    y = conv(x, pos, ei)
    grads = torch.autograd.grad(y.square().sum(), [x, *conv.parameters()])
    assert len(calls) == 1 and calls[0] is not None  # pooled; not per chunk, nor again in the recomputation
    whole = fastik.ImplicitPointConv(ft, ft, hidden_channels=2)
    whole.load_state_dict(conv.state_dict())
    y_whole = whole(x, pos, ei)
    assert relative_error(y, y_whole) < 1e-12
    for a, b in zip(grads, torch.autograd.grad(y_whole.square().sum(), [x, *whole.parameters()])):
        assert relative_error(a, b) < 1e-10


def test_plan_cuts_whole_targets_within_the_budget():
    """PoolingPlan.cuts: chunks of whole targets costing at most the budget, and a target that alone costs more
    in pieces of ⌊(budget - per_target) / per_edge⌋ edges; every edge in one chunk."""
    from fastik.ops.pooled import group_by_degree

    g = torch.Generator().manual_seed(0)
    degrees = torch.cat([torch.randint(1, 12, (40,), generator=g), torch.tensor([57, 30])])  # two hubs
    tgt = torch.repeat_interleave(torch.randperm(len(degrees), generator=g), degrees)
    plan = group_by_degree(tgt)
    per_edge, per_target, budget = 3, 10, 100  # whole targets of ≤ 30 edges; the others in pieces of 30
    bounds = plan.cuts(budget, per_edge, per_target)
    assert bounds[0] == 0 and bounds[-1] == tgt.shape[0] and all(a < b for a, b in zip(bounds, bounds[1:]))
    firsts = {0}  # where each target's edges start in plan order
    for d, n in plan.groups:
        last = max(firsts)
        firsts |= {last + d * i for i in range(1, n + 1)}
    pieces = 0
    for start, stop in zip(bounds, bounds[1:]):
        _, runs = plan.chunk(start, stop)
        whole = start in firsts and stop in firsts
        if whole:
            assert sum(d * n for d, n in runs) * per_edge + sum(n for _, n in runs) * per_target <= budget
        else:  # a piece of one target
            assert len(runs) == 1 and runs[0][1] == 1 and stop - start <= (budget - per_target) // per_edge
            pieces += 1
    assert pieces == 2  # the 57-edge hub in pieces of 30 and 27 (the 30-edge one costs 100: whole)
