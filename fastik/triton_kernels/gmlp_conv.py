"""The whole implicit convolution in one kernel (Triton): G-MLP, kernel head, contraction, scatter.

Per block of BLOCK_E edges, in registers (docs/design.md §5.3)::

    u0 = z[e]                                   (BLOCK_E, P)   kernel input (embedding), zero-padded
    for l < L:                                  one hidden layer of the packed G-MLP
        a  = u @ W[l] + b[l]                    EquivariantLinear (dense, padded)
        c  = a - (a @ MEAN[l]) @ EXP[l]         norm: channel mean off scalar blocks
        r  = rsqrt((c*c) @ AVG[l] + eps)        norm: 1 / rms per block      (BLOCK_E, NB)
        n  = c * (r @ EXP[l]) * scale[l] + shift[l]
        g  = sigmoid(n @ GPICK[l]) @ GEXP[l]    gate of every component       (gates: NG columns)
        u  = TRIV[l] * silu(n) + n * g          SiLU on scalars, gated fields elsewhere
    h̃  = [u[:, :H], 1] * env[e]                 envelope and head bias column
    out[tgt[e]] += Σ_c x[src[e], c] · (h̃ @ HEAD[c])        (atomics)

MEAN / AVG / EXP / GPICK / GEXP are constant 0/1 (or 1/m) structure matrices, so the
per-field norm and the gate are small matmuls; (P × P) and (P × DOUT_P) operands are split
into 2 × 2 half-size dots (`_mm`, `_outer_add`), so no whole weight sits in registers or
shared memory.  The backward kernel recomputes the layers of its block (layer l's input from
z again: L(L+1)/2 layer evaluations), back-propagates through head and layers in registers,
and adds the layers' parameter gradients with atomics; the head's own gradient, P·DOUT_P·DIN
atomics per block, has a kernel of its own with larger blocks.  Nothing of size E × P is
ever written to memory: per edge only z (E, K0), env (E,) and their gradients.

All packed tensors are padded (no masks): W (L, P, P), b / scale / shift / TRIV (L, P),
MEAN / AVG (L, P, NB), EXP (L, NB, P), GPICK (L, P, NG), GEXP (L, NG, P), HEAD (DIN, P, DOUT_P),
P and DOUT_P ≥ 32, NB and NG ≥ 16 (powers of two).  float32 or float64 (then every dot is
IEEE).  Validation lives in :mod:`fastik.ops.fused_gmlp`.

IN_K (P or P/2): the columns of a dot's input that can be non-zero.  P is set by the widest
activation, a layer output with its gate scalars; the inputs of the dots — z (K0 columns), every
layer's input (H) and h̃ (H + 1) — are often narrower.  When they all fit in half of P (e.g. the
anchors' width: K0 = 9, H + 1 = 61, P = 128 for a 75-wide layer output), the upper half of every
layer weight's rows and of every HEAD[c] is zero padding: the layers', the head's and their
backward's dots skip it, and so do their gradients (with half of their atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET, device_ctx

__all__ = ["gmlp_conv_fwd", "gmlp_conv_bwd", "INTERPRET_CONFIG", "GPU_CONFIG"]

# One configuration per kernel (no autotuning: never run on a GPU). Registers and shared memory grow with P
# and BLOCK_E: ptxas (sm_90a) numbers in bench/NOTES.md, `python -m bench.aot --fused`. The head-gradient
# kernel holds few tiles, so it takes larger blocks (its atomics per edge fall as 1 / BLOCK_E); in the
# interpreter it uses another block size than the others, so that masks differ between the kernels.
INTERPRET_CONFIG = {"fwd": dict(BLOCK_E=16), "bwd": dict(BLOCK_E=16), "head_grad": dict(BLOCK_E=32)}
GPU_CONFIG = {"fwd": dict(BLOCK_E=16, num_warps=8, num_stages=1), "bwd": dict(BLOCK_E=16, num_warps=8, num_stages=1),
              "head_grad": dict(BLOCK_E=64, num_warps=8, num_stages=1)}


@triton.jit
def _tile(ptr, R: tl.constexpr, C: tl.constexpr, LD, TRANS: tl.constexpr):
    """(R, C) block at ``ptr`` of a row-major matrix with leading dimension LD; with TRANS, the transpose of
    the (C, R) block stored there."""
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    if TRANS:
        return tl.load(ptr + c[None, :] * LD + r[:, None])
    return tl.load(ptr + r[:, None] * LD + c[None, :])


@triton.jit
def _halves(u, P: tl.constexpr):
    """(R, P) -> its left and right (R, P/2) halves."""
    return tl.split(tl.permute(tl.reshape(u, (u.shape[0], 2, P // 2)), (0, 2, 1)))


@triton.jit
def _join(a, b, P: tl.constexpr):
    """Two (R, P/2) halves -> (R, P)."""
    return tl.reshape(tl.permute(tl.join(a, b), (0, 2, 1)), (a.shape[0], P))


@triton.jit
def _mm(u, m_ptr, K: tl.constexpr, N: tl.constexpr, LD, TRANS: tl.constexpr, PRECISION: tl.constexpr):
    """u (R, K) @ M (K, N), M = the matrix at m_ptr (``_tile`` conventions), as 2 × 2 half-size dots: the
    (K, N) operand never lives in registers whole."""
    u0, u1 = _halves(u, K)
    hk: tl.constexpr = K // 2
    hn: tl.constexpr = N // 2
    if TRANS:  # block (k, n) of M is the transpose of stored block (n, k)
        step_n = hn * LD
        step_k = hk
    else:
        step_n = hn
        step_k = hk * LD
    m01 = m_ptr + step_n
    m10 = m_ptr + step_k
    m11 = m_ptr + step_k + step_n
    a0 = tl.dot(u0, _tile(m_ptr, hk, hn, LD, TRANS), input_precision=PRECISION) + \
        tl.dot(u1, _tile(m10, hk, hn, LD, TRANS), input_precision=PRECISION)
    a1 = tl.dot(u0, _tile(m01, hk, hn, LD, TRANS), input_precision=PRECISION) + \
        tl.dot(u1, _tile(m11, hk, hn, LD, TRANS), input_precision=PRECISION)
    return _join(a0, a1, N)


@triton.jit
def _outer_add(g_ptr, a, b, K: tl.constexpr, N: tl.constexpr, PRECISION: tl.constexpr):
    """G (K, N) row-major at g_ptr += aᵀ b for a (R, K), b (R, N): 2 × 2 half-size dots and atomics."""
    a0, a1 = _halves(a, K)
    b0, b1 = _halves(b, N)
    hk: tl.constexpr = K // 2
    hn: tl.constexpr = N // 2
    offs = tl.arange(0, hk)[:, None] * N + tl.arange(0, hn)[None, :]
    tl.atomic_add(g_ptr + offs, tl.dot(tl.trans(a0), b0, input_precision=PRECISION), sem="relaxed")
    tl.atomic_add(g_ptr + hn + offs, tl.dot(tl.trans(a0), b1, input_precision=PRECISION), sem="relaxed")
    tl.atomic_add(g_ptr + hk * N + offs, tl.dot(tl.trans(a1), b0, input_precision=PRECISION), sem="relaxed")
    tl.atomic_add(g_ptr + hk * N + hn + offs, tl.dot(tl.trans(a1), b1, input_precision=PRECISION), sem="relaxed")


@triton.jit
def _vec(ptr, N: tl.constexpr):
    return tl.load(ptr + tl.arange(0, N))


@triton.jit
def _layer(u, l: tl.constexpr, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr,
           gpick_ptr, gexp_ptr, triv_ptr, eps,
           P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr, IN_K: tl.constexpr,
           PRECISION: tl.constexpr):
    """Hidden layer l on a (BLOCK_E, P) tile: (output, a, c, rinv, rf, n, sg, gf) — the output and
    the intermediates its backward needs (without NORM: c = n = a, rinv = rf = 0)."""
    a = _mm(_used_cols(u, P, IN_K), w_ptr + l * P * P, IN_K, P, P, False, PRECISION)
    a = a + _vec(b_ptr + l * P, P)[None, :]
    if NORM:
        mu = tl.dot(tl.dot(a, _tile(mean_ptr + l * P * NB, P, NB, NB, False), input_precision="ieee"),
                    _tile(exp_ptr + l * NB * P, NB, P, P, False), input_precision="ieee")
        c = a - mu
        s = tl.dot(c * c, _tile(avg_ptr + l * P * NB, P, NB, NB, False), input_precision="ieee")
        rinv = tl.rsqrt(s + eps)
        rf = tl.dot(rinv, _tile(exp_ptr + l * NB * P, NB, P, P, False), input_precision="ieee")
        n = c * rf * _vec(scale_ptr + l * P, P)[None, :] + _vec(shift_ptr + l * P, P)[None, :]
    else:
        c = a
        n = a
        rinv = tl.zeros((a.shape[0], NB), dtype=a.dtype)
        rf = tl.zeros_like(a)
    sg = tl.sigmoid(tl.dot(n, _tile(gpick_ptr + l * P * NG, P, NG, NG, False), input_precision="ieee"))
    gf = tl.dot(sg, _tile(gexp_ptr + l * NG * P, NG, P, P, False), input_precision="ieee")
    y = _vec(triv_ptr + l * P, P)[None, :] * (n * tl.sigmoid(n)) + n * gf
    return y, a, c, rinv, rf, n, sg, gf


@triton.jit
def _mlp(z, L: tl.constexpr, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr,
         gexp_ptr, triv_ptr, eps, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr,
         IN_K: tl.constexpr, PRECISION: tl.constexpr):
    """The first L hidden layers on z (BLOCK_E, P)."""
    u = z
    for l in tl.static_range(L):
        u = _layer(u, l, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr,
                   triv_ptr, eps, P, NB, NG, NORM, IN_K, PRECISION)[0]
    return u


@triton.jit
def _layer_bwd(dy, u, a, c, rinv, rf, n, sg, gf, l: tl.constexpr, w_ptr, scale_ptr, mean_ptr, avg_ptr, exp_ptr,
               gpick_ptr, gexp_ptr, triv_ptr, gw_ptr, gb_ptr, gscale_ptr, gshift_ptr,
               P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr, IN_K: tl.constexpr,
               PRECISION: tl.constexpr, NEED_PARAMS: tl.constexpr):
    """Gradient w.r.t. the input u of layer l from the gradient dy of its output; with NEED_PARAMS the
    parameter gradients of the block are added to gw / gb / gscale / gshift (atomics)."""
    offs = tl.arange(0, P)
    s = tl.sigmoid(n)
    dn = dy * (_vec(triv_ptr + l * P, P)[None, :] * s * (1 + n * (1 - s)) + gf)
    dsg = tl.dot(dy * n, _tile(gexp_ptr + l * NG * P, P, NG, P, True), input_precision="ieee")
    dn += tl.dot(dsg * sg * (1 - sg), _tile(gpick_ptr + l * P * NG, NG, P, NG, True), input_precision="ieee")
    if NORM:
        scale = _vec(scale_ptr + l * P, P)[None, :]
        if NEED_PARAMS:
            tl.atomic_add(gscale_ptr + l * P + offs, tl.sum(dn * c * rf, 0), sem="relaxed")
            tl.atomic_add(gshift_ptr + l * P + offs, tl.sum(dn, 0), sem="relaxed")
        dc = dn * scale * rf
        drinv = tl.dot(dn * scale * c, _tile(exp_ptr + l * NB * P, P, NB, P, True), input_precision="ieee")
        ds = -0.5 * drinv * rinv * rinv * rinv
        dc += 2 * c * tl.dot(ds, _tile(avg_ptr + l * P * NB, NB, P, NB, True), input_precision="ieee")
        dmu = tl.dot(tl.dot(dc, _tile(exp_ptr + l * NB * P, P, NB, P, True), input_precision="ieee"),
                     _tile(mean_ptr + l * P * NB, NB, P, NB, True), input_precision="ieee")
        da = dc - dmu
    else:
        da = dn
    if NEED_PARAMS:
        _outer_add(gw_ptr + l * P * P, _used_cols(u, P, IN_K), da, IN_K, P, PRECISION)
        tl.atomic_add(gb_ptr + l * P + offs, tl.sum(da, 0), sem="relaxed")
    du = _mm(da, w_ptr + l * P * P, P, IN_K, P, True, PRECISION)
    if IN_K < P:  # the input's padding columns meet zero weight rows
        du = _join(du, tl.zeros_like(du), P)
    return du


@triton.jit
def _edge_inputs(z_ptr, env_ptr, src_ptr, tgt_ptr, E, K0, BLOCK_E: tl.constexpr, P: tl.constexpr):
    """The block's edges: offsets, mask, z tile (BLOCK_E, P), env, src, tgt."""
    offs_e = tl.program_id(0).to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_k = tl.arange(0, P)
    z = tl.load(z_ptr + offs_e[:, None] * K0 + offs_k[None, :],
                mask=mask_e[:, None] & (offs_k < K0)[None, :], other=0.0)
    env = tl.load(env_ptr + offs_e, mask=mask_e, other=0.0)
    src = tl.load(src_ptr + offs_e, mask=mask_e, other=0)
    tgt = tl.load(tgt_ptr + offs_e, mask=mask_e, other=0)
    return offs_e, mask_e, z, env, src, tgt


@triton.jit
def _block_hidden(z_ptr, env_ptr, src_ptr, tgt_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr,
                  gpick_ptr, gexp_ptr, triv_ptr, eps, E, K0, H, L: tl.constexpr, P: tl.constexpr,
                  NB: tl.constexpr, NG: tl.constexpr, NORM: tl.constexpr, IN_K: tl.constexpr, BLOCK_E: tl.constexpr,
                  PRECISION: tl.constexpr):
    """The block's edges and h̃ = [MLP(z)[:H], 1]·env (BLOCK_E, P): (offsets, mask, h̃, src, tgt)."""
    offs_e, mask_e, z, env, src, tgt = _edge_inputs(z_ptr, env_ptr, src_ptr, tgt_ptr, E, K0, BLOCK_E, P)
    h = _mlp(z, L, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr,
             triv_ptr, eps, P, NB, NG, NORM, IN_K, PRECISION)
    return offs_e, mask_e, tl.where((tl.arange(0, P) == H)[None, :], 1.0, h) * env[:, None], src, tgt


@triton.jit
def _target_rows(gout_ptr, tgt, mask_e, DOUT, DOUT_P: tl.constexpr):
    """grad_out[tgt] of the block (BLOCK_E, DOUT_P), zero in padding."""
    offs_o = tl.arange(0, DOUT_P)
    return tl.load(gout_ptr + tgt[:, None] * DOUT + offs_o[None, :],
                   mask=mask_e[:, None] & (offs_o < DOUT)[None, :], other=0.0)


@triton.jit
def _gmlp_conv_fwd_kernel(
    z_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr, out_ptr,
    w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr, triv_ptr, head_ptr,
    eps, E, K0, H, DIN, DOUT,
    L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, DOUT_P: tl.constexpr,
    NORM: tl.constexpr, IN_K: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_e, mask_e, ht, src, tgt = _block_hidden(z_ptr, env_ptr, src_ptr, tgt_ptr, w_ptr, b_ptr, scale_ptr,
                                                 shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr,
                                                 triv_ptr, eps, E, K0, H, L, P, NB, NG, NORM, IN_K, BLOCK_E,
                                                 PRECISION)
    ht = _used_cols(ht, P, IN_K)
    acc = tl.zeros((BLOCK_E, DOUT_P), dtype=ht.dtype)
    for c in range(DIN):
        xc = tl.load(x_ptr + src * DIN + c, mask=mask_e, other=0.0)
        acc += _mm(ht * xc[:, None], head_ptr + c * P * DOUT_P, IN_K, DOUT_P, DOUT_P, False, PRECISION)
    offs_o = tl.arange(0, DOUT_P)
    tl.atomic_add(out_ptr + tgt[:, None] * DOUT + offs_o[None, :], acc,
                  mask=mask_e[:, None] & (offs_o < DOUT)[None, :], sem="relaxed")


@triton.jit
def _gmlp_head_grad_kernel(
    gout_ptr, z_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr,
    w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr, triv_ptr, ghead_ptr,
    eps, E, K0, H, DIN, DOUT,
    L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, DOUT_P: tl.constexpr,
    NORM: tl.constexpr, IN_K: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr,
):
    """grad_head[c] += (h̃ · x[src, c])ᵀ grad_out[tgt] per block: its own kernel, so that its P·DOUT_P·DIN atomics per
    block are amortised over a larger BLOCK_E than the register-heavy layer backward can take."""
    offs_e, mask_e, ht, src, tgt = _block_hidden(z_ptr, env_ptr, src_ptr, tgt_ptr, w_ptr, b_ptr, scale_ptr,
                                                 shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr,
                                                 triv_ptr, eps, E, K0, H, L, P, NB, NG, NORM, IN_K, BLOCK_E,
                                                 PRECISION)
    gy = _target_rows(gout_ptr, tgt, mask_e, DOUT, DOUT_P)
    ht = _used_cols(ht, P, IN_K)
    for c in range(DIN):
        xc = tl.load(x_ptr + src * DIN + c, mask=mask_e, other=0.0)
        _outer_add(ghead_ptr + c * P * DOUT_P, ht * xc[:, None], gy, IN_K, DOUT_P, PRECISION)


@triton.jit
def _head_bwd(h, env, gy, x_ptr, src, mask_e, head_ptr, gx_ptr, genv_ptr, offs_e, H, DIN,
              P: tl.constexpr, DOUT_P: tl.constexpr, IN_K: tl.constexpr, PRECISION: tl.constexpr):
    """Head backward of a block but the head's own gradient: grad_x (atomics), grad_env (stored); returns
    grad_h (BLOCK_E, P)."""
    offs_k = tl.arange(0, P)
    h1 = _used_cols(tl.where((offs_k == H)[None, :], 1.0, h), P, IN_K)
    ht = h1 * env[:, None]
    dht = tl.zeros_like(ht)
    for c in range(DIN):
        xc = tl.load(x_ptr + src * DIN + c, mask=mask_e, other=0.0)
        t = _mm(gy, head_ptr + c * P * DOUT_P, DOUT_P, IN_K, DOUT_P, True, PRECISION)
        dht += t * xc[:, None]
        tl.atomic_add(gx_ptr + src * DIN + c, tl.sum(t * ht, 1), mask=mask_e, sem="relaxed")
    tl.store(genv_ptr + offs_e, tl.sum(dht * h1, 1), mask=mask_e)
    if IN_K < P:
        dht = _join(dht, tl.zeros_like(dht), P)
    return tl.where((offs_k < H)[None, :], dht * env[:, None], 0.0)


@triton.jit
def _used_cols(ht, P: tl.constexpr, IN_K: tl.constexpr):
    """The first IN_K columns of a (BLOCK_E, P) tile (IN_K = P or P/2)."""
    if IN_K < P:  # a compile-time branch: one return statement (Triton types every return alike)
        ht = _halves(ht, P)[0]
    return ht


@triton.jit
def _gmlp_conv_bwd_kernel(
    gout_ptr, z_ptr, env_ptr, x_ptr, src_ptr, tgt_ptr,
    w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr, triv_ptr, head_ptr,
    gz_ptr, genv_ptr, gx_ptr, gw_ptr, gb_ptr, gscale_ptr, gshift_ptr,
    eps, E, K0, H, DIN, DOUT,
    L: tl.constexpr, P: tl.constexpr, NB: tl.constexpr, NG: tl.constexpr, DOUT_P: tl.constexpr,
    NORM: tl.constexpr, IN_K: tl.constexpr, BLOCK_E: tl.constexpr, PRECISION: tl.constexpr,
    NEED_PARAMS: tl.constexpr,
):
    offs_e, mask_e, z, env, src, tgt = _edge_inputs(z_ptr, env_ptr, src_ptr, tgt_ptr, E, K0, BLOCK_E, P)
    gy = _target_rows(gout_ptr, tgt, mask_e, DOUT, DOUT_P)
    if L == 0:
        dh = _head_bwd(z, env, gy, x_ptr, src, mask_e, head_ptr, gx_ptr, genv_ptr, offs_e, H, DIN,
                       P, DOUT_P, IN_K, PRECISION)
    for i in tl.static_range(L):  # layer L-1-i (constexpr arithmetic, not a reassigned constexpr name)
        u = _mlp(z, L - 1 - i, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr, exp_ptr, gpick_ptr, gexp_ptr,
                 triv_ptr, eps, P, NB, NG, NORM, IN_K, PRECISION)
        y, a, c, rinv, rf, n, sg, gf = _layer(u, L - 1 - i, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, avg_ptr,
                                              exp_ptr, gpick_ptr, gexp_ptr, triv_ptr, eps, P, NB, NG, NORM, IN_K,
                                              PRECISION)
        if i == 0:
            dh = _head_bwd(y, env, gy, x_ptr, src, mask_e, head_ptr, gx_ptr, genv_ptr, offs_e, H,
                           DIN, P, DOUT_P, IN_K, PRECISION)
        dh = _layer_bwd(dh, u, a, c, rinv, rf, n, sg, gf, L - 1 - i, w_ptr, scale_ptr, mean_ptr, avg_ptr, exp_ptr,
                        gpick_ptr, gexp_ptr, triv_ptr, gw_ptr, gb_ptr, gscale_ptr, gshift_ptr,
                        P, NB, NG, NORM, IN_K, PRECISION, NEED_PARAMS)
    offs_k = tl.arange(0, P)
    tl.store(gz_ptr + offs_e[:, None] * K0 + offs_k[None, :], dh,
             mask=mask_e[:, None] & (offs_k < K0)[None, :])


_PARAMS = ("weight", "bias", "scale", "shift", "mean", "avg", "expand", "gate_pick", "gate_expand",
           "trivial", "head")


def _launch(kernel, name: str, e: int, k0: int, args: tuple, packed: dict, precision: str, **flags) -> None:
    """One program per BLOCK_E edges (the configuration of kernel ``name``); the packed sizes as constexprs."""
    _, p, nb = packed["mean"].shape
    config = (INTERPRET_CONFIG if INTERPRET else GPU_CONFIG)[name]
    meta = dict(L=packed["layers"], P=p, NB=nb, NG=packed["gate_pick"].shape[2], DOUT_P=packed["head"].shape[2],
                NORM=packed["norm"], IN_K=used_columns(p, k0, packed["hidden"]),
                PRECISION=precision if packed["head"].dtype == torch.float32 else "ieee")
    kernel[(triton.cdiv(e, config["BLOCK_E"]),)](*args, **meta, **config, **flags)


def used_columns(p: int, k0: int, hidden: int) -> int:
    """IN_K: P/2 when z (k0 columns), the layers' inputs (hidden) and h̃ (hidden + 1) fit in the lower half
    of P (and the half still splits into two dot operands of ≥ 16), else P."""
    return p // 2 if max(k0, hidden + 1) <= p // 2 and p >= 64 else p


def gmlp_conv_fwd(z, env, x, src, tgt, num_targets: int, dout: int, packed: dict, precision: str):
    """(num_targets, dout): the convolution of the packed G-MLP (inputs validated and contiguous)."""
    e, k0 = z.shape
    out = torch.zeros(num_targets, dout, device=x.device, dtype=x.dtype)
    if e == 0 or num_targets == 0 or dout == 0 or x.shape[1] == 0:
        return out
    with device_ctx(x):
        _launch(_gmlp_conv_fwd_kernel, "fwd", e, k0, (z, env, x, src, tgt, out, *(packed[k] for k in _PARAMS),
                                                  packed["eps"], e, k0, packed["hidden"], x.shape[1], dout),
                packed, precision)
    return out


def gmlp_conv_bwd(grad_out, z, env, x, src, tgt, packed: dict, precision: str, need_params: bool = True):
    """Gradients of ⟨grad_out, forward⟩: (grad_z, grad_env, grad_x, then one per packed parameter:
    weight, bias, scale, shift, head — zeros, and not computed, unless ``need_params``)."""
    e, k0 = z.shape
    grads = [torch.zeros_like(t) for t in (z, env, x)] + \
            [torch.zeros_like(packed[k]) for k in ("weight", "bias", "scale", "shift", "head")]
    if e == 0 or grad_out.shape[0] == 0 or grad_out.shape[1] == 0 or x.shape[1] == 0:
        return tuple(grads)
    sizes = (packed["eps"], e, k0, packed["hidden"], x.shape[1], grad_out.shape[1])
    inputs = (grad_out, z, env, x, src, tgt, *(packed[k] for k in _PARAMS[:-1]))
    with device_ctx(x):
        _launch(_gmlp_conv_bwd_kernel, "bwd", e, k0, (*inputs, packed["head"], *grads[:-1], *sizes), packed, precision,
                NEED_PARAMS=need_params)
        if need_params:
            _launch(_gmlp_head_grad_kernel, "head_grad", e, k0, (*inputs, grads[-1], *sizes), packed, precision)
    return tuple(grads)
