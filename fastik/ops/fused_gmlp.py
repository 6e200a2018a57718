"""The fully fused implicit convolution: G-MLP, head, contraction and aggregation in one op.

    out[i, o] = Σ_{e: tgt[e]=i} Σ_{k,c} HEAD[c, k, o] · h̃_e[k] · x[src[e], c],
    h̃_e = [MLP(z_e)[:H], 1] · env_e

where ``MLP`` is a G-MLP packed as padded dense matrices (:class:`PackedGMLP`: layers of
EquivariantLinear → per-block norm → gate, docs/design.md §5.3).  On the Triton backend
(:mod:`fastik.triton_kernels.gmlp_conv`) every block of edges runs the whole MLP in
registers; the backward recomputes it, so no tensor of E × H elements exists in forward,
backward or inference — per edge only z (E, K0) and env (E,).

Registered as ``torch.ops.fastik.gmlp_conv`` / ``torch.ops.fastik.gmlp_conv_backward`` with
fake implementations (``torch.compile(fullgraph=True)`` traces through them) and autograd; the backward computes
only the gradients autograd asks for (z's; x's and env's, which come from the same sums; the parameters').
Second derivatives (forces in the loss): the backward op is itself differentiable.  Its
derivative is taken chunk by chunk of edges through the same function in torch — per target on pooled
features (:func:`packed_conv_pooled`, chunks of whole targets' edges) where the fused head pools, else per edge
(:func:`packed_conv_reference`, which forms per-edge kernel matrices) — so one chunk's intermediates (about
:data:`DOUBLE_BACKWARD_FLOATS` values) exist at a time, never E × Din × Dout.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._contract import PRECISIONS, check_indices, require_triton
from .pooled import group_by_degree, pooled_outer

__all__ = ["PackedGMLP", "fused_gmlp_conv", "packed_conv_reference", "packed_conv_pooled", "packed_h1",
           "head_columns", "input_grad_shape", "DOUBLE_BACKWARD_FLOATS", "TRAINED"]


class PackedGMLP(NamedTuple):
    """A G-MLP and kernel head as padded dense tensors (powers of two: P and DOUT_P ≥ 32, NB and NG ≥ 16).

    Hidden layer l: ``a = u @ weight[l] + bias[l]``; with ``norm``, ``c = a - (a @ mean[l]) @ expand[l]``,
    ``n = c · (rsqrt((c·c) @ avg[l] + eps) @ expand[l]) · scale[l] + shift[l]`` (else n = a); then
    ``u = trivial[l] · silu(n) + n · (sigmoid(n @ gate_pick[l]) @ gate_expand[l])``.
    Head: ``head[c, k, o]`` = W̃[out_cols[o], rows[k], c] with h̃ = [u[:, :H], 1]: the bias at k = H; zero padding.
    The last layer's outputs (so h̃'s first H columns) and the head's output columns come in an order that groups
    the components the head connects alike (``fastik.nn.packing._head_order``; ``out_cols[o]`` ≥ dout:
    padding), so the head's non-zeros lie in few (16 × 16) tiles, listed per output tile t (row t of
    ``head_blocks``, as k·Din + c: row tile k, input channel c), per row tile k (``head_row_blocks``, as
    t·Din + c) and per input channel c (``head_channel_blocks``, as k·(DOUT_P / 16) + t): a group's non-zero
    tiles first, ``*_block_count`` of them, in increasing order (``fastik.nn.packing._head_tiles``; the op checks
    it of ``head_channel_blocks``, whose row tiles the pooled backward takes in order).
    ``weight_support`` / ``head_support`` (uint8, 1 or 0, same layouts): the entries of weight and head that are not
    structural zeros of an equivariant map. The op uses ``weight · weight_support`` and ``head · head_support``
    (the kernels assume the product is the tensor itself: zeros off the support, as packing makes them), and
    their gradients are zero off the support — the kernels add no atomics there.
    ``weight_slabs`` (uint8) says which parts of each weight the kernels read: ``[l, 0, s, c]`` = 1 where column c
    of weight[l]'s rows 16s, …, 16s + 15 meets the support (the slab of u @ W that a dot reads), ``[l, 1, s, n]`` = 1
    where row n of its columns 16s, …, 16s + 15 does (the slab of da @ Wᵀ); the kernels do not load the others (they
    trust the flags, as the supports, to cover every non-zero: packing makes them so).
    ``structure_slabs`` (uint8) likewise for the structure matrices: ``[l, s, b]`` = 1 where norm block b has a
    component among 16s, …, 16s + 15 (the slabs of mean, avg and expandᵀ), ``[l, s, NB + g]`` where gate g gates one
    (gate_expandᵀ). ``head_row_flags[c, k, t]`` (uint8) = 1 where row k of channel c's head meets its support in the
    output columns 16t, …, 16t + 15 (the pooled head's tiles load only those rows).
    The same structure as vectors, for the kernels' gathers: ``column_index[l, :, p]`` = component p's norm block
    (expand's row), the gate that gates it (gate_expand's row) and the gate whose scalar it is (gate_pick's
    column), 0 where none; ``column_scale[l, :, p]`` = the entries of expand, mean, avg, gate_expand and gate_pick
    there (0 where none); ``gate_columns[l, g]`` = the column of gate g's scalar, after the H hidden features (a
    padding gate's: H) — the kernels stage only the columns from there on for the gates' gather.
    Tensors have max(layers, 1) leading entries (unused when ``layers`` is 0).
    """
    weight: Tensor       # (L, P, P)
    bias: Tensor         # (L, P)
    scale: Tensor        # (L, P)
    shift: Tensor        # (L, P)
    mean: Tensor         # (L, P, NB) constant
    avg: Tensor          # (L, P, NB) constant
    expand: Tensor       # (L, NB, P) constant
    gate_pick: Tensor    # (L, P, NG) constant
    gate_expand: Tensor  # (L, NG, P) constant
    trivial: Tensor      # (L, P) constant
    head: Tensor         # (Din, P, DOUT_P)
    weight_support: Tensor  # (L, P, P) uint8 constant
    head_support: Tensor    # (Din, P, DOUT_P) uint8 constant
    weight_slabs: Tensor    # (L, 2, P / 16, P) uint8 constant
    structure_slabs: Tensor  # (L, P / 16, NB + NG) uint8 constant
    head_row_flags: Tensor   # (Din, P, DOUT_P / 16) uint8 constant
    out_cols: Tensor        # (DOUT_P,) int64 constant
    head_blocks: Tensor       # (DOUT_P / 16, P / 16 · Din) int64 constant
    head_block_count: Tensor  # (DOUT_P / 16,) int64 constant
    head_row_blocks: Tensor       # (P / 16, DOUT_P / 16 · Din) int64 constant
    head_row_block_count: Tensor  # (P / 16,) int64 constant
    head_channel_blocks: Tensor       # (Din, P / 16 · DOUT_P / 16) int64 constant
    head_channel_block_count: Tensor  # (Din,) int64 constant
    column_index: Tensor  # (L, 3, P) int64 constant
    column_scale: Tensor  # (L, 5, P) constant
    gate_columns: Tensor  # (L, NG) int64 constant
    dout: int
    hidden: int
    layers: int
    norm: bool
    eps: float


#: Widest padded activation P the CUDA kernels take: at P = 256 they need ≤ 64 KiB of shared memory and
#: ≤ 255 registers per thread, without spills under Triton 3.6 and 3.8 (ptxas, sm_90a; bench/NOTES.md); every
#: (16 × P) activation costs P / 16 registers per thread, and wider ones were never compiled.
CUDA_MAX_WIDTH = 256

#: Values of intermediates per chunk of the double backward (activations (chunk, P) per layer, and kernel matrices
#: (chunk, Din, Dout) or, pooled, the chunk's targets' pooled features (targets, P, Din)): 2^24, 64 MiB in float32,
#: as the reference backend's chunks (E = 10^6, Din = Dout = 64, P = 128 or 256: ≈ 280–310 chunks edge-wise,
#: ≈ 60–120 pooled at in-degree 16).
DOUBLE_BACKWARD_FLOATS = 1 << 24

#: Side of the head's tiles that the fused kernels multiply (one per non-zero tile of the grouped head).
HEAD_TILE = 16
#: The head's tile lists (PackedGMLP fields): per output tile, per row tile, per input channel; each with its counts.
HEAD_TILE_LISTS = ("head_blocks", "head_block_count", "head_row_blocks", "head_row_block_count",
                   "head_channel_blocks", "head_channel_block_count")

#: The PackedGMLP fields that carry parameters: the op's differentiable packed tensors, in its gradients' order.
TRAINED = ("weight", "bias", "scale", "shift", "head")
#: The PackedGMLP fields that are uint8 masks (the kernels read a byte per entry, not four).
SUPPORTS = ("weight_support", "head_support", "weight_slabs", "structure_slabs", "head_row_flags")
_TENSORS = PackedGMLP._fields.index("dout")  # PackedGMLP's tensor fields come first
_INDEX = ("out_cols",) + HEAD_TILE_LISTS + ("column_index", "gate_columns")  # its int64 tensors


def packed_h1(z: Tensor, packed: PackedGMLP, mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul,
              structure_mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul) -> Tensor:
    """h1 (E, P): the packed G-MLP's last output with column H set to 1 (the head's bias row; h̃ = h1 · env; the
    head's rows past H are zero), in plain torch. ``mm``: the product of the linear layers, ``structure_mm``: of
    the norm and gate structure matrices (as :func:`packed_conv_reference`)."""
    p = packed
    size = p.weight.shape[1]
    u = F.pad(z, (0, size - z.shape[1]))
    for l in range(p.layers):
        a = mm(u, p.weight[l] * p.weight_support[l]) + p.bias[l]
        n = a
        if p.norm:
            c = a - structure_mm(structure_mm(a, p.mean[l]), p.expand[l])
            rinv = torch.rsqrt(structure_mm(c * c, p.avg[l]) + p.eps)
            n = c * structure_mm(rinv, p.expand[l]) * p.scale[l] + p.shift[l]
        gates = structure_mm(torch.sigmoid(structure_mm(n, p.gate_pick[l])), p.gate_expand[l])
        u = p.trivial[l] * F.silu(n) + n * gates
    return torch.where(torch.arange(size, device=u.device) == p.hidden, 1.0, u)


def packed_conv_reference(z: Tensor, env: Tensor, x: Tensor, packed: PackedGMLP, src: Tensor, tgt: Tensor,
                          num_targets: int, mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul,
                          structure_mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul) -> Tensor:
    """The fused op in plain torch (any dtype, differentiable to any order): (num_targets, dout).

    Forms the activations (E, P) and the per-edge kernel matrices (E, Din, Dout): for tests and
    second derivatives, not for scale. ``mm``: the product of the linear layers and the head, ``structure_mm``:
    of the norm and gate structure matrices — as the kernels split them by precision (`bench.precision`
    passes roundings to TF32)."""
    p = packed
    size = p.weight.shape[1]
    ht = packed_h1(z, p, mm, structure_mm) * env[:, None]
    din = p.head.shape[0]
    kernels = mm(ht, head_columns(p).transpose(0, 1).reshape(size, din * p.dout)).view(-1, din, p.dout)
    msg = (kernels * x[src][:, :, None]).sum(1)
    return msg.new_zeros(num_targets, p.dout).index_add_(0, tgt, msg)


def packed_conv_pooled(z: Tensor, env: Tensor, x: Tensor, packed: PackedGMLP, src: Tensor,
                       runs: list[tuple[int, int]], mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul,
                       structure_mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul) -> Tensor:
    """(T, dout): :func:`packed_conv_reference`'s output rows of T targets whose edges come grouped by target,
    ``runs`` of (edges per target, targets) (:meth:`fastik.ops.pooled.PoolingPlan.chunk`), by pooling first as
    the pooled kernels do: P_t = Σ_{e→t} h1_e ⊗ (env_e · x[src_e]) (P, Din) in one batched product per run, then
    P_t · HEAD once per target — 2·P·Din FLOPs per edge and 2·P·Din·dout per target instead of 2·P·Din·dout per
    edge.  Plain torch, differentiable to any order; ``mm`` / ``structure_mm`` as in
    :func:`packed_conv_reference` (``mm`` also pools, batched)."""
    p = packed
    size, din = p.weight.shape[1], p.head.shape[0]
    pooled = pooled_outer(packed_h1(z, p, mm, structure_mm), x[src] * env[:, None], runs, mm)  # (T, P, Din)
    return mm(pooled.reshape(-1, size * din), head_columns(p).transpose(0, 1).reshape(size * din, p.dout))


def head_columns(packed: PackedGMLP) -> Tensor:
    """The head on its support with its output columns in their order: (Din, P, dout)."""
    p = packed
    return (p.head * p.head_support)[..., torch.argsort(p.out_cols)[:p.dout]]


def _check(z: Tensor, env: Tensor, x: Tensor, p: PackedGMLP, src: Tensor, tgt: Tensor, num_targets: int,
           precision: str, tgt_rowptr: Optional[Tensor] = None) -> None:
    """Shapes, dtypes and devices (valid on fake tensors too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fused G-MLP convolution: x must be float32 or float64, got {x.dtype}")
    e = z.shape[0]
    size = p.weight.shape[1]
    for name, n in (("P", size), ("DOUT_P", p.head.shape[2])):
        if n < 32 or n & (n - 1):
            raise ValueError(f"packed {name} = {n}: must be a power of two ≥ 32 (build it with ImplicitKernel.packed)")
    if z.dim() != 2 or z.shape[1] > size:
        raise ValueError(f"z must be (E, K0) with K0 ≤ {size}, got {tuple(z.shape)}")
    if env.shape != (e,):
        raise ValueError(f"env must be (E,) = ({e},), got {tuple(env.shape)}")
    if x.dim() != 2 or p.head.shape[0] != x.shape[1]:
        raise ValueError(f"x must be (N, {p.head.shape[0]}), got {tuple(x.shape)}")
    din, dout_p = p.head.shape[0], p.head.shape[2]
    kt, tt = size // HEAD_TILE, dout_p // HEAD_TILE
    shapes = {"out_cols": (dout_p,), "head_blocks": (tt, kt * din), "head_block_count": (tt,),
              "head_row_blocks": (kt, tt * din), "head_row_block_count": (kt,),
              "head_channel_blocks": (din, kt * tt), "head_channel_block_count": (din,),
              "weight_slabs": (p.weight.shape[0], 2, kt, size),
              "structure_slabs": (p.weight.shape[0], kt, p.mean.shape[2] + p.gate_pick.shape[2]),
              "head_row_flags": (din, size, tt),
              "column_index": (p.weight.shape[0], 3, size),
              "column_scale": (p.weight.shape[0], 5, size),
              "gate_columns": (p.weight.shape[0], p.gate_pick.shape[2])}
    for name, shape in shapes.items():
        if getattr(p, name).shape != shape:
            raise ValueError(f"packed {name} must be {shape} for this G-MLP, got {tuple(getattr(p, name).shape)} "
                             "(build it with ImplicitKernel.packed)")
    for name, t in (("src", src), ("tgt", tgt)):
        if t.dtype != torch.int64 or t.shape != (e,):
            raise ValueError(f"{name} must be int64 of shape (E,) = ({e},), got {t.dtype} {tuple(t.shape)}")
    for name, t in [("z", z), ("env", env)] + [(k, getattr(p, k)) for k in p._fields[:_TENSORS]]:
        dtype = torch.int64 if name in _INDEX else torch.uint8 if name in SUPPORTS else x.dtype
        if t.dtype != dtype or t.device != x.device:
            raise ValueError(f"{name} is {t.dtype} on {t.device}, must be {dtype} on {x.device} (the device of x)")
    if num_targets < 0:
        raise ValueError(f"num_targets must be ≥ 0, got {num_targets}")
    if tgt_rowptr is not None and (tgt_rowptr.dtype != torch.int64 or tgt_rowptr.shape != (num_targets + 1,)
                                   or tgt_rowptr.device != x.device):
        raise ValueError(f"tgt_rowptr must be int64 of shape (num_targets + 1,) = ({num_targets + 1},) on "
                         f"{x.device}, got {tgt_rowptr.dtype} {tuple(tgt_rowptr.shape)} on {tgt_rowptr.device}")
    if x.is_cuda and size > CUDA_MAX_WIDTH:
        raise NotImplementedError(
            f"backend='fused' on CUDA holds (16 x P) activations in registers and is compiled and checked up to "
            f"P = {CUDA_MAX_WIDTH} (bench/NOTES.md). This G-MLP's widest activation pads to P = {size}: use fewer "
            "hidden_channels, or backend='triton' (MLP in torch, in chunks)")


def _packed_indices_check(p: PackedGMLP) -> tuple[Tensor, IndexError]:
    """``check_indices``' ``also``: a 0-dim bool, no host sync (read with the edges' checks, before any launch), and
    the error to raise where it is false — the packed index tensors in range: out_cols a permutation of
    range(DOUT_P), every tile index of a list in [0, its row length), every count in [0, that], and every listed
    tile of the lists with a row-tile coordinate within h̃'s H + 1 columns (the kernels' scratch rows of h̃ end
    there, at IN_K ≥ H + 1), each channel's listed tiles increasing (the pooled backward reads them in row-tile
    order); column_index's blocks in [0, NB), its gates in [0, NG), gate_columns in [H, P) (the gates' scalars
    follow the hidden features: the gates' gather stages only those columns)."""
    ok = [(torch.sort(p.out_cols).values == torch.arange(len(p.out_cols), device=p.out_cols.device)).all()]
    for blocks, counts in zip(HEAD_TILE_LISTS[::2], HEAD_TILE_LISTS[1::2]):
        n = getattr(p, blocks).shape[1]
        ok += [((getattr(p, blocks) >= 0) & (getattr(p, blocks) < n)).all(),
               ((getattr(p, counts) >= 0) & (getattr(p, counts) <= n)).all()]
    row_tiles = p.hidden // HEAD_TILE + 1  # the row tiles h̃'s columns 0, …, H fill
    for blocks, counts, per_row in ((p.head_blocks, p.head_block_count, p.head.shape[0]),  # k·Din + c
                                    (p.head_channel_blocks, p.head_channel_block_count, p.head.shape[2] // HEAD_TILE)):
        unlisted = torch.arange(blocks.shape[1], device=blocks.device) >= counts[:, None]
        ok.append(((blocks // per_row < row_tiles) | unlisted).all())
    listed = torch.arange(1, p.head_channel_blocks.shape[1], device=p.head_channel_blocks.device) < \
        p.head_channel_block_count[:, None]  # (a, its successor) both listed
    ok.append(((p.head_channel_blocks[:, 1:] > p.head_channel_blocks[:, :-1]) | ~listed).all())
    nb, ng = p.mean.shape[2], p.gate_pick.shape[2]
    bounds = torch.tensor([nb, ng, ng], device=p.column_index.device)[:, None]
    ok += [((p.column_index >= 0) & (p.column_index < bounds)).all(),
           ((p.gate_columns >= p.hidden * (p.layers > 0)) & (p.gate_columns < p.weight.shape[1])).all()]
    return torch.stack(ok).all(), IndexError(_BAD_PACKED)


_BAD_PACKED = ("packed out_cols or a head tile list (head_blocks, head_row_blocks, head_channel_blocks) or its count "
               "out of range, or a listed tile below h̃'s H + 1 rows, or a channel's listed tiles not increasing, or "
               "column_index / gate_columns out of range (a gate's scalar among the H hidden features): build "
               "them with ImplicitKernel.packed")


def input_grad_shape(t: Tensor, need: bool) -> tuple[int, ...]:
    """The shape of the backward op's gradient of input t (z, env or x): t's, or (0,) — an empty tensor, not
    computed — where autograd does not ask for it."""
    return tuple(t.shape) if need else (0,)


def _kernels():
    from fastik.triton_kernels import gmlp_conv

    return gmlp_conv


def _packed(tensors: tuple, meta: tuple) -> PackedGMLP:
    return PackedGMLP(*tensors, *meta)


def _contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def _kernel_args(p: PackedGMLP) -> dict:
    """The packed G-MLP as the launchers take it: a dict, tensors contiguous."""
    return {k: v.contiguous() if isinstance(v, Tensor) else v for k, v in p._asdict().items()}


def _forward_impl(z: Tensor, env: Tensor, x: Tensor, src: Tensor, tgt: Tensor, tgt_rowptr: Optional[Tensor],
                  num_targets: int, tensors: list[Tensor], dout: int, hidden: int, layers: int, norm: bool,
                  eps: float, precision: str, indices_checked: bool) -> Tensor:
    """Body of the forward op (a plain function: tests run it under a dispatch mode to see what it allocates)."""
    p = _packed(tuple(tensors), (dout, hidden, layers, norm, eps))
    _check(z, env, x, p, src, tgt, num_targets, precision, tgt_rowptr)
    if not indices_checked:
        check_indices(x, src, tgt, num_targets, tgt_rowptr, _packed_indices_check(p))
    require_triton(x)
    c = [t.contiguous() for t in (z, env, x, src, tgt)]
    return _kernels().gmlp_conv_fwd(*c, num_targets, dout, _kernel_args(p), precision,
                                    _contiguous(tgt_rowptr))


# No argument has a default: torch 2.13 drops trailing arguments equal to their default before its
# tensor-list autograd records the inputs' structure, and then rejects the backward's full-length return.
@torch.library.custom_op("fastik::gmlp_conv", mutates_args=())
def _fwd_op(z: Tensor, env: Tensor, x: Tensor, src: Tensor, tgt: Tensor, tgt_rowptr: Optional[Tensor],
            num_targets: int, tensors: list[Tensor], dout: int, hidden: int, layers: int, norm: bool, eps: float,
            precision: str, indices_checked: bool) -> Tensor:
    return _forward_impl(z, env, x, src, tgt, tgt_rowptr, num_targets, tensors, dout, hidden, layers, norm, eps,
                         precision, indices_checked)


@_fwd_op.register_fake
def _fwd_fake(z, env, x, src, tgt, tgt_rowptr, num_targets, tensors, dout, hidden, layers, norm, eps, precision,
              indices_checked):
    _check(z, env, x, _packed(tuple(tensors), (dout, hidden, layers, norm, eps)), src, tgt, num_targets, precision,
           tgt_rowptr)
    return x.new_empty(num_targets, dout)


def _backward_impl(grad_out: Tensor, z: Tensor, env: Tensor, x: Tensor, src: Tensor, tgt: Tensor,
                   tgt_rowptr: Optional[Tensor], tensors: list[Tensor], dout: int, hidden: int, layers: int,
                   norm: bool, eps: float, precision: str, need_params: bool, need_z: bool, need_env: bool,
                   need_x: bool, indices_checked: bool) -> list[Tensor]:
    """Body of the backward op (a plain function, as ``_forward_impl``)."""
    p = _packed(tuple(tensors), (dout, hidden, layers, norm, eps))
    _check(z, env, x, p, src, tgt, grad_out.shape[0], precision, tgt_rowptr)
    if not indices_checked:
        check_indices(x, src, tgt, grad_out.shape[0], tgt_rowptr, _packed_indices_check(p))
    require_triton(x)
    c = [t.contiguous() for t in (grad_out, z, env, x, src, tgt)]
    return list(_kernels().gmlp_conv_bwd(*c, _kernel_args(p), precision, need_params,
                                         rowptr=_contiguous(tgt_rowptr), need_z=need_z, need_env=need_env,
                                         need_x=need_x))


@torch.library.custom_op("fastik::gmlp_conv_backward", mutates_args=())
def _bwd_op(grad_out: Tensor, z: Tensor, env: Tensor, x: Tensor, src: Tensor, tgt: Tensor,
            tgt_rowptr: Optional[Tensor], tensors: list[Tensor], dout: int, hidden: int, layers: int, norm: bool,
            eps: float, precision: str, need_params: bool, need_z: bool, need_env: bool, need_x: bool,
            indices_checked: bool) -> list[Tensor]:
    return _backward_impl(grad_out, z, env, x, src, tgt, tgt_rowptr, tensors, dout, hidden, layers, norm, eps,
                          precision, need_params, need_z, need_env, need_x, indices_checked)


@_bwd_op.register_fake
def _bwd_fake(grad_out, z, env, x, src, tgt, tgt_rowptr, tensors, dout, hidden, layers, norm, eps, precision,
              need_params, need_z, need_env, need_x, indices_checked):
    p = _packed(tuple(tensors), (dout, hidden, layers, norm, eps))
    return [t.new_empty(input_grad_shape(t, need)) for t, need in zip((z, env, x), (need_z, need_env, need_x))] + \
        [getattr(p, k).new_empty(getattr(p, k).shape) for k in TRAINED]


def _setup(ctx, inputs, output) -> None:
    z, env, x, src, tgt, tgt_rowptr, num_targets, tensors, *meta, indices_checked = inputs
    ctx.save_for_backward(z, env, x, src, tgt, tgt_rowptr, *tensors)
    ctx.meta, ctx.num_targets, ctx.indices_checked = tuple(meta), num_targets, indices_checked


def _trained_needs(ctx) -> list[bool]:
    """Which of the packed parameters (``TRAINED``) need a gradient: both ops take the packed tensors as their
    eighth input, a list (one flag per tensor)."""
    need = dict(zip(PackedGMLP._fields, ctx.needs_input_grad[7]))
    return [need[k] for k in TRAINED]


def _packed_grads(grads: list) -> list:
    """The packed parameters' gradients (in ``TRAINED`` order) as the list input's gradient: one entry per packed
    tensor, None for the constants (a list input takes a list, Nones too)."""
    by_name = dict(zip(TRAINED, grads))
    return [by_name.get(k) for k in PackedGMLP._fields[:_TENSORS]]


def _backward(ctx, grad_out: Tensor):
    z, env, x, src, tgt, tgt_rowptr, *tensors = ctx.saved_tensors
    *meta, precision = ctx.meta
    mask = list(ctx.needs_input_grad[:3]) + _trained_needs(ctx)
    grads = list(torch.ops.fastik.gmlp_conv_backward(grad_out, z, env, x, src, tgt, tgt_rowptr, list(tensors),
                                                     *meta, precision, any(mask[3:]), *mask[:3],
                                                     ctx.indices_checked))
    gz, genv, gx, *gp = [g if m else None for g, m in zip(grads, mask)]
    # one entry per input: src, tgt, tgt_rowptr, num_targets; the list; the packed metadata, precision,
    # indices_checked
    return (gz, genv, gx, None, None, None, None, _packed_grads(gp)) + (None,) * (len(ctx.meta) + 1)


_fwd_op.register_autograd(_backward, setup_context=_setup)


def _bwd_setup(ctx, inputs, output) -> None:
    grad_out, z, env, x, src, tgt, _tgt_rowptr, tensors, *meta, _precision_, need_params, need_z, need_env, need_x, \
        _indices_checked = inputs
    ctx.save_for_backward(grad_out, z, env, x, src, tgt, *tensors)
    ctx.meta, ctx.need_params, ctx.needs = tuple(meta), need_params, (need_z, need_env, need_x)
    ctx.set_materialize_grads(False)  # an unused gradient's cotangent comes as None, not as zeros


def _double_backward(ctx, cotangents: list):
    """The backward's own backward (second derivatives: forces in the loss), chunk by chunk of edges.  The first
    derivatives are sums over edges (grad_z, grad_env: rows), so their vector-Jacobian product is too: per chunk,
    the first derivatives of the op in torch on its edges (create_graph), their inner product with the cotangents,
    differentiated once more.  Where the fused head pools (mean in-degree ≥ POOL_MIN_DEGREE) the chunks are whole
    targets' edges in the order of :func:`~fastik.ops.pooled.group_by_degree`, as many as the budget holds
    (:meth:`~fastik.ops.pooled.PoolingPlan.cuts`; a target too large alone goes in pieces, which add) and the op
    is :func:`packed_conv_pooled`, else consecutive edges and :func:`packed_conv_reference`.  One chunk's
    intermediates (about DOUBLE_BACKWARD_FLOATS values) exist at a time."""
    grad_out, z, env, x, src, tgt, *tensors = ctx.saved_tensors
    p = _packed(tuple(tensors), ctx.meta)
    # cotangents of grad_z, grad_env, grad_x and the parameters' gradients (zeros, not computed, unless needed)
    cots = [c if n else None for c, n in zip(cotangents[:3], ctx.needs)] + \
        (list(cotangents[3:]) if ctx.need_params else [None] * len(TRAINED))
    need = list(ctx.needs_input_grad[:4]) + _trained_needs(ctx)  # grad_out, z, env, x, params
    go, x_, *params = [t.detach().requires_grad_() for t in (grad_out, x, *(getattr(p, k) for k in TRAINED))]
    q = p._replace(**dict(zip(TRAINED, params)))
    grads = [torch.zeros_like(t) if n else None for t, n in zip([grad_out, z, env, x, *params], need)]
    wanted = [i for i, n in enumerate(need) if n]
    active = any(c is not None for c in cots) and bool(wanted)
    e, size, din = z.shape[0], p.weight.shape[1], x.shape[1]
    plan = group_by_degree(tgt) if active and e and _kernels().pools(e, grad_out.shape[0]) else None
    if plan is None:  # per edge: activations and kernel matrices
        step = max(1, DOUBLE_BACKWARD_FLOATS // (size * (p.layers + 2) + din * p.dout))
        bounds = [*range(0, e, step), e] if active and e else [0]
    else:  # per edge the activations, per target its pooled features
        bounds = plan.cuts(DOUBLE_BACKWARD_FLOATS, size * (p.layers + 2), size * din)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        rows = slice(start, stop) if plan is None else plan.order[start:stop]
        z_c, env_c = z[rows].detach().requires_grad_(), env[rows].detach().requires_grad_()
        with torch.enable_grad():
            if plan is None:
                out, go_c = packed_conv_reference(z_c, env_c, x_, q, src[rows], tgt[rows], grad_out.shape[0]), go
            else:
                targets, runs = plan.chunk(start, stop)
                out, go_c = packed_conv_pooled(z_c, env_c, x_, q, src[rows], runs), go[targets]
            pairs = [(t, c[rows] if i < 2 else c) for i, (t, c) in enumerate(zip([z_c, env_c, x_, *params], cots))
                     if c is not None]  # grad_z's and grad_env's cotangents per edge, the others whole
            firsts = torch.autograd.grad(out, [t for t, _ in pairs], go_c, create_graph=True, allow_unused=True)
            inner = sum((f * c).sum() for f, (_, c) in zip(firsts, pairs) if f is not None)
            if not (torch.is_tensor(inner) and inner.requires_grad):
                continue
            found = torch.autograd.grad(inner, [[go, z_c, env_c, x_, *params][i] for i in wanted], allow_unused=True)
        for i, g in zip(wanted, found):
            if g is not None and i in (1, 2):
                grads[i][rows] = g  # each edge is in one chunk
            elif g is not None:
                grads[i].add_(g)
    # one entry per input: grad_out, z, env, x, src, tgt, tgt_rowptr, the list; the metadata, precision,
    # need_params, need_z, need_env, need_x, indices
    return (*grads[:4], None, None, None, _packed_grads(grads[4:])) + (None,) * (len(ctx.meta) + 6)


_bwd_op.register_autograd(_double_backward, setup_context=_bwd_setup)


def fused_gmlp_conv(z: Tensor, env: Tensor, x: Tensor, packed: PackedGMLP, src: Tensor, tgt: Tensor,
                    num_targets: int, precision: str = "ieee", indices_checked: bool = False,
                    tgt_rowptr: Optional[Tensor] = None) -> Tensor:
    """(num_targets, dout): the implicit convolution of a packed G-MLP, fully fused on Triton.

    Args:
        z: (E, K0) kernel inputs (the G-MLP's embedding of r and attributes), K0 ≤ P.
        env: (E,) per-edge factor of h̃ (envelope × message scale).
        x: (N, Din) source features, float32 (or float64: every dot IEEE).
        packed: the G-MLP (:meth:`fastik.nn.ImplicitKernel.packed`).
        src, tgt: (E,) int64 source / target of each edge (checked before any launch).
        precision: dot precision of the weight matmuls: "ieee", "tf32" or "tf32x3" (float32 only).
        indices_checked: the caller has validated these very src / tgt (ranges), ``tgt_rowptr`` and the packed
            index tensors (built by ``ImplicitKernel.packed``), unchanged since: skip the checks and their host
            syncs, forward and backward.
        tgt_rowptr: (num_targets + 1,) int64, optional: the edges come sorted by target and this is their CSR
            row pointer (``fastik.ops.aggregate.csr_rowptr``; checked unless ``indices_checked``). Where the head
            pools per target (mean in-degree ≥ 4) the op then takes the edges in their order instead of sorting
            them (an argsort and copies of z, env, src, tgt) in forward and backward.

    Differentiable w.r.t. z, env, x and the packed parameters (weight, bias, scale, shift, head).
    """
    _check(z, env, x, packed, src, tgt, num_targets, precision, tgt_rowptr)
    return torch.ops.fastik.gmlp_conv(z, env, x, src, tgt, tgt_rowptr, num_targets, list(packed[:_TENSORS]),
                                      *packed[_TENSORS:], precision, bool(indices_checked))
