"""Aggregate first on the reference backend: pool ``h̃_e ⊗ x_src(e)`` per target, apply W̃ once per target.

The messages are linear in W̃, so ``Σ_{e→i} W̃ · (h̃_e ⊗ x_src(e)) = W̃ · P_i`` with the pooled outer product
``P_i = Σ_{e→i} h̃_e ⊗ x_src(e)`` (K × Din).  Per edge that leaves one rank-1 update of P (2·K·Din FLOPs, done
as one batched GEMM per group of targets of equal in-degree d: ``(n, K, d) @ (n, d, Din)``) and per target one
application of the structured head (:meth:`~fastik.ops.structured.StructuredHead.contract`) — instead of the
head's channel mixes on every edge.  At degree 16 (the standard workload) that is ≈ 5× fewer FLOPs and one
(T, K, Din) intermediate instead of one E × (block width) tensor per block of W̃.

Edges are reordered by (in-degree of their target, target) — one stable sort, so the summation order and the
result are deterministic — and the G-MLP runs in that order (its inputs, not its E × H output, are permuted).
:func:`plan_pooling` says whether pooling pays for a call's edges (FLOPs and memory against the edge-wise head);
it needs the degree counts on the host (one host sync per call) and is skipped under ``torch.compile``.  Chunks of
edges are cut from the plan's order (:meth:`PoolingPlan.chunk`), so they hold whole targets but at their ends.
Where it is not used (in-degree ≈ 1–2, compiled graphs) the edge-wise head of
:func:`~fastik.ops.reference.aggregated_messages` runs.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

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

    def chunk(self, start: int, stop: int) -> tuple[Tensor, list[tuple[int, int]]]:
        """Edges ``order[start:stop]``: their targets (a slice of ``targets``) and (edges per target, targets) runs;
        a target cut by a chunk boundary is a run of its own in both chunks.  Host arithmetic only."""
        runs: list[tuple[int, int]] = []
        first, last = None, -1
        edge0 = target0 = 0
        for d, n in self.groups:
            edge1 = edge0 + d * n
            a, b = max(start, edge0), min(stop, edge1)
            if a < b:
                i, j = (a - edge0) // d, (b - 1 - edge0) // d  # the group's first and last target in [a, b)
                pieces = [(b - a, 1)] if i == j else [(edge0 + (i + 1) * d - a, 1), (d, j - i - 1),
                                                       (b - edge0 - j * d, 1)]
                for size, count in pieces:
                    if count and runs and runs[-1][0] == size:
                        runs[-1] = (size, runs[-1][1] + count)
                    elif count:
                        runs.append((size, count))
                first = target0 + i if first is None else first
                last = target0 + j
            edge0, target0 = edge1, target0 + n
        return self.targets[first or 0:last + 1], runs

    def cuts(self, floats: int, per_edge: int, per_target: int) -> list[int]:
        """Edge offsets 0 = b_0 < b_1 < … < b_m = E cutting ``order`` into chunks of whole targets that cost at most
        ``floats`` each (``per_edge`` per edge plus ``per_target`` per target); a target that alone costs more is
        cut into pieces of max(1, ⌊(floats - per_target) / per_edge⌋) edges.  Host arithmetic only."""
        bounds, pos, used = [0], 0, 0
        for d, n in self.groups:
            cost = d * per_edge + per_target
            if cost > floats:  # each of these targets in pieces, a chunk per piece
                piece = max(1, (floats - per_target) // per_edge)
                if used:
                    bounds.append(pos)
                    used = 0
                for _ in range(n):
                    bounds.extend(range(pos + piece, pos + d, piece))
                    pos += d
                    bounds.append(pos)
                continue
            while n:
                take = min(n, (floats - used) // cost)
                if take == 0:  # the chunk is full
                    bounds.append(pos)
                    used = 0
                    continue
                pos, used, n = pos + take * d, used + take * cost, n - take
        if bounds[-1] != pos:
            bounds.append(pos)
        return bounds


def group_by_degree(tgt: Tensor) -> PoolingPlan:
    """Group the edges of ``tgt`` (E,) by their target's in-degree: two stable sorts, one host sync."""
    by_target = torch.argsort(tgt, stable=True)
    targets, counts = torch.unique_consecutive(tgt[by_target], return_counts=True)
    edge_degree = torch.repeat_interleave(counts, counts)
    by_degree = torch.argsort(edge_degree, stable=True)
    degrees, sizes = torch.unique_consecutive(edge_degree[by_degree], return_counts=True)
    groups = [(d, s // d) for d, s in zip(degrees.tolist(), sizes.tolist())]
    return PoolingPlan(by_target[by_degree], targets[torch.argsort(counts, stable=True)], groups)


def plan_pooling(head: StructuredHead, tgt: Tensor, chunk_size: int | None = None) -> PoolingPlan | None:
    """The grouping of ``tgt`` when pooling costs fewer FLOPs than the edge-wise head and its (targets, K, Din)
    tensors are no larger than the edge-wise head's per-block intermediates together (or ≤ ``ALWAYS_FITS``
    elements per chunk of ``chunk_size`` edges); None otherwise (and for no edges, and under torch.compile).  For
    the standard workload (so3, ``16x0e + 16x1o``): mean in-degree ≥ 2.3 on large chunks, ≥ 1.4 on small ones."""
    e = tgt.shape[0]
    if e == 0 or torch.compiler.is_compiling():
        return None
    plan = group_by_degree(tgt)
    t = sum(n for _, n in plan.groups)
    pooled_size = head.k * head.din
    pooled_flops = e * 2 * pooled_size + t * head.contract_flops()
    chunks = -(-e // (chunk_size or e))
    fits = t * pooled_size <= max(e * head.footprint_per_edge(), chunks * ALWAYS_FITS)
    return plan if fits and pooled_flops < e * head.flops_per_edge() else None


def pooled_outer(h: Tensor, xj: Tensor, groups: list[tuple[int, int]],
                 mm: Callable[[Tensor, Tensor], Tensor] = torch.bmm) -> Tensor:
    """h (E, K), xj (E, Din) in plan order -> (T, K, Din): ``P_i = Σ_{e→i} h_e ⊗ xj_e``, one batched product
    ``mm`` per run of targets with d edges each."""
    parts, start = [], 0
    for d, n in groups:
        hs = h[start:start + n * d].reshape(n, d, h.shape[1])
        xs = xj[start:start + n * d].reshape(n, d, xj.shape[1])
        parts.append(mm(hs.transpose(1, 2), xs))
        start += n * d
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def pooled_conv(head: StructuredHead, h: Tensor, x: Tensor, src: Tensor, targets: Tensor,
                groups: list[tuple[int, int]], num_targets: int) -> Tensor:
    """(num_targets, Dout): ``Σ_{e→i} W̃ · (h_e ⊗ x_src(e))`` for h (E, K) and src (E,) in plan order (``groups``
    runs of edges of ``targets``, :meth:`PoolingPlan.chunk`), x (N, Din)."""
    dtype = torch.promote_types(h.dtype, x.dtype)
    xj = x.to(dtype)[:, head.pooled_layout().to(x.device)][src]
    y = head.contract(pooled_outer(h.to(dtype), xj, groups))
    return y.new_zeros(num_targets, head.dout).index_copy(0, targets, y)
