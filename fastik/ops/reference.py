"""Pure-torch reference of the implicit message passing operation (the truth).

This is the paper's algorithm (Eq. 5): per edge, the kernel matrix
``K_e = W · h̃_e`` (Dout × Din) is materialised — in chunks of edges so memory
stays bounded — multiplied with the source features and summed into targets.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .aggregate import CSR, scatter_sum, segment_sum

__all__ = ["implicit_message_passing_reference", "check_csr"]


def check_csr(csr: CSR, num_edges: int, num_targets: int) -> None:
    """Raise a ValueError unless ``csr`` describes a graph of this many edges and targets."""
    if csr.num_edges != num_edges or csr.num_targets != num_targets:
        raise ValueError(f"csr describes {csr.num_edges} edges / {csr.num_targets} targets, "
                         f"expected {num_edges} / {num_targets}")


def implicit_message_passing_reference(
    h: Tensor,
    x: Tensor,
    weight: Tensor,
    src: Tensor,
    tgt: Tensor,
    num_targets: int,
    chunk_size: int | None = None,
    csr: CSR | None = None,
) -> Tensor:
    """``out[i, o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c] · h[e,k] · x[src[e],c]``.

    Args:
        h: (E, K) last hidden activations per edge (envelope and bias column folded in).
        x: (N, Din) source node features.
        weight: (Dout, K, Din) last-layer weights, reshaped.
        src, tgt: (E,) int64 source / target node of each edge.
        num_targets: number of target nodes M.
        chunk_size: edges per chunk (None: about 2^24 kernel entries per chunk);
            bounds the (chunk, Dout, Din) kernel tensor that is materialised.  With
            autograd on and several chunks, each chunk is recomputed in backward
            (activation checkpointing), so training memory stays bounded too.
        csr: the graph's edges sorted by target (:func:`fastik.ops.aggregate.build_csr`
            of ``tgt``): chunks then run in target order and are summed with the
            deterministic segment sum; without it, a scatter sum.

    Returns:
        (M, Dout) aggregated messages.
    """
    dout, _, din = weight.shape
    e = h.shape[0]
    step = max(1, chunk_size or (1 << 24) // max(1, dout * din))
    out = x.new_zeros(num_targets, dout, dtype=torch.result_type(h, x))
    recompute = torch.is_grad_enabled() and e > step and any(t.requires_grad for t in (h, x, weight))
    if csr is not None:
        check_csr(csr, e, num_targets)
        h, src = h[csr.perm], src[csr.perm]
    for start in range(0, e, step):
        sl = slice(start, start + step)
        args = (weight, h[sl], x, src[sl])
        msg = checkpoint(_messages, *args, use_reentrant=False) if recompute else _messages(*args)
        if csr is None:
            out = out + scatter_sum(msg, tgt[sl], num_targets)
        else:  # this chunk's slice of the row pointer
            out = out + segment_sum(msg, csr.rowptr.clamp(start, start + msg.shape[0]) - start)
    return out


def _messages(weight: Tensor, h: Tensor, x: Tensor, src: Tensor) -> Tensor:
    """(e, Dout) messages of a chunk, materialising its (e, Dout, Din) kernels."""
    kernel = torch.einsum("okc,ek->eoc", weight, h)
    return torch.einsum("eoc,ec->eo", kernel, x[src])
