"""The packed G-MLP's head order, tile lists and structure vectors (fastik.nn.packing): no Triton needed."""
import pytest
import torch

import fastik
from fastik.nn.packing import _layers, _supports, pack_gmlp
from fastik.ops.fused_gmlp import HEAD_TILE


def _tiles(support: torch.Tensor) -> torch.Tensor:
    """(Din, P / 16, DOUT_P / 16): which (16 × 16) tiles of a packed head have a non-zero."""
    din, size, dout_p = support.shape
    return (support != 0).reshape(din, size // HEAD_TILE, HEAD_TILE, dout_p // HEAD_TILE, HEAD_TILE).any(4).any(2)


@pytest.mark.parametrize("group, fields, layers", [("so3", "2x0e + 2x1o", 2), ("O", "1x0e + 1x1o + 1x2e", 1),
                                                   ("o3", "1x0e + 1x1o + 1x1e", 2), ("Cinf", "1x0e + 1x1o", 0),
                                                   ("C4", "1x0e + 1x1o", 1)])
def test_head_tile_lists_are_the_non_zero_tiles(group, fields, layers):
    """Each tile list starts, per group, with exactly the non-zero tiles of the (grouped) head's support in order,
    its count of them, and holds every tile once: head_blocks per output tile t as k·Din + c (row tile, channel),
    head_row_blocks per row tile k as t·Din + c, head_channel_blocks per channel c as k·(DOUT_P / 16) + t; out_cols
    orders the outputs (padding last)."""
    ft = fastik.FieldType(fastik.group(group), fields)
    p = pack_gmlp(fastik.ImplicitPointConv(ft, ft, hidden_channels=3, hidden_layers=layers).kernel, torch.float64)
    nz = _tiles(p.head_support)
    din, kt, tt = nz.shape
    expected = {"head": [[k * din + c for k in range(kt) for c in range(din) if nz[c, k, t]] for t in range(tt)],
                "head_row": [[t * din + c for t in range(tt) for c in range(din) if nz[c, k, t]] for k in range(kt)],
                "head_channel": [[k * tt + t for k in range(kt) for t in range(tt) if nz[c, k, t]]
                                 for c in range(din)]}
    assert p.head_block_count.sum() > 0
    for name, lists in expected.items():
        blocks, counts = getattr(p, f"{name}_blocks"), getattr(p, f"{name}_block_count")
        assert blocks.shape == (len(lists), din * kt * tt // len(lists)) and counts.tolist() == list(map(len, lists))
        for row, want in zip(blocks.tolist(), lists):
            assert row[:len(want)] == want and sorted(row) == list(range(blocks.shape[1]))
    assert (p.head * (1 - p.head_support)).abs().max() == 0
    assert sorted(p.out_cols.tolist()) == list(range(p.head.shape[2]))
    assert p.out_cols[ft.dim:].tolist() == list(range(ft.dim, p.head.shape[2]))


@pytest.mark.parametrize("group, fields, norm", [("so3", "2x0e + 2x1o", True), ("O", "1x0e + 1x1o + 1x2e", True),
                                                 ("o3", "1x0e + 1x1o + 1x1e", False), ("so2", "1x0 + 1x1", True)])
def test_structure_vectors_are_the_structure_matrices(group, fields, norm):
    """column_index / column_scale / gate_columns (what the kernels gather with) rebuild expand, mean, avg,
    gate_expand and gate_pick exactly, and reproduce their products with a random activation."""
    G = fastik.group(group, dim=2 if group == "so2" else 3)
    ft = fastik.FieldType(G, fields)
    p = pack_gmlp(fastik.ImplicitPointConv(ft, ft, hidden_channels=3, norm=norm).kernel, torch.float64)
    layers, _, size = p.column_index.shape
    nb, ng = p.mean.shape[2], p.gate_pick.shape[2]
    block, gate, scalar = p.column_index.unbind(1)
    expand, mean, avg, spread, pick = p.column_scale.unbind(1)
    one_hot = lambda index, n, value: torch.nn.functional.one_hot(index, n).double() * value[..., None]
    assert torch.equal(one_hot(block, nb, expand).transpose(1, 2), p.expand)
    assert torch.equal(one_hot(block, nb, mean), p.mean) and torch.equal(one_hot(block, nb, avg), p.avg)
    assert torch.equal(one_hot(gate, ng, spread).transpose(1, 2), p.gate_expand)
    assert torch.equal(one_hot(scalar, ng, pick), p.gate_pick)
    assert torch.equal(p.gate_pick.gather(1, p.gate_columns[:, None, :]).squeeze(1), p.gate_pick.sum(1))
    assert p.gate_pick.sum() > 0 and (p.expand.sum() > 0) == norm
    u = torch.randn(layers, 5, size, dtype=torch.float64)
    v = torch.randn(layers, 5, ng, dtype=torch.float64)
    real = p.gate_pick.sum(1)[:, None, :]  # padding gates read column H: the kernels never use them
    assert torch.allclose(u @ p.gate_pick, u.gather(2, p.gate_columns[:, None, :].expand(-1, 5, -1)) * real)
    assert (p.gate_columns >= p.hidden).all() and (p.gate_columns[real[:, 0] == 0] == p.hidden).all()
    assert torch.allclose(v @ p.gate_expand, v.gather(2, gate[:, None, :].expand(-1, 5, -1)) * spread[:, None, :])


def test_grouped_head_tiles_reach_the_true_density():
    """At the standard workload's default width (so3, 16x0e + 16x1o, hidden_channels=16) the grouped order puts
    the head's non-zeros (20 % of the entries: Schur's lemma) in tiles of ≤ 1.15 times as many entries — ≤ 0.2 of
    the dense (IN_K × DOUT_P) product per channel the forward did before; in the natural order ≥ 0.6 of the
    tiles have a non-zero."""
    ft = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    kernel = fastik.ImplicitPointConv(ft, ft, hidden_channels=16).kernel
    p = pack_gmlp(kernel, torch.float64)
    din, size, dout_p = p.head.shape
    h1 = p.hidden + 1
    support = (p.head_support != 0).double()
    tiled = p.head_block_count.sum().item() * HEAD_TILE ** 2
    assert 0.19 < support[:, :h1, :ft.dim].mean() < 0.21
    assert tiled <= 1.15 * support.sum() and tiled <= 0.2 * din * size * dout_p
    natural = _supports(kernel, _layers(kernel.mlp), size)
    assert _tiles(natural["head_support"]).double().mean() >= 0.6
