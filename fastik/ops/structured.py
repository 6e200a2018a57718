"""Block-structured weights: a weight as a short list of dense channel mixes times small fixed bases.

An equivariant weight between field types is zero wherever Schur's lemma forbids a
connection.  Stored densely it is 80–90 % zeros (the kernel head of the standard
workload, ``so3``, ``16x0e + 16x1o``, is 20 % dense; hidden linear layers ≈ 12 %).
Here each non-zero block is kept factorised: a learned coefficient tensor over
multiplicities (the channel mix) times a fixed basis over components, and contracted
factor by factor — or assembled into a dense matrix where the cost rules below say one GEMM
is faster.  This module knows nothing about groups: blocks are slices, coefficient
tensors and basis tensors.

Layouts (row-major, multiplicity-major inside a block: component ``u·r + a`` is
copy ``u`` of an ``r``-dimensional irrep, component ``a``):

* :class:`LinearTerm` — a block of ``y = x Wᵀ``: ``W[u·ra + a, v·rb + b] = Σ_t coef[u,v,t] basis[t,a,b]``.
* :class:`HeadTerm` — a block of the kernel head ``W̃`` (Dout, K, Din):
  ``W̃[u·ra + a, w·rc + c, v·rb + b] = Σ_t coef[u,v,w,t] basis[t,a,b,c]``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LinearTerm", "HeadTerm", "StructuredLinear", "StructuredHead", "linear_term_costs", "head_term_costs",
           "pooled_term_costs"]


@dataclass(frozen=True)
class LinearTerm:
    """One block of a linear map: rows ``out`` (mo·ra) of y, columns ``inp`` (mi·rb) of x."""

    out: slice
    inp: slice
    coef: Tensor   # (mo, mi, t)
    basis: Tensor  # (t, ra, rb)


@dataclass(frozen=True)
class HeadTerm:
    """One block of the kernel head: outputs ``out`` (mo·ra), features ``inp`` (mi·rb), hidden ``hid`` (mh·rc)."""

    out: slice
    inp: slice
    hid: slice
    coef: Tensor   # (mo, mi, mh, t)
    basis: Tensor  # (t, ra, rb, rc)


def _project(xb: Tensor, basis: Tensor) -> Tensor:
    """Σ_b x[n, v, b] basis[t, a, b] -> (n, v, t, a): the fixed-basis half of a linear block."""
    rb = basis.shape[2]
    flat = basis.movedim(2, 0).reshape(rb, -1)
    return (xb.reshape(-1, rb) @ flat).reshape(*xb.shape[:2], *basis.shape[:2])


def _accumulate(blocks: dict[tuple[int, int], Tensor], out: slice, value: Tensor) -> None:
    key = (out.start, out.stop)
    blocks[key] = value if key not in blocks else blocks[key] + value


def _assemble(blocks: dict[tuple[int, int], Tensor], rows: int, width: int, like: Tensor) -> Tensor:
    """Concatenate per-output-block results (rows, stop - start) into (rows, width), zeros elsewhere."""
    parts: list[Tensor] = []
    filled = 0
    for start, stop in sorted(blocks):
        value = blocks[(start, stop)]
        if start > filled:
            parts.append(like.new_zeros(rows, start - filled))
        parts.append(value)
        filled = stop
    if filled < width:
        parts.append(like.new_zeros(rows, width - filled))
    return torch.cat(parts, 1)


def linear_term_costs(term: LinearTerm) -> tuple[int, int]:
    """FLOPs per row of one block: (factored: basis projection + channel mix, dense block matmul)."""
    (mo, mi, nt), (_, ra, rb) = term.coef.shape, term.basis.shape
    return 2 * mi * rb * nt * ra + 2 * ra * mi * nt * mo, 2 * mo * ra * mi * rb


def head_term_costs(term: HeadTerm) -> tuple[int, int]:
    """FLOPs per edge of one block: (factored: basis contraction of h, batched product with x, channel mix;
    dense: the block's full outer product x ⊗ h and its dense matrix)."""
    (mo, mi, mh, nt), (_, ra, rb, rc) = term.coef.shape, term.basis.shape
    return 2 * ra * nt * mh * (rc * rb + rb * mi + mi * mo), 2 * mi * rb * mh * rc * (1 + mo * ra)


def _head_factored_is_cheaper(term: HeadTerm) -> bool:
    factored, dense = head_term_costs(term)
    return factored <= dense


def pooled_term_costs(term: HeadTerm) -> tuple[int, int]:
    """FLOPs per target of one block applied to a pooled outer product (:meth:`StructuredHead.contract`):
    (factored: basis contraction, channel mix; dense: the block's dense matrix)."""
    (mo, mi, mh, nt), (_, ra, rb, rc) = term.coef.shape, term.basis.shape
    return 2 * mh * mi * nt * ra * (rc * rb + mo), 2 * mh * rc * mi * rb * mo * ra


def _partition(blocks: list[tuple[slice, int, int]], width: int) -> list[tuple[int, int, int, int]]:
    """The distinct (start, stop, m, r) blocks of ``[0, width)`` given (slice, multiplicity m, irrep dim r) per
    term, gaps as (m = stop - start, r = 1); terms' slices must be equal or disjoint."""
    parts = sorted({(sl.start, sl.stop, m, r) for sl, m, r in blocks})
    out, filled = [], 0
    for start, stop, m, r in parts:
        if start < filled:
            raise ValueError(f"overlapping blocks in a structured head: [{start}, {stop}) starts before {filled}")
        if start > filled:
            out.append((filled, start, start - filled, 1))
        out.append((start, stop, m, r))
        filled = stop
    return out + ([(filled, width, width - filled, 1)] if filled < width else [])


def _component_major(parts: list[tuple[int, int, int, int]]) -> Tensor:
    """Column order listing each block component-major: ``u·r + a`` -> position ``a·m + u``."""
    return torch.cat([start + torch.arange(m * r).view(m, r).T.reshape(-1) for start, _, m, r in parts])


def _pieces(a: Tensor, rows: list[tuple[int, int, int, int]], cols: list[tuple[int, int, int, int]]
            ) -> dict[tuple[int, int], Tensor]:
    """The (n, ·, ·) blocks of ``a`` by (row start, column start), cut with ``split`` (whose backward is one
    ``cat``, where indexing's allocates a zero tensor of a's size per block)."""
    grid = [r.split([q - p for p, q, _, _ in cols], 2) for r in a.split([q - p for p, q, _, _ in rows], 1)]
    return {(row[0], col[0]): grid[i][j] for i, row in enumerate(rows) for j, col in enumerate(cols)}


#: FLOPs of one dense GEMM per FLOP of the factored path's small, memory-bound ops at equal time, and what the
#: ≈ 12 row-sized ops (forward and backward) of one factored block cost beyond their FLOPs, in dense FLOPs (≈ 0.2 ms
#: of a CPU core).  Measured on CPU for the so3 standard workload's hidden layers (bench/NOTES.md): the whole dense
#: matrix wins up to ≈ 8× the factored FLOPs, i.e. down to a density of ≈ 1/8 — which hidden layers (11–45 %) rarely
#: go below.
GEMM_ADVANTAGE = 8
BLOCK_OVERHEAD = 2_000_000


@dataclass(frozen=True)
class StructuredLinear:
    """``y = x Wᵀ`` for a block-structured W (dout, din): x (n, din) -> y (n, dout).

    Each block is contracted factored (project x on the basis, then one GEMM over
    (mi, t)) or, where that costs more (e.g. reducible irreps of small groups with
    many basis elements), as its dense sub-matrix — whichever :func:`linear_term_costs` says is cheaper.
    The whole dense matrix is used instead when it costs at most ``GEMM_ADVANTAGE`` × the factored FLOPs (plus
    ``BLOCK_OVERHEAD`` per block over the rows): one efficient GEMM beats many small memory-bound ops.
    """

    dout: int
    din: int
    terms: list[LinearTerm]

    def __call__(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """x (n, din) -> x Wᵀ (+ bias (dout,)): (n, dout)."""
        n = x.shape[0]
        if n * (2 * self.dout * self.din - GEMM_ADVANTAGE * self.flops_per_row()) <= len(self.terms) * BLOCK_OVERHEAD:
            dense = self.dense(x.dtype).T
            return x @ dense if bias is None else torch.addmm(bias, x, dense)
        blocks: dict[tuple[int, int], Tensor] = {}
        for term in self.terms:
            (mo, mi, nt), (_, ra, rb) = term.coef.shape, term.basis.shape
            coef, basis = term.coef.to(x.dtype), term.basis.to(x.dtype)
            factored, dense = linear_term_costs(term)
            if factored <= dense:
                z = _project(x[:, term.inp].reshape(n, mi, rb), basis)  # (n, mi, t, ra)
                y = z.permute(0, 3, 1, 2).reshape(n * ra, mi * nt) @ coef.reshape(mo, mi * nt).T
                y = y.reshape(n, ra, mo).transpose(1, 2).reshape(n, mo * ra)
            else:
                y = x[:, term.inp] @ torch.einsum("uvt,tab->uavb", coef, basis).reshape(mo * ra, mi * rb).T
            _accumulate(blocks, term.out, y)
        y = _assemble(blocks, n, self.dout, x)
        return y if bias is None else y + bias

    def dense(self, dtype: torch.dtype) -> Tensor:
        """The dense (dout, din) matrix (zeros where no block connects)."""
        return self._assembled(dtype, support=False)

    def support(self) -> Tensor:
        """bool (dout, din): the entries some block's basis reaches — everywhere else the dense matrix is a
        structural zero for every value of the coefficients."""
        return self._assembled(torch.float64, support=True) > 0

    def _assembled(self, dtype: torch.dtype, support: bool) -> Tensor:
        w = torch.zeros(self.dout, self.din, dtype=dtype, device=_device(self.terms))
        for t in self.terms:
            block = torch.einsum("uvt,tab->uavb", *_factors(t, dtype, support))
            w[t.out, t.inp] = block.reshape(t.out.stop - t.out.start, t.inp.stop - t.inp.start)
        return w

    def flops_per_row(self) -> int:
        """FLOPs of one row of :meth:`__call__`."""
        return sum(min(linear_term_costs(t)) for t in self.terms)


@dataclass(frozen=True)
class StructuredHead:
    """The kernel head W̃ (dout, k, din) as blocks; messages ``m_e = W̃ · vec(h̃_e ⊗ x_e)``."""

    dout: int
    k: int
    din: int
    terms: list[HeadTerm]

    def messages(self, h: Tensor, xj: Tensor) -> Tensor:
        """h (e, k), xj (e, din) -> messages (e, dout); nothing of size e·dout·din is formed.

        Factored blocks contract the small fixed basis first:
        ``G[e,a,t,w,b] = Σ_c basis[t,a,b,c] h[e,w,c]`` (one GEMM), then
        ``P[e,a,t,w,v] = Σ_b G[e,a,t,w,b] x[e,v,b]`` (one batched product; a broadcast multiply when
        ρin is one-dimensional), then the channel mix ``m[e,u,a] = Σ_{t,w,v} P[e,a,t,w,v] coef[u,v,w,t]``
        as one GEMM over (t, w, v).  Blocks whose basis is dense (small groups: reducible irreps, many
        basis elements) use their dense sub-matrix on the outer product x_block ⊗ h_block instead,
        whichever :func:`head_term_costs` says is cheaper.
        """
        e = h.shape[0]
        dtype = torch.promote_types(h.dtype, xj.dtype)
        h, xj = h.to(dtype), xj.to(dtype)
        blocks: dict[tuple[int, int], Tensor] = {}
        for term in self.terms:
            mo, mi, mh, nt = term.coef.shape
            _, ra, rb, rc = term.basis.shape
            coef, basis = term.coef.to(dtype), term.basis.to(dtype)
            if _head_factored_is_cheaper(term):
                g = h[:, term.hid].reshape(e * mh, rc) @ basis.permute(3, 2, 1, 0).reshape(rc, rb * ra * nt)
                g = g.reshape(e, mh, rb, ra * nt).permute(0, 3, 1, 2).reshape(e, ra * nt * mh, rb)
                xb = xj[:, term.inp].reshape(e, mi, rb)  # a strided view: CPU bmm is ≈ 6× slower on it than on a copy
                p = g * xb.reshape(e, 1, mi) if rb == 1 else torch.bmm(g, xb.transpose(1, 2).contiguous())  # (e, ra·nt·mh, mi)
                mix = coef.permute(3, 2, 1, 0).reshape(nt * mh * mi, mo)
                m = (p.reshape(e * ra, nt * mh * mi) @ mix).reshape(e, ra, mo).transpose(1, 2).reshape(e, mo * ra)
            else:
                outer = xj[:, term.inp][:, :, None] * h[:, term.hid][:, None, :]  # (e, mi·rb, mh·rc)
                wb = torch.einsum("uvwt,tabc->vbwcua", coef, basis)
                m = outer.reshape(e, mi * rb * mh * rc) @ wb.reshape(mi * rb * mh * rc, mo * ra)
            _accumulate(blocks, term.out, m)
        return _assemble(blocks, e, self.dout, h)

    def pooled_layout(self) -> Tensor:
        """Column order (din,) of x in the pooled layout: every block of x component-major.

        :meth:`contract` takes ``Σ_e h̃_e ⊗ x_e[inp_order]``: a block of mi copies of an rb-dimensional irrep is
        then ordered (b, v) instead of (v, b), so that each block of the pooled tensor reorders to
        (c, b, n, w, v) by moving whole rows of mi floats (≈ 10× faster than with v strided on CPU).
        """
        return _component_major(self._inp_blocks())

    def _hid_blocks(self) -> list[tuple[int, int, int, int]]:
        return _partition([(t.hid, t.coef.shape[2], t.basis.shape[3]) for t in self.terms], self.k)

    def _inp_blocks(self) -> list[tuple[int, int, int, int]]:
        return _partition([(t.inp, t.coef.shape[1], t.basis.shape[2]) for t in self.terms], self.din)

    def contract(self, pooled: Tensor) -> Tensor:
        """pooled (n, k, din) in :meth:`pooled_layout` -> (n, dout): ``y[n] = W̃ · pooled[n]``, block by block.

        ``pooled[n] = Σ_e h̃_e ⊗ x_src(e)`` over the edges of target n (aggregate first: by linearity the sum of
        the messages is W̃ applied once per target).  Per (hidden, input) block pair the pooled block is
        reordered once to (c, b, n, w, v) and contracted with the bases of every block reading it (one GEMM with
        few rows, the fast orientation on CPU), then each block's channel mix is one GEMM over (t, w, v) — or
        the block's dense sub-matrix where :func:`pooled_term_costs` says that is cheaper.
        """
        n = pooled.shape[0]
        dtype = pooled.dtype
        pieces = _pieces(pooled, self._hid_blocks(), self._inp_blocks())
        blocks: dict[tuple[int, int], Tensor] = {}
        by_piece: dict[tuple[int, int], list[HeadTerm]] = {}
        for term in self.terms:
            by_piece.setdefault((term.hid.start, term.inp.start), []).append(term)
        for key, terms in by_piece.items():
            mi, mh = terms[0].coef.shape[1:3]
            rb, rc = terms[0].basis.shape[2:]
            cheaper = [operator.le(*pooled_term_costs(t)) for t in terms]
            factored = [t for t, f in zip(terms, cheaper) if f]
            piece = pieces[key]  # (n, mh·rc, rb·mi)
            if factored:
                flat = piece.reshape(n, mh, rc, rb, mi).permute(2, 3, 0, 1, 4).reshape(rc * rb, n * mh * mi)
                bases = [t.basis.to(dtype).permute(1, 0, 3, 2).reshape(-1, rc * rb) for t in factored]  # (a·t, c·b)
                projected = (torch.cat(bases) @ flat).split([b.shape[0] for b in bases])
                for term, g in zip(factored, projected):
                    mo, _, _, nt = term.coef.shape
                    ra = term.basis.shape[1]
                    g = g.reshape(ra, nt, n, mh * mi).permute(2, 0, 1, 3).reshape(n * ra, nt * mh * mi)
                    mix = term.coef.to(dtype).permute(3, 2, 1, 0).reshape(nt * mh * mi, mo)
                    m = (g @ mix).reshape(n, ra, mo).transpose(1, 2).reshape(n, mo * ra)
                    _accumulate(blocks, term.out, m)
            for term in (t for t, f in zip(terms, cheaper) if not f):
                mo, ra = term.coef.shape[0], term.basis.shape[1]
                wb = torch.einsum("uvwt,tabc->wcbvua", term.coef.to(dtype), term.basis.to(dtype))
                m = piece.reshape(n, mh * rc * rb * mi) @ wb.reshape(mh * rc * rb * mi, mo * ra)
                _accumulate(blocks, term.out, m)
        return _assemble(blocks, n, self.dout, pooled)

    def contract_flops(self) -> int:
        """FLOPs of :meth:`contract` per target (forward)."""
        return sum(min(pooled_term_costs(t)) for t in self.terms)

    def dense(self, dtype: torch.dtype) -> Tensor:
        """The dense (dout, k, din) weight W̃ (zeros where Schur's lemma forbids a connection)."""
        return self._assembled(dtype, support=False)

    def support(self) -> Tensor:
        """bool (dout, k, din): the entries of W̃ some block's basis reaches (structural zeros elsewhere)."""
        return self._assembled(torch.float64, support=True) > 0

    def _assembled(self, dtype: torch.dtype, support: bool) -> Tensor:
        w = torch.zeros(self.dout, self.k, self.din, dtype=dtype, device=_device(self.terms))
        for t in self.terms:
            block = torch.einsum("uvwt,tabc->uawcvb", *_factors(t, dtype, support))
            u, a, ww, c, v, b = block.shape
            w[t.out, t.hid, t.inp] = block.reshape(u * a, ww * c, v * b)
        return w

    def _work_per_block(self) -> list[int]:
        return [t.basis.shape[0] * t.basis.shape[1] * t.coef.shape[1] * t.coef.shape[2]
                if _head_factored_is_cheaper(t) else (t.inp.stop - t.inp.start) * (t.hid.stop - t.hid.start)
                for t in self.terms]

    def work_per_edge(self) -> int:
        """Floats per edge of the largest intermediate of :meth:`messages` (sizes its edge chunks)."""
        return max([1] + self._work_per_block())

    def footprint_per_edge(self) -> int:
        """Floats per edge of every block's largest intermediate of :meth:`messages` together (what a chunk keeps
        for its backward)."""
        return sum(self._work_per_block())

    def flops_per_edge(self) -> int:
        """FLOPs of one edge's message (forward), as :meth:`messages` computes it."""
        return sum(min(head_term_costs(t)) for t in self.terms)

    @staticmethod
    def from_dense(weight: Tensor) -> "StructuredHead":
        """A dense (dout, k, din) weight as a single block (no structure to exploit)."""
        dout, k, din = weight.shape
        one = torch.ones(1, 1, 1, 1, dtype=weight.dtype, device=weight.device)
        term = HeadTerm(slice(0, dout), slice(0, din), slice(0, k), weight.permute(0, 2, 1)[..., None], one)
        return StructuredHead(dout, k, din, [term])


def _factors(term: LinearTerm | HeadTerm, dtype: torch.dtype, support: bool) -> tuple[Tensor, Tensor]:
    """A block's (coefficients, basis) in ``dtype``; for its support, ones and |basis| (a sum of non-negative
    terms is zero only where every basis element is)."""
    if support:
        return torch.ones(term.coef.shape, dtype=dtype, device=term.coef.device), term.basis.to(dtype).abs()
    return term.coef.to(dtype), term.basis.to(dtype)


def _device(terms: list) -> torch.device | None:
    return terms[0].coef.device if terms else None
