"""Aggregate first on the reference backend: pool ``h̃_e ⊗ x_src(e)`` per target, apply W̃ once per target.

The messages are linear in W̃, so ``Σ_{e→i} W̃ · (h̃_e ⊗ x_src(e)) = W̃ · P_i`` with the pooled outer product
``P_i = Σ_{e→i} h̃_e ⊗ x_src(e)`` (K × Din).  Per edge that leaves one rank-1 update of P (2·K·Din FLOPs, done
as one batched GEMM per group of targets of equal in-degree d: ``(n, K, d) @ (n, d, Din)``) and per target one
application of the structured head (:meth:`~fastik.ops.structured.StructuredHead.contract`) — instead of the
head's channel mixes on every edge.  At degree 16 (the standard workload) that is ≈ 5× fewer FLOPs and one
(T, K, Din) intermediate instead of one E × (block width) tensor per block of W̃.

Edges are reordered by (in-degree of their target, target) — one stable sort, so the summation order and the
result are deterministic — and the G-MLP runs in that order (its inputs, not its E × H output, are permuted).
:func:`plan_pooling` says whether pooling pays for a chunk of edges (FLOPs and memory against the edge-wise head);
it needs the degree counts on the host (one host sync per chunk) and is skipped under ``torch.compile``.
Where it is not used (in-degree ≈ 1–2, compiled graphs) the edge-wise head of
:func:`~fastik.ops.reference.aggregated_messages` runs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .structured import StructuredHead

__all__ = ["PoolingPlan", "group_by_degree", "plan_pooling", "pooled_outer", "pooled_conv"]

#: pooled tensors up to this many elements (16 MiB in fp32) are always small enough (molecule batches, in-degree ≈ 2)
ALWAYS_FITS = 1 << 22


class PoolingPlan(NamedTuple):
    """Edges grouped by target: ``order`` (E,) sorts edges by (in-degree, target); ``targets`` (T,) are the targets
    with edges in the same order; ``groups`` lists (degree d, number of targets n) — n·d consecutive edges each."""

    order: Tensor
    targets: Tensor
    groups: list[tuple[int, int]]


def group_by_degree(tgt: Tensor) -> PoolingPlan:
    """Group the edges of ``tgt`` (E,) by their target's in-degree: two stable sorts, one host sync."""
    by_target = torch.argsort(tgt, stable=True)
    targets, counts = torch.unique_consecutive(tgt[by_target], return_counts=True)
    edge_degree = torch.repeat_interleave(counts, counts)
    by_degree = torch.argsort(edge_degree, stable=True)
    degrees, sizes = torch.unique_consecutive(edge_degree[by_degree], return_counts=True)
    groups = [(d, s // d) for d, s in zip(degrees.tolist(), sizes.tolist())]
    return PoolingPlan(by_target[by_degree], targets[torch.argsort(counts, stable=True)], groups)


def plan_pooling(head: StructuredHead, tgt: Tensor) -> PoolingPlan | None:
    """The grouping of ``tgt`` when pooling costs fewer FLOPs than the edge-wise head and its (targets, K, Din)
    tensor is no larger than the edge-wise head's per-block intermediates together (or ≤ ``ALWAYS_FITS``
    elements); None otherwise (and for no edges, and under torch.compile).  For the standard workload (so3,
    ``16x0e + 16x1o``): mean in-degree ≥ 2.3 on large chunks, ≥ 1.4 on small ones."""
    e = tgt.shape[0]
    if e == 0 or torch.compiler.is_compiling():
        return None
    plan = group_by_degree(tgt)
    t = sum(n for _, n in plan.groups)
    pooled_size = head.k * head.din
    pooled_flops = e * 2 * pooled_size + t * head.contract_flops()
    fits = t * pooled_size <= max(e * head.footprint_per_edge(), ALWAYS_FITS)
    return plan if fits and pooled_flops < e * head.flops_per_edge() else None


def pooled_outer(h: Tensor, xj: Tensor, groups: list[tuple[int, int]]) -> Tensor:
    """h (E, K), xj (E, Din) in plan order -> (T, K, Din): ``P_i = Σ_{e→i} h_e ⊗ xj_e``, one bmm per degree."""
    parts, start = [], 0
    for d, n in groups:
        hs = h[start:start + n * d].reshape(n, d, h.shape[1])
        xs = xj[start:start + n * d].reshape(n, d, xj.shape[1])
        parts.append(torch.bmm(hs.transpose(1, 2), xs))
        start += n * d
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def pooled_conv(head: StructuredHead, h: Tensor, x: Tensor, src: Tensor, plan: PoolingPlan, num_targets: int) -> Tensor:
    """(num_targets, Dout): ``Σ_{e→i} W̃ · (h_e ⊗ x_src(e))`` for h (E, K) in ``plan.order``, x (N, Din), src (E,)."""
    dtype = torch.promote_types(h.dtype, x.dtype)
    xj = x.to(dtype)[:, head.pooled_layout().to(x.device)][src[plan.order]]
    y = head.contract(pooled_outer(h.to(dtype), xj, plan.groups))
    return y.new_zeros(num_targets, head.dout).index_copy(0, plan.targets, y)
