"""Aggregate-first backward of implicit message passing (Triton), target-sorted edges.

Recomputes instead of storing: nothing of size E·DIN·DOUT or N·K·DIN is ever
allocated. With g_i = grad_out[i], G_i = reshape(W_flatᵀ g_i) (K × DIN) and
T_i = Σ_{e→i} h[e] ⊗ x[src[e]] (the forward's per-target aggregate):

    grad_h[e, k]   = Σ_c G_{tgt e}[k, c] · x[src e, c]
    grad_W         = Σ_i g_i ⊗ vec(T_i)
    grad_x[j]      = Σ_{e: src e = j} Σ_k h[e, k] · G_{tgt e}[k, :]
                   = W'_flat · vec(U_j),   U_j = Σ_{e: src e = j} h[e] ⊗ g_{tgt e},
                     W'[c, k, o] = W[o, k, c]

* grad_h and grad_W: ``_segmented_bwd_kernel``, grid (K / KC chunks, S target
  splits). Program (kc, s) loads its W chunk once (DOUT × KC·DIN; loop
  invariant), then walks the target blocks of split s: G_chunk = g_block @ W_chunk
  (tl.dot, per target — not per edge), and in the padded-degree loop of the
  forward (same x / h gathers) stores grad_h[e, kchunk] (each element written
  once) and re-accumulates T_chunk; acc_W (DOUT, KC·DIN) += g_blockᵀ @ T_chunk.
  acc_W is stored as split s's partial; torch sums the S partials in a fixed
  order. No atomics: deterministic for a given S (S depends on the SM count).
* grad_x: grad_x is the *forward* of the transposed graph — sources become
  targets, grad_out plays x, W' plays W — so it reuses the forward kernel
  (:func:`.segmented_fwd.segmented_fwd`) on the edges sorted by source through a
  permutation (``HAS_EID``; h is not copied). One stable ``torch.sort`` of src per
  backward call; no atomics (the edge-wise kernel needs E·DIN atomics, and doing
  them per k chunk here would need K/KC times more), deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET, autotuned, device_ctx, launch, padded_dim
from .segmented_fwd import segmented_fwd, tile_prune

__all__ = ["segmented_bwd", "num_weight_splits", "INTERPRET_CONFIG", "GPU_CONFIG"]


@triton.jit
def _segmented_bwd_kernel(
    gout_ptr, h_ptr, x_ptr, w_ptr, src_ptr, rowptr_ptr, grad_h_ptr, partial_ptr,
    M, K, DIN, DOUT, TARGETS_PER_SPLIT,
    BLOCK_N: tl.constexpr, KC: tl.constexpr, DEG_P: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    NEED_DH: tl.constexpr, NEED_DW: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    k0 = pid_k * KC
    offs_c = tl.arange(0, DIN_P)
    mask_c = offs_c < DIN
    offs_o = tl.arange(0, DOUT_P)
    mask_o = offs_o < DOUT
    offs_d = tl.arange(0, DEG_P)
    kk = k0 + tl.arange(0, KC)
    mask_k = kk < K
    # column j of a chunk  <->  (k = k0 + j // DIN_P, c = j % DIN_P)
    offs_j = tl.arange(0, KC * DIN_P)
    wk = k0 + offs_j // DIN_P
    j_c = offs_j % DIN_P
    mask_j = (wk < K) & (j_c < DIN)
    if NEED_DH:
        # Wc[o, j] = W[o, k0 + j // DIN_P, j % DIN_P]; loop invariant
        wc = tl.load(w_ptr + offs_o[:, None] * (K * DIN) + wk[None, :] * DIN + j_c[None, :],
                     mask=mask_o[:, None] & mask_j[None, :], other=0.0)
    acc_w = tl.zeros((DOUT_P, KC * DIN_P), dtype=tl.float32)

    n_begin = pid_s.to(tl.int64) * TARGETS_PER_SPLIT
    n_end = tl.minimum(n_begin + TARGETS_PER_SPLIT, M)
    for n0 in range(n_begin, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_end
        start = tl.load(rowptr_ptr + offs_n, mask=mask_n, other=0)
        deg = tl.load(rowptr_ptr + offs_n + 1, mask=mask_n, other=0) - start
        max_deg = tl.max(deg, axis=0)
        g = tl.load(gout_ptr + offs_n[:, None] * DOUT + offs_o[None, :],
                    mask=mask_n[:, None] & mask_o[None, :], other=0.0)     # (BLOCK_N, DOUT_P)
        if NEED_DH:
            q = tl.dot(g, wc, input_precision=PRECISION)                  # (BLOCK_N, KC*DIN_P)
            q3 = tl.reshape(q, (BLOCK_N, KC, DIN_P))
        if NEED_DW:
            t = tl.zeros((BLOCK_N, KC, DIN_P), dtype=tl.float32)
        for d0 in range(0, max_deg, DEG_P):
            dd = d0 + offs_d
            mask_e = dd[None, :] < deg[:, None]                           # (BLOCK_N, DEG_P)
            e = start[:, None] + dd[None, :]
            s = tl.load(src_ptr + e, mask=mask_e, other=0)
            xv = tl.load(x_ptr + s[:, :, None] * DIN + offs_c[None, None, :],
                         mask=mask_e[:, :, None] & mask_c[None, None, :], other=0.0)
            mask_ek = mask_e[:, :, None] & mask_k[None, None, :]
            if NEED_DH:
                dh = tl.sum(q3[:, None, :, :] * xv[:, :, None, :], axis=3)  # (BLOCK_N, DEG_P, KC)
                tl.store(grad_h_ptr + e[:, :, None] * K + kk[None, None, :], dh, mask=mask_ek)
            if NEED_DW:
                hv = tl.load(h_ptr + e[:, :, None] * K + kk[None, None, :], mask=mask_ek,
                             other=0.0)
                t += tl.sum(hv[:, :, :, None] * xv[:, :, None, :], axis=1)
        if NEED_DW:
            acc_w = tl.dot(tl.trans(g), tl.reshape(t, (BLOCK_N, KC * DIN_P)), acc_w,
                           input_precision=PRECISION)
    if NEED_DW:
        tl.store(partial_ptr + pid_s.to(tl.int64) * (DOUT * K * DIN)
                 + offs_o[:, None] * (K * DIN) + wk[None, :] * DIN + j_c[None, :],
                 acc_w, mask=mask_o[:, None] & mask_j[None, :])


# ----------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------
INTERPRET_CONFIG = dict(BLOCK_N=16, KC=2, DEG_P=4)
# GPU without autotuning, per precision: spill-free on sm_90a at DIN = DOUT = 64 for
# every (NEED_DH, NEED_DW) — IEEE ≤ 246 / TF32 ≤ 255 / tf32x3 ≤ 254 registers (offline
# ptxas -v, bench/NOTES.md). Not timed: no GPU measurement exists yet.
GPU_CONFIG = {"default": dict(BLOCK_N=16, KC=2, DEG_P=2, num_warps=8, num_stages=1),
              "tf32x3": dict(BLOCK_N=16, KC=2, DEG_P=1, num_warps=8, num_stages=1)}
# Target splits are a multiple of this (≥ every BLOCK_N tried), so the split layout
# — hence the order of the grad_W sum — does not depend on the autotuned config.
_SPLIT_QUANTUM = 16 if INTERPRET else 64

# (BLOCK_N, KC, DEG_P): spill-free at 8 warps, DIN = DOUT = 64, IEEE and TF32, all
# three (NEED_DH, NEED_DW) variants; (16, 2, 4), (32, 2, 1) and KC = 4 spill.
_CONFIG_LIST = ((16, 1, 1), (16, 1, 2), (16, 1, 4), (16, 2, 1), (16, 2, 2), (32, 1, 1), (32, 1, 2))


def _configs():
    return [triton.Config({"BLOCK_N": bn, "KC": kc, "DEG_P": dp}, num_warps=8, num_stages=1)
            for bn, kc, dp in _CONFIG_LIST]


_kernel = autotuned(_segmented_bwd_kernel, _configs,
                    ["K", "DIN_P", "DOUT_P", "NEED_DH", "NEED_DW", "PRECISION"], tile_prune)


def num_weight_splits(num_targets: int, num_edges: int, k: int, din: int, dout: int,
                      device: torch.device) -> int:
    """Target splits S of the grad-weight pass (partials: S·DOUT·K·DIN floats).

    Enough programs to fill the GPU (≈ 4 per SM over k chunks of 2), but the
    partial buffer stays below M·K·DIN (S·DOUT < M) and below E·K floats, and
    every split holds ≥ _SPLIT_QUANTUM targets.
    """
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        sms = 2
    want = max(1, triton.cdiv(4 * sms, max(1, triton.cdiv(k, 2))))
    cap_targets = max(1, (num_targets - 1) // max(1, dout))
    cap_edges = max(1, num_edges // max(1, din * dout))
    cap_quantum = max(1, triton.cdiv(num_targets, _SPLIT_QUANTUM))
    return int(min(want, cap_targets, cap_edges, cap_quantum))


# ----------------------------------------------------------------------------
# launcher (inputs validated, contiguous)
# ----------------------------------------------------------------------------
def segmented_bwd(grad_out, h, x, weight, src, tgt, rowptr, precision: str = "ieee",
                  need_h: bool = True, need_x: bool = True, need_w: bool = True):
    """Returns (grad_h (E, K), grad_x (N, DIN), grad_weight (DOUT, K, DIN)), fp32.

    Edges sorted by target with CSR row pointer ``rowptr``; ``tgt`` is used only
    for grad_x (it is the source index of the transposed graph). Gradients not
    asked for come back as zeros.
    """
    dout, k, din = weight.shape
    e = h.shape[0]
    m = grad_out.shape[0]
    dev = x.device
    trivial = e == 0 or k == 0 or din == 0 or dout == 0 or m == 0
    grad_h = (torch.zeros if (trivial or not need_h) else torch.empty)(
        e, k, device=dev, dtype=torch.float32)
    grad_w = torch.zeros(dout, k, din, device=dev, dtype=torch.float32)
    if trivial or not need_x:
        grad_x = torch.zeros(x.shape[0], din, device=dev, dtype=torch.float32)
    else:
        # transposed graph: edges sorted by source (stable → deterministic order)
        perm = torch.sort(src, stable=True).indices
        src_rowptr = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=dev)
        torch.cumsum(torch.bincount(src, minlength=x.shape[0]), 0, out=src_rowptr[1:])
        w_t = weight.permute(2, 1, 0).contiguous()                    # (DIN, K, DOUT)
        grad_x = segmented_fwd(h, grad_out, w_t, tgt, src_rowptr, x.shape[0], precision,
                               eid=perm)
    if trivial or not (need_h or need_w):
        return grad_h, grad_x, grad_w
    meta = dict(DIN_P=padded_dim(din), DOUT_P=padded_dim(dout), NEED_DH=need_h,
                NEED_DW=need_w, PRECISION=precision)
    if need_w:
        splits = num_weight_splits(m, e, k, din, dout, dev)
        per_split = triton.cdiv(triton.cdiv(m, splits), _SPLIT_QUANTUM) * _SPLIT_QUANTUM
        splits = triton.cdiv(m, per_split)
        partial = grad_w if splits == 1 else torch.empty(
            splits, dout, k, din, device=dev, dtype=torch.float32)
    else:  # grad_h only: as many programs as target quanta
        per_split = _SPLIT_QUANTUM
        splits = triton.cdiv(m, per_split)
        partial = grad_w  # not written
    with device_ctx(x):
        launch(_kernel, lambda mt: (triton.cdiv(k, mt["KC"]), splits),
               (grad_out, h, x, weight, src, rowptr, grad_h, partial, m, k, din, dout,
                per_split), meta, fixed=INTERPRET_CONFIG, fixed_gpu=GPU_CONFIG, size=e)
    if need_w and splits > 1:
        torch.sum(partial, dim=0, out=grad_w)
    return grad_h, grad_x, grad_w
