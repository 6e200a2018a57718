"""An ImplicitKernel's G-MLP as the padded dense tensors of the fully fused op (:class:`PackedGMLP`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.fused_gmlp import HEAD_TILE, HEAD_TILE_LISTS, SUPPORTS, PackedGMLP
from ._buffers import constant
from .linear import EquivariantLinear
from .nonlinearities import _SILU_SCALE, GatedNonlinearity
from .norm import EquivariantNorm

__all__ = ["PackedGMLP", "pack_gmlp", "fusable"]


def _pow2(n: int, least: int = 16) -> int:
    """Smallest power of two ≥ max(n, least)."""
    return max(least, 1 << max(int(n) - 1, 0).bit_length())


def _layers(mlp: nn.Sequential) -> list[tuple[EquivariantLinear, EquivariantNorm | None, GatedNonlinearity]]:
    mods, out = list(mlp), []
    while mods:
        lin = mods.pop(0)
        norm = mods.pop(0) if isinstance(mods[0], EquivariantNorm) else None
        out.append((lin, norm, mods.pop(0)))
    return out


def fusable(kernel: nn.Module) -> bool:
    """True when every hidden nonlinearity of ``kernel`` (an ImplicitKernel) is a gate (Fourier-ELU is not fused)."""
    return all(isinstance(m, (EquivariantLinear, EquivariantNorm, GatedNonlinearity)) for m in kernel.mlp)


def _structure(kernel: nn.Module, size: int, nb: int, ng: int) -> dict[str, Tensor]:
    """The constant matrices (float64, CPU) of every layer, zero-padded: mean, avg, expand (the norm's own
    block matrices), gate_pick (input column out_dim + k -> gate k), gate_expand (the gate's spread) and
    trivial (the SiLU scale on scalar components)."""
    layers = max(len(_layers(kernel.mlp)), 1)
    shapes = {"mean": (size, nb), "avg": (size, nb), "expand": (nb, size), "gate_pick": (size, ng),
              "gate_expand": (ng, size), "trivial": (size,)}
    t = {k: torch.zeros(layers, *shape, dtype=torch.float64) for k, shape in shapes.items()}
    for l, (_, norm, gate) in enumerate(_layers(kernel.mlp)):
        if norm is not None:
            for key, m in zip(("mean", "avg", "expand"), norm.block_matrices(torch.float64)):
                t[key][l, :m.shape[0], :m.shape[1]] = m.cpu()
        spread = constant(gate, "gate_spread", torch.float64).cpu()  # (gates, out_dim)
        gates, dim = spread.shape
        t["gate_expand"][l, :gates, :dim] = spread
        t["gate_pick"][l, dim + torch.arange(gates), torch.arange(gates)] = 1.0
        t["trivial"][l, :dim] = gate._trivial.cpu().double() * _SILU_SCALE
    return t


def _sizes(kernel: nn.Module) -> tuple[int, int, int]:
    """P (widest activation, h̃ included), NB (most norm blocks), NG (most gates): powers of two, ≥ 16 (tl.dot's
    least size), P ≥ 32 (the kernels split (P × P) dots into halves)."""
    layers = _layers(kernel.mlp)
    widths = [kernel.input_type.dim, kernel.hidden_type.dim + 1] + [lin.out_type.dim for lin, _, _ in layers]
    blocks = [len(lin.out_type.blocks) for lin, _, _ in layers]
    gates = [gate.in_type.dim - gate.out_type.dim for _, _, gate in layers]
    return _pow2(max(widths), 32), _pow2(max(blocks, default=1)), _pow2(max(gates, default=1))


def _constants(kernel: nn.Module, dtype: torch.dtype, device: torch.device) -> dict:
    """What packing needs besides the parameters, built once per dtype and device: the sizes (P, NB, NG), the
    layers, the structure matrices and supports (in the grouped order of :func:`_head_order`), that order
    (``rows``, ``cols``) and the head's tile lists."""
    cache = kernel.__dict__.setdefault("_packed_structure", {})
    key = (dtype, device)
    if key not in cache:
        size, nb, ng = _sizes(kernel)
        layers = _layers(kernel.mlp)
        const = {**_structure(kernel, size, nb, ng), **_supports(kernel, layers, size)}
        rows, cols = _head_order(const["head_support"], kernel.hidden_type.dim if layers else 0, kernel.out_type.dim)
        const = _grouped(const, rows, cols, len(layers))
        index, const["column_scale"] = _columns(const, kernel.hidden_type.dim if layers else 0)
        const["weight_slabs"] = _weight_slabs(const["weight_support"])
        const["structure_slabs"] = _structure_slabs(const["expand"], const["gate_expand"])
        const["head_row_flags"] = _head_row_flags(const["head_support"])
        cache[key] = {"sizes": (size, nb, ng), "layers": layers, "rows": rows.to(device), "cols": cols.to(device),
                      **{k: v.to(device, torch.uint8 if k in SUPPORTS else dtype) for k, v in const.items()},
                      **{k: v.to(device) for k, v in {**_head_tiles(const["head_support"]), **index}.items()}}
    return cache[key]


def _one_hot(m: Tensor, dim: int, name: str) -> tuple[Tensor, Tensor]:
    """m (L, ·, ·) with at most one non-zero along ``dim`` (a structure matrix): the index of that entry (0
    where there is none) and its value (0 there), both with ``dim`` removed.  Checked eagerly (a host sync; under
    torch.compile the packing traces without it)."""
    if not torch.compiler.is_compiling() and bool(((m != 0).sum(dim) > 1).any()):
        raise AssertionError(f"packing: the {name} matrix has two entries along dim {dim}")
    index = m.abs().argmax(dim)
    return index, m.gather(dim, index.unsqueeze(dim)).squeeze(dim)


def _gate_columns(pick: Tensor, hidden: int) -> Tensor:
    """(L, NG): the column of each gate's scalar (gate_pick (L, P, NG) has one 1 in a gate's column), all after the
    ``hidden`` features (checked) — a padding gate's is ``hidden`` —: the kernels stage only the columns from
    there on for the gates' gather."""
    columns, picked = _one_hot(pick, 1, "gate_pick")
    columns = torch.where(picked != 0, columns, hidden)
    if not torch.compiler.is_compiling() and bool((columns < hidden).any()):
        raise AssertionError("packing: a gate's scalar column lies among the hidden features")
    return columns


def _columns(const: dict[str, Tensor], hidden: int) -> tuple[dict[str, Tensor], Tensor]:
    """The structure matrices as per-component vectors (the kernels gather with them instead of multiplying by
    the matrices): ``column_index`` (L, 3, P) — component p's norm block, the gate that gates it, the gate whose
    scalar it is — and ``gate_columns`` (L, NG), the column of each gate's scalar; and ``column_scale`` (L, 5, P)
    — the entries of expand, mean, avg, gate_expand and gate_pick there (0 where p has none).  mean's and avg's
    entries lie in expand's block (checked)."""
    block, expand = _one_hot(const["expand"], 1, "expand")
    gate, spread = _one_hot(const["gate_expand"], 1, "gate_expand")
    scalar, pick = _one_hot(const["gate_pick"], 2, "gate_pick")
    gate_columns = _gate_columns(const["gate_pick"], hidden)
    means = []
    for name in ("mean", "avg"):
        m = const[name]
        at_block = m.gather(2, block.unsqueeze(2)).squeeze(2)
        exact = torch.zeros_like(m).scatter_(2, block.unsqueeze(2), at_block.unsqueeze(2))
        if not torch.compiler.is_compiling() and not torch.equal(exact, m):
            raise AssertionError(f"packing: the {name} matrix has entries outside the components' norm blocks")
        means.append(at_block)
    return ({"column_index": torch.stack([block, gate, scalar], 1), "gate_columns": gate_columns},
            torch.stack([expand, *means, spread, pick], 1))


def _equal_rows_together(pattern: Tensor) -> Tensor:
    """An order of the rows of ``pattern`` (n, m), 0/1, that puts equal rows next to each other, and rows that
    agree on their first columns near each other. Two stable sorts: by a key that tells rows apart, their
    products with sin(1), …, sin(m) (rationally independent: distinct rows get distinct keys but for round-off,
    which would only cost density), then by Σ_j pattern[j]·e^(-j) (the first ≈ 36 columns). Static shapes,
    no host sync: traceable by torch.compile. (At hidden_channels=5, so3, the head then has 528 non-zero
    (16 × 16) tiles; by the first key alone 624, in lexicographic order 560.)"""
    p = pattern.to(torch.float64)
    columns = torch.arange(pattern.shape[1], dtype=torch.float64)
    apart = torch.argsort(p @ torch.sin(columns + 1), stable=True)
    return apart[torch.argsort((p @ torch.exp(-columns))[apart], stable=True)]


def _head_order(head_support: Tensor, hidden: int, dout: int) -> tuple[Tensor, Tensor]:
    """Orders of h̃'s first ``hidden`` columns (``rows``, (P,)) and of the outputs (``cols``, (DOUT_P,)) that put
    the components the head connects alike next to each other — one component of one irrep type, all its
    copies: Schur's lemma then leaves the head's non-zeros in dense tiles, about as few as its true density.
    Padding (and the bias column H of h̃) keep their places; without hidden layers h̃ is z: rows unchanged."""
    _, size, dout_p = head_support.shape
    s = head_support != 0
    rows = torch.arange(size)
    cols = torch.arange(dout_p)
    if hidden:
        rows[:hidden] = _equal_rows_together(s[:, :hidden].transpose(0, 1).reshape(hidden, -1))
    cols[:dout] = _equal_rows_together(s[:, :, :dout].permute(2, 0, 1).reshape(dout, -1))
    return rows, cols


def _grouped(const: dict[str, Tensor], rows: Tensor, cols: Tensor, layers: int) -> dict[str, Tensor]:
    """The structure matrices and supports with h̃'s columns in the order ``rows`` (the last layer's outputs)
    and the head's output columns in the order ``cols``."""
    out = dict(const)
    if layers:
        last = layers - 1
        for key, dim in (("mean", 0), ("avg", 0), ("expand", 1), ("gate_pick", 0), ("gate_expand", 1),
                         ("trivial", 0), ("weight_support", 1)):
            t = out[key].clone()
            t[last] = t[last].index_select(dim, rows)
            out[key] = t
    out["head_support"] = _in_head_order(out["head_support"], rows, cols)
    return out


def _in_head_order(head: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """A packed head (Din, P, DOUT_P) with its rows in the order ``rows`` and its columns in the order ``cols``."""
    return head.index_select(1, rows).index_select(2, cols)


def _head_tiles(head_support: Tensor) -> dict[str, Tensor]:
    """The (HEAD_TILE × HEAD_TILE) tiles of the grouped head (Din, P, DOUT_P) with a non-zero, listed three ways
    (static shapes, traceable), each list a row per group with the group's non-zero tiles first, in order, then
    the others, and a count per group of the non-zero ones:

    - per output tile t: ``head_blocks`` (DOUT_P/16, P/16 · Din), k·Din + c; ``head_block_count`` (DOUT_P/16,);
    - per row tile k: ``head_row_blocks`` (P/16, DOUT_P/16 · Din), t·Din + c; ``head_row_block_count`` (P/16,);
    - per input channel c: ``head_channel_blocks`` (Din, P/16 · DOUT_P/16), k·(DOUT_P/16) + t;
      ``head_channel_block_count`` (Din,)."""
    nz = _meets(_meets(head_support, 2), 1)  # (Din, row tiles, out tiles)
    lists = {}
    for name, order in (("head", (2, 1, 0)), ("head_row", (1, 2, 0)), ("head_channel", (0, 1, 2))):
        by_group = nz.permute(order).reshape(nz.shape[order[0]], -1)
        lists[f"{name}_blocks"] = torch.argsort(~by_group, dim=1, stable=True)
        lists[f"{name}_block_count"] = by_group.sum(1)
    return lists


def _supports(kernel: nn.Module, layers: list, size: int) -> dict[str, Tensor]:
    """Where the packed weight and head can be non-zero (1.0) — the blocks' supports in the packed layouts."""
    weights = [_packed_weight(lin.structured(torch.float64).support().double(), size) for lin, _, _ in layers]
    return {"weight_support": torch.stack(weights) if weights else torch.zeros(1, size, size, dtype=torch.float64),
            "head_support": _packed_head(kernel.head.structured(torch.float64).support().double(), size)}


def _meets(support: Tensor, dim: int) -> Tensor:
    """Whether each run of HEAD_TILE entries along ``dim`` of ``support`` has a non-zero (that size shrinks 16×)."""
    shape = list(support.shape)
    shape[dim:dim + 1] = [shape[dim] // HEAD_TILE, HEAD_TILE]
    return (support != 0).reshape(shape).any(dim + 1)


def _weight_slabs(support: Tensor) -> Tensor:
    """``PackedGMLP.weight_slabs`` (L, 2, P / 16, P) of the weight supports (L, P, P): per layer, where a column of
    each slab of 16 rows (for u @ W) and a row of each slab of 16 columns (for da @ Wᵀ) meets the support."""
    return torch.stack([_meets(support, 1), _meets(support, 2).transpose(1, 2)], 1).double()


def _structure_slabs(expand: Tensor, gate_expand: Tensor) -> Tensor:
    """``PackedGMLP.structure_slabs`` (L, P / 16, NB + NG) of expand (L, NB, P) and gate_expand (L, NG, P): per layer
    and slab of 16 components, the norm blocks and the gates with a component there."""
    return torch.cat([_meets(m, 2).transpose(1, 2) for m in (expand, gate_expand)], 2).double()


def _head_row_flags(head_support: Tensor) -> Tensor:
    """``PackedGMLP.head_row_flags`` (Din, P, DOUT_P / 16) of the grouped head's support (Din, P, DOUT_P): where each
    row meets it in each output tile."""
    return _meets(head_support, 2).double()


def _packed_weight(w: Tensor, size: int) -> Tensor:
    """A layer's (out, in) matrix in the packed layout: (P, P), transposed, zero-padded."""
    return F.pad(w.T, (0, size - w.shape[0], 0, size - w.shape[1]))


def _packed_head(head: Tensor, size: int) -> Tensor:
    """W̃ (Dout, H+1, Din) in the packed layout: (Din, P, DOUT_P), zero-padded."""
    dout = head.shape[0]
    return F.pad(head.permute(2, 1, 0), (0, _pow2(dout, 32) - dout, 0, size - head.shape[1]))


def pack_gmlp(kernel: nn.Module, dtype: torch.dtype) -> PackedGMLP:
    """``kernel`` (an :class:`~fastik.nn.ImplicitKernel` with gate nonlinearities) packed for the fused op.

    Differentiable: gradients of the packed weight / bias / scale / shift / head flow back to the
    kernel's parameters.  Everything else is built once per dtype and device (:func:`_constants`).
    """
    if not fusable(kernel):
        raise ValueError("only G-MLPs with gate nonlinearities can be packed for the fused op "
                         f"(this one has nonlinearity={kernel.nonlinearity!r}); use backend='triton' or 'reference'")
    head = kernel.head.weight(dtype)  # (Dout, H+1, Din)
    const = _constants(kernel, dtype, head.device)
    size = const["sizes"][0]
    weights, biases, scales, shifts = [], [], [], []
    for lin, norm, _ in const["layers"]:
        w = lin.weight(dtype)  # (out, in)
        weights.append(_packed_weight(w, size))
        b = lin.bias.bias(dtype) if lin.bias is not None else w.new_zeros(w.shape[0])
        biases.append(F.pad(b, (0, size - b.shape[0])))
        if norm is None:
            scales.append(head.new_ones(size))
            shifts.append(head.new_zeros(size))
        else:
            scale, shift = norm.affine(dtype)
            scales.append(F.pad(scale, (0, size - scale.shape[0]), value=1.0))
            shifts.append(F.pad(shift, (0, size - shift.shape[0])))
    if not weights:
        weights, biases = [head.new_zeros(size, size)], [head.new_zeros(size)]
        scales, shifts = [head.new_ones(size)], [head.new_zeros(size)]
    else:  # h̃'s columns in the grouped order: the last layer's outputs
        rows = const["rows"]
        weights[-1], biases[-1] = weights[-1].index_select(1, rows), biases[-1].index_select(0, rows)
        scales[-1], shifts[-1] = scales[-1].index_select(0, rows), shifts[-1].index_select(0, rows)
    dout = head.shape[0]
    norms = [norm for _, norm, _ in const["layers"] if norm is not None]
    return PackedGMLP(torch.stack(weights), torch.stack(biases), torch.stack(scales), torch.stack(shifts),
                      const["mean"], const["avg"], const["expand"], const["gate_pick"], const["gate_expand"],
                      const["trivial"], _in_head_order(_packed_head(head, size), const["rows"], const["cols"]),
                      const["weight_support"], const["head_support"], const["weight_slabs"],
                      const["structure_slabs"], const["head_row_flags"], const["cols"],
                      *(const[k] for k in HEAD_TILE_LISTS), const["column_index"], const["column_scale"],
                      const["gate_columns"], dout, kernel.hidden_type.dim, len(const["layers"]),
                      bool(norms), norms[0].eps if norms else 0.0)
