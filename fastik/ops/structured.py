"""Block-structured weights: a weight as a short list of dense channel mixes times small fixed bases.

An equivariant weight between field types is zero wherever Schur's lemma forbids a
connection.  Stored densely it is 80–90 % zeros (the kernel head of the standard
workload, ``so3``, ``16x0e + 16x1o``, is 20 % dense; hidden linear layers ≈ 12 %).
Here each non-zero block is kept factorised: a learned coefficient tensor over
multiplicities (the channel mix) times a fixed basis over components, and contracted
in that order.  This module knows nothing about groups: blocks are slices, coefficient
tensors and basis tensors.

Layouts (row-major, multiplicity-major inside a block: component ``u·r + a`` is
copy ``u`` of an ``r``-dimensional irrep, component ``a``):

* :class:`LinearTerm` — a block of ``y = x Wᵀ``: ``W[u·ra + a, v·rb + b] = Σ_t coef[u,v,t] basis[t,a,b]``.
* :class:`HeadTerm` — a block of the kernel head ``W̃`` (Dout, K, Din):
  ``W̃[u·ra + a, w·rc + c, v·rb + b] = Σ_t coef[u,v,w,t] basis[t,a,b,c]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LinearTerm", "HeadTerm", "StructuredLinear", "StructuredHead", "basis_nonzeros", "linear_term_costs",
           "head_term_costs"]


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
    nonzeros: tuple = ()  # nonzeros[t][a]: ((b, c, basis[t,a,b,c]), …) — :func:`basis_nonzeros`


def basis_nonzeros(basis: Tensor) -> tuple:
    """The non-zero entries of a (t, ra, rb, rc) basis as nested tuples ``[t][a] -> ((b, c, value), …)``.

    Computed once per basis (on the host) so that contractions loop over structural
    non-zeros only; the bases are cleaned so that round-off entries are exactly zero.
    """
    nt, ra = basis.shape[:2]
    b64 = basis.detach().to("cpu", torch.float64)
    return tuple(tuple(tuple((int(b), int(c), float(b64[t, a, b, c])) for b, c in b64[t, a].nonzero().tolist())
                       for a in range(ra)) for t in range(nt))


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


def _nnz(term: HeadTerm) -> int:
    return sum(len(entries) for per_t in term.nonzeros for entries in per_t)


def head_term_costs(term: HeadTerm) -> tuple[int, int]:
    """FLOPs per edge of one block: (factored: one outer product per basis non-zero + channel mix,
    dense: the block's full outer product x ⊗ h and its dense matrix)."""
    (mo, mi, mh, nt), (_, ra, rb, rc) = term.coef.shape, term.basis.shape
    return 2 * _nnz(term) * mi * mh + 2 * ra * mi * mh * nt * mo, 2 * mi * rb * mh * rc * (1 + mo * ra)


#: cost of launching one small torch op, in FLOP-equivalents (≈ 10 µs of a CPU core): the factored
#: contraction issues ≈ 3 ops per basis non-zero, which dominates for blocks with many non-zeros and
#: few edges (e.g. high-degree irreps on small clouds)
OP_OVERHEAD = 50_000


def _head_factored_is_cheaper(term: HeadTerm, edges: int) -> bool:
    factored, dense = head_term_costs(term)
    ops = 3 * _nnz(term) + 2 * term.basis.shape[1]
    return factored * edges + ops * OP_OVERHEAD <= dense * edges + 4 * OP_OVERHEAD


@dataclass(frozen=True)
class StructuredLinear:
    """``y = x Wᵀ`` for a block-structured W (dout, din): x (n, din) -> y (n, dout).

    Each block is contracted factored (project x on the basis, then one GEMM over
    (mi, t)) or, where that costs more (e.g. reducible irreps of small groups with
    many basis elements), as its dense sub-matrix — whichever :func:`linear_term_costs` says is cheaper.
    """

    dout: int
    din: int
    terms: list[LinearTerm]

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
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
        return _assemble(blocks, n, self.dout, x)

    def dense(self, dtype: torch.dtype) -> Tensor:
        """The dense (dout, din) matrix (zeros where no block connects)."""
        w = torch.zeros(self.dout, self.din, dtype=dtype, device=_device(self.terms))
        for t in self.terms:
            block = torch.einsum("uvt,tab->uavb", t.coef.to(dtype), t.basis.to(dtype))
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

        Factored blocks: per output component a, ``P_a[e,v,w,t] = Σ_{b,c} basis[t,a,b,c] x[e,v,b] h[e,w,c]``
        as one outer product (e, mi, mh) per non-zero basis entry, then the channel mix
        ``m[e,u,a] = P_a · coef[u]`` as one GEMM over (v, w, t).  Blocks whose basis is
        dense (small groups: reducible irreps, many basis elements) use their dense
        sub-matrix on the outer product x_block ⊗ h_block instead (:func:`head_term_costs`, plus a
        per-op overhead, so that for few edges blocks with many non-zeros go dense too).
        """
        e = h.shape[0]
        dtype = torch.promote_types(h.dtype, xj.dtype)
        h, xj = h.to(dtype), xj.to(dtype)
        blocks: dict[tuple[int, int], Tensor] = {}
        for term in self.terms:
            mo, mi, mh, nt = term.coef.shape
            _, ra, rb, rc = term.basis.shape
            coef = term.coef.to(dtype)
            if _head_factored_is_cheaper(term, e):
                # component-major copies: xs[b] (e, mi) and hs[c] (e, mh) contiguous, for fast outer products
                xs = xj[:, term.inp].reshape(e, mi, rb).permute(2, 0, 1).contiguous()
                hs = h[:, term.hid].reshape(e, mh, rc).permute(2, 0, 1).contiguous()
                mix = coef.permute(1, 2, 3, 0).reshape(mi * mh * nt, mo)
                comps = []
                for a in range(ra):
                    per_t = []
                    for t in range(nt):
                        p = None
                        for b, c, value in term.nonzeros[t][a]:
                            outer = (xs[b] * value)[:, :, None] * hs[c][:, None, :]
                            p = outer if p is None else p + outer
                        per_t.append(h.new_zeros(e, mi, mh) if p is None else p)
                    pa = per_t[0][..., None] if nt == 1 else torch.stack(per_t, -1)
                    comps.append(pa.reshape(e, mi * mh * nt) @ mix)
                m = torch.stack(comps, -1).reshape(e, mo * ra)
            else:
                outer = xj[:, term.inp][:, :, None] * h[:, term.hid][:, None, :]  # (e, mi·rb, mh·rc)
                wb = torch.einsum("uvwt,tabc->vbwcua", coef, term.basis.to(dtype))
                m = outer.reshape(e, mi * rb * mh * rc) @ wb.reshape(mi * rb * mh * rc, mo * ra)
            _accumulate(blocks, term.out, m)
        return _assemble(blocks, e, self.dout, h)

    def dense(self, dtype: torch.dtype) -> Tensor:
        """The dense (dout, k, din) weight W̃ (zeros where Schur's lemma forbids a connection)."""
        w = torch.zeros(self.dout, self.k, self.din, dtype=dtype, device=_device(self.terms))
        for t in self.terms:
            block = torch.einsum("uvwt,tabc->uawcvb", t.coef.to(dtype), t.basis.to(dtype))
            u, a, ww, c, v, b = block.shape
            w[t.out, t.hid, t.inp] = block.reshape(u * a, ww * c, v * b)
        return w

    def work_per_edge(self) -> int:
        """Floats per edge of the largest intermediate of :meth:`messages` (sizes its edge chunks)."""
        sizes = [max(t.coef[0].numel() * t.basis.shape[1], (t.inp.stop - t.inp.start) * (t.hid.stop - t.hid.start))
                 for t in self.terms]
        return max([1] + sizes)

    def flops_per_edge(self) -> int:
        """FLOPs of one edge's message (forward), as :meth:`messages` computes it."""
        return sum(min(head_term_costs(t)) for t in self.terms)

    @staticmethod
    def from_dense(weight: Tensor) -> "StructuredHead":
        """A dense (dout, k, din) weight as a single block (no structure to exploit)."""
        dout, k, din = weight.shape
        one = torch.ones(1, 1, 1, 1, dtype=weight.dtype, device=weight.device)
        term = HeadTerm(slice(0, dout), slice(0, din), slice(0, k), weight.permute(0, 2, 1)[..., None], one,
                        (((((0, 0, 1.0),),),)))
        return StructuredHead(dout, k, din, [term])


def _device(terms: list) -> torch.device | None:
    return terms[0].coef.device if terms else None
