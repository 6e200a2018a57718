"""Graph construction, batching and readout for point clouds (torch only, CPU and CUDA).

Conventions (the same as PyG and :class:`fastik.ImplicitPointConv`):

- ``edge_index`` is ``(2, E)`` int64, row 0 the source ``j``, row 1 the target ``i``; a message
  flows ``j -> i`` along ``r = pos[j] - pos[i]``.
- Builders return edges sorted by target, then by source, so ``fastik.ops.build_csr`` is cheap and
  the result is the same on every run and every device.
- ``batch`` is an ``(N,)`` int64 tensor of graph ids in non-decreasing order (as PyG's ``Batch``
  makes it); no edge ever joins two graphs.

The builders use a cell list: points are bucketed into a grid of cells keyed by
``(graph, cell)``, sorted by key, and each target only looks at the 3^D cells around its own.
Candidates are expanded in chunks of bounded size, so memory is O(N + E + chunk), never O(N²).
"""
from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .ops.aggregate import segment_sum

__all__ = ["radius_graph", "knn_graph", "pool", "batch_graphs", "BatchedGraphs", "from_pyg"]

# Candidate pairs expanded at once (each costs a few int64 / float words): ~2M pairs ≈ 100 MB peak.
_CHUNK_PAIRS = 1 << 21
# Cell sizes are enlarged by this relative margin so that float round-off in the distances can
# never put a pair within the radius into non-adjacent cells.
_MARGIN = 1e-5
_MAX_KEY = 1 << 62


# --------------------------------------------------------------------------- validation


def _as_pos_batch(pos: Any, batch: Optional[Tensor], op: str) -> tuple[Tensor, Optional[Tensor]]:
    """Accept ``pos`` as a tensor or a PyG ``Data`` / ``Batch``-like object (``.pos``, ``.batch``)."""
    if not isinstance(pos, Tensor):
        data_pos = getattr(pos, "pos", None)
        if not isinstance(data_pos, Tensor):
            raise TypeError(
                f"{op}: pos must be an (N, 2) / (N, 3) float tensor or a PyG Data / Batch with a "
                f".pos tensor, got {type(pos).__name__}"
            )
        if batch is not None:
            raise ValueError(f"{op}: pass batch either inside the Data / Batch object or as batch=, not both")
        pos, batch = data_pos, getattr(pos, "batch", None)
    if pos.dim() != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"{op}: pos must have shape (N, 2) or (N, 3), got {tuple(pos.shape)}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{op}: pos must be float32 or float64, got {pos.dtype}; convert with pos.float()")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError(f"{op}: pos has NaN or infinite coordinates")
    if batch is not None:
        _check_batch(batch, pos.shape[0], pos.device, op, "pos")
    return pos.detach(), batch


def _check_batch(batch: Any, n: int, device: torch.device, op: str, other: str) -> None:
    if not isinstance(batch, Tensor):
        raise TypeError(f"{op}: batch must be an (N,) int64 tensor or None, got {type(batch).__name__}")
    if batch.dtype != torch.int64:
        raise TypeError(f"{op}: batch must be int64, got {batch.dtype}; convert with batch.long()")
    if batch.shape != (n,):
        raise ValueError(f"{op}: batch must have shape ({n},) to match {other}, got {tuple(batch.shape)}")
    if batch.device != device:
        raise ValueError(f"{op}: batch is on {batch.device} but {other} is on {device}; move both to one device")
    if n and bool(batch[0] < 0):
        raise ValueError(f"{op}: batch ids must be >= 0, got min {int(batch.min())}")
    if n > 1 and bool((batch[1:] < batch[:-1]).any()):
        i = int(torch.nonzero(batch[1:] < batch[:-1])[0, 0])
        raise ValueError(
            f"{op}: batch must be sorted (non-decreasing), but batch[{i}]={int(batch[i])} > "
            f"batch[{i + 1}]={int(batch[i + 1])}; concatenate the clouds graph by graph (see batch_graphs)"
        )


def _check_count(value: Any, op: str, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {value}")


# --------------------------------------------------------------------------- cell list


class _Grid(NamedTuple):
    """Points bucketed into cells; ``keys`` are the occupied cells' sorted int64 keys."""

    cell: Tensor    # (N, D) int64 cell coordinates of every point
    ext: Tensor     # (B, D) int64 number of cells of each graph along each axis
    base: Tensor    # (B,) int64 first key of each graph
    order: Tensor   # (N,) int64 points sorted by (key, index)
    keys: Tensor    # (C,) int64 occupied keys, ascending
    start: Tensor   # (C,) int64 first position in `order` of each occupied cell
    count: Tensor   # (C,) int64 points per occupied cell


def _linear(cell: Tensor, ext: Tensor) -> Tensor:
    """Row-major linear index of ``cell`` (..., D) in a box of ``ext`` (..., D) cells."""
    key = cell[..., 0]
    for d in range(1, cell.shape[-1]):
        key = key * ext[..., d] + cell[..., d]
    return key


def _graph_bounds(pos64: Tensor, graph: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """Per-graph bounding box ``(lo, hi)``, each (B, D) float64 (zeros for empty graphs)."""
    idx = graph[:, None].expand_as(pos64)
    lo = pos64.new_zeros(num_graphs, pos64.shape[1]).scatter_reduce(0, idx, pos64, "amin", include_self=False)
    hi = pos64.new_zeros(num_graphs, pos64.shape[1]).scatter_reduce(0, idx, pos64, "amax", include_self=False)
    return lo, hi


def _build_grid(pos64: Tensor, graph: Tensor, lo: Tensor, hi: Tensor, size: Tensor) -> _Grid:
    """Cell list with per-graph cell edge ``size`` (B,) float64 (enlarged where keys would overflow)."""
    num_graphs, dim = lo.shape
    # Cap each graph's cell count so that all keys fit in int64.
    per_axis = math.floor((_MAX_KEY / max(num_graphs, 1)) ** (1.0 / dim)) - 2
    size = torch.maximum(size, (hi - lo).amax(1) / per_axis)
    ext = ((hi - lo) / size[:, None]).floor().long() + 1
    cells = torch.cumprod(ext, 1)[:, -1]
    base = torch.cumsum(cells, 0) - cells
    cell = ((pos64 - lo[graph]) / size[graph, None]).floor().long()
    cell = torch.minimum(cell.clamp_(min=0), ext[graph] - 1)
    key = base[graph] + _linear(cell, ext[graph])
    key_sorted, order = torch.sort(key, stable=True)
    keys, count = torch.unique_consecutive(key_sorted, return_counts=True)
    start = torch.cumsum(count, 0) - count
    return _Grid(cell, ext, base, order, keys, start, count)


def _neighbour_cells(grid: _Grid, graph: Tensor, targets: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """For each target and each cell offset (O, D): ``(start, count)`` (T, O) of that cell in ``order``."""
    g = graph[targets]
    nc = grid.cell[targets, None, :] + offsets[None]                   # (T, O, D)
    ext = grid.ext[g][:, None, :].expand_as(nc)
    valid = ((nc >= 0) & (nc < ext)).all(-1)
    key = grid.base[g][:, None] + _linear(nc, ext)
    at = torch.searchsorted(grid.keys, key).clamp_(max=grid.keys.numel() - 1)
    found = valid & (grid.keys[at] == key)
    return grid.start[at], torch.where(found, grid.count[at], 0)


def _candidates(grid: _Grid, graph: Tensor, targets: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(target, source)`` candidate pairs, grouped by target in the order of ``targets``, in
    chunks of about ``_CHUNK_PAIRS`` pairs (more only when one target alone has more candidates)."""
    dim = grid.cell.shape[1]
    offsets = torch.tensor(list(itertools.product((-1, 0, 1), repeat=dim)), device=targets.device)
    for block in targets.split(max(1, _CHUNK_PAIRS // offsets.shape[0])):
        start, count = _neighbour_cells(grid, graph, block, offsets)
        cum = count.sum(1).cumsum(0)
        a = 0
        while a < block.numel():
            done = int(cum[a - 1]) if a else 0
            b = max(a + 1, int(torch.searchsorted(cum, done + _CHUNK_PAIRS, right=True)))
            cnt, st = count[a:b].reshape(-1), start[a:b].reshape(-1)
            total = int(cum[b - 1]) - done
            first = torch.cumsum(cnt, 0) - cnt
            within = torch.arange(total, device=cnt.device) - first.repeat_interleave(cnt, output_size=total)
            src = grid.order[st.repeat_interleave(cnt, output_size=total) + within]
            tgt = block[a:b].repeat_interleave(offsets.shape[0]).repeat_interleave(cnt, output_size=total)
            yield tgt, src
            a = b


def _sq_dist(pos: Tensor, src: Tensor, tgt: Tensor) -> Tensor:
    return (pos[src] - pos[tgt]).square().sum(1)


def _order_by(tgt: Tensor, src: Tensor, n: int, d2: Optional[Tensor] = None) -> Tensor:
    """Permutation sorting pairs by (target, source), or by (target, d2, source) when ``d2`` is given."""
    perm = torch.sort(tgt * n + src, stable=True).indices
    if d2 is not None:
        perm = perm[torch.sort(d2[perm], stable=True).indices]
        perm = perm[torch.sort(tgt[perm], stable=True).indices]
    return perm


def _runs(tgt_sorted: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For pairs grouped by target: the targets, their pair counts and each pair's rank in its run."""
    targets, counts = torch.unique_consecutive(tgt_sorted, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(tgt_sorted.numel(), device=tgt_sorted.device) - first.repeat_interleave(counts)
    return targets, counts, rank


def _empty_edges(device: torch.device) -> Tensor:
    return torch.empty(2, 0, dtype=torch.int64, device=device)


def _setup(pos: Tensor, batch: Optional[Tensor]) -> tuple[Tensor, Tensor, int, Tensor, Tensor]:
    """float64 positions, graph ids, number of graphs and per-graph bounding boxes."""
    pos64 = pos.double()
    graph = batch if batch is not None else torch.zeros(pos.shape[0], dtype=torch.int64, device=pos.device)
    num_graphs = int(graph[-1]) + 1
    lo, hi = _graph_bounds(pos64, graph, num_graphs)
    return pos64, graph, num_graphs, lo, hi


# --------------------------------------------------------------------------- builders


def radius_graph(
    pos: Tensor,
    r: float,
    batch: Optional[Tensor] = None,
    max_num_neighbors: Optional[int] = None,
    loop: bool = False,
) -> Tensor:
    """Edges ``j -> i`` between points of the same graph with ``|pos[j] - pos[i]| <= r``.

    Args:
        pos: ``(N, D)`` float32 / float64, D = 2 or 3, on any device; or a PyG ``Data`` /
            ``Batch``-like object with ``.pos`` (and ``.batch``).
        r: radius ``> 0``. Distances are computed in ``pos.dtype``.
        batch: ``(N,)`` int64 sorted graph ids, or None for a single graph.
        max_num_neighbors: keep at most this many sources per target: the nearest ones, ties in
            distance broken by the smaller source index. None keeps all.
        loop: include self-loops ``i -> i``.

    Returns:
        ``edge_index`` ``(2, E)`` int64 on ``pos.device`` (row 0 source, row 1 target), sorted by
        target, then by source. Memory O(N + E), independent of how spread out the points are.

    Raises:
        TypeError / ValueError: bad shapes, dtypes or devices, ``r <= 0``, unsorted ``batch``.
    """
    op = "fastik.graphs.radius_graph"
    pos, batch = _as_pos_batch(pos, batch, op)
    if isinstance(r, bool) or not isinstance(r, numbers.Real):
        raise TypeError(f"{op}: r must be a number, got {type(r).__name__}; use float(r) for a tensor")
    r = float(r)
    if not math.isfinite(r) or r <= 0:
        raise ValueError(f"{op}: r must be a finite number > 0, got {r!r}")
    _check_count(max_num_neighbors, op, "max_num_neighbors", allow_none=True)
    n = pos.shape[0]
    if n == 0:
        return _empty_edges(pos.device)
    pos64, graph, num_graphs, lo, hi = _setup(pos, batch)
    grid = _build_grid(pos64, graph, lo, hi, pos64.new_full((num_graphs,), r * (1 + _MARGIN)))
    r2 = r * r
    parts = []
    for tgt, src in _candidates(grid, graph, torch.arange(n, device=pos.device)):
        d2 = _sq_dist(pos, src, tgt)
        keep = d2 <= r2
        if not loop:
            keep &= src != tgt
        tgt, src, d2 = tgt[keep], src[keep], d2[keep]
        if max_num_neighbors is not None:
            perm = _order_by(tgt, src, n, d2)
            tgt, src = tgt[perm], src[perm]
            nearest = _runs(tgt)[2] < max_num_neighbors
            tgt, src = tgt[nearest], src[nearest]
        perm = _order_by(tgt, src, n)
        parts.append(torch.stack([src[perm], tgt[perm]]))
    return torch.cat(parts, 1)


def _knn_cell_size(lo: Tensor, hi: Tensor, counts: Tensor, k: int) -> Tensor:
    """Per-graph cell edge for which a ball of that radius holds about ``1.5 k`` points.

    The density is estimated on the bounding box, with axes thinner than the cell counted as one
    cell thick (so flat or linear clouds get their 2D / 1D density): a fixed point iteration.
    """
    span = (hi - lo).clamp(min=0)
    dim = span.shape[1]
    unit_ball = math.pi ** (dim / 2) / math.gamma(dim / 2 + 1)
    frac = (1.5 * k / (unit_ball * counts.clamp(min=1).double())).clamp(max=1)
    size = span.amax(1)
    for _ in range(8):
        size = (torch.maximum(span, size[:, None]).prod(1) * frac) ** (1.0 / dim)
    return torch.where(size > 0, size, torch.ones_like(size))


def knn_graph(pos: Tensor, k: int, batch: Optional[Tensor] = None, loop: bool = False) -> Tensor:
    """Edges ``j -> i`` from each point's ``k`` nearest points ``j`` of the same graph.

    Args:
        pos: ``(N, D)`` float32 / float64, D = 2 or 3; or a PyG ``Data`` / ``Batch``-like object.
        k: neighbours per target, ``>= 1``; a graph with fewer than ``k`` other points (``k``
            points with ``loop=True``) connects each target to all of them.
        batch: ``(N,)`` int64 sorted graph ids, or None for a single graph.
        loop: count the point itself as a neighbour (at distance 0).

    Returns:
        ``edge_index`` ``(2, E)`` int64 (row 0 source, row 1 target), sorted by target, then by
        source. Ties in distance are broken by the smaller source index, so the result is
        deterministic.

    Memory is O(N + E + chunk): a cell list sized from each graph's bounding-box density for
    about ``1.5 k`` points per ball; targets whose ``k``-th neighbour may lie outside the 3^D cells
    around them are retried on cells twice as large. (A dense cluster with far outliers makes the
    cells too large: slower, never more memory.)
    """
    op = "fastik.graphs.knn_graph"
    pos, batch = _as_pos_batch(pos, batch, op)
    _check_count(k, op, "k")
    n = pos.shape[0]
    if n == 0:
        return _empty_edges(pos.device)
    pos64, graph, num_graphs, lo, hi = _setup(pos, batch)
    size = _knn_cell_size(lo, hi, torch.bincount(graph, minlength=num_graphs), k)
    span = (hi - lo).amax(1)
    todo = torch.arange(n, device=pos.device)
    resolved = torch.zeros(n, dtype=torch.bool, device=pos.device)
    parts = []
    while todo.numel():
        grid = _build_grid(pos64, graph, lo, hi, size)
        whole = size >= span  # the 3^D cells around any point cover its whole graph
        for tgt, src in _candidates(grid, graph, todo):
            d2 = _sq_dist(pos, src, tgt)
            # Only points within `safe` of the target are sure to lie in the cells searched: if k of
            # them are, they are the k nearest; otherwise the target is retried on coarser cells.
            safe = (size[graph[tgt]] / (1 + _MARGIN)).square().to(d2.dtype)
            keep = (d2 <= safe) | whole[graph[tgt]]
            if not loop:
                keep &= src != tgt
            tgt, src, d2 = tgt[keep], src[keep], d2[keep]
            perm = _order_by(tgt, src, n, d2)
            tgt, src = tgt[perm], src[perm]
            targets, counts, rank = _runs(tgt)
            ok = whole[graph[targets]] | (counts >= k)
            keep = (rank < k) & ok.repeat_interleave(counts)
            parts.append(torch.stack([src[keep], tgt[keep]]))
            resolved[targets[ok]] = True
        resolved[todo[whole[graph[todo]]]] = True  # includes points alone in their graph (no candidate)
        todo = todo[~resolved[todo]]
        size = size * 2
    edges = torch.cat(parts, 1)
    return edges[:, _order_by(edges[1], edges[0], n)]


# --------------------------------------------------------------------------- batching and readout


def pool(x: Tensor, batch: Optional[Tensor] = None, reduce: str = "sum", num_graphs: Optional[int] = None) -> Tensor:
    """Per-graph readout: sum or mean of node features over each graph.

    Both are linear, so they are equivariant for any field type (a pooled ``1o`` field is a vector).

    Args:
        x: ``(N, C)`` float32 / float64 / bfloat16 node features.
        batch: ``(N,)`` int64 sorted graph ids, or None (one graph).
        reduce: ``"sum"`` or ``"mean"`` (an empty graph gives zeros).
        num_graphs: ``B``; default ``batch.max() + 1`` (one host sync on CUDA). Pass it when
            trailing graphs may be empty.

    Returns:
        ``(B, C)`` tensor of ``x.dtype``; deterministic (segmented sum), differentiable.
    """
    op = "fastik.graphs.pool"
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{op}: x must be an (N, C) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"{op}: reduce must be 'sum' or 'mean', got {reduce!r}")
    n = x.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.int64, device=x.device)
        num_graphs = 1 if num_graphs is None else num_graphs
    _check_batch(batch, n, x.device, op, "x")
    if num_graphs is None:
        num_graphs = int(batch[-1]) + 1 if n else 0
    if isinstance(num_graphs, bool) or not isinstance(num_graphs, int) or num_graphs < 0:
        raise ValueError(f"{op}: num_graphs must be an int >= 0, got {num_graphs!r}")
    if n and int(batch[-1]) >= num_graphs:
        raise ValueError(f"{op}: batch has graph id {int(batch[-1])} but num_graphs={num_graphs}")
    counts = torch.bincount(batch, minlength=num_graphs)
    rowptr = torch.zeros(num_graphs + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    out = segment_sum(x, rowptr)
    if reduce == "mean":
        out = out / counts.clamp(min=1).to(out.dtype)[:, None]
    return out


class BatchedGraphs(NamedTuple):
    """Several graphs as one disconnected graph (the layout of a PyG ``Batch``)."""

    pos: Tensor                   # (N, D) concatenated positions
    x: Optional[Tensor]           # (N, C) concatenated features, or None
    batch: Tensor                 # (N,) int64 graph id of every node
    ptr: Tensor                   # (B+1,) int64 first node of each graph
    edge_index: Optional[Tensor]  # (2, E) int64 with node offsets applied, or None


def batch_graphs(
    pos: Sequence[Tensor],
    x: Optional[Sequence[Tensor]] = None,
    edge_index: Optional[Sequence[Tensor]] = None,
) -> BatchedGraphs:
    """Concatenate B clouds into one batch.

    Args:
        pos: B tensors ``(N_b, D)`` (same D, dtype and device).
        x: optional B tensors ``(N_b, C)``.
        edge_index: optional B tensors ``(2, E_b)`` of node indices local to each cloud;
            they are shifted by the cloud's first node.

    Returns:
        :class:`BatchedGraphs` ``(pos, x, batch, ptr, edge_index)``.
    """
    op = "fastik.graphs.batch_graphs"
    pos = list(pos)
    if not pos:
        raise ValueError(f"{op}: need at least one cloud")
    for name, seq in (("x", x), ("edge_index", edge_index)):
        if seq is not None and len(seq) != len(pos):
            raise ValueError(f"{op}: got {len(pos)} position tensors but {len(seq)} {name} tensors")
    for b, p in enumerate(pos):
        if not isinstance(p, Tensor) or p.dim() != 2 or p.shape[1] != pos[0].shape[1]:
            raise ValueError(f"{op}: pos[{b}] must be an (N_b, {pos[0].shape[1]}) tensor like pos[0], got "
                             f"{getattr(p, 'shape', type(p).__name__)}")
        if x is not None and x[b].shape[0] != p.shape[0]:
            raise ValueError(f"{op}: x[{b}] has {x[b].shape[0]} rows but pos[{b}] has {p.shape[0]} points")
        if edge_index is not None:
            e = edge_index[b]
            if e.dim() != 2 or e.shape[0] != 2 or (e.numel() and not 0 <= int(e.min()) <= int(e.max()) < p.shape[0]):
                raise ValueError(f"{op}: edge_index[{b}] must be (2, E_b) with indices in [0, {p.shape[0]})")
    sizes = torch.tensor([p.shape[0] for p in pos], dtype=torch.int64)
    ptr = torch.zeros(len(pos) + 1, dtype=torch.int64)
    torch.cumsum(sizes, 0, out=ptr[1:])
    device = pos[0].device
    batch = torch.repeat_interleave(torch.arange(len(pos)), sizes).to(device)
    ei = None
    if edge_index is not None:
        ei = torch.cat([e.long() + int(o) for e, o in zip(edge_index, ptr[:-1])], 1)
    return BatchedGraphs(
        torch.cat(pos), None if x is None else torch.cat(list(x)), batch, ptr.to(device), ei
    )


_MaybeTensor = Optional[Tensor]


def from_pyg(data: Any) -> tuple[_MaybeTensor, _MaybeTensor, _MaybeTensor, _MaybeTensor, _MaybeTensor]:
    """Unpack a PyG ``Data`` / ``Batch`` (duck-typed; torch_geometric is never imported).

    Returns:
        ``(x, pos, edge_index, batch, edge_attr)``; each None where the object lacks it
        (``batch`` is None for a single ``Data``).
    """
    fields = ("x", "pos", "edge_index", "batch", "edge_attr")
    if not any(hasattr(data, f) for f in ("x", "pos", "edge_index")):
        raise TypeError(
            f"fastik.graphs.from_pyg: expected a torch_geometric Data / Batch (with .x, .pos or "
            f".edge_index), got {type(data).__name__}"
        )
    out = tuple(getattr(data, f, None) for f in fields)
    for f, v in zip(fields, out):
        if v is not None and not isinstance(v, Tensor):
            raise TypeError(f"fastik.graphs.from_pyg: data.{f} must be a tensor or None, got {type(v).__name__}")
    return out  # type: ignore[return-value]
