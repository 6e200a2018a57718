"""The packed G-MLP's head order and tile list (fastik.nn.packing): no Triton needed."""
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
