"""Samples as dicts of tensors, batched into one disjoint graph; small graph builders."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NODE_KEYS", "EDGE_KEYS", "collate", "to_device", "fully_connected_edges"]

NODE_KEYS = ("pos", "x", "node_attr", "target")  # (n_i, ·) per sample: concatenated
EDGE_KEYS = ("edge_attr",)                       # (e_i, ·) per sample: concatenated
# "edge_index" (2, e_i) is shifted by the node offset; every other key is per graph: concatenated along dim 0.


def collate(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Batch graphs into one disjoint graph.

    Each sample holds node tensors (``NODE_KEYS``, (n_i, ·)), optional ``edge_index``
    (2, e_i) int64 (row 0 source j, row 1 target i) with edge tensors (``EDGE_KEYS``,
    (e_i, ·)), and per-graph tensors such as ``y`` (1, ·) or (1,).  Returns the
    concatenation with ``edge_index`` offset, plus ``batch`` (N,) int64 (graph of
    each node) and ``num_graphs`` (0-dim int64).
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    out: dict[str, Tensor] = {}
    sizes = torch.tensor([s["pos"].shape[0] for s in samples])
    offsets = torch.cumsum(sizes, 0) - sizes
    for key in samples[0]:
        if key == "edge_index":
            out[key] = torch.cat([s[key] + off for s, off in zip(samples, offsets.tolist())], 1)
        else:
            out[key] = torch.cat([s[key] for s in samples], 0)
    out["batch"] = torch.repeat_interleave(torch.arange(len(samples)), sizes)
    out["num_graphs"] = torch.tensor(len(samples))
    return out


def to_device(batch: dict[str, Tensor], device: torch.device | str,
              dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Move a batch to ``device``; floating tensors also to ``dtype`` when given."""
    return {k: v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else None)
            for k, v in batch.items()}


def fully_connected_edges(n: int) -> Tensor:
    """All ordered pairs (j -> i), j != i, of n nodes: (2, n(n-1)) int64, row 0 source j, row 1 target i."""
    j, i = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = j != i
    return torch.stack([j[keep], i[keep]])
