"""Pure-torch reference of the implicit message passing operation (the truth).

This is the paper's algorithm (Eq. 5), ``m_e = W̃ · vec(h̃_e ⊗ x_j)`` summed into
targets, evaluated on the block structure of W̃ (:class:`~fastik.ops.structured.StructuredHead`):
per block, the source features are projected on the fixed basis, contracted with
h̃_e and mixed over channels by one GEMM — no (Dout × Din) kernel matrix and none
of W̃'s structural zeros.  Edges run in chunks so memory stays bounded.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .aggregate import CSR, scatter_sum, segment_sum
from .structured import StructuredHead

__all__ = ["implicit_message_passing_reference", "chunked_conv", "aggregated_messages", "auto_chunk_size",
           "validated_csr_targets"]


def implicit_message_passing_reference(
    h: Tensor,
    x: Tensor,
    weight: Tensor | StructuredHead,
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
        weight: the last layer W̃: a :class:`StructuredHead` (its blocks are used), or
            a dense (Dout, K, Din) tensor (one dense block).
        src, tgt: (E,) int64 source / target node of each edge.
        num_targets: number of target nodes M.
        chunk_size: edges per chunk (None: about 2^24 kernel entries per chunk);
            bounds the largest per-chunk intermediate (``weight.work_per_edge()`` floats per edge).  With
            autograd on and several chunks, each chunk is recomputed in backward
            (activation checkpointing), so training memory stays bounded too.
        csr: the graph's edges sorted by target (:func:`fastik.ops.aggregate.build_csr`
            of ``tgt``, checked against ``tgt`` by :meth:`~fastik.ops.aggregate.CSR.check`): chunks then
            run in target order and are summed with the deterministic segment sum; without it, a scatter sum.

    Returns:
        (M, Dout) aggregated messages.
    """
    head = weight if isinstance(weight, StructuredHead) else StructuredHead.from_dense(weight)
    step = chunk_size or auto_chunk_size(head)
    return chunked_conv(lambda h_c, src_c, tgt_c, rowptr_c, checked, _start: aggregated_messages(
        head, h_c, x, src_c, tgt_c, rowptr_c, num_targets, indices_checked=checked), (h,), src, tgt, num_targets, step, csr)


def auto_chunk_size(head: StructuredHead) -> int:
    """Edges per chunk bounding the largest per-chunk intermediate at about 2^24 floats."""
    return max(1, (1 << 24) // head.work_per_edge())


def aggregated_messages(head: StructuredHead, h: Tensor, x: Tensor, src: Tensor, tgt: Tensor,
                        rowptr: Tensor | None, num_targets: int, *, indices_checked: bool = False) -> Tensor:
    """A chunk's messages ``W̃ · (h̃_e ⊗ x_src(e))`` summed per target: (num_targets, Dout); segment sum
    over the chunk's row pointer, else scatter sum (``indices_checked``: skip their index checks)."""
    msg = head.messages(h, x[src])
    if rowptr is None:
        return scatter_sum(msg, tgt, num_targets, indices_checked=indices_checked)
    return segment_sum(msg, rowptr, indices_checked=indices_checked)


def validated_csr_targets(csr: CSR, tgt: Tensor, num_targets: int, indices_checked: bool) -> Tensor:
    """``tgt[csr.perm]`` (E,), after checking that ``csr`` is the CSR of ``tgt`` (:meth:`CSR.check`) and, when the
    caller has checked the indices (``indices_checked``), its row pointer against them (see :func:`chunked_conv`)."""
    csr.check(tgt.shape[0], num_targets, tgt)
    sorted_targets = tgt[csr.perm]
    if indices_checked:
        csr.check_row_pointer(sorted_targets)
    return sorted_targets


def chunked_conv(contribution: Callable[..., Tensor], edge_inputs: Sequence[Tensor | None], src: Tensor,
                 tgt: Tensor, num_targets: int, chunk_size: int, csr: CSR | None = None,
                 indices_checked: bool = False) -> Tensor:
    """``Σ_chunks contribution(*edge_inputs[chunk], src[chunk], tgt[chunk], rowptr_chunk, checked, start)``: (num_targets, D).

    The one chunk loop of the implicit convolution, shared by every backend: per chunk
    of edges ``contribution`` evaluates whatever the backend fuses (the G-MLP, the
    messages, their aggregation) and returns that chunk's (num_targets, D) sum.  With
    autograd on and more than one chunk, each chunk is recomputed in backward
    (activation checkpointing), so nothing of size E × (per-edge width) is stored:
    memory is O(N·D + E·(inputs per edge) + chunk_size × (per-edge width)).

    With a ``csr`` (checked against ``tgt``) edges run in target order and
    ``rowptr_chunk`` is the chunk's slice of the row pointer (deterministic segment
    sums); otherwise it is None (scatter sums).  Edge inputs may be None (absent).

    ``indices_checked``: the caller has validated ``src`` and ``tgt`` (ranges); the CSR's row
    pointer is then checked once here (its bounds for a CSR from :func:`build_csr`, which is
    the row pointer of ``tgt`` by construction; its consistency with the permuted ``tgt`` for one
    assembled by hand), and ``checked`` tells each chunk's backend ops to skip
    their own index checks (one host sync each, per chunk, in forward, recomputation and
    backward). ``start`` is the chunk's first edge. Index tensors edited in place between forward
    and backward never reach them: autograd refuses saved tensors (the checkpointed chunks' inputs,
    the ops' saved indices) whose version counter moved — and callers that permute the edges first
    (a CSR here, the pooled path in :func:`~fastik.ops.dispatch.implicit_conv`) recompute from their copies.
    """
    e = src.shape[0]
    rowptr = None
    if csr is not None:
        perm = csr.perm
        tgt = validated_csr_targets(csr, tgt, num_targets, indices_checked)
        edge_inputs = [None if t is None else t[perm] for t in edge_inputs]
        src, rowptr = src[perm], csr.rowptr
    recompute = torch.is_grad_enabled() and e > chunk_size
    out: Tensor | None = None
    for start in range(0, max(e, 1), chunk_size):
        sl = slice(start, start + chunk_size)
        chunk_rowptr = None if rowptr is None else rowptr.clamp(start, min(e, start + chunk_size)) - start
        args = [None if t is None else t[sl] for t in edge_inputs] + [src[sl], tgt[sl], chunk_rowptr, indices_checked,
                                                                       start]
        part = checkpoint(contribution, *args, use_reentrant=False) if recompute else contribution(*args)
        out = part if out is None else out + part
    return out


