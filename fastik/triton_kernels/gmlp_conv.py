"""The whole implicit convolution in one kernel (Triton): G-MLP, kernel head, contraction, scatter.

Per block of BLOCK_E edges, in registers and a small per-program staging buffer (docs/design.md §5.3)::

    u0 = z[e]                                   (BLOCK_E, K0P) kernel input (embedding), zero-padded
    for l < L:                                  one hidden layer of the packed G-MLP
        a  = u @ W[l] + b[l]                    EquivariantLinear (dense, padded)
        c  = a - spread(a @ MEAN[l])            norm: channel mean off scalar blocks
        r  = rsqrt((c*c) @ AVG[l] + eps)        norm: 1 / rms per block      (BLOCK_E, NB)
        n  = c * spread(r) * scale[l] + shift[l]
        g  = spread(sigmoid(n[:, GCOL[l]]))     gate of every component       (gates: NG columns)
        u  = TRIV[l] * silu(n) + n * g          SiLU on scalars, gated fields elsewhere
    h1 = [u[:, :H], 1]                          head bias column (h̃ = h1 · env[e])
    for each output tile t, for each non-zero (16 × 16) tile (k, c) of HEAD[:, :, t]:
        acc_t += env[e] · x[src[e], c] · (h1[:, k] @ HEAD[c, k, t])
    out[tgt[e], out_cols[t]] += acc_t           (atomics)

MEAN / AVG (P, NB) are the norm's constant 1/m structure matrices: the block sums are small matmuls (in tf32x3
on the TF32 paths, IEEE otherwise: the block statistics stay fp32-exact).  A per-block or per-gate value goes
onto the components by a gather (``spread``: column p takes the value of its block or gate, times the
structure matrices' entry there — PackedGMLP.column_index / column_scale), and the gate scalars are gathered
from their columns (GCOL = gate_columns), so EXP / GPICK / GEXP are never multiplied; the backward's sums per
block and per gate are dots with EXPᵀ and GEXPᵀ.  Every dot whose left operand is a computed tile goes through
a per-program staging buffer (`_mm`): the tile is stored (BLOCK_E · width values, L1/L2-resident) and read back as
(BLOCK_E, KC) slices, one per iteration of a loop the compiler does not unroll (`_staged_dot`); it stops at the last
rows of the matrix that can be non-zero — PU of a layer's P output columns (hidden features and gates:
``output_columns``), HU of a later layer's IN_K input rows (``input_columns``) — since the padding of P to a power of
two multiplies zeros only.  With BLOCK_E = 16 rows every warp holds the whole left operand of a tensor-core dot (at 32,
each warp its half), so a (16 × 256) tile as one operand would cost 128 registers per thread, a (16 × 32) slice 16;
slicing the tile in registers (split trees) still left all slices alive at once and made ptxas spill 1–2 KB per thread
at P = 256 — staged, the kernels fit in registers (bench/NOTES.md).  The head contracts h1 with each input channel as
env · x[src, c] · (h1 @ HEAD[c]) (the row scale after the dot), and every kernel multiplies only HEAD's non-zero
(16 × 16) tiles (the packing orders h̃'s and the outputs' components so that Schur's lemma leaves few: ≈ 17 % of the
dense head at the default width, so3), listed per output tile (forward, head gradient), per row tile (grad_h̃) and
per input channel (grad_x); the backward kernels take grad_out with its columns in the head's order.

The backward is four kernels per wave of edges (a few chunks per program).  ``_gmlp_rows_kernel`` evaluates the MLP and
saves each layer's state (``_sv_offset``: the centred linear part, 1 / rms per block, the gates' sigmoids, the next
layer's input) and the h1 rows to buffers of the wave's rows; the head's side (``_gmlp_head_bwd_kernel``) reads the h1
rows for grad_x, grad_env and the head's own gradient (no MLP there); ``_gmlp_grad_h_kernel`` writes grad_h̃ = env · Σ
x[src, c] · (grad_out[tgt] @ HEAD[c]ᵀ) (on the tiles; no MLP, no h̃) of the wave's edges to a buffer of one wave's rows;
then ``_gmlp_conv_bwd_kernel`` reads both back per block of edges and, from the last layer to the first, back-propagates
each layer from its saved state (``_layer_state``), recomputing nothing.  The parameter gradients are sums over edges,
added to memory with atomics — as few as possible.  Every kernel runs persistent programs (PROGRAMS_PER_SM), each takes
chunks of CHUNK edges in turn (their number, ``programs``, comes as an argument: ``tl.num_programs(0)``, the loops'
stride, was kept in local memory across the backward's weight-gradient call under Triton 3.8).  The forward writes the
chunk's h1 rows into a per-program scratch (the head kernel grad_out[tgt]) and then applies the head to the whole chunk
(each head tile read serves CHUNK edges); the backward kernel writes the rows a layer's weight gradient is summed from
(each layer's input and linear-part gradient) into its scratch and, after the chunk, sums them with dots over the edge
dimension before one atomic per entry; the head kernel sums the head's gradient over the chunk the same way, 16
channels' tiles of one (row tile, output tile) pair per dot (their operand slices read once, not once per channel).
Where the mean in-degree is at least POOL_MIN_DEGREE the head runs per target instead: the edges are sorted by
target, ``_gmlp_rows_kernel`` writes the h1 rows of a wave of edges to a buffer of one wave's rows, and
``_gmlp_pool_fwd_kernel`` sums each target's pooled features P = Σ_e env·x[src]ᵀ h1 (DIN × IN_K) and multiplies
the head's tiles once per block of TB targets (M = TB rows per dot); in the backward ``_gmlp_pool_bwd_kernel``
takes the place of the head kernel and of grad_h̃'s (P for the head's gradient, G = Σ_t gout_t HEAD[:, :, t]ᵀ per
target for grad_h̃, grad_x and grad_env), wave by wave before the G-MLP's backward kernel; there the rows kernel
saves the layers' state, and each program sums the head's gradient in a copy of its own (no atomics), the copies
added once per call.
Nothing of size E × P is ever written to memory: per edge only z (E, K0), env (E,) and their
gradients (the scratch holds ≤ #programs × CHUNK rows, the grad_h̃ buffer and the saved states one wave's).

All packed tensors are padded (no masks): W (L, P, P), b / scale / shift / TRIV (L, P),
MEAN / AVG (L, P, NB), EXP (L, NB, P), GEXP (L, NG, P), HEAD (DIN, P, DOUT_P),
P and DOUT_P ≥ 32, NB and NG ≥ 16 (powers of two).  float32 or float64 (then every dot is
IEEE).  Validation lives in :mod:`fastik.ops.fused_gmlp`.

K0P (a power of two ≥ 16 and ≥ K0; P when there is no hidden layer): the columns of z, the first
layer's input; its weight's other rows are zero and never read.

IN_K (P or P/2): the columns of the other dots' inputs that can be non-zero.  P is set by the widest
activation, a layer output with its gate scalars; the inputs of the dots — z (K0 columns), every
layer's input (H) and h̃ (H + 1) — are often narrower.  When they all fit in half of P (e.g. the
anchors' width: K0 = 9, H + 1 = 61, P = 128 for a 75-wide layer output), the upper half of every
layer weight's rows and of every HEAD[c] is zero padding: the layers', the head's and their
backward's dots skip it, and so do their gradients (with half of their atomics).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..ops.fused_gmlp import HEAD_TILE, TRAINED, input_grad_shape
from ._config import INTERPRET, device_ctx

__all__ = ["gmlp_conv_fwd", "gmlp_conv_bwd", "pools", "pooled_bwd", "head_order", "head_side_bwd", "edge_wise_bwd",
           "INTERPRET_CONFIG",
           "GPU_CONFIG", "launch_config"]

# One configuration per kernel (no autotuning: never run on a GPU). Registers and shared memory grow with P and BLOCK_E:
# ptxas (sm_90a) numbers in bench/NOTES.md, `python -m bench.aot --fused`. The forward runs the MLP on BLOCK_E = 32
# edges at a time (each layer weight read serves 32 edges; at 16 they read twice as much, at 64 it spilled 52–216 B
# under Triton 3.6) into CHUNK scratch rows per program, then the head on the chunk (128 edges, each head tile read
# serves 128); the head kernel reads the rows pass's h1 rows (no MLP); the backward kernel back-propagates the layers
# from their saved state on 32 edges at a time at IN_K ≤ 128, 16 beyond (when it recomputed them it spilled at 32 under
# Triton 3.6; at the default width 32 does not fit in registers). The backward kernels sum the parameter gradients over
# a chunk (`launch_config`), reading their scratch rows back KE at a time; grad_h̃ is its own kernel on 128 edges per
# program and row tile (inside the backward kernel, per chunk, its scratch addresses were live across the layers'
# backward and ptxas spilled 60–280 B at P = 256); in the interpreter the blocks and chunks are short and the programs
# few, so that tests cross block, chunk, program and wave boundaries.
INTERPRET_CONFIG = {"fwd": dict(BLOCK_E=16, CHUNK=32), "bwd": dict(BLOCK_E=16, KE=16, CHUNK=32),
                    "head_bwd": dict(BLOCK_E=16, KE=16, CHUNK=32), "grad_h": dict(BLOCK_E=16),
                    "pool": dict(TB=16, KE=16, CT=16), "pool_bwd": dict(TB=16, KE=16, CT=16)}
GPU_CONFIG = {"fwd": dict(BLOCK_E=32, CHUNK=128, num_warps=8, num_stages=1),
              "bwd": dict(BLOCK_E=32, KE=32, num_warps=8, num_stages=1),
              "head_bwd": dict(BLOCK_E=32, KE=32, CHUNK=256, num_warps=8, num_stages=1),
              "grad_h": dict(BLOCK_E=128, num_warps=4, num_stages=1),
              "pool": dict(TB=16, KE=16, num_warps=8, num_stages=1),
              "pool_bwd": dict(TB=16, KE=16, num_warps=8, num_stages=1)}
#: Persistent programs per SM on a GPU: one 8-warp program each — the forward takes 176–255 registers per thread
#: (two would need ≤ 128), the backward kernels 255 and a scratch per program; the pooled head a scratch of
#: TB·DIN·IN_K values (256 KiB at the anchors' width: one per SM keeps them in L2).
PROGRAMS_PER_SM = {"fwd": 1, "bwd": 1, "head_bwd": 1, "pool": 1, "pool_bwd": 1}
#: The head runs per target on pooled features (``_gmlp_pool_fwd_kernel``, ``_gmlp_pool_bwd_kernel``) when the
#: mean in-degree E / num_targets is at least this: its tiles then cost 2·16² FLOPs per target instead of per
#: edge, and pooling 2·DIN·IN_K per edge (rounded up to KE edges per target); below it the edge-wise head is
#: cheaper (bench/NOTES.md).
POOL_MIN_DEGREE = 4
#: The backward kernel runs on waves of WAVE_CHUNKS chunks per program, each after grad_h̃ of the wave's edges
#: was written to a buffer of one wave's rows (IN_K floats per edge: 8.3 MiB on 132 SMs at IN_K = 64, L2-resident).
WAVE_CHUNKS = 2
#: Where the head pools per target, a wave is longer than that at a high in-degree — long enough for a block of TB
#: targets per program of the pooled kernel (``_pooled_wave``) — while its buffers of the wave's rows (the layers'
#: saved state, h1, grad_h̃) take at most this many bytes.
WAVE_BYTES = 256 << 20
_HT = tl.constexpr(HEAD_TILE)  # the side of the head's tiles (packing lists the non-zero ones)
# rows of PackedGMLP.column_index (per component: its norm block, its gate, the gate whose scalar it is) and of
# column_scale (the entries of expand, mean, avg, gate_expand, gate_pick there)
_BLOCK, _GATE, _SCALAR = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
_EXPAND, _MEAN, _AVG, _SPREAD, _PICK = (tl.constexpr(i) for i in range(5))


def launch_config(name: str, in_k: int, interpret: bool = INTERPRET, din: int = 64) -> dict:
    """The configuration of kernel ``name`` ("fwd", "bwd", "head_bwd", "grad_h", "pool", "pool_bwd") when the dots
    read ``in_k`` columns (IN_K): the persistent kernels' chunks hold CHUNK rows of scratch per program, so they
    shrink as IN_K grows — backward: every layer's input and gradient, K0P + P + (L - 1)(IN_K + P) floats per
    row, 128 rows up to IN_K = 128, 64 beyond (≤ 200 KiB for two layers), its layers on 32 edges at a time up to
    IN_K = 128, 16 beyond (and its weight-gradient sums 16 rows at a time); forward: h1, IN_K floats per row,
    128 rows (≤ 128 KiB); head kernel: grad_out[tgt], DOUT_P floats per row, 256 rows at any IN_K (64 KiB at
    DOUT_P = 64; its h1 rows are the rows pass's).  The pooled head sums a target's P over ``din`` input channels in
    tiles of CT, at most DIN_P (a (CT × IN_K) accumulator of ≤ 8192 values, 32 registers per thread; at 4096 the
    default width spilled 12–56 B)."""
    if interpret:
        return dict(INTERPRET_CONFIG[name])
    config = dict(GPU_CONFIG[name])
    if name == "bwd":
        config["CHUNK"] = 128 if in_k <= 128 else 64
        if in_k > 128:  # 32 would not fit in registers; KE = 32 spilled 16 B in TF32 under Triton 3.6
            config["BLOCK_E"] = config["KE"] = 16
    elif name in ("pool", "pool_bwd"):
        config["CT"] = min(max(16, 8192 // in_k), din_padded(din))
    return config


@triton.jit
def _tile(ptr, R: tl.constexpr, C: tl.constexpr, LD, TRANS: tl.constexpr, keep=None):
    """(R, C) block at ``ptr`` of a row-major matrix with leading dimension LD; with TRANS, the transpose of
    the (C, R) block stored there.  With ``keep`` (bool, broadcast to (R, C)) only the kept entries are loaded, the
    others are zero."""
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    if TRANS:
        at = ptr + c[None, :] * LD + r[:, None]
    else:
        at = ptr + r[:, None] * LD + c[None, :]
    if keep is None:
        m = tl.load(at)
    else:
        m = tl.load(at, mask=keep, other=0.0)
    return m


@triton.jit
def _kept_tile(ptr, f_ptr, R: tl.constexpr, C: tl.constexpr, LD, TRANS: tl.constexpr, FS: tl.constexpr):
    """``_tile`` of a mostly zero matrix (R a multiple of 16) that reads only the columns c of the block whose flag
    f[j·FS + c] is set in one of its R / 16 slabs j (uint8; ``PackedGMLP.weight_slabs``, ``structure_slabs``): the
    others are zero, not read from memory."""
    c = tl.arange(0, C)
    keep = tl.load(f_ptr + c) != 0
    for j in tl.static_range(1, R // 16):
        keep = keep | (tl.load(f_ptr + j * FS + c) != 0)
    return _tile(ptr, R, C, LD, TRANS, keep[None, :])


@triton.jit
def _halves(u, P: tl.constexpr):
    """(R, P) -> its left and right (R, P/2) halves."""
    return tl.split(tl.permute(tl.reshape(u, (u.shape[0], 2, P // 2)), (0, 2, 1)))


@triton.jit
def _join(a, b, P: tl.constexpr):
    """Two (R, P/2) halves -> (R, P)."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (a.shape[0], P))


@triton.jit
def _stage(u, st_ptr, KU: tl.constexpr, K0: tl.constexpr = 0):
    """Store u (R, K) row-major in the program's staging buffer st (≥ R·K values), for ``_staged_dot``: its first
    KU columns, the ones read back (the layers' padding columns are not) — where KU < K only those from K0 on (the
    gates' gather does not read the hidden features); a whole row's store stays unmasked (a lower bound there made
    ptxas spill 4–60 B at P = 256, bench/NOTES.md)."""
    R: tl.constexpr = u.shape[0]
    K: tl.constexpr = u.shape[1]
    cols = tl.arange(0, K)
    at = st_ptr + tl.arange(0, R)[:, None] * K + cols[None, :]
    tl.debug_barrier()  # earlier reads of the buffer are done
    if KU < K:
        tl.store(at, u, mask=((cols >= K0) & (cols < KU))[None, :])
    else:
        tl.store(at, u)
    tl.debug_barrier()  # the tile is read back by other threads


@triton.constexpr_function
def _zn(k0p, in_k, precision):
    """ZN: the columns of z's gradient the backward computes (only K0 of them are z's), at most IN_K: K0P rounded up to
    32 at IN_K > 128 outside TF32, else to 128 — as measured spill-free (ptxas: 32 spilled 4 B at IN_K = 64 in IEEE,
    32 and 64 spilled 8–40 B at IN_K = 256 in TF32; bench/NOTES.md)."""
    return min(in_k, max(k0p, 32 if in_k > 128 and precision != "tf32" else 128))


@triton.constexpr_function
def _structure_precision(precision):
    """The dots' precision with the norms' and gates' structure matrices: IEEE in IEEE, else tf32x3 — also in
    "tf32" mode, whose TF32 is for the layers and the head (bench/NOTES.md, precision modes)."""
    return "ieee" if precision == "ieee" else "tf32x3"


@triton.constexpr_function
def _bwd_flags(fs, precision, in_k):
    """FS of a slab-flagged product of the backward kernel's (z's gradient, the structure's sums): fs, or 0 — no
    flags read, the whole operand loaded — in IEEE at IN_K ≤ 128, where that kernel sits at 255 registers and the
    flags' loads made ptxas spill 4–16 B (bench/NOTES.md)."""
    return 0 if precision == "ieee" and in_k <= 128 else fs


@triton.constexpr_function
def _kc(k, precision):
    """KC: the columns of a staged dot operand (``_staged_dot``), at most K."""
    return min(k, 32 if precision == "tf32" else 16)


@triton.constexpr_function
def _ks(k, ku, precision):
    """KS: the staged columns a dot reads when M's rows from KU on are zero — KU rounded up to KC, at most K."""
    kc = _kc(k, precision)
    return min(k, triton.cdiv(ku, kc) * kc)


@triton.jit
def _staged_dot(st_ptr, R: tl.constexpr, m_ptr, K: tl.constexpr, N: tl.constexpr, LD, TRANS: tl.constexpr,
                PRECISION: tl.constexpr, KS: tl.constexpr, f_ptr=None, FS: tl.constexpr = 0):
    """u (R, K) @ M (K, N) for u staged at st (``_stage``) up to column KS (a multiple of KC), M's rows from KS on
    zero (the layers' padding: not read, not multiplied): u is read back as (R, KC) dot operands one at a time, in
    a loop the compiler does not unroll, so a computed tile never exists as a whole dot operand (R·K / 32
    registers per thread at 8 warps: 128 for a (16 × 256) tile).  With FS > 0, M's tiles are loaded where the slab
    flags at f_ptr (row stride FS) keep them (``_kept_tile``)."""
    KC: tl.constexpr = _kc(K, PRECISION)
    rows = tl.arange(0, R)[:, None] * K
    acc = tl.zeros((R, N), dtype=st_ptr.dtype.element_ty)
    for k in range(0, KS, KC):
        step = k if TRANS else k * LD
        if FS == 0:
            m = _tile(m_ptr + step, KC, N, LD, TRANS)
        else:
            m = _kept_tile(m_ptr + step, f_ptr + k // 16 * FS, KC, N, LD, TRANS, FS)
        acc += tl.dot(tl.load(st_ptr + rows + k + tl.arange(0, KC)[None, :]), m, input_precision=PRECISION)
    return acc


@triton.jit
def _mm(u, m_ptr, K: tl.constexpr, N: tl.constexpr, LD, TRANS: tl.constexpr, PRECISION: tl.constexpr, st_ptr,
        KU: tl.constexpr, f_ptr=None, FS: tl.constexpr = 0):
    """u (R, K) @ M (K, N), M = the matrix at m_ptr (``_tile`` conventions), through the staging buffer st; M's
    rows from KU on are zero (``_staged_dot``: u's first KS columns are read).  Only those are staged, except for
    the backward's products (M transposed) in IEEE, which stage whole rows: masking their stores made ptxas spill
    8 B at P = 128 under Triton 3.8 (bench/NOTES.md)."""
    KS: tl.constexpr = _ks(K, KU, PRECISION)
    _stage(u, st_ptr, K if TRANS and PRECISION == "ieee" else KS)
    return _staged_dot(st_ptr, u.shape[0], m_ptr, K, N, LD, TRANS, PRECISION, KS, f_ptr, FS)


@triton.constexpr_function
def _ws_offset(l, k0p, in_k, p):
    """Column of layer l's input in the backward's scratch rows [u_0 (K0P) | da_0 (P) | u_1 (IN_K) | da_1 (P) | …]
    (its da follows its input); for l = L, the rows' width SW (``scratch_width``).  A compile-time function: the
    kernels and the host state the layout once."""
    return 0 if l == 0 else k0p + p + (l - 1) * (in_k + p)


@triton.constexpr_function
def _sv_offset(l, pu, nb, ng, in_k):
    """Column of layer l's centred linear part c in the rows of the saved forward state, [c_0 (PU) | rinv_0 (NB) |
    sg_0 (NG) | u_1 (IN_K) | c_1 | rinv_1 | sg_1 | u_2 …] (c's first PU columns — the others are padding, zero —,
    1 / rms per block, the gates' sigmoids, the next layer's used input columns); layer l's input u_l (l ≥ 1) sits
    at _sv_offset(l) - IN_K, and the rows' width SV of L layers is _sv_offset(L) - IN_K (``saved_width``)."""
    return l * (pu + nb + ng + in_k)


@triton.jit(noinline=True)  # its own registers: inlined, the kernel spilled (bench/NOTES.md)
def _weight_grad(ws_ptr, st_ptr, l: tl.constexpr, wsup_ptr, gw_ptr, gb_ptr, P: tl.constexpr, IN_K: tl.constexpr,
                 K0P: tl.constexpr, SW: tl.constexpr, CHUNK: tl.constexpr, KE: tl.constexpr, ST: tl.constexpr,
                 PRECISION: tl.constexpr):
    """gw[l] += uᵀ·da and gb[l] += Σ da over a chunk's scratch rows (read KE at a time), one atomic per entry of
    the weight's support (wsup ≠ 0: the structural zeros of an equivariant weight get no gradient).  The
    result comes in (KL, PT) tiles of ST values (the staging buffer's size, ≤ 16 registers per thread) and goes to
    the atomics through the staging buffer, 256 entries at a time (a whole tile's atomic addresses, invariant
    across chunks, are hoisted out of the chunk loop by the compiler: more spills at IN_K = 256)."""
    KL: tl.constexpr = K0P if l == 0 else IN_K
    PT: tl.constexpr = min(P, ST // KL)
    RG: tl.constexpr = max(256 // PT, 1)  # rows per group of atomics
    u_ptr = ws_ptr + _ws_offset(l, K0P, IN_K, P)
    offs_k = tl.arange(0, KL)
    offs_t = tl.arange(0, PT)
    offs_g = tl.arange(0, RG)[:, None] * PT + offs_t[None, :]
    for t in range(P // PT):
        acc = tl.zeros((KL, PT), dtype=gw_ptr.dtype.element_ty)
        gb = tl.zeros((PT,), dtype=gw_ptr.dtype.element_ty)
        for s in range(CHUNK // KE):
            rows = (s * KE + tl.arange(0, KE))[:, None] * SW
            da = tl.load(u_ptr + rows + KL + t * PT + offs_t[None, :])
            acc += tl.dot(tl.trans(tl.load(u_ptr + rows + offs_k[None, :])), da, input_precision=PRECISION)
            gb += tl.sum(da, 0)
        tl.atomic_add(gb_ptr + l * P + t * PT + offs_t, gb, sem="relaxed")
        _stage(acc, st_ptr, PT)
        for k in range(0, KL, RG):
            entries = l * P * P + k * P + t * PT + (offs_g // PT) * P + offs_g % PT
            tl.atomic_add(gw_ptr + entries, tl.load(st_ptr + k * PT + offs_g), mask=tl.load(wsup_ptr + entries) != 0,
                          sem="relaxed")


@triton.jit(noinline=True)  # one call site per chunk: across two, ptxas held a value in local memory (4–8 B)
def _weight_grads(ws_ptr, st_ptr, L: tl.constexpr, wsup_ptr, gw_ptr, gb_ptr, P: tl.constexpr, IN_K: tl.constexpr,
                  K0P: tl.constexpr, SW: tl.constexpr, CHUNK: tl.constexpr, KE: tl.constexpr, ST: tl.constexpr,
                  PRECISION: tl.constexpr):
    """``_weight_grad`` of each of the L layers, one after the other."""
    for l in tl.static_range(L):
        _weight_grad(ws_ptr, st_ptr, l, wsup_ptr, gw_ptr, gb_ptr, P, IN_K, K0P, SW, CHUNK, KE, ST, PRECISION)


@triton.jit
def _vec(ptr, N: tl.constexpr):
    return tl.load(ptr + tl.arange(0, N))


@triton.jit
def _slabs(wsl_ptr, l: tl.constexpr, side: tl.constexpr, P: tl.constexpr):
    """Layer l's flags in ``PackedGMLP.weight_slabs`` (L, 2, P / 16, P): side 0 for u @ W, 1 for da @ Wᵀ."""
    return wsl_ptr + (2 * l + side) * (P // 16) * P


@triton.jit
def _blocks(ssl_ptr, l: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr):
    """Layer l's rows of ``PackedGMLP.structure_slabs`` (L, P / 16, NB + NG): per slab of 16 components, its norm
    blocks' flags (NB; the gates' follow, NG): the slabs of MEAN, AVG and EXPᵀ (GEXPᵀ from NB on) a dot reads."""
    return ssl_ptr + l * (P // 16) * (NB + NG)


@triton.jit
def _linear(u, l: tl.constexpr, w_ptr, wsl_ptr, b_ptr, P: tl.constexpr, IN_K: tl.constexpr, K0P: tl.constexpr,
            HU: tl.constexpr, PRECISION: tl.constexpr, st_ptr):
    """EquivariantLinear of hidden layer l on its input u: z (BLOCK_E, K0P) for l = 0, else (BLOCK_E, P) of which
    the first HU columns meet non-zero weight rows; the weight's parts that its slab flags (wsl) leave out are zero
    and not loaded (``_kept_tile``)."""
    if l == 0:
        a = tl.dot(u, _kept_tile(w_ptr, wsl_ptr, K0P, P, P, False, P), input_precision=PRECISION)  # z: K0P columns
    else:
        a = _mm(_used_cols(u, P, IN_K), w_ptr + l * P * P, IN_K, P, P, False, PRECISION, st_ptr, HU,
                _slabs(wsl_ptr, l, 0, P), P)
    return a + _vec(b_ptr + l * P, P)[None, :]


@triton.jit
def _spread(v, l: tl.constexpr, INDEX: tl.constexpr, SCALE: tl.constexpr, cidx_ptr, cscale_ptr, P: tl.constexpr,
            st_ptr):
    """v (BLOCK_E, K) per block or per gate -> (BLOCK_E, P): component p gets v[:, column_index[l, INDEX, p]] ·
    column_scale[l, SCALE, p] — v @ M for a structure matrix M with one non-zero per column, as a gather from
    the staging buffer (a register gather, ``tl.gather``, took ≈ 65 more registers per thread in the forward at
    P = 128 under Triton 3.8)."""
    _stage(v, st_ptr, v.shape[1])
    idx = tl.load(cidx_ptr + (l * 3 + INDEX) * P + tl.arange(0, P))
    return tl.load(st_ptr + tl.arange(0, v.shape[0])[:, None] * v.shape[1] + idx[None, :]) * \
        _vec(cscale_ptr + (l * 5 + SCALE) * P, P)[None, :]


@triton.jit
def _norm_out(c, rinv, l: tl.constexpr, scale_ptr, shift_ptr, cidx_ptr, cscale_ptr, P: tl.constexpr, st_ptr):
    """The normed output of hidden layer l, c · spread(1 / rms) · scale + shift, from its centred linear part c
    (BLOCK_E, P) and 1 / rms per block rinv (BLOCK_E, NB)."""
    return c * _spread(rinv, l, _BLOCK, _EXPAND, cidx_ptr, cscale_ptr, P, st_ptr) * \
        _vec(scale_ptr + l * P, P)[None, :] + _vec(shift_ptr + l * P, P)[None, :]


@triton.jit
def _normed(a, l: tl.constexpr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, ssl_ptr, cidx_ptr, cscale_ptr, eps,
            P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr, PU: tl.constexpr,
            SP: tl.constexpr, st_ptr):
    """Per-field norm of hidden layer l on its linear part a: (c, rinv, n) — a centred (channel mean off the
    scalar blocks), 1 / rms per block (BLOCK_E, NB), the normed output (without NORM: a, 0, a).  The block sums
    are dots with MEAN and AVG (on the first PU columns: the others are padding); their spread onto the
    components, gathers."""
    if NORM:
        blocks = _blocks(ssl_ptr, l, P, NB, NG)
        c = a - _spread(_mm(a, mean_ptr + l * P * NB, P, NB, NB, False, SP, st_ptr, PU, blocks, NB + NG), l, _BLOCK,
                        _EXPAND, cidx_ptr, cscale_ptr, P, st_ptr)
        rinv = tl.rsqrt(_mm(c * c, avg_ptr + l * P * NB, P, NB, NB, False, SP, st_ptr, PU, blocks, NB + NG) + eps)
        n = _norm_out(c, rinv, l, scale_ptr, shift_ptr, cidx_ptr, cscale_ptr, P, st_ptr)
    else:
        c = a
        n = a
        rinv = tl.zeros((a.shape[0], NB), dtype=a.dtype)
    return c, rinv, n


@triton.constexpr_function
def _gate_start(hu):
    """The first column the gates' gather stages: HU (H rounded up to 16) less 16, below H — the gates' scalars
    follow the H hidden features."""
    return max(0, hu - 16)


@triton.jit
def _gates(n, l: tl.constexpr, gcol_ptr, NG: tl.constexpr, PU: tl.constexpr, HU: tl.constexpr, st_ptr):
    """sigmoid of the gate scalars of hidden layer l (BLOCK_E, NG) from its normed output n, gathered from the
    staging buffer: gate g's scalar is column gate_columns[l, g], after the H hidden features and before PU (a
    padding gate's: H, never used; packing makes them so, the op checks it), so where PU < P only the columns from
    HU - 16 < H on are staged (``_gate_start``, ``_stage``)."""
    _stage(n, st_ptr, PU, _gate_start(HU))
    idx = tl.load(gcol_ptr + l * NG + tl.arange(0, NG))
    return tl.sigmoid(tl.load(st_ptr + tl.arange(0, n.shape[0])[:, None] * n.shape[1] + idx[None, :]))


@triton.jit
def _norm_gate(a, l: tl.constexpr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, ssl_ptr, gcol_ptr, cidx_ptr, cscale_ptr,
               triv_ptr, eps, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr,
               IN_K: tl.constexpr, PU: tl.constexpr, HU: tl.constexpr, PRECISION: tl.constexpr, st_ptr, sv_row,
               SV: tl.constexpr):
    """Norm and gate of hidden layer l on its linear part a: SiLU on the scalars, gated fields elsewhere.  With
    SV > 0, its state for the backward (c, 1 / rms, the gates) goes to the saved rows sv_row (BLOCK_E, 1)
    pointers (``_sv_offset``)."""
    SP: tl.constexpr = _structure_precision(PRECISION)
    c, rinv, n = _normed(a, l, scale_ptr, shift_ptr, mean_ptr, avg_ptr, ssl_ptr, cidx_ptr, cscale_ptr, eps, P, NB, NG,
                         NORM, PU, SP, st_ptr)
    sg = _gates(n, l, gcol_ptr, NG, PU, HU, st_ptr)
    if SV > 0:
        at = sv_row + _sv_offset(l, PU, NB, NG, IN_K)
        tl.store(at + tl.arange(0, P)[None, :], c, mask=(tl.arange(0, P) < PU)[None, :])
        tl.store(at + PU + tl.arange(0, NB)[None, :], rinv)
        tl.store(at + PU + NB + tl.arange(0, NG)[None, :], sg)
    gf = _spread(sg, l, _GATE, _SPREAD, cidx_ptr, cscale_ptr, P, st_ptr)
    return _vec(triv_ptr + l * P, P)[None, :] * (n * tl.sigmoid(n)) + n * gf


@triton.jit
def _mlp(z, L: tl.constexpr, w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, gcol_ptr,
         cidx_ptr, cscale_ptr, triv_ptr, eps, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr,
         IN_K: tl.constexpr, K0P: tl.constexpr, PU: tl.constexpr, HU: tl.constexpr, PRECISION: tl.constexpr, st_ptr,
         sv_row, SV: tl.constexpr):
    """The first L hidden layers on z (BLOCK_E, K0P): (BLOCK_E, P), or z itself for L = 0.  With SV > 0 every
    layer's state for the backward and every later layer's input go to the saved rows sv_row (``_sv_offset``)."""
    u = z
    for l in tl.static_range(L):
        u = _norm_gate(_linear(u, l, w_ptr, wsl_ptr, b_ptr, P, IN_K, K0P, HU, PRECISION, st_ptr), l, scale_ptr,
                       shift_ptr, mean_ptr, avg_ptr, ssl_ptr, gcol_ptr, cidx_ptr, cscale_ptr, triv_ptr, eps, P, NB, NG,
                       NORM, IN_K, PU, HU, PRECISION, st_ptr, sv_row, SV)
        if SV > 0 and l + 1 < L:
            tl.store(sv_row + _sv_offset(l + 1, PU, NB, NG, IN_K) - IN_K + tl.arange(0, IN_K)[None, :],
                     _used_cols(u, P, IN_K))
    return u


@triton.jit
def _layer_state(z, l: tl.constexpr, scale_ptr, shift_ptr, cidx_ptr, cscale_ptr, ws_row, sv_row, mask_e,
                 P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr, IN_K: tl.constexpr,
                 K0P: tl.constexpr, PU: tl.constexpr, NEED_PARAMS: tl.constexpr, SV: tl.constexpr, st_ptr):
    """What the backward of hidden layer l needs of its forward on a block of edges with inputs z: (c, rinv, n,
    sg) — the centred linear part, 1 / rms per block, the normed output and the gates' sigmoids — read from the
    rows sv_row that the backward's G-MLP pass saved (``_sv_offset``; n rebuilt from c and rinv by one gather).
    With NEED_PARAMS the layer's input (z, or its saved used columns) goes to the scratch rows ws_row, for
    ``_weight_grad``."""
    at = sv_row + _sv_offset(l, PU, NB, NG, IN_K)
    KL: tl.constexpr = K0P if l == 0 else IN_K
    if NEED_PARAMS:
        ws_u = ws_row + _ws_offset(l, K0P, IN_K, P) + tl.arange(0, KL)[None, :]
        if l == 0:
            tl.store(ws_u, z)
        else:
            tl.store(ws_u, tl.load(at - IN_K + tl.arange(0, IN_K)[None, :], mask=mask_e[:, None], other=0.0))
    c = tl.load(at + tl.arange(0, P)[None, :], mask=mask_e[:, None] & (tl.arange(0, P) < PU)[None, :], other=0.0)
    rinv = tl.load(at + PU + tl.arange(0, NB)[None, :], mask=mask_e[:, None], other=0.0)
    if NORM:
        n = _norm_out(c, rinv, l, scale_ptr, shift_ptr, cidx_ptr, cscale_ptr, P, st_ptr)
    else:
        n = c
    sg = tl.load(at + PU + NB + tl.arange(0, NG)[None, :], mask=mask_e[:, None], other=0.0)
    return c, rinv, n, sg


@triton.jit
def _layer_bwd(dy, c, rinv, n, sg, l: tl.constexpr, scale_ptr, exp_ptr, cidx_ptr, cscale_ptr, gexp_ptr, triv_ptr,
               w_ptr, wsl_ptr, ssl_ptr, ss_ptr, ws_row, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr,
               NORM: tl.constexpr, IN_K: tl.constexpr, K0P: tl.constexpr, PU: tl.constexpr, PRECISION: tl.constexpr,
               NEED_PARAMS: tl.constexpr, NEED_Z: tl.constexpr, st_ptr):
    """Gradient w.r.t. the input of layer l from the gradient dy of its output and its forward state (c, rinv,
    n, sg: ``_layer_state``), (BLOCK_E, P) or, for l = 0, z's first ZN columns (``_zn``; z has K0 ≤ K0P ≤ ZN;
    without NEED_Z not computed: the linear part's gradient da instead, for no one); Wᵀ loaded where its slab
    flags (wsl) say the weight meets its support.
    With NEED_PARAMS the block's gradients of scale and shift, per edge, are added to the program's sums ss
    (L, 2, BLOCK_E, P), and the linear part's gradient da goes to the scratch rows ws_row for ``_weight_grad``.

    Register budget: every (BLOCK_E, P) tile alive across a dot is 16 registers per thread at P = 256, so few
    are kept (dy, c, n, sigmoid(n) at most): the per-component broadcasts of 1/rms and of the gates (rf, gf) are
    recomputed from the per-block values where they are used."""
    SP: tl.constexpr = _structure_precision(PRECISION)
    offs = tl.arange(0, P)
    KL: tl.constexpr = K0P if l == 0 else IN_K
    FS: tl.constexpr = _bwd_flags(NB + NG, PRECISION, IN_K)
    blocks = _blocks(ssl_ptr, l, P, NB, NG)
    dsg = _mm(dy * n, gexp_ptr + l * NG * P, P, NG, P, True, SP, st_ptr, PU, blocks + NB, FS)  # per gate: a sum
    s = tl.sigmoid(n)
    dn = dy * (_vec(triv_ptr + l * P, P)[None, :] * s * (1 + n * (1 - s)) +
               _spread(sg, l, _GATE, _SPREAD, cidx_ptr, cscale_ptr, P, st_ptr))
    dn += _spread(dsg * sg * (1 - sg), l, _SCALAR, _PICK, cidx_ptr, cscale_ptr, P, st_ptr)  # onto the scalars' columns
    if NORM:
        scale = _vec(scale_ptr + l * P, P)[None, :]
        rf = _spread(rinv, l, _BLOCK, _EXPAND, cidx_ptr, cscale_ptr, P, st_ptr)
        if NEED_PARAMS:  # summed over rows after the backward: a sum over rows here cost 0.1–0.5 KB of spills
            at = ss_ptr + 2 * l * dy.shape[0] * P + tl.arange(0, dy.shape[0])[:, None] * P + offs[None, :]
            if PU < P:  # the padding columns' sums stay zero
                on = (offs < PU)[None, :]
                tl.store(at, tl.load(at, mask=on) + dn * c * rf, mask=on)
                tl.store(at + dy.shape[0] * P, tl.load(at + dy.shape[0] * P, mask=on) + dn, mask=on)
            else:
                tl.store(at, tl.load(at) + dn * c * rf)
                tl.store(at + dy.shape[0] * P, tl.load(at + dy.shape[0] * P) + dn)
        dc = dn * scale * rf
        drinv = _mm(dn * scale * c, exp_ptr + l * NB * P, P, NB, P, True, SP, st_ptr, PU, blocks, FS)  # per block
        ds = -0.5 * drinv * rinv * rinv * rinv
        dc += 2 * c * _spread(ds, l, _BLOCK, _AVG, cidx_ptr, cscale_ptr, P, st_ptr)
        dmu = _spread(_mm(dc, exp_ptr + l * NB * P, P, NB, P, True, SP, st_ptr, PU, blocks, FS), l, _BLOCK, _MEAN,
                      cidx_ptr, cscale_ptr, P, st_ptr)
        da = dc - dmu
    else:
        da = dn
    if NEED_PARAMS:
        tl.store(ws_row + _ws_offset(l, K0P, IN_K, P) + KL + offs[None, :], da)
    if l == 0 and not NEED_Z:
        du = da
    elif l == 0:  # ZN columns, not K0P: a dot with 16 output columns made ptxas spill 11 KB (_zn)
        du = _mm(da, w_ptr, P, _zn(K0P, IN_K, PRECISION), P, True, PRECISION, st_ptr, PU, _slabs(wsl_ptr, 0, 1, P),
                 _bwd_flags(P, PRECISION, IN_K))
    else:
        du = _mm(da, w_ptr + l * P * P, P, IN_K, P, True, PRECISION, st_ptr, PU, _slabs(wsl_ptr, l, 1, P), P)
        if IN_K < P:  # the input's padding columns meet zero weight rows
            du = _join(du, tl.zeros_like(du), P)
    return du


@triton.jit
def _z_rows(start, z_ptr, E, K0, BLOCK_E: tl.constexpr, K0P: tl.constexpr):
    """The block of edges start, …, start + BLOCK_E - 1: offsets, mask and z tile (BLOCK_E, K0P), zero-padded."""
    offs_e = start + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_k = tl.arange(0, K0P)
    z = tl.load(z_ptr + offs_e[:, None] * K0 + offs_k[None, :],
                mask=mask_e[:, None] & (offs_k < K0)[None, :], other=0.0)
    return offs_e, mask_e, z


@triton.jit
def _chunk_edges(start, src_ptr, tgt_ptr, env_ptr, E, CHUNK: tl.constexpr):
    """The chunk of edges start, …, start + CHUNK - 1: scratch rows, mask, src, tgt and env (CHUNK,)."""
    rows = tl.arange(0, CHUNK)
    mask_e = start + rows < E
    src = tl.load(src_ptr + start + rows, mask=mask_e, other=0)
    tgt = tl.load(tgt_ptr + start + rows, mask=mask_e, other=0)
    env = tl.load(env_ptr + start + rows, mask=mask_e, other=0.0)
    return rows, mask_e, src, tgt, env


@triton.jit(noinline=True)  # its own registers: inlined, the kernel spilled (bench/NOTES.md)
def _chunk_h1(start, z_ptr, w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, gcol_ptr, cidx_ptr,
              cscale_ptr, triv_ptr, hs_ptr, eps, E, K0, H, L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr,
              NG: tl.constexpr, NORM: tl.constexpr, IN_K: tl.constexpr, K0P: tl.constexpr, PU: tl.constexpr,
              HU: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr, PRECISION: tl.constexpr, st_ptr, sv_ptr,
              SV: tl.constexpr):
    """h1 = [MLP(z)[:, :H], 1] (h̃ before the envelope) of the chunk of CHUNK edges from start, by the MLP on
    BLOCK_E edges at a time, into the program's scratch rows hs (CHUNK, IN_K); padding edges get z = 0's.  With
    SV > 0 the layers' state for the backward goes to the chunk's saved rows sv (CHUNK, SV) (``_sv_offset``)."""
    for s in range(CHUNK // BLOCK_E):
        _, _, z = _z_rows(start + s * BLOCK_E, z_ptr, E, K0, BLOCK_E, K0P)
        h = _mlp(z, L, w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, gcol_ptr, cidx_ptr,
                 cscale_ptr, triv_ptr, eps, P, NB, NG, NORM, IN_K, K0P, PU, HU, PRECISION, st_ptr,
                 sv_ptr + (s * BLOCK_E + tl.arange(0, BLOCK_E))[:, None] * SV, SV)
        h1 = tl.where((tl.arange(0, P) == H)[None, :], 1.0, h)
        tl.store(hs_ptr + (s * BLOCK_E + tl.arange(0, BLOCK_E))[:, None] * IN_K + tl.arange(0, IN_K)[None, :],
                 _used_cols(h1, P, IN_K))


@triton.jit
def _chunk_gy(start, gout_ptr, tgt_ptr, gs_ptr, E, DOUT_P: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr):
    """grad_out[tgt] (N, DOUT_P) of the chunk's edges into the program's scratch rows gs (CHUNK, DOUT_P); zero for
    padding edges."""
    offs_o = tl.arange(0, DOUT_P)
    for s in range(CHUNK // BLOCK_E):
        rows = s * BLOCK_E + tl.arange(0, BLOCK_E)
        mask_e = start + rows < E
        tgt = tl.load(tgt_ptr + start + rows, mask=mask_e, other=0)
        tl.store(gs_ptr + rows[:, None] * DOUT_P + offs_o[None, :],
                 tl.load(gout_ptr + tgt[:, None] * DOUT_P + offs_o[None, :], mask=mask_e[:, None], other=0.0))


@triton.jit
def _cols(s_ptr, rows, col, W):
    """Columns col, …, col + 15 of the scratch rows ``rows`` of width W: (len(rows), 16)."""
    return tl.load(s_ptr + rows[:, None] * W + col + tl.arange(0, _HT)[None, :])


@triton.jit
def _head_rows(hrf_ptr, c, k, t, P: tl.constexpr, DOUT_P: tl.constexpr):
    """(16,) bool: which of the head's rows k, …, k + 15 of channel c meet its support in the output columns t, …,
    t + 15 (``PackedGMLP.head_row_flags``)."""
    return tl.load(hrf_ptr + (c * P + k + tl.arange(0, _HT)) * (DOUT_P // _HT) + t // _HT) != 0


@triton.jit
def _head_tile(head_ptr, hrf_ptr, c, k, t, P: tl.constexpr, DOUT_P: tl.constexpr, TRANS: tl.constexpr):
    """HEAD[c, k:k+16, t:t+16] (16 × 16), or with TRANS its transpose, its rows loaded where their flag is set
    (``_head_rows``; the others are zero)."""
    keep = _head_rows(hrf_ptr, c, k, t, P, DOUT_P)
    at = head_ptr + c * P * DOUT_P + k * DOUT_P + t
    if TRANS:  # the rows k, … are the transpose's columns
        return _tile(at, _HT, _HT, DOUT_P, True, keep[None, :])
    return _tile(at, _HT, _HT, DOUT_P, False, keep[:, None])


@triton.jit
def _head_sum(s_ptr, rows, W, src, env, mask_e, x_ptr, head_ptr, hrf_ptr, blk_ptr, count, fixed, DIN,
              P: tl.constexpr, DOUT_P: tl.constexpr, TRANS: tl.constexpr, PRECISION: tl.constexpr):
    """Σ_j env·x[src, c]·(S[rows, i:i+16] @ T_j), (len(rows), 16), over the ``count`` head tiles listed at blk_ptr
    as (i/16)·DIN + c (their rows loaded where hrf flags them): T_j = HEAD[c, i:i+16, fixed:fixed+16] (output tile
    ``fixed``; S holds h1), or with TRANS HEAD[c, fixed:fixed+16, i:i+16]ᵀ (row tile ``fixed``; S holds grad_out).
    S: rows of width W.  S's columns
    stay in registers while i repeats (the lists are sorted by i): read once per i, not per tile — for
    grad_out[tgt] a gather, for the forward's h1 its scratch (15 reads per chunk instead of 528 at the anchors'
    width; held at BLOCK_E = 16 it had cost ptxas 42 registers and a 64 B spill, at 32 none)."""
    acc = tl.zeros((rows.shape[0], _HT), dtype=s_ptr.dtype.element_ty)
    last = tl.full((), -1, tl.int64)
    si = tl.zeros((rows.shape[0], _HT), dtype=s_ptr.dtype.element_ty)
    for j in range(count):
        ic = tl.load(blk_ptr + j)
        i = ic // DIN * _HT
        c = ic % DIN
        if i != last:
            si = _cols(s_ptr, rows, i, W)
            last = i
        if TRANS:
            tile = _head_tile(head_ptr, hrf_ptr, c, fixed, i, P, DOUT_P, True)
        else:
            tile = _head_tile(head_ptr, hrf_ptr, c, i, fixed, P, DOUT_P, False)
        xc = tl.load(x_ptr + src * DIN + c, mask=mask_e, other=0.0) * env
        acc += xc[:, None] * tl.dot(si, tile, input_precision=PRECISION)
    return acc


@triton.jit
def _gmlp_conv_fwd_kernel(
    z_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr, out_ptr,
    w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gcol_ptr, cidx_ptr, cscale_ptr,
    gexp_ptr, triv_ptr, head_ptr, hrf_ptr, ocol_ptr, hblk_ptr, hcnt_ptr, hs_ptr, st_ptr, eps, E, K0, H, DIN, DOUT,
    programs,
    L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, DOUT_P: tl.constexpr,
    NORM: tl.constexpr, IN_K: tl.constexpr, K0P: tl.constexpr, PU: tl.constexpr, HU: tl.constexpr,
    BLOCK_E: tl.constexpr, PRECISION: tl.constexpr, CHUNK: tl.constexpr,
):
    """Persistent programs take chunks of CHUNK edges in turn.  Per chunk: h1 = [MLP(z)[:, :H], 1] into the
    program's scratch rows (``_chunk_h1``); then the head contracted with x[src] for the whole chunk, one output
    tile t at a time — acc = Σ env·x[src, c]·(h1[:, k] @ HEAD[c, k, t]) over the tile's non-zero (row tile k,
    channel c) tiles (the first hcnt[t] of row t of hblk, as k·DIN + c), the row scale after the dot — and
    out[tgt, out_cols[t]] += acc.  Every head tile read (from L2) serves CHUNK edges, not BLOCK_E, and the head's
    dots have CHUNK rows."""
    pid = tl.program_id(0)
    hs_ptr += pid * CHUNK * IN_K
    st_ptr += pid * BLOCK_E * max(P, DOUT_P)
    offs_t = tl.arange(0, _HT)
    for chunk in range(pid, tl.cdiv(E, CHUNK), programs):
        start = tl.cast(chunk, tl.int64) * CHUNK
        _chunk_h1(start, z_ptr, w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, gcol_ptr,
                  cidx_ptr, cscale_ptr, triv_ptr, hs_ptr, eps, E, K0, H, L, P, NB, NG, NORM, IN_K, K0P, PU, HU, BLOCK_E,
                  CHUNK, PRECISION, st_ptr, hs_ptr, 0)
        tl.debug_barrier()  # the rows are read back by other threads of the program
        rows, mask_e, src, tgt, env = _chunk_edges(start, src_ptr, tgt_ptr, env_ptr, E, CHUNK)
        for t in range(DOUT_P // _HT):
            acc = _head_sum(hs_ptr, rows, IN_K, src, env, mask_e, x_ptr, head_ptr, hrf_ptr,
                            hblk_ptr + t * (P // _HT) * DIN, tl.load(hcnt_ptr + t), t * _HT, DIN, P, DOUT_P, False,
                            PRECISION)
            cols = tl.load(ocol_ptr + t * _HT + offs_t)
            tl.atomic_add(out_ptr + tgt[:, None] * DOUT + cols[None, :], acc,
                          mask=mask_e[:, None] & (cols < DOUT)[None, :], sem="relaxed")
        tl.debug_barrier()  # every read of the chunk's rows is done before the next chunk overwrites them


@triton.jit
def _gmlp_rows_kernel(
    z_ptr, w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gcol_ptr, cidx_ptr,
    cscale_ptr, gexp_ptr, triv_ptr, hb_ptr, sv_ptr, st_ptr, eps, E, K0, H, programs,
    L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, DOUT_P: tl.constexpr,
    NORM: tl.constexpr, IN_K: tl.constexpr, K0P: tl.constexpr, PU: tl.constexpr, HU: tl.constexpr,
    BLOCK_E: tl.constexpr, PRECISION: tl.constexpr, CHUNK: tl.constexpr, SV: tl.constexpr,
):
    """h1 = [MLP(z)[:, :H], 1] of E edges into hb (⌈E / CHUNK⌉·CHUNK, IN_K) — a wave's rows, for the pooled head
    (``_gmlp_pool_fwd_kernel``) — by persistent programs that take chunks of CHUNK edges in turn.  In the
    backward (SV > 0) also the layers' state into sv (⌈E / CHUNK⌉·CHUNK, SV) (``_sv_offset``), which the
    G-MLP's backward kernel reads instead of recomputing the layers."""
    pid = tl.program_id(0)
    st_ptr += pid * BLOCK_E * max(P, DOUT_P)
    for chunk in range(pid, tl.cdiv(E, CHUNK), programs):
        start = tl.cast(chunk, tl.int64) * CHUNK
        _chunk_h1(start, z_ptr, w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, gcol_ptr,
                  cidx_ptr, cscale_ptr, triv_ptr, hb_ptr + start * IN_K, eps, E, K0, H, L, P, NB, NG, NORM, IN_K, K0P,
                  PU, HU, BLOCK_E, CHUNK, PRECISION, st_ptr, sv_ptr + start * SV, SV)


@triton.jit
def _wave_edges(rowptr_ptr, target, last, W0, E):
    """The edges of ``target`` in a wave of E edges sorted by target, from the call's edge W0 (rowptr: the call's
    CSR row pointers), as the wave's rows [lo, hi); empty past the wave's last target."""
    live = target <= last
    lo = tl.load(rowptr_ptr + target, mask=live, other=0) - W0
    hi = tl.load(rowptr_ptr + target + 1, mask=live, other=0) - W0
    return tl.minimum(tl.maximum(lo, 0), E), tl.minimum(tl.maximum(hi, 0), E)


@triton.jit
def _pool_target(hb_ptr, env_ptr, x_ptr, src_ptr, pb_ptr, lo, hi, DIN, IN_K: tl.constexpr, DIN_P: tl.constexpr,
                 CT: tl.constexpr, KE: tl.constexpr, PRECISION: tl.constexpr):
    """P[c, k] = Σ_e env_e·x[src_e, c]·h1_e[k] over the edges lo, …, hi - 1 (one target's in a wave; rows of hb)
    into pb (DIN, IN_K): per channel tile of CT, one (CT × KE) @ (KE × IN_K) dot per KE edges."""
    offs_k = tl.arange(0, IN_K)
    for c0 in tl.static_range(0, DIN_P, CT):
        ch = c0 + tl.arange(0, CT)
        acc = tl.zeros((CT, IN_K), dtype=pb_ptr.dtype.element_ty)
        for r in range(lo, hi, KE):
            rows = r + tl.arange(0, KE)
            m = rows < hi
            src = tl.load(src_ptr + rows, mask=m, other=0)
            xe = tl.load(x_ptr + src[:, None] * DIN + ch[None, :], mask=m[:, None] & (ch < DIN)[None, :], other=0.0)
            xe *= tl.load(env_ptr + rows, mask=m, other=0.0)[:, None]
            h = tl.load(hb_ptr + rows[:, None] * IN_K + offs_k[None, :], mask=m[:, None], other=0.0)
            acc += tl.dot(tl.trans(xe), h, input_precision=PRECISION)
        tl.store(pb_ptr + ch[:, None] * IN_K + offs_k[None, :], acc, mask=(ch < DIN)[:, None])


@triton.jit
def _pool_block(hb_ptr, env_ptr, x_ptr, src_ptr, rowptr_ptr, pb_ptr, t0, last, W0, E, DIN, IN_K: tl.constexpr,
                DIN_P: tl.constexpr, TB: tl.constexpr, CT: tl.constexpr, KE: tl.constexpr, PRECISION: tl.constexpr):
    """P of the targets t0, …, t0 + TB - 1 over their edges in the wave (``_wave_edges``) into pb (TB, DIN, IN_K),
    one target at a time (``_pool_target``)."""
    for i in range(TB):
        lo, hi = _wave_edges(rowptr_ptr, t0 + i, last, W0, E)
        _pool_target(hb_ptr, env_ptr, x_ptr, src_ptr, pb_ptr + i * DIN * IN_K, lo, hi, DIN, IN_K, DIN_P, CT, KE,
                     PRECISION)


@triton.jit
def _pooled_head_sum(pb_ptr, rows, W, head_ptr, hrf_ptr, blk_ptr, count, t, DIN, IN_K: tl.constexpr,
                     P: tl.constexpr, DOUT_P: tl.constexpr, PRECISION: tl.constexpr):
    """Σ_j P[rows, c, k:k+16] @ HEAD[c, k:k+16, t:t+16], (len(rows), 16), over the ``count`` head tiles of output
    tile t listed at blk_ptr as (k/16)·DIN + c (their rows loaded where hrf flags them); P: rows of width W =
    DIN·IN_K (``_pool_target``'s layout)."""
    acc = tl.zeros((rows.shape[0], _HT), dtype=pb_ptr.dtype.element_ty)
    for j in range(count):
        kc = tl.load(blk_ptr + j)
        k = kc // DIN * _HT
        c = kc % DIN
        acc += tl.dot(_cols(pb_ptr, rows, c * IN_K + k, W), _head_tile(head_ptr, hrf_ptr, c, k, t, P, DOUT_P, False),
                      input_precision=PRECISION)
    return acc


@triton.jit
def _gmlp_pool_fwd_kernel(
    hb_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr, rowptr_ptr, out_ptr, head_ptr, hrf_ptr, ocol_ptr, hblk_ptr, hcnt_ptr,
    pb_ptr, W0, E, DIN, DOUT, programs,
    P: tl.constexpr, DOUT_P: tl.constexpr, IN_K: tl.constexpr, DIN_P: tl.constexpr, TB: tl.constexpr,
    CT: tl.constexpr, KE: tl.constexpr, PRECISION: tl.constexpr,
):
    """The head on pooled features, for a wave of E edges sorted by target (the call's edges W0, …, W0 + E - 1;
    env, src, tgt and hb's h1 rows from the wave's first edge; rowptr: the call's CSR row pointers).  Persistent
    programs take blocks of TB consecutive targets of the wave in turn; per target, P = Σ_e env·x[src]ᵀ h1 over
    its edges in the wave into the program's scratch pb (TB, DIN, IN_K) (``_pool_target``), then per output tile
    t, Σ P[:, c, k] @ HEAD[c, k, t] over its non-zero tiles and out[target, out_cols[t]] += that (atomics: a
    target's edges may span two waves).  Each head tile read serves TB targets, and the head's FLOPs are per
    target, not per edge."""
    pid = tl.program_id(0)
    pb_ptr += pid * TB * DIN * IN_K
    first = tl.load(tgt_ptr)
    last = tl.load(tgt_ptr + E - 1)
    offs_i = tl.arange(0, TB)
    offs_t = tl.arange(0, _HT)
    for block in range(pid, tl.cdiv(last - first + 1, TB), programs):
        t0 = first + block * TB
        _pool_block(hb_ptr, env_ptr, x_ptr, src_ptr, rowptr_ptr, pb_ptr, t0, last, W0, E, DIN, IN_K, DIN_P, TB, CT, KE,
                    PRECISION)
        tl.debug_barrier()  # P is read back by other threads of the program
        targets = t0 + offs_i
        lo = tl.load(rowptr_ptr + targets, mask=targets <= last, other=0)
        hi = tl.load(rowptr_ptr + targets + 1, mask=targets <= last, other=0)
        touched = (hi > W0) & (lo < W0 + E) & (hi > lo)  # the targets with an edge in the wave
        for t in range(DOUT_P // _HT):
            acc = _pooled_head_sum(pb_ptr, offs_i, DIN * IN_K, head_ptr, hrf_ptr, hblk_ptr + t * (P // _HT) * DIN,
                                   tl.load(hcnt_ptr + t), t * _HT, DIN, IN_K, P, DOUT_P, PRECISION)
            cols = tl.load(ocol_ptr + t * _HT + offs_t)
            tl.atomic_add(out_ptr + targets[:, None] * DOUT + cols[None, :], acc,
                          mask=touched[:, None] & (cols < DOUT)[None, :], sem="relaxed")
        tl.debug_barrier()  # every read of P is done before the next block overwrites it


@triton.jit
def _gmlp_pool_bwd_kernel(
    hb_ptr, gout_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr, rowptr_ptr, head_ptr, hrf_ptr, hblk_ptr, hcnt_ptr, cblk_ptr,
    ccnt_ptr, gh_ptr, gx_ptr, genv_ptr, ga_ptr, sb_ptr, W0, E, H, DIN, LISTED, programs,
    P: tl.constexpr, DOUT_P: tl.constexpr, IN_K: tl.constexpr, DIN_P: tl.constexpr, TB: tl.constexpr,
    CT: tl.constexpr, KE: tl.constexpr, PRECISION: tl.constexpr, NEED_HEAD: tl.constexpr, NEED_ENV: tl.constexpr,
    NEED_X: tl.constexpr,
):
    """The head's side of the backward on pooled features, for a wave of E edges sorted by target (as
    ``_gmlp_pool_fwd_kernel``; gout in the head's order).  Persistent programs take blocks of TB consecutive
    targets in turn; per block, in the program's scratch sb (TB, DIN, IN_K):

    * with NEED_HEAD, the pooled features P (``_pool_target``) and G_ct = P[:, c, k]ᵀ @ gout[:, t] over the TB
      targets, per listed tile, added into the program's own copy of the head's gradient on the listed tiles,
      ga (programs, LISTED, 16, 16) — tile n the n-th of head_blocks' lists, read in order —, its rows that
      head_row_flags keep: a load and a store per entry, no atomics (``pooled_bwd`` sums the copies);
    * G[c, k] = Σ_t HEAD[c, k, t] @ gout[target, t]ᵀ per target (tiles listed per channel, in row-tile order:
      cblk, ccnt), each (TB × 16) tile of G stored once (zeros where channel c lists none);
    * per edge, KE at a time: grad_h̃ = env · x[src] @ G into gh (zero from column H on) and, with NEED_ENV or
      NEED_X, s = h1 @ Gᵀ: grad_env = Σ_c x[src, c] · s_c (with NEED_ENV), grad_x[src] += env · s (atomics; with
      NEED_X).

    The head's tiles cost 2·16²·TB FLOPs per listed tile and block of TB targets (twice), the edges 2·DIN·IN_K
    each (three times) — the edge-wise kernels 2·16² per listed tile and edge (twice) and the head's gradient."""
    pid = tl.program_id(0)
    sb_ptr += pid * TB * DIN * IN_K
    ga_ptr += pid * LISTED * _HT * _HT
    TT: tl.constexpr = DOUT_P // _HT
    first = tl.load(tgt_ptr)
    last = tl.load(tgt_ptr + E - 1)
    offs_i = tl.arange(0, TB)
    offs_t = tl.arange(0, _HT)
    for block in range(pid, tl.cdiv(last - first + 1, TB), programs):
        t0 = first + block * TB
        gy_rows = tl.minimum(t0 + offs_i, last)  # rows of gout; the targets past the wave's last have no edge here
        if NEED_HEAD:
            _pool_block(hb_ptr, env_ptr, x_ptr, src_ptr, rowptr_ptr, sb_ptr, t0, last, W0, E, DIN, IN_K, DIN_P, TB,
                        CT, KE, PRECISION)
            tl.debug_barrier()  # P is read back by other threads of the program
            n = tl.zeros((), tl.int64)  # the listed tiles before output tile t
            for t in range(TT):
                gy = _cols(gout_ptr, gy_rows, t * _HT, DOUT_P)
                count = tl.load(hcnt_ptr + t)
                for j in range(count):
                    kc = tl.load(hblk_ptr + t * (P // _HT) * DIN + j)
                    k = kc // DIN * _HT
                    c = kc % DIN
                    keep = (_head_rows(hrf_ptr, c, k, t * _HT, P, DOUT_P) & (n + j < LISTED))[:, None]
                    tile = ga_ptr + (n + j) * (_HT * _HT) + offs_t[:, None] * _HT + offs_t[None, :]
                    sum_so_far = tl.load(tile, mask=keep, other=0.0)
                    g = tl.dot(tl.trans(_cols(sb_ptr, offs_i, c * IN_K + k, DIN * IN_K)), gy, input_precision=PRECISION)
                    tl.store(tile, sum_so_far + g, mask=keep)
                n += count
            tl.debug_barrier()  # every read of P is done before G overwrites it; ga's stores before the next block's
        for c in range(DIN):  # G[:, c, k] = Σ_t gout[:, t] @ HEAD[c, k, t]ᵀ over channel c's listed tiles
            lst = cblk_ptr + c * (P // _HT) * TT
            count = tl.load(ccnt_ptr + c)
            j = tl.zeros_like(count)
            kt = tl.load(lst, mask=count > 0, other=-1)
            for k in range(IN_K // _HT):  # each row tile of G stored once (the list in row-tile order: checked)
                acc = tl.zeros((TB, _HT), dtype=sb_ptr.dtype.element_ty)
                while (kt >= 0) & (kt // TT == k):
                    col = kt % TT * _HT  # the output tile's first column
                    acc += tl.dot(_cols(gout_ptr, gy_rows, col, DOUT_P),
                                  _head_tile(head_ptr, hrf_ptr, c, k * _HT, col, P, DOUT_P, True),
                                  input_precision=PRECISION)
                    j += 1
                    kt = tl.load(lst + j, mask=j < count, other=-1)
                tl.store(sb_ptr + offs_i[:, None] * (DIN * IN_K) + c * IN_K + k * _HT + offs_t[None, :], acc)
        tl.debug_barrier()  # G is read back by other threads of the program
        for i in range(TB):
            lo, hi = _wave_edges(rowptr_ptr, t0 + i, last, W0, E)
            _edges_bwd(hb_ptr, env_ptr, x_ptr, src_ptr, sb_ptr + i * DIN * IN_K, gh_ptr, gx_ptr, genv_ptr, lo, hi, H,
                       DIN, IN_K, DIN_P, CT, KE, PRECISION, NEED_ENV, NEED_X)
        tl.debug_barrier()  # every read of G is done before the next block overwrites it


@triton.jit
def _edges_bwd(hb_ptr, env_ptr, x_ptr, src_ptr, g_ptr, gh_ptr, gx_ptr, genv_ptr, lo, hi, H, DIN, IN_K: tl.constexpr,
               DIN_P: tl.constexpr, CT: tl.constexpr, KE: tl.constexpr, PRECISION: tl.constexpr,
               NEED_ENV: tl.constexpr, NEED_X: tl.constexpr):
    """For the edges lo, …, hi - 1 of one target (rows of hb, gh), KE at a time, from its G (DIN, IN_K) at g_ptr:
    grad_h̃ = env · x[src] @ G into gh (zero from column H on) and, for grad_env = Σ_c x[src, c] · s_c (stored; with
    NEED_ENV) or grad_x[src] += env · s (atomics; with NEED_X), s = h1 @ Gᵀ.  Both products go KC columns of h1 /
    grad_h̃ at a time (h1's rows read from hb per slice): a whole (KE × IN_K) operand or accumulator made ptxas
    spill 0.5–13 KB at IN_K = 256."""
    KC: tl.constexpr = min(IN_K, 32)
    offs_kc = tl.arange(0, KC)
    for r in range(lo, hi, KE):
        rows = r + tl.arange(0, KE)
        m = rows < hi
        src = tl.load(src_ptr + rows, mask=m, other=0)
        env = tl.load(env_ptr + rows, mask=m, other=0.0)
        if NEED_ENV or NEED_X:
            ge = tl.zeros((KE,), dtype=hb_ptr.dtype.element_ty)
            for c0 in tl.static_range(0, DIN_P, CT):
                ch = c0 + tl.arange(0, CT)
                on = ch < DIN
                s = tl.zeros((KE, CT), dtype=hb_ptr.dtype.element_ty)
                for k in range(0, IN_K, KC):
                    h = tl.load(hb_ptr + rows[:, None] * IN_K + k + offs_kc[None, :], mask=m[:, None], other=0.0)
                    g = tl.load(g_ptr + ch[:, None] * IN_K + k + offs_kc[None, :], mask=on[:, None], other=0.0)
                    s += tl.dot(h, tl.trans(g), input_precision=PRECISION)
                if NEED_X:
                    tl.atomic_add(gx_ptr + src[:, None] * DIN + ch[None, :], s * env[:, None],
                                  mask=m[:, None] & on[None, :], sem="relaxed")
                if NEED_ENV:
                    ge += tl.sum(tl.load(x_ptr + src[:, None] * DIN + ch[None, :], mask=m[:, None] & on[None, :],
                                         other=0.0) * s, 1)
            if NEED_ENV:
                tl.store(genv_ptr + rows, ge, mask=m)
        for k in range(0, IN_K, KC):
            dh = tl.zeros((KE, KC), dtype=hb_ptr.dtype.element_ty)
            for c0 in tl.static_range(0, DIN_P, CT):
                ch = c0 + tl.arange(0, CT)
                on = ch < DIN
                xm = tl.load(x_ptr + src[:, None] * DIN + ch[None, :], mask=m[:, None] & on[None, :], other=0.0)
                g = tl.load(g_ptr + ch[:, None] * IN_K + k + offs_kc[None, :], mask=on[:, None], other=0.0)
                dh += tl.dot(xm, g, input_precision=PRECISION)
            tl.store(gh_ptr + rows[:, None] * IN_K + k + offs_kc[None, :],
                     tl.where((k + offs_kc < H)[None, :], dh * env[:, None], 0.0), mask=m[:, None])


@triton.jit
def _gmlp_head_bwd_kernel(
    gout_ptr, hb_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr,
    head_ptr, hsup_ptr, hrf_ptr, hblk_ptr, hcnt_ptr, cblk_ptr, ccnt_ptr, gx_ptr, genv_ptr, ghead_ptr, gs_ptr, E, DIN,
    programs,
    P: tl.constexpr, DOUT_P: tl.constexpr, IN_K: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr,
    NEED_HEAD: tl.constexpr, CHUNK: tl.constexpr, KE: tl.constexpr, NEED_ENV: tl.constexpr, NEED_X: tl.constexpr,
):
    """The head's side of the backward on HEAD's non-zero tiles, by persistent programs that take chunks of CHUNK
    edges in turn, from the edges' h1 rows hb (⌈E / CHUNK⌉·CHUNK, IN_K; finite on the padding rows) that the
    backward's G-MLP pass wrote (``_gmlp_rows_kernel``: no MLP here).  Per chunk: grad_out[tgt] (gy) into the
    program's scratch rows gs (CHUNK, DOUT_P); then, with NEED_ENV or NEED_X, per input channel c (tiles listed per
    channel: cblk, ccnt) s_c = Σ_{k,t} rowsum((h1_k @ HEAD[c, k, t]) ⊙ gy_t): grad_env = Σ_c x[src, c]·s_c (stored;
    with NEED_ENV), grad_x[src, c] += env·s_c (atomics; with NEED_X); with NEED_HEAD, per run of non-zero (16 × 16)
    tiles (hblk, hcnt) that share output tile t, row tile k and a group of 16 channels (``_head_grad_group``),
    grad_head[c, k, t] += Σ_e env·x[src, c]·h1_kᵀ gy_t for the run's channels at once, one sum over the chunk (the
    rows read back KE at a time) and one atomic per entry of the head's support (hsup ≠ 0: structural zeros get no
    gradient) — per edge 256 / CHUNK atomics per non-zero tile."""
    pid = tl.program_id(0)
    gs_ptr += pid * CHUNK * DOUT_P
    TT: tl.constexpr = DOUT_P // _HT
    for chunk in range(pid, tl.cdiv(E, CHUNK), programs):
        start = tl.cast(chunk, tl.int64) * CHUNK
        hs_ptr = hb_ptr + start * IN_K
        _chunk_gy(start, gout_ptr, tgt_ptr, gs_ptr, E, DOUT_P, BLOCK_E, CHUNK)
        tl.debug_barrier()  # the rows are read back by other threads of the program
        if NEED_ENV or NEED_X:
            _head_grad_x(hs_ptr, gs_ptr, x_ptr, src_ptr, tgt_ptr, env_ptr, head_ptr, hrf_ptr, cblk_ptr, ccnt_ptr,
                         gx_ptr, genv_ptr, start, E, DIN, P, IN_K, DOUT_P, CHUNK, PRECISION, NEED_ENV, NEED_X)
        if NEED_HEAD:  # per output tile, its listed tiles in runs of one row tile and one group of 16 channels
            groups = tl.cdiv(DIN, _HT)
            for t in range(TT):
                count = tl.load(hcnt_ptr + t)
                last = tl.full((), -1, tl.int64)
                bits = tl.zeros((), tl.int64)
                for j in range(count + 1):  # the step past the list flushes its last run
                    kc = tl.load(hblk_ptr + t * (P // _HT) * DIN + j, mask=j < count, other=-1)
                    key = tl.where(kc < 0, -1, kc // DIN * groups + kc % DIN // _HT)
                    if (key != last) & (last >= 0):
                        _head_grad_group(hs_ptr, gs_ptr, x_ptr, src_ptr, env_ptr, hsup_ptr, ghead_ptr, start, E,
                                         last // groups * _HT, t * _HT, last % groups, bits, DIN, P, IN_K, DOUT_P,
                                         CHUNK, KE, PRECISION)
                    bits = tl.where(key != last, 0, bits) | (1 << (tl.maximum(kc, 0) % DIN % _HT))
                    last = key
        tl.debug_barrier()  # every read of the chunk's rows is done before the next chunk overwrites them


@triton.jit
def _head_grad_x(hs_ptr, gs_ptr, x_ptr, src_ptr, tgt_ptr, env_ptr, head_ptr, hrf_ptr, cblk_ptr, ccnt_ptr, gx_ptr,
                 genv_ptr, start, E, DIN, P: tl.constexpr, IN_K: tl.constexpr, DOUT_P: tl.constexpr,
                 CHUNK: tl.constexpr, PRECISION: tl.constexpr, NEED_ENV: tl.constexpr, NEED_X: tl.constexpr):
    """grad_env = Σ_c x[src, c]·s_c (with NEED_ENV) and grad_x[src, c] += env·s_c (with NEED_X) for the chunk at
    ``start``, s_c = Σ_{k,t} rowsum((h1_k @ HEAD[c, k, t]) ⊙ gy_t) over channel c's listed tiles (cblk, ccnt), from
    the chunk's rows hs (h1) and gs (grad_out[tgt])."""
    TT: tl.constexpr = DOUT_P // _HT
    rows, mask_e, src, _, env = _chunk_edges(start, src_ptr, tgt_ptr, env_ptr, E, CHUNK)
    ge = tl.zeros((CHUNK,), dtype=hs_ptr.dtype.element_ty)
    for c in range(DIN):
        sc = tl.zeros((CHUNK,), dtype=hs_ptr.dtype.element_ty)
        for j in range(tl.load(ccnt_ptr + c)):
            kt = tl.load(cblk_ptr + c * (P // _HT) * TT + j)
            k = kt // TT * _HT
            t = kt % TT * _HT
            m = tl.dot(_cols(hs_ptr, rows, k, IN_K), _head_tile(head_ptr, hrf_ptr, c, k, t, P, DOUT_P, False),
                       input_precision=PRECISION)
            sc += tl.sum(m * _cols(gs_ptr, rows, t, DOUT_P), 1)
        if NEED_X:
            tl.atomic_add(gx_ptr + src * DIN + c, sc * env, mask=mask_e, sem="relaxed")
        if NEED_ENV:
            ge += tl.load(x_ptr + src * DIN + c, mask=mask_e, other=0.0) * sc
    if NEED_ENV:
        tl.store(genv_ptr + start + rows, ge, mask=mask_e)


@triton.jit(noinline=True)  # its own registers: inlined, the kernel spilled (bench/NOTES.md)
def _head_grad_group(hs_ptr, gs_ptr, x_ptr, src_ptr, env_ptr, hsup_ptr, ghead_ptr, start, E, k, t, g, bits, DIN,
                     P: tl.constexpr, IN_K: tl.constexpr, DOUT_P: tl.constexpr, CHUNK: tl.constexpr,
                     KE: tl.constexpr, PRECISION: tl.constexpr):
    """grad_head[c, k:k+16, t:t+16] += Σ_e env·x[src, c]·h1[e, k:k+16]ᵀ grad_out[tgt, t:t+16] over the chunk's
    rows (hs, gs), for the channels c = 16g + i with bit i of ``bits`` set, all at once: Xᵀ (16 × KE) @ Q (KE × 256)
    per KE rows, Q the edges' outer products of the two slices (each slice read once per group, not per channel);
    one atomic per entry of the head's support (hsup ≠ 0)."""
    offs = tl.arange(0, _HT)
    ch = g * _HT + offs
    on = ((bits >> offs) & 1) != 0  # the listed channels (< DIN)
    a = tl.arange(0, _HT * _HT)
    acc = tl.zeros((_HT, _HT * _HT), dtype=hs_ptr.dtype.element_ty)
    for s in range(CHUNK // KE):
        rows = s * KE + tl.arange(0, KE)
        mask = start + rows < E
        src = tl.load(src_ptr + start + rows, mask=mask, other=0)
        xe = tl.load(x_ptr + src[:, None] * DIN + ch[None, :], mask=mask[:, None] & on[None, :], other=0.0) * \
            tl.load(env_ptr + start + rows, mask=mask, other=0.0)[:, None]
        q = _cols(hs_ptr, rows, k, IN_K)[:, :, None] * _cols(gs_ptr, rows, t, DOUT_P)[:, None, :]
        acc += tl.dot(tl.trans(xe), tl.reshape(q, (KE, _HT * _HT)), input_precision=PRECISION)
    entries = ch[:, None] * P * DOUT_P + (k + a // _HT)[None, :] * DOUT_P + t + (a % _HT)[None, :]
    keep = on[:, None] & (tl.load(hsup_ptr + entries, mask=on[:, None], other=0) != 0)
    tl.atomic_add(ghead_ptr + entries, acc, mask=keep, sem="relaxed")


@triton.jit
def _gmlp_grad_h_kernel(gout_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr, head_ptr, hrf_ptr, rblk_ptr, rcnt_ptr, gh_ptr, E, H,
                        DIN, P: tl.constexpr, DOUT_P: tl.constexpr, IN_K: tl.constexpr, BLOCK_E: tl.constexpr,
                        PRECISION: tl.constexpr):
    """grad_h̃ of BLOCK_E edges on one row tile k (program (block, k / 16)): env · Σ_{t,c} x[src, c]·(gy_t @
    HEAD[c, k, t]ᵀ) over HEAD's non-zero tiles in that row tile (rblk, rcnt; consecutive tiles share t),
    gy_t = grad_out[tgt, t-tile] gathered where used; zero on h1's bias column (H) and the padding.  Into
    gh (E, IN_K): every head tile read serves BLOCK_E edges, and the MLP is not evaluated."""
    offs_e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    kk = tl.program_id(1)
    src = tl.load(src_ptr + offs_e, mask=mask_e, other=0)
    tgt = tl.load(tgt_ptr + offs_e, mask=mask_e, other=0)
    env = tl.load(env_ptr + offs_e, mask=mask_e, other=0.0)
    acc = _head_sum(gout_ptr, tgt, DOUT_P, src, env, mask_e, x_ptr, head_ptr, hrf_ptr,
                    rblk_ptr + kk * (DOUT_P // _HT) * DIN, tl.load(rcnt_ptr + kk), kk * _HT, DIN, P, DOUT_P, True,
                    PRECISION)
    cols = kk * _HT + tl.arange(0, _HT)
    tl.store(gh_ptr + offs_e[:, None] * IN_K + cols[None, :], tl.where((cols < H)[None, :], acc, 0.0),
             mask=mask_e[:, None])


@triton.jit
def _used_cols(ht, P: tl.constexpr, IN_K: tl.constexpr):
    """The first IN_K columns of a (BLOCK_E, P) tile (IN_K = P or P/2)."""
    if IN_K < P:  # a compile-time branch: one return statement (Triton types every return alike)
        ht = _halves(ht, P)[0]
    return ht


@triton.jit
def _gmlp_conv_bwd_kernel(
    gh_ptr, sv_ptr, z_ptr,
    w_ptr, wsl_ptr, ssl_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gcol_ptr, cidx_ptr, cscale_ptr,
    gexp_ptr, triv_ptr, wsup_ptr, gz_ptr, gw_ptr, gb_ptr, ss_ptr, ws_ptr, st_ptr,
    eps, E, K0, programs,
    L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, DOUT_P: tl.constexpr,
    NORM: tl.constexpr, IN_K: tl.constexpr, K0P: tl.constexpr, PU: tl.constexpr, BLOCK_E: tl.constexpr,
    PRECISION: tl.constexpr, NEED_PARAMS: tl.constexpr, NEED_Z: tl.constexpr, CHUNK: tl.constexpr, KE: tl.constexpr,
    SW: tl.constexpr, SV: tl.constexpr,
):
    """The G-MLP's side of the backward, by persistent programs that take chunks of CHUNK edges in turn and
    back-propagate BLOCK_E edges at a time: grad_h̃ read from gh (E, IN_K) (``_gmlp_grad_h_kernel`` or
    ``_gmlp_pool_bwd_kernel``), then each layer from the last to the first from its forward state, read from the
    rows sv (E, SV) that the backward's G-MLP pass saved (``_gmlp_rows_kernel``; ``_layer_state``).  With
    NEED_PARAMS each layer's input and linear-part gradient rows go to the program's scratch rows ws (CHUNK, SW),
    and after the chunk ``_weight_grad`` adds the chunk's weight and bias gradients with one atomic per entry; the
    gradients of scale and shift are added to the program's sums ss (L, 2, BLOCK_E, P) per edge position in a
    block (summed over programs and rows after the last wave: ``_layers_bwd``).  z's gradient (gz) only with
    NEED_Z: without it the first layer's input gradient is not computed."""
    pid = tl.program_id(0)
    ws_ptr += pid * CHUNK * SW
    st_ptr += pid * BLOCK_E * max(P, DOUT_P)
    ss_ptr += pid * 2 * L * BLOCK_E * P
    KZ: tl.constexpr = K0P if L == 0 else _zn(K0P, IN_K, PRECISION)  # the columns of z's gradient
    offs_k = tl.arange(0, IN_K)
    for chunk in range(pid, tl.cdiv(E, CHUNK), programs):
        for s in range(CHUNK // BLOCK_E):
            rows = s * BLOCK_E + tl.arange(0, BLOCK_E)
            start = tl.cast(chunk, tl.int64) * CHUNK + s * BLOCK_E
            offs_e, mask_e, z = _z_rows(start, z_ptr, E, K0, BLOCK_E, K0P)
            dh = tl.load(gh_ptr + offs_e[:, None] * IN_K + offs_k[None, :], mask=mask_e[:, None], other=0.0)
            if IN_K < P:
                dh = _join(dh, tl.zeros_like(dh), P)
            ws_row = ws_ptr + rows[:, None] * SW
            sv_row = sv_ptr + start * SV + tl.arange(0, BLOCK_E)[:, None] * SV  # 32-bit offsets from the block's row
            for i in tl.static_range(L):  # layer L-1-i (constexpr arithmetic, not a reassigned constexpr name)
                c, rinv, n, sg = _layer_state(z, L - 1 - i, scale_ptr, shift_ptr, cidx_ptr, cscale_ptr, ws_row,
                                              sv_row, mask_e, P, NB, NG, NORM, IN_K, K0P, PU, NEED_PARAMS, SV,
                                              st_ptr)
                dh = _layer_bwd(dh, c, rinv, n, sg, L - 1 - i, scale_ptr, exp_ptr, cidx_ptr, cscale_ptr, gexp_ptr,
                                triv_ptr, w_ptr, wsl_ptr, ssl_ptr, ss_ptr, ws_row, P, NB, NG, NORM, IN_K, K0P, PU,
                                PRECISION, NEED_PARAMS, NEED_Z, st_ptr)
            if NEED_Z:
                offs_z = tl.arange(0, KZ)
                tl.store(gz_ptr + offs_e[:, None] * K0 + offs_z[None, :], dh,
                         mask=mask_e[:, None] & (offs_z < K0)[None, :])
        if NEED_PARAMS:  # padding edges stored zero gradient rows (their grad_h̃ is 0)
            tl.debug_barrier()  # the rows are read back by other threads of the program
            _weight_grads(ws_ptr, st_ptr, L, wsup_ptr, gw_ptr, gb_ptr, P, IN_K, K0P, SW, CHUNK, KE,
                          BLOCK_E * max(P, DOUT_P), PRECISION)
            tl.debug_barrier()  # every read of the chunk's rows is done before the next chunk overwrites them


_PARAMS = ("weight", "weight_slabs", "structure_slabs", "bias", "scale", "shift", "mean", "avg", "expand",
           "gate_columns", "column_index", "column_scale", "gate_expand", "trivial", "head")
_LAYERS = _PARAMS[:-1]  # the G-MLP's backward kernel takes all but the head
_FWD_TILES = ("head_row_flags", "out_cols", "head_blocks", "head_block_count")  # rows kept; output order, tiles
_BWD_TILES = ("head_row_flags", "head_row_blocks", "head_row_block_count")  # grad_h̃'s: the tiles per row tile
_HEAD_BWD = ("head_support", "head_row_flags", "head_blocks", "head_block_count", "head_channel_blocks",
             "head_channel_block_count")
_POOL_BWD = ("head",) + _HEAD_BWD[1:]  # the pooled head's backward: the head, its row flags, the lists (the support
# masks its gradient once, on the host: ``_add_listed_tiles``)


def _meta(packed: dict, k0: int, precision: str) -> dict:
    """The packed sizes as the kernels' constexprs."""
    _, p, nb = packed["mean"].shape
    ng, hidden, in_k = packed["gate_pick"].shape[2], packed["hidden"], used_columns(p, k0, packed["hidden"])
    return dict(L=packed["layers"], P=p, NB=nb, NG=ng, DOUT_P=packed["head"].shape[2], NORM=packed["norm"],
                IN_K=in_k, K0P=z_columns(p, k0, packed["layers"]), PU=output_columns(p, hidden, ng),
                HU=input_columns(in_k, hidden), PRECISION=_precision(packed, precision))


def _precision(packed: dict, precision: str) -> str:
    """The dots' input precision: ``precision`` in float32, IEEE in float64."""
    return precision if packed["head"].dtype == torch.float32 else "ieee"


def _programs(x: torch.Tensor, per_sm: int) -> int:
    """How many persistent programs a kernel runs: ``per_sm`` per SM (2 in the interpreter)."""
    if INTERPRET or not x.is_cuda:
        return 2
    return per_sm * torch.cuda.get_device_properties(x.device).multi_processor_count


def _launch_persistent(kernel, name: str, e: int, args: tuple, scratch_widths: tuple[int, ...], sizes: tuple,
                       meta: dict, x: torch.Tensor, chunk: int | None = None, staged: bool = True, **flags) -> None:
    """Kernel ``name`` on min(chunks of CHUNK edges, programs) persistent programs, each with CHUNK scratch rows of
    every width in ``scratch_widths`` and, if ``staged``, a staging buffer of BLOCK_E·max(P, DOUT_P) values (passed
    after ``args``, in that order); ``chunk`` overrides CHUNK (for tuning; ``launch_chunk``)."""
    config = launch_config(name, meta["IN_K"])
    config["CHUNK"] = launch_chunk(name, meta["IN_K"], chunk)
    grid = min(triton.cdiv(e, config["CHUNK"]), _programs(x, PROGRAMS_PER_SM[name]))
    scratch = [torch.empty(grid, config["CHUNK"], w, device=x.device, dtype=x.dtype) for w in scratch_widths]
    if staged:
        scratch.append(torch.empty(grid, config["BLOCK_E"] * max(meta["P"], meta["DOUT_P"]), device=x.device,
                                   dtype=x.dtype))
    kernel[(grid,)](*args, *scratch, *sizes, grid, **meta, **config, **flags)


def launch_chunk(name: str, in_k: int, chunk: int | None = None) -> int:
    """CHUNK of persistent kernel ``name``: ``launch_config``'s, or ``chunk`` (a power of two ≥ BLOCK_E and KE;
    ValueError otherwise)."""
    config = launch_config(name, in_k)
    if chunk is None:
        return config["CHUNK"]
    least = max(config["BLOCK_E"], config.get("KE", 1))
    if chunk & (chunk - 1) or chunk < least:
        raise ValueError(f"chunk must be a power of two ≥ {least}, got {chunk}")
    return chunk


def din_padded(din: int) -> int:
    """DIN_P: the input channels the pooled head's channel tiles cover — a power of two ≥ 16 and ≥ din."""
    return max(16, triton.next_power_of_2(din))


def z_columns(p: int, k0: int, layers: int) -> int:
    """K0P: the columns of z the kernels read — a power of two ≥ 16 and ≥ k0, or P without hidden layers."""
    return p if layers == 0 else max(16, triton.next_power_of_2(k0))


def used_columns(p: int, k0: int, hidden: int) -> int:
    """IN_K: P/2 when z (k0 columns), the layers' inputs (hidden) and h̃ (hidden + 1) fit in the lower half
    of P (and the half still splits into two dot operands of ≥ 16), else P."""
    return p // 2 if max(k0, hidden + 1) <= p // 2 and p >= 64 else p


def output_columns(p: int, hidden: int, ng: int) -> int:
    """PU: the columns of a hidden layer's linear part that may be non-zero — its hidden features and gate scalars
    (hidden + gates ≤ hidden + NG) — rounded up to 16, at most P.  Every matrix whose rows are indexed by them (the
    norm's sums, the gates', a weight's transpose) is zero from row PU on, and the kernels' dots stop there."""
    return min(p, triton.cdiv(hidden + ng, 16) * 16)


def input_columns(in_k: int, hidden: int) -> int:
    """HU: the rows of a hidden layer's weight after the first that may be non-zero — its input's hidden features
    — rounded up to 16, at most IN_K."""
    return min(in_k, triton.cdiv(hidden, 16) * 16)


def scratch_width(p: int, in_k: int, k0p: int, layers: int) -> int:
    """SW: the width of the backward kernel's rows of layer inputs and gradients, [u_0 (K0P) | da_0 (P) | u_1
    (IN_K) | da_1 (P) | …] (``_ws_offset``); 1 without hidden layers."""
    return _ws_offset(layers, k0p, in_k, p) if layers else 1


def saved_width(pu: int, nb: int, ng: int, in_k: int, layers: int) -> int:
    """SV: the width of the rows of the layers' forward state that the backward saves per edge of a wave,
    [c_0 (PU) | rinv_0 (NB) | sg_0 (NG) | u_1 (IN_K) | c_1 | …] (``_sv_offset``); 0 without hidden layers."""
    return _sv_offset(layers, pu, nb, ng, in_k) - in_k if layers else 0


def pools(e: int, num_targets: int) -> bool:
    """Whether the head runs per target on pooled features, forward and backward (mean in-degree E / num_targets
    ≥ POOL_MIN_DEGREE), rather than per edge."""
    return e >= POOL_MIN_DEGREE * num_targets


def gmlp_conv_fwd(z, env, x, src, tgt, num_targets: int, dout: int, packed: dict, precision: str,
                  rowptr: torch.Tensor | None = None):
    """(num_targets, dout): the convolution of the packed G-MLP (inputs validated and contiguous; ``rowptr``: the
    edges come sorted by target with this CSR row pointer, so the pooled head does not sort them)."""
    e, k0 = z.shape
    out = torch.zeros(num_targets, dout, device=x.device, dtype=x.dtype)
    if e == 0 or num_targets == 0 or dout == 0 or x.shape[1] == 0:
        return out
    with device_ctx(x):
        meta = _meta(packed, k0, precision)
        if pools(e, num_targets):
            _pooled_fwd(z, env, x, src, tgt, out, packed, meta, rowptr)
        else:
            _launch_persistent(_gmlp_conv_fwd_kernel, "fwd", e,
                               (z, env, x, src, tgt, out, *(packed[k] for k in _PARAMS + _FWD_TILES)),
                               (meta["IN_K"],), (packed["eps"], e, k0, packed["hidden"], x.shape[1], dout), meta, x)
    return out


def _by_target(z, env, src, tgt, num_targets: int, rowptr: torch.Tensor | None) -> tuple:
    """The edges sorted by target (stable): (order, then z, env, src and tgt in that order: copies of E rows, and
    the CSR row pointers (num_targets + 1,)); given ``rowptr`` (the edges come sorted), (None, the inputs, rowptr)."""
    if rowptr is not None:
        return None, z, env, src, tgt, rowptr
    order = torch.argsort(tgt, stable=True)
    rowptr = F.pad(torch.bincount(tgt, minlength=num_targets).cumsum(0), (1, 0))
    return order, z[order], env[order], src[order], tgt[order], rowptr


def _pooled_fwd(z, env, x, src, tgt, out, packed: dict, meta: dict, rowptr: torch.Tensor | None) -> None:
    """The forward with the head on pooled features: the edges sorted by target (``_by_target``), then per wave
    of edges (``_pooled_wave``) their h1 rows (``_WaveRows``) into a buffer of one wave's rows (IN_K floats per
    edge: 8.3 MiB on 132 SMs at IN_K = 64 up to in-degree 16) and the pooled head on them
    (``_gmlp_pool_fwd_kernel``); adds into out."""
    e = z.shape[0]
    din, in_k = x.shape[1], meta["IN_K"]
    _, zs, envs, srcs, tgts, rowptr = _by_target(z, env, src, tgt, out.shape[0], rowptr)
    pool = launch_config("pool", in_k, din=din)
    wave = _pooled_wave(x, meta, "pool", e / out.shape[0], in_k * x.element_size())
    h1 = _WaveRows(zs, x, packed, meta, wave, save=False)
    grid = min(triton.cdiv(out.shape[0], pool["TB"]), _programs(x, PROGRAMS_PER_SM["pool"]))
    pb = torch.empty(grid, pool["TB"], din, in_k, device=x.device, dtype=x.dtype)
    for w in range(0, e, wave):
        ew = min(e, w + wave) - w
        h1(slice(w, w + ew))
        _gmlp_pool_fwd_kernel[(grid,)](
            h1.hb, envs[w:], x, srcs[w:], tgts[w:], rowptr, out,
            *(packed[k] for k in ("head",) + _FWD_TILES), pb, w, ew, din, out.shape[1], grid,
            P=meta["P"], DOUT_P=meta["DOUT_P"], IN_K=in_k, DIN_P=din_padded(din), PRECISION=meta["PRECISION"], **pool)


def gmlp_conv_bwd(grad_out, z, env, x, src, tgt, packed: dict, precision: str, need_params: bool = True,
                  head_chunk: int | None = None, rowptr: torch.Tensor | None = None, need_z: bool = True,
                  need_env: bool = True, need_x: bool = True):
    """Gradients of ⟨grad_out, forward⟩: (grad_z — not computed, and an empty (0,) tensor, unless ``need_z`` —,
    grad_env — the same unless ``need_env`` —, grad_x — unless ``need_x`` —, then one per packed parameter:
    weight, bias, scale, shift, head — zeros, not computed, unless ``need_params``; weight and head only on their
    supports ``weight_support`` / ``head_support``, zero elsewhere). The head's side pools per target
    (``pooled_bwd``) at mean in-degree ≥ POOL_MIN_DEGREE, else runs per edge. ``head_chunk``: edges per chunk of
    the edge-wise head kernel (grad_x, grad_env, the head's gradient; a power of two; default ``launch_config``'s),
    for tuning — given, the head's side runs per edge at any in-degree. ``rowptr``: as ``gmlp_conv_fwd``'s."""
    needs = (need_z, need_env, need_x)
    grads = [t.new_zeros(input_grad_shape(t, need)) for t, need in zip((z, env, x), needs)]
    grads += [torch.zeros_like(packed[k]) for k in TRAINED]
    if z.shape[0] == 0 or grad_out.shape[0] == 0 or grad_out.shape[1] == 0 or x.shape[1] == 0:
        return tuple(grads)
    gout = head_order(grad_out, packed)
    if pools(z.shape[0], grad_out.shape[0]) and head_chunk is None:
        pooled_bwd(gout, z, env, x, src, tgt, packed, precision, grads, need_params, rowptr, needs)
    else:
        edge_wise_bwd(gout, z, env, x, src, tgt, packed, precision, grads, need_params, head_chunk, needs)
    return tuple(grads)


def head_order(grad_out: torch.Tensor, packed: dict) -> torch.Tensor:
    """grad_out (N, Dout) with its columns in the head's order (out_cols), zero-padded: (N, DOUT_P)."""
    return F.pad(grad_out, (0, packed["head"].shape[2] - grad_out.shape[1])).index_select(1, packed["out_cols"])


def head_side_bwd(gout, hb, env, x, src, tgt, packed: dict, precision: str, grads: tuple, need_head: bool,
                  chunk: int | None = None, need_env: bool = True, need_x: bool = True) -> None:
    """The head's side of the backward (``_gmlp_head_bwd_kernel``) on E edges (env, src, tgt: (E,)) from their h1
    rows hb (≥ ⌈E / CHUNK⌉·CHUNK rows of IN_K, finite: ``launch_chunk``; the G-MLP's backward pass writes them),
    gout in the head's order (``head_order``): adds into grads = (grad_x — only with ``need_x`` —, grad_env — with
    ``need_env`` —, grad_head — with ``need_head``)."""
    if not (need_head or need_env or need_x):
        return
    e, (_, p, dout_p), in_k = env.shape[0], packed["head"].shape, hb.shape[1]
    rows = launch_chunk("head_bwd", in_k, chunk)
    assert hb.shape[0] >= triton.cdiv(e, rows) * rows, "the head kernel reads whole chunks of h1 rows"
    with device_ctx(x):
        _launch_persistent(_gmlp_head_bwd_kernel, "head_bwd", e,
                           (gout, hb, env, x, src, tgt, packed["head"], *(packed[k] for k in _HEAD_BWD), *grads),
                           (dout_p,), (e, x.shape[1]), dict(P=p, DOUT_P=dout_p, IN_K=in_k), x, chunk, staged=False,
                           PRECISION=_precision(packed, precision), NEED_HEAD=need_head, NEED_ENV=need_env,
                           NEED_X=need_x)


def edge_wise_bwd(gout, z, env, x, src, tgt, packed: dict, precision: str, grads: tuple, need_params: bool,
                  chunk: int | None = None, needs: tuple[bool, bool, bool] = (True, True, True)) -> None:
    """The whole backward with the head per edge, gout in the head's order (``head_order``), in waves of edges:
    per wave the h1 rows and the layers' state (``_WaveRows``) into buffers of the wave's rows, the head's side
    on the h1 rows (``head_side_bwd``: grad_x, grad_env, the head's gradient with ``need_params``) and grad_h̃
    (``_gmlp_grad_h_kernel``, on the tiles: no MLP) into a buffer of the wave's rows, then the G-MLP's backward
    on both (``_layers_bwd``).  ``chunk``: the head kernel's (``gmlp_conv_bwd``'s head_chunk).  Adds into grads =
    (grad_z, grad_env, grad_x — each only where ``needs`` says so —, grad_weight, grad_bias, grad_scale, grad_shift,
    grad_head)."""
    gz, genv, gx, gw, gb, gscale, gshift, ghead = grads
    meta = _meta(packed, z.shape[1], precision)
    config = launch_config("grad_h", meta["IN_K"])
    reader = launch_chunk("head_bwd", meta["IN_K"], chunk)
    wave = _wave(x, meta)
    save = _WaveRows(z, x, packed, meta, wave, save=True, chunk=reader)

    def grad_h(edges: slice, gh: torch.Tensor) -> None:
        ew = edges.stop - edges.start
        save(edges)
        head_side_bwd(gout, save.hb, env[edges], x, src[edges], tgt[edges], packed, precision,
                      (gx, genv[edges], ghead), need_params, chunk, *needs[1:])
        _gmlp_grad_h_kernel[(triton.cdiv(ew, config["BLOCK_E"]), meta["IN_K"] // HEAD_TILE)](
            gout, env[edges], x, src[edges], tgt[edges], packed["head"], *(packed[k] for k in _BWD_TILES), gh,
            ew, packed["hidden"], x.shape[1], P=meta["P"], DOUT_P=meta["DOUT_P"], IN_K=meta["IN_K"],
            PRECISION=meta["PRECISION"], **config)

    _layers_bwd(grad_h, z, x, packed, meta, (gz, gw, gb, gscale, gshift), need_params, save.sv, wave, needs[0])


def pooled_bwd(gout, z, env, x, src, tgt, packed: dict, precision: str, grads: tuple, need_params: bool,
               rowptr: torch.Tensor | None = None, needs: tuple[bool, bool, bool] = (True, True, True)) -> None:
    """The whole backward with the head's side on pooled features (``_gmlp_pool_bwd_kernel``), gout in the head's
    order: the edges sorted by target (``_by_target``; not when given ``rowptr``, the CSR row pointer of edges that
    come sorted), then per wave of edges (``_pooled_wave``) their h1 rows and the layers' state (``_WaveRows``),
    the head's side — grad_x and grad_env, the head's gradient (with ``need_params``) and grad_h̃ into the wave's
    buffer — and the G-MLP's backward on it (``_layers_bwd``).  Adds into grads = (grad_z, grad_env, grad_x — each
    only where ``needs`` says so —, grad_weight, grad_bias, grad_scale, grad_shift, grad_head)."""
    need_z, need_env, need_x = needs
    gz, genv, gx, gw, gb, gscale, gshift, ghead = grads
    din = x.shape[1]
    meta = _meta(packed, z.shape[1], precision)
    order, zs, envs, srcs, tgts, rowptr = _by_target(z, env, src, tgt, gout.shape[0], rowptr)
    gzs = gz if order is None or not need_z else torch.zeros_like(zs)  # without need_z: not written
    genvs = genv if order is None or not need_env else torch.zeros_like(envs)
    pool = launch_config("pool_bwd", meta["IN_K"], din=din)
    grid = min(triton.cdiv(gout.shape[0], pool["TB"]), _programs(x, PROGRAMS_PER_SM["pool_bwd"]))
    sb = torch.empty(grid, pool["TB"], din, meta["IN_K"], device=x.device, dtype=x.dtype)  # P, then G, per block
    listed = _listed_tiles(packed)[0] if need_params else 0
    ga = x.new_zeros(grid, listed, HEAD_TILE, HEAD_TILE)  # each program's sums on the head's listed tiles
    row = saved_width(meta["PU"], meta["NB"], meta["NG"], meta["IN_K"], meta["L"]) + 2 * meta["IN_K"]  # sv, h1, gh
    wave = _pooled_wave(x, meta, "pool_bwd", z.shape[0] / gout.shape[0], row * x.element_size())
    save = _WaveRows(zs, x, packed, meta, wave, save=True)

    def grad_h(edges: slice, gh: torch.Tensor) -> None:
        w, ew = edges.start, edges.stop - edges.start
        save(edges)
        _gmlp_pool_bwd_kernel[(grid,)](
            save.hb, gout, envs[edges], x, srcs[edges], tgts[edges], rowptr, *(packed[k] for k in _POOL_BWD), gh, gx,
            genvs[edges], ga, sb, w, ew, packed["hidden"], din, listed, grid, P=meta["P"], DOUT_P=meta["DOUT_P"],
            IN_K=meta["IN_K"], DIN_P=din_padded(din), PRECISION=meta["PRECISION"], NEED_HEAD=need_params,
            NEED_ENV=need_env, NEED_X=need_x, **pool)

    _layers_bwd(grad_h, zs, x, packed, meta, (gzs, gw, gb, gscale, gshift), need_params, save.sv, wave, need_z)
    if need_params:
        _add_listed_tiles(ghead, ga.sum(0), packed)
    if order is not None:
        if need_z:
            gz.index_add_(0, order, gzs)
        if need_env:
            genv.index_add_(0, order, genvs)


def _listed_tiles(packed: dict) -> tuple[int, tuple[torch.Tensor, ...], torch.Tensor]:
    """The head's listed tiles as the pooled backward's copies hold them, in the order of its lists per output tile
    (head_blocks' rows, each its count first): their number n (Σ head_block_count), their coordinates (channel, row
    tile, output tile; (n,) each) and the head's support on them (n, 16, 16). A host sync on CUDA the first time
    (the count), then kept on the count tensor while it comes with the same lists and support and all three keep
    their versions (as ``build_csr`` marks a row pointer; packing builds them once per layer, dtype and device)."""
    counts, blocks, support = packed["head_block_count"], packed["head_blocks"], packed["head_support"]
    versions = (counts._version, blocks._version, support._version)
    mark = getattr(counts, "_fastik_listed", None)
    if mark is None or mark[0] != versions or mark[1] is not blocks or mark[2] is not support:
        din = support.shape[0]
        n = int(counts.sum())
        listed = torch.arange(blocks.shape[1], device=blocks.device) < counts[:, None]
        at = torch.argsort((~listed).flatten().to(torch.uint8), stable=True)[:n]  # the listed ones, row-major
        kc = blocks.flatten()[at]
        index = (kc % din, kc // din, at // blocks.shape[1])
        mark = counts._fastik_listed = (versions, blocks, support, n, index, _tiled(support)[index])
    return mark[3:]


def _add_listed_tiles(ghead: torch.Tensor, tiles: torch.Tensor, packed: dict) -> None:
    """ghead (DIN, P, DOUT_P) += tiles (n, 16, 16), the head's listed tiles (``_listed_tiles``), on its support."""
    _, index, support = _listed_tiles(packed)
    _tiled(ghead).index_put_(index, tiles * support, accumulate=True)


def _tiled(head: torch.Tensor) -> torch.Tensor:
    """A head-shaped tensor (DIN, P, DOUT_P) as its (16 × 16) tiles: a view (DIN, P / 16, DOUT_P / 16, 16, 16),
    tile [c, k, t] its rows 16k, … and columns 16t, … of channel c."""
    din, p, dout_p = head.shape
    return head.view(din, p // HEAD_TILE, HEAD_TILE, dout_p // HEAD_TILE, HEAD_TILE).permute(0, 1, 3, 2, 4)


def _wave(x: torch.Tensor, meta: dict, name: str = "bwd") -> int:
    """Edges per wave of the forward's rows ("fwd") or the G-MLP's backward ("bwd"): WAVE_CHUNKS chunks of that
    kernel per persistent program."""
    return WAVE_CHUNKS * launch_config(name, meta["IN_K"])["CHUNK"] * _programs(x, PROGRAMS_PER_SM[name])


def _pooled_wave(x: torch.Tensor, meta: dict, name: str, degree: float, row_bytes: int) -> int:
    """Edges per wave of the pooled forward (``name`` "pool") or backward ("pool_bwd") at mean in-degree ``degree``:
    ``_wave``'s, or enough for a block of TB targets per program of that kernel where that is more (its programs
    take the wave's targets TB at a time: at in-degree 16 and the default width the backward's 16 896 edges were 66
    blocks for 132 programs), in whole chunks of both kernels that fill the buffers, while these (``row_bytes``
    per edge) stay within WAVE_BYTES."""
    step = "fwd" if name == "pool" else "bwd"
    base = _wave(x, meta, step)
    chunk = max(launch_config(k, meta["IN_K"])["CHUNK"] for k in ("fwd", step))
    wanted = _programs(x, PROGRAMS_PER_SM[name]) * launch_config(name, meta["IN_K"], din=x.shape[1])["TB"] * degree
    return max(base, min(triton.cdiv(math.ceil(wanted), chunk), WAVE_BYTES // row_bytes // chunk) * chunk)


class _WaveRows:
    """The G-MLP pass over a wave of at most ``wave`` edges (``_gmlp_rows_kernel``): calling it with a slice of the
    edges writes their h1 rows to ``hb`` (IN_K floats per edge) and, with ``save`` (the backward), each layer's
    state to ``sv`` (``saved_width`` floats per edge: 288 at the anchors' width, 39 MB for a wave on 132 SMs; None
    without hidden layers or ``save``), buffers of one wave's rows in the rows kernel's chunks.  ``hb``'s rows past
    the wave's edges, up to a multiple of ``chunk`` (a reader's chunk, a power of two), are finite (zeroed where
    that chunk is longer than the rows kernel's)."""

    def __init__(self, z: torch.Tensor, x: torch.Tensor, packed: dict, meta: dict, wave: int, save: bool,
                 chunk: int = 1) -> None:
        self.z, self.x, self.packed, self.meta = z, x, packed, meta
        written = launch_config("fwd", meta["IN_K"])["CHUNK"]
        step = max(chunk, written)
        rows = triton.cdiv(min(z.shape[0], wave), step) * step
        width = saved_width(meta["PU"], meta["NB"], meta["NG"], meta["IN_K"], meta["L"]) if save else 0
        self.hb = (torch.zeros if step > written else torch.empty)(rows, meta["IN_K"], device=x.device, dtype=x.dtype)
        self.sv = torch.empty(rows, width, device=x.device, dtype=x.dtype) if width else None

    def __call__(self, edges: slice) -> None:
        ew, k0, packed = edges.stop - edges.start, self.z.shape[1], self.packed
        sv = self.hb if self.sv is None else self.sv
        _launch_persistent(_gmlp_rows_kernel, "fwd", ew, (self.z[edges], *(packed[k] for k in _LAYERS), self.hb, sv),
                           (), (packed["eps"], ew, k0, packed["hidden"]), self.meta, self.x,
                           SV=0 if self.sv is None else sv.shape[1])


def _layers_bwd(grad_h, z, x, packed: dict, meta: dict, grads: tuple, need_params: bool,
                sv: torch.Tensor | None, wave: int, need_z: bool = True) -> None:
    """The G-MLP's backward in waves of ``wave`` edges (``_wave``, ``_pooled_wave``; ``sv``'s rows): ``grad_h(edges,
    gh)`` writes grad_h̃ of the wave's edges (a slice) into gh, a buffer of one wave's rows (IN_K floats per edge:
    8.3 MiB on 132 SMs at IN_K = 64), and the layers' forward state of the wave's edges into ``sv`` (``_WaveRows``;
    None without hidden layers), then
    ``_gmlp_conv_bwd_kernel`` back-propagates; adds into grads = (grad_z (only with ``need_z``), grad_weight,
    grad_bias, grad_scale, grad_shift (only with ``need_params``))."""
    e, k0 = z.shape
    gz, gw, gb, gscale, gshift = grads
    assert (sv is None) == (meta["L"] == 0), "the layers' backward reads their saved state"
    sw = scratch_width(meta["P"], meta["IN_K"], meta["K0P"], meta["L"])
    programs, bwd = _programs(x, PROGRAMS_PER_SM["bwd"]), launch_config("bwd", meta["IN_K"])
    gh = torch.empty(min(e, wave), meta["IN_K"], device=x.device, dtype=x.dtype)
    backward = {k: v for k, v in meta.items() if k != "HU"}  # no forward linear part here
    sums = need_params and meta["NORM"]  # the norms' scale and shift gradients, per program and edge position
    ss = torch.zeros(programs if sums else 1, meta["L"], 2, bwd["BLOCK_E"], meta["P"] if sums else 1,
                     device=x.device, dtype=x.dtype)
    with device_ctx(x):
        for w in range(0, e, wave):
            edges = slice(w, min(e, w + wave))
            ew = edges.stop - w
            grad_h(edges, gh)
            _launch_persistent(_gmlp_conv_bwd_kernel, "bwd", ew,
                               (gh, gh if sv is None else sv, z[edges], *(packed[k] for k in _LAYERS),
                                packed["weight_support"], gz[edges], gw, gb, ss), (sw if need_params else 1,),
                               (packed["eps"], ew, k0), backward, x, NEED_PARAMS=need_params, NEED_Z=need_z,
                               SW=sw, SV=0 if sv is None else sv.shape[1])
    if sums:
        gscale += ss[:, :, 0].sum((0, 2))
        gshift += ss[:, :, 1].sum((0, 2))
