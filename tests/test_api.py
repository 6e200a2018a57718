"""The public API of docs/design.md §2, exactly as written there, for every group name."""
import inspect

import pytest
import torch

import fastik

from conftest import ALL_GROUPS, group_id


def test_all_is_the_api():
    for name in fastik.__all__:
        assert hasattr(fastik, name), name


@pytest.mark.parametrize("name,dim", ALL_GROUPS, ids=[group_id(p) for p in ALL_GROUPS])
def test_design_contract(name, dim):
    G = fastik.group(name) if dim == 3 else fastik.group(name, dim=2)
    assert G.dim == dim
    g = G.sample(3, seed=None)
    assert g.dtype == torch.float64 and g.shape == (3, dim, dim)
    spec = "2x0e + 1x1o + 1x2e" if dim == 3 else "2x0 + 1x0- + 1x1"
    ft = fastik.FieldType(G, spec)
    assert ft.dim == (2 + 3 + 5 if dim == 3 else 2 + 1 + 2)
    assert ft.representation(g[0]).shape == (ft.dim, ft.dim)
    assert ft.representation(g).shape == (3, ft.dim, ft.dim)
    ea = fastik.FieldType(G, "1x0e" if dim == 3 else "1x0")
    conv = fastik.ImplicitPointConv(ft, ft, edge_attr_type=ea, node_attr_type=ea, hidden_channels=1,
                                    hidden_layers=1, aggr="sum", backend="auto")
    n, m, e = 7, 3, 15
    x, pos = torch.randn(n, ft.dim), torch.randn(n, G.dim)
    edge_index = torch.stack([torch.randint(0, n, (e,)), torch.randint(0, m, (e,))])
    y = conv(x, pos, edge_index, edge_attr=torch.randn(e, 1), node_attr=torch.randn(n, 1),
             pos_target=torch.randn(m, G.dim), node_attr_target=torch.randn(m, 1))
    assert y.shape == (m, ft.dim)


def test_graphs_api():
    sig = {name: list(inspect.signature(getattr(fastik.graphs, name)).parameters)
           for name in ("radius_graph", "knn_graph", "pool", "batch_graphs", "from_pyg")}
    assert sig == {"radius_graph": ["pos", "r", "batch", "max_num_neighbors", "loop"],
                   "knn_graph": ["pos", "k", "batch", "loop"],
                   "pool": ["x", "batch", "reduce", "num_graphs"],
                   "batch_graphs": ["pos", "x", "edge_index"],
                   "from_pyg": ["data"]}
    pos = torch.rand(10, 3)
    batch = torch.tensor([0] * 4 + [1] * 6)
    ei = fastik.graphs.radius_graph(pos, 0.5, batch)
    assert ei.dtype == torch.int64 and (batch[ei[0]] == batch[ei[1]]).all()
