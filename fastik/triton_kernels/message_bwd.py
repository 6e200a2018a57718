"""Fused backward of implicit message passing (Triton), recomputing, never storing
anything of size E·Din·Dout.

With g_e = grad_out[tgt[e]] (DOUT,) and Q_e[k, c] = Σ_o g_e[o] · W[o, k, c]:

    grad_h[e, k]         = Σ_c Q_e[k, c] · x[src[e], c]
    grad_x[src[e], c]   += Σ_k h[e, k] · Q_e[k, c]
    grad_W[o, k, c]      = Σ_e g_e[o] · h[e, k] · x[src[e], c]

Kernel 1 (``_message_bwd_dxdh_kernel``), one program per BLOCK_E edges: for each
chunk of BLOCK_K hidden units, Q = g @ W[:, kchunk, :] (BLOCK_E, BLOCK_K·DIN) by
tl.dot, then grad_h (stored, each edge owns its row) and grad_x (registers,
fp32 atomics into grad_x[src] at the end).

Kernel 2 (``_message_bwd_dw_kernel``), grid (k chunks, edge splits): each program
accumulates acc (DOUT, BLOCK_K·DIN) += gᵀ @ (h[:, kchunk] ⊗ x[src]) over its edge
split and stores a per-split partial; the splits are summed in torch (a fixed
order → deterministic; no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import autotuned, device_ctx, launch, padded_dim, register_prune

__all__ = ["message_bwd", "message_bwd_torch", "num_weight_splits"]


@triton.jit
def _message_bwd_dxdh_kernel(
    gout_ptr, h_ptr, x_ptr, w_ptr, src_ptr, tgt_ptr, grad_h_ptr, grad_x_ptr,
    E, K, DIN, DOUT,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DX: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_e = pid.to(tl.int64) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_c = tl.arange(0, DIN_P)
    mask_c = offs_c < DIN
    offs_o = tl.arange(0, DOUT_P)
    mask_o = offs_o < DOUT
    offs_j = tl.arange(0, BLOCK_K * DIN_P)
    j_k = offs_j // DIN_P
    j_c = offs_j % DIN_P
    offs_kk = tl.arange(0, BLOCK_K)

    src = tl.load(src_ptr + offs_e, mask=mask_e, other=0)
    tgt = tl.load(tgt_ptr + offs_e, mask=mask_e, other=0)
    g_ptrs = gout_ptr + tgt[:, None] * DOUT + offs_o[None, :]
    g_mask = mask_e[:, None] & mask_o[None, :]
    g = tl.load(g_ptrs, mask=g_mask, other=0.0)
    if NEED_DH:
        xj = tl.load(
            x_ptr + src[:, None] * DIN + offs_c[None, :],
            mask=mask_e[:, None] & mask_c[None, :], other=0.0,
        )
    gx = tl.zeros((BLOCK_E, DIN_P), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if PRECISION == "ieee":
            # FMA dots keep their operands in registers; re-reading g (L1-hot) each
            # iteration instead of carrying it across the loop avoids spills (ptxas, sm_90)
            g = tl.load(g_ptrs, mask=g_mask, other=0.0)
        wk = k0 + j_k
        # Wc[o, j] = W[o, k0 + j//DIN_P, j%DIN_P]
        wc = tl.load(
            w_ptr + offs_o[:, None] * (K * DIN) + wk[None, :] * DIN + j_c[None, :],
            mask=mask_o[:, None] & ((wk < K) & (j_c < DIN))[None, :], other=0.0,
        )
        q = tl.dot(g, wc, input_precision=PRECISION)          # (BLOCK_E, BLOCK_K*DIN_P)
        q3 = tl.reshape(q, (BLOCK_E, BLOCK_K, DIN_P))
        kk = k0 + offs_kk
        mask_ek = mask_e[:, None] & (kk[None, :] < K)
        if NEED_DH:
            dh = tl.sum(q3 * xj[:, None, :], axis=2)           # (BLOCK_E, BLOCK_K)
            tl.store(grad_h_ptr + offs_e[:, None] * K + kk[None, :], dh, mask=mask_ek)
        if NEED_DX:
            hb = tl.load(h_ptr + offs_e[:, None] * K + kk[None, :], mask=mask_ek, other=0.0)
            gx += tl.sum(q3 * hb[:, :, None], axis=1)          # (BLOCK_E, DIN_P)
    if NEED_DX:
        tl.atomic_add(
            grad_x_ptr + src[:, None] * DIN + offs_c[None, :], gx,
            mask=mask_e[:, None] & mask_c[None, :], sem="relaxed",
        )


@triton.jit
def _message_bwd_dw_kernel(
    gout_ptr, h_ptr, x_ptr, src_ptr, tgt_ptr, partial_ptr,
    E, K, DIN, DOUT, EDGES_PER_SPLIT,
    BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    k0 = pid_k * BLOCK_K
    offs_c = tl.arange(0, DIN_P)
    mask_c = offs_c < DIN
    offs_o = tl.arange(0, DOUT_P)
    mask_o = offs_o < DOUT
    offs_j = tl.arange(0, BLOCK_K * DIN_P)
    j_k = offs_j // DIN_P
    j_c = offs_j % DIN_P
    kk = k0 + tl.arange(0, BLOCK_K)

    e_begin = pid_s.to(tl.int64) * EDGES_PER_SPLIT
    e_end = tl.minimum(e_begin + EDGES_PER_SPLIT, E)
    acc = tl.zeros((DOUT_P, BLOCK_K * DIN_P), dtype=tl.float32)
    for e0 in range(e_begin, e_end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < e_end
        src = tl.load(src_ptr + offs_e, mask=mask_e, other=0)
        tgt = tl.load(tgt_ptr + offs_e, mask=mask_e, other=0)
        g = tl.load(
            gout_ptr + tgt[:, None] * DOUT + offs_o[None, :],
            mask=mask_e[:, None] & mask_o[None, :], other=0.0,
        )
        xj = tl.load(
            x_ptr + src[:, None] * DIN + offs_c[None, :],
            mask=mask_e[:, None] & mask_c[None, :], other=0.0,
        )
        hb = tl.load(
            h_ptr + offs_e[:, None] * K + kk[None, :],
            mask=mask_e[:, None] & (kk[None, :] < K), other=0.0,
        )
        z = tl.reshape(hb[:, :, None] * xj[:, None, :], (BLOCK_E, BLOCK_K * DIN_P))
        acc = tl.dot(tl.trans(g), z, acc, input_precision=PRECISION)
    wk = k0 + j_k
    tl.store(
        partial_ptr + pid_s.to(tl.int64) * (DOUT * K * DIN)
        + offs_o[:, None] * (K * DIN) + wk[None, :] * DIN + j_c[None, :],
        acc,
        mask=mask_o[:, None] & ((wk < K) & (j_c < DIN))[None, :],
    )


# ----------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------
INTERPRET_CONFIG = dict(BLOCK_E=16, BLOCK_K=2)
# GPU without autotuning: spill-free on sm_90a at DIN = DOUT = 64 under Triton 3.6 (the GPU
# machines' version; `python -m bench.aot`); tf32x3 grad-weight still spills 200 B under 3.8.
GPU_CONFIG_DXDH = dict(BLOCK_E=64, BLOCK_K=1, num_warps=8, num_stages=1)
GPU_CONFIG_DW = {"ieee": dict(BLOCK_E=32, BLOCK_K=1, num_warps=8, num_stages=2),
                 "tf32x3": dict(BLOCK_E=32, BLOCK_K=1, num_warps=8, num_stages=2),
                 "default": dict(BLOCK_E=64, BLOCK_K=2, num_warps=8, num_stages=2)}
# Edge splits of the grad-weight kernel are a multiple of this (≥ every BLOCK_E
# tried), so the split layout does not depend on the autotuned configuration.
_SPLIT_QUANTUM = 256


def _dxdh_configs():
    return [triton.Config({"BLOCK_E": be, "BLOCK_K": bk}, num_warps=8, num_stages=1)
            for be, bk in ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1))]


def _dw_configs():
    return [triton.Config({"BLOCK_E": be, "BLOCK_K": bk}, num_warps=8, num_stages=st)
            for be, bk in ((32, 1), (32, 2), (32, 4), (64, 1), (64, 2), (128, 1))
            for st in (2, 3)]


_dxdh_kernel = autotuned(_message_bwd_dxdh_kernel, _dxdh_configs,
                         ["K", "DIN_P", "DOUT_P", "NEED_DH", "NEED_DX", "PRECISION"],
                         register_prune("dxdh", "_message_bwd_dxdh_kernel"), reset_to_zero=["grad_x_ptr"])
_dw_kernel = autotuned(_message_bwd_dw_kernel, _dw_configs, ["K", "DIN_P", "DOUT_P", "PRECISION"],
                       register_prune("dw", "_message_bwd_dw_kernel"))


def num_weight_splits(num_edges: int, k: int, din: int, dout: int, device: torch.device) -> int:
    """Number of edge splits of the grad-weight kernel.

    Enough programs to fill the GPU (≈ 4 per SM over k chunks of 2), but the
    partial buffer (splits · Dout · K · Din floats) stays ≤ E · K floats — i.e.
    within the O(E·H) memory budget — and every split holds ≥ _SPLIT_QUANTUM edges.
    """
    if num_edges == 0:
        return 1
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 2
    want = max(1, triton.cdiv(4 * sms, max(1, triton.cdiv(k, 2))))
    cap_mem = max(1, num_edges // max(1, din * dout))
    cap_edges = max(1, triton.cdiv(num_edges, _SPLIT_QUANTUM))
    return int(min(want, cap_mem, cap_edges))


def message_bwd(grad_out, h, x, weight, src, tgt, precision: str = "ieee",
                need_h: bool = True, need_x: bool = True, need_w: bool = True):
    """Returns (grad_h (E, K), grad_x (N, DIN), grad_weight (DOUT, K, DIN)), fp32.

    Gradients not asked for come back as zeros of the right shape.
    """
    dout, k, din = weight.shape
    e = h.shape[0]
    dev = x.device
    trivial = e == 0 or k == 0 or din == 0 or dout == 0
    grad_h = (torch.zeros if (trivial or not need_h) else torch.empty)(
        e, k, device=dev, dtype=torch.float32)
    grad_x = torch.zeros(x.shape[0], din, device=dev, dtype=torch.float32)
    grad_w = torch.zeros(dout, k, din, device=dev, dtype=torch.float32)
    if trivial:
        return grad_h, grad_x, grad_w
    meta = dict(DIN_P=padded_dim(din), DOUT_P=padded_dim(dout), PRECISION=precision)
    with device_ctx(x):
        if need_h or need_x:
            launch(_dxdh_kernel, lambda m: (triton.cdiv(e, m["BLOCK_E"]),),
                   (grad_out, h, x, weight, src, tgt, grad_h, grad_x, e, k, din, dout),
                   dict(meta, NEED_DH=need_h, NEED_DX=need_x),
                   fixed=INTERPRET_CONFIG, fixed_gpu=GPU_CONFIG_DXDH, size=e)
        if need_w:
            splits = num_weight_splits(e, k, din, dout, dev)
            per_split = triton.cdiv(triton.cdiv(e, splits), _SPLIT_QUANTUM) * _SPLIT_QUANTUM
            splits = triton.cdiv(e, per_split)
            partial = grad_w if splits == 1 else torch.empty(
                splits, dout, k, din, device=dev, dtype=torch.float32)
            launch(_dw_kernel, lambda m: (triton.cdiv(k, m["BLOCK_K"]), splits),
                   (grad_out, h, x, src, tgt, partial, e, k, din, dout, per_split), meta,
                   fixed=INTERPRET_CONFIG, fixed_gpu=GPU_CONFIG_DW, size=e)
            if splits > 1:
                torch.sum(partial, dim=0, out=grad_w)
    return grad_h, grad_x, grad_w


def message_bwd_torch(grad_out, h, x, weight, src, tgt, block_e: int = 1024):
    """Pure-torch statement of the same backward (edge blocks, no E·Din·Dout tensor)."""
    dout, k, din = weight.shape
    w2 = weight.reshape(dout, k * din)
    grad_h = torch.empty_like(h)
    grad_x = torch.zeros_like(x)
    grad_w2 = torch.zeros_like(w2)
    for s in range(0, h.shape[0], block_e):
        sl = slice(s, s + block_e)
        g = grad_out[tgt[sl]]
        xj = x[src[sl]]
        q = (g @ w2).reshape(-1, k, din)
        grad_h[sl] = (q * xj[:, None, :]).sum(-1)
        grad_x.index_add_(0, src[sl], (q * h[sl][:, :, None]).sum(1))
        z = (h[sl][:, :, None] * xj[:, None, :]).reshape(-1, k * din)
        grad_w2 += g.T @ z
    return grad_h, grad_x, grad_w2.reshape(dout, k, din)
