"""Fused forward of implicit message passing (Triton).

Computes, without ever forming the per-edge (Dout × Din) kernel matrix,

    out[i, o] = Σ_{e: tgt[e]=i} Σ_{k,c} W[o, k, c] · h[e, k] · x[src[e], c]

Formulation (one program per block of BLOCK_E edges)::

    xj  = x[src[e_block]]                                  (BLOCK_E, DIN)
    for each chunk of BLOCK_K hidden units k0..k0+BLOCK_K:
        Z  = (h[e_block, kchunk] ⊗ xj)  reshaped            (BLOCK_E, BLOCK_K·DIN)
        Wc = W[:, kchunk, :] reshaped and transposed         (BLOCK_K·DIN, DOUT)
        acc += Z @ Wc                                        (BLOCK_E, DOUT)
    out[tgt[e_block]] += acc       (fp32 atomics)  — or, in the segmented variant,
                                   a one-hot reduction per block of sorted targets.

i.e. the message GEMM ``m = W̃ · vec(h̃ ⊗ f_j)`` of docs/design.md §5, with the
outer-product operand Z formed tile by tile in registers. Chunking k (BLOCK_K > 1)
raises the dot's inner dimension to BLOCK_K·DIN, which matters for small DIN.

Dimensions DIN / DOUT are padded to powers of two ≥ 16 (tl.dot minimum) with
masks; K is looped over at run time (masked in the last chunk).

All tensors must be contiguous float32 (h, x, weight, out) / int64 (src, tgt,
rowptr); validation lives in :mod:`fastik.ops.fused`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import (
    INTERPRET,
    autotuned,
    device_ctx,
    launch,
    padded_dim,
    register_prune,
)

__all__ = [
    "message_fwd",
    "message_fwd_segmented",
    "message_fwd_torch",
    "INTERPRET",
    "padded_dim",
]


# ----------------------------------------------------------------------------
# shared device helper
# ----------------------------------------------------------------------------
@triton.jit
def _edge_messages(
    h_ptr, x_ptr, w_ptr, src_ptr,
    offs_e, mask_e, K, DIN, DOUT,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Messages of a block of edges: (BLOCK_E, DOUT_P) fp32, zero in padding."""
    offs_c = tl.arange(0, DIN_P)
    mask_c = offs_c < DIN
    offs_o = tl.arange(0, DOUT_P)
    mask_o = offs_o < DOUT
    # column j of the outer-product operand  <->  (k = k0 + j // DIN_P, c = j % DIN_P)
    offs_j = tl.arange(0, BLOCK_K * DIN_P)
    j_k = offs_j // DIN_P
    j_c = offs_j % DIN_P

    src = tl.load(src_ptr + offs_e, mask=mask_e, other=0)
    xj = tl.load(
        x_ptr + src[:, None] * DIN + offs_c[None, :],
        mask=mask_e[:, None] & mask_c[None, :], other=0.0,
    )
    acc = tl.zeros((BLOCK_E, DOUT_P), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        hb = tl.load(
            h_ptr + offs_e[:, None] * K + kk[None, :],
            mask=mask_e[:, None] & (kk[None, :] < K), other=0.0,
        )
        z = tl.reshape(hb[:, :, None] * xj[:, None, :], (BLOCK_E, BLOCK_K * DIN_P))
        wk = k0 + j_k
        # Wc[j, o] = W[o, k0 + j//DIN_P, j%DIN_P]   (W is (DOUT, K, DIN) contiguous)
        wc = tl.load(
            w_ptr + offs_o[None, :] * (K * DIN) + wk[:, None] * DIN + j_c[:, None],
            mask=((wk < K) & (j_c < DIN))[:, None] & mask_o[None, :], other=0.0,
        )
        acc = tl.dot(z, wc, acc, input_precision=PRECISION)
    return acc


# ----------------------------------------------------------------------------
# atomic variant: any edge order
# ----------------------------------------------------------------------------
@triton.jit
def _message_fwd_kernel(
    h_ptr, x_ptr, w_ptr, src_ptr, tgt_ptr, out_ptr,
    E, K, DIN, DOUT,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_e = pid.to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    acc = _edge_messages(
        h_ptr, x_ptr, w_ptr, src_ptr, offs_e, mask_e, K, DIN, DOUT,
        BLOCK_E, BLOCK_K, DIN_P, DOUT_P, PRECISION,
    )
    offs_o = tl.arange(0, DOUT_P)
    tgt = tl.load(tgt_ptr + offs_e, mask=mask_e, other=0)
    tl.atomic_add(
        out_ptr + tgt[:, None] * DOUT + offs_o[None, :], acc,
        mask=mask_e[:, None] & (offs_o < DOUT)[None, :], sem="relaxed",
    )


# ----------------------------------------------------------------------------
# segmented variant: edges sorted by target, CSR row pointer; no atomics,
# every output row written exactly once (deterministic, also zero rows).
# ----------------------------------------------------------------------------
@triton.jit
def _message_fwd_segmented_kernel(
    h_ptr, x_ptr, w_ptr, src_ptr, tgt_ptr, rowptr_ptr, out_ptr,
    T, K, DIN, DOUT,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    t0 = pid.to(tl.int64) * BLOCK_T
    t_end = tl.minimum(t0 + BLOCK_T, T)
    e_lo = tl.load(rowptr_ptr + t0)
    e_hi = tl.load(rowptr_ptr + t_end)
    offs_t = tl.arange(0, BLOCK_T)
    offs_o = tl.arange(0, DOUT_P)
    out_acc = tl.zeros((BLOCK_T, DOUT_P), dtype=tl.float32)
    for e0 in range(e_lo, e_hi, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < e_hi
        msg = _edge_messages(
            h_ptr, x_ptr, w_ptr, src_ptr, offs_e, mask_e, K, DIN, DOUT,
            BLOCK_E, BLOCK_K, DIN_P, DOUT_P, PRECISION,
        )
        tgt = tl.load(tgt_ptr + offs_e, mask=mask_e, other=-1)
        onehot = ((tgt[None, :] - t0) == offs_t[:, None]) & mask_e[None, :]
        # exact reduction: always IEEE, whatever the message precision
        out_acc = tl.dot(onehot.to(tl.float32), msg, out_acc, input_precision="ieee")
    rows = t0 + offs_t
    tl.store(
        out_ptr + rows[:, None] * DOUT + offs_o[None, :], out_acc,
        mask=(rows < t_end)[:, None] & (offs_o < DOUT)[None, :],
    )


# ----------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------
# Interpreter (CPU, tests): one small configuration; BLOCK_K = 2 so that the masked
# last k-chunk is exercised whenever K is odd.
INTERPRET_CONFIG = dict(BLOCK_E=16, BLOCK_K=2)
INTERPRET_CONFIG_SEG = dict(BLOCK_T=16, BLOCK_E=16, BLOCK_K=2)
# GPU without autotuning (FASTIK_TRITON_AUTOTUNE=0): spill-free on sm_90a for DIN = DOUT = 64
# in every precision under Triton 3.6 (the GPU machines' version) and, except tf32x3, 3.8
# (`python -m bench.aot`; bench/NOTES.md). (64, 2) spills under 3.6.
GPU_CONFIG = dict(BLOCK_E=64, BLOCK_K=1, num_warps=8, num_stages=2)
GPU_CONFIG_SEG = dict(BLOCK_T=16, BLOCK_E=64, BLOCK_K=1, num_warps=8, num_stages=1)


def _fwd_configs():
    # 8 warps throughout: at 4 warps every tile ≥ 64×128 spills (ptxas, sm_90a)
    return [triton.Config({"BLOCK_E": be, "BLOCK_K": bk}, num_warps=8, num_stages=2)
            for be, bk in ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1), (256, 1))]


def _seg_configs():
    return [triton.Config({"BLOCK_T": bt, "BLOCK_E": be, "BLOCK_K": bk},
                          num_warps=8, num_stages=1)
            for bt in (16, 32) for be, bk in ((32, 1), (64, 1), (64, 2), (128, 1))]


_fwd_kernel = autotuned(_message_fwd_kernel, _fwd_configs, ["K", "DIN_P", "DOUT_P", "PRECISION"],
                        register_prune("fwd", "_message_fwd_kernel"), reset_to_zero=["out_ptr"])
_seg_kernel = autotuned(_message_fwd_segmented_kernel, _seg_configs,
                        ["K", "DIN_P", "DOUT_P", "PRECISION"], register_prune("fwd", "_message_fwd_segmented_kernel"))


# ----------------------------------------------------------------------------
# launchers (inputs already validated and contiguous)
# ----------------------------------------------------------------------------
def message_fwd(h, x, weight, src, tgt, num_targets: int, precision: str = "ieee"):
    """Atomic-scatter forward. Returns (num_targets, DOUT) float32."""
    dout, k, din = weight.shape
    e = h.shape[0]
    out = torch.zeros(num_targets, dout, device=x.device, dtype=torch.float32)
    if e == 0 or k == 0 or din == 0 or dout == 0 or num_targets == 0:
        return out
    meta = dict(DIN_P=padded_dim(din), DOUT_P=padded_dim(dout), PRECISION=precision)
    with device_ctx(x):
        launch(_fwd_kernel, lambda m: (triton.cdiv(e, m["BLOCK_E"]),),
               (h, x, weight, src, tgt, out, e, k, din, dout), meta,
               fixed=INTERPRET_CONFIG, fixed_gpu=GPU_CONFIG, size=e)
    return out


def message_fwd_segmented(h, x, weight, src, tgt, rowptr, num_targets: int,
                          precision: str = "ieee"):
    """Deterministic forward for edges sorted by target.

    ``rowptr`` (num_targets + 1,) int64: edges of target i are
    ``rowptr[i]:rowptr[i+1]`` (and ``tgt`` must agree). Each output row is
    written once, no atomics.
    """
    dout, k, din = weight.shape
    if num_targets == 0 or dout == 0 or h.shape[0] == 0 or k == 0 or din == 0:
        return torch.zeros(num_targets, dout, device=x.device, dtype=torch.float32)
    out = torch.empty(num_targets, dout, device=x.device, dtype=torch.float32)
    meta = dict(DIN_P=padded_dim(din), DOUT_P=padded_dim(dout), PRECISION=precision)
    with device_ctx(x):
        launch(_seg_kernel, lambda m: (triton.cdiv(num_targets, m["BLOCK_T"]),),
               (h, x, weight, src, tgt, rowptr, out, num_targets, k, din, dout), meta,
               fixed=INTERPRET_CONFIG_SEG, fixed_gpu=GPU_CONFIG_SEG, size=h.shape[0])
    return out


# ----------------------------------------------------------------------------
# pure-torch statement of exactly what the kernels compute (Triton-tutorial style)
# ----------------------------------------------------------------------------
def message_fwd_torch(h, x, weight, src, tgt, num_targets: int, block_e: int = 1024):
    """Same formulation in torch: per edge block, Z = h ⊗ x[src] (E_b, K·Din) and
    ``Z @ W.reshape(Dout, K·Din).T``. Never forms anything of size E·Dout·Din."""
    dout, k, din = weight.shape
    w2 = weight.reshape(dout, k * din)
    out = x.new_zeros(num_targets, dout)
    for s in range(0, h.shape[0], block_e):
        hb = h[s:s + block_e]
        z = (hb[:, :, None] * x[src[s:s + block_e]][:, None, :]).reshape(hb.shape[0], k * din)
        out.index_add_(0, tgt[s:s + block_e], z @ w2.T)
    return out
