"""Aggregate-first forward of implicit message passing (Triton), target-sorted edges.

Because the weight is shared by all edges, the operation is linear in it:

    out[i] = W_flat · vec(T_i),   T_i = Σ_{e: tgt[e]=i} h[e] ⊗ x[src[e]]   (K × DIN)

with W_flat = weight.reshape(DOUT, K·DIN). The edge-level work drops to
O(E·K·DIN) and the DOUT-sized GEMM is done once per *target* instead of once
per edge (the average in-degree is the saving: 16 in the standard workload).

T is never written to memory (N·K·DIN floats would be > 1 GiB at the standard
size). One program per block of BLOCK_N consecutive targets; for each chunk of
KC hidden units::

    T_chunk (BLOCK_N, KC, DIN) = 0
    for d0 in 0 .. max in-degree of the block, step DEG_P:      ("padded-degree" loop)
        edge of target n, slot d:  e = rowptr[n] + d0 + d   (masked: d0 + d < deg[n])
        T_chunk += Σ_d h[e, kchunk] ⊗ x[src[e]]    ((BLOCK_N, DEG_P, KC, DIN) tile, sum over d)
    acc (BLOCK_N, DOUT) += T_chunk (BLOCK_N, KC·DIN) @ W[:, kchunk, :]ᵀ   (tl.dot)
    out[block] = acc         (each output row written once: no atomics, deterministic)

The segmented reduction is a plain register sum over the degree slots, not a
one-hot ``tl.dot``: a one-hot (BLOCK_N × BLOCK_E) dot would spend BLOCK_N times
the useful edge-level FLOPs (16× at BLOCK_N = 16), the padded-degree loop spends
max_deg/mean_deg of them per block (1.0 when every target has the same degree, as
in the benchmark graph; ≈ 1.5 for Poisson(16) degrees at BLOCK_N = 16). The
price is skew: a block holding one hub of degree D runs D/DEG_P iterations for
all its BLOCK_N targets. The edge-level products are IEEE fp32 FMAs whatever the
precision; ``PRECISION`` applies to the per-target GEMM only.

``HAS_EID`` adds one indirection (edge slot → edge id, for h and src). The
backward uses it to run this very kernel on the *transposed* graph (edges sorted
by source through a permutation) to get grad_x without atomics; see
:mod:`.segmented_bwd`.

Dimensions DIN / DOUT are padded to powers of two ≥ 16 with masks; K is looped
over at run time (masked in the last chunk). Inputs must be contiguous float32 /
int64 and validated (:mod:`fastik.ops.fused_segmented`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import autotuned, device_ctx, launch, padded_dim

__all__ = ["segmented_fwd", "segmented_fwd_torch", "INTERPRET_CONFIG", "GPU_CONFIG"]


@triton.jit
def _block_t_chunk(
    h_ptr, x_ptr, src_ptr, eid_ptr,
    start, deg, max_deg, kk, mask_k, K, DIN,
    BLOCK_N: tl.constexpr, KC: tl.constexpr, DEG_P: tl.constexpr, DIN_P: tl.constexpr,
    HAS_EID: tl.constexpr,
):
    """T_chunk (BLOCK_N, KC, DIN_P) = Σ over each target's edges of h[e, kk] ⊗ x[src[e]]."""
    offs_c = tl.arange(0, DIN_P)
    mask_c = offs_c < DIN
    offs_d = tl.arange(0, DEG_P)
    t = tl.zeros((BLOCK_N, KC, DIN_P), dtype=tl.float32)
    for d0 in range(0, max_deg, DEG_P):
        dd = d0 + offs_d
        mask_e = dd[None, :] < deg[:, None]                      # (BLOCK_N, DEG_P)
        e = start[:, None] + dd[None, :]
        if HAS_EID:
            e = tl.load(eid_ptr + e, mask=mask_e, other=0)
        s = tl.load(src_ptr + e, mask=mask_e, other=0)
        xv = tl.load(x_ptr + s[:, :, None] * DIN + offs_c[None, None, :],
                     mask=mask_e[:, :, None] & mask_c[None, None, :], other=0.0)
        hv = tl.load(h_ptr + e[:, :, None] * K + kk[None, None, :],
                     mask=mask_e[:, :, None] & mask_k[None, None, :], other=0.0)
        t += tl.sum(hv[:, :, :, None] * xv[:, :, None, :], axis=1)
    return t


@triton.jit
def _segmented_fwd_kernel(
    h_ptr, x_ptr, w_ptr, src_ptr, eid_ptr, rowptr_ptr, out_ptr,
    M, K, DIN, DOUT,
    BLOCK_N: tl.constexpr, KC: tl.constexpr, DEG_P: tl.constexpr,
    DIN_P: tl.constexpr, DOUT_P: tl.constexpr,
    HAS_EID: tl.constexpr, PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_n = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < M
    start = tl.load(rowptr_ptr + offs_n, mask=mask_n, other=0)
    deg = tl.load(rowptr_ptr + offs_n + 1, mask=mask_n, other=0) - start
    max_deg = tl.max(deg, axis=0)
    offs_o = tl.arange(0, DOUT_P)
    mask_o = offs_o < DOUT
    offs_kk = tl.arange(0, KC)
    # row j of the W chunk  <->  (k = k0 + j // DIN_P, c = j % DIN_P)
    offs_j = tl.arange(0, KC * DIN_P)
    j_k = offs_j // DIN_P
    j_c = offs_j % DIN_P

    acc = tl.zeros((BLOCK_N, DOUT_P), dtype=tl.float32)
    for k0 in range(0, K, KC):
        kk = k0 + offs_kk
        t = _block_t_chunk(h_ptr, x_ptr, src_ptr, eid_ptr, start, deg, max_deg,
                           kk, kk < K, K, DIN, BLOCK_N, KC, DEG_P, DIN_P, HAS_EID)
        wk = k0 + j_k
        # Wc[j, o] = W[o, k0 + j // DIN_P, j % DIN_P]    (W is (DOUT, K, DIN) contiguous)
        wc = tl.load(w_ptr + offs_o[None, :] * (K * DIN) + wk[:, None] * DIN + j_c[:, None],
                     mask=((wk < K) & (j_c < DIN))[:, None] & mask_o[None, :], other=0.0)
        acc = tl.dot(tl.reshape(t, (BLOCK_N, KC * DIN_P)), wc, acc, input_precision=PRECISION)
    tl.store(out_ptr + offs_n[:, None] * DOUT + offs_o[None, :], acc,
             mask=mask_n[:, None] & mask_o[None, :])


# ----------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------
# Interpreter (CPU tests): BLOCK_N = 16 (two blocks already at 17+ targets),
# KC = 2 so that the masked last k chunk runs whenever K is odd, DEG_P = 4 to keep
# the interpreted degree loop short while still looping for degrees > 4.
INTERPRET_CONFIG = dict(BLOCK_N=16, KC=2, DEG_P=4)
# GPU without autotuning (FASTIK_TRITON_AUTOTUNE=0), per precision: spill-free on
# sm_90a at DIN = DOUT = 64 — IEEE 248 / TF32 228 / tf32x3 211 registers (offline
# ptxas -v, bench/NOTES.md); DEG_P = 4 gathers 64 x rows per iteration
# (memory-level parallelism). Chosen from the compile, not from timings: none exist yet.
GPU_CONFIG = {"default": dict(BLOCK_N=16, KC=2, DEG_P=4, num_warps=8, num_stages=1),
              "tf32x3": dict(BLOCK_N=16, KC=1, DEG_P=4, num_warps=8, num_stages=1)}

# (BLOCK_N, KC, DEG_P): every entry spill-free at 8 warps for DIN = DOUT = 64 in IEEE
# and TF32 (ptxas -v, sm_90a); at 4 warps KC = 2 spills.
_CONFIG_LIST = ((16, 1, 2), (16, 1, 4), (16, 2, 1), (16, 2, 2), (16, 2, 4), (32, 1, 1), (32, 1, 2))


def _configs():
    return [triton.Config({"BLOCK_N": bn, "KC": kc, "DEG_P": dp}, num_warps=8, num_stages=1)
            for bn, kc, dp in _CONFIG_LIST]


def tile_rule(configs, din_p: int, dout_p: int):
    """Drop configurations whose register tiles exceed what compiled spill-free at
    DIN_P = DOUT_P = 64 (8 warps): the edge tile BLOCK_N·DEG_P·KC·DIN_P and the W
    chunk KC·DIN_P·DOUT_P both ≤ 8192 fp32."""
    kept = [cfg for cfg in configs
            if cfg.kwargs["BLOCK_N"] * cfg.kwargs["DEG_P"] * cfg.kwargs["KC"] * din_p <= 8192
            and cfg.kwargs["KC"] * din_p * dout_p <= 8192]
    return kept or list(configs[:1])


def tile_prune(configs, named_args, **kwargs):
    """``early_config_prune`` hook: :func:`tile_rule` at the launch's DIN_P / DOUT_P."""
    return tile_rule(configs, kwargs["DIN_P"], kwargs["DOUT_P"])


_kernel = autotuned(_segmented_fwd_kernel, _configs,
                    ["K", "DIN_P", "DOUT_P", "HAS_EID", "PRECISION"], tile_prune)


# ----------------------------------------------------------------------------
# launcher (inputs validated, contiguous)
# ----------------------------------------------------------------------------
def segmented_fwd(h, x, weight, src, rowptr, num_targets: int, precision: str = "ieee",
                  eid=None):
    """``out[i] = Σ_{rowptr[i] ≤ s < rowptr[i+1]} W · (h[e] ⊗ x[src[e]])``, e = eid[s] or s.

    h (E, K), x (N, DIN), weight (DOUT, K, DIN) float32; src (E,), rowptr
    (num_targets + 1,), eid (E,) or None, int64. Returns (num_targets, DOUT).
    Every output row is written exactly once (no zero-init, no atomics).
    """
    dout, k, din = weight.shape
    if num_targets == 0 or dout == 0 or h.shape[0] == 0 or k == 0 or din == 0:
        return torch.zeros(num_targets, dout, device=x.device, dtype=torch.float32)
    out = torch.empty(num_targets, dout, device=x.device, dtype=torch.float32)
    meta = dict(DIN_P=padded_dim(din), DOUT_P=padded_dim(dout), HAS_EID=eid is not None,
                PRECISION=precision)
    eid_arg = eid if eid is not None else src  # unused when HAS_EID is False
    with device_ctx(x):
        launch(_kernel, lambda m: (triton.cdiv(num_targets, m["BLOCK_N"]),),
               (h, x, weight, src, eid_arg, rowptr, out, num_targets, k, din, dout), meta,
               fixed=INTERPRET_CONFIG, fixed_gpu=GPU_CONFIG, size=h.shape[0])
    return out


def segmented_fwd_torch(h, x, weight, src, rowptr, num_targets: int, block_n: int = 4096):
    """Pure-torch statement of the same algorithm (T for block_n targets at a time)."""
    dout, k, din = weight.shape
    w2 = weight.reshape(dout, k * din)
    out = x.new_zeros(num_targets, dout)
    tgt = torch.repeat_interleave(torch.arange(num_targets, device=x.device),
                                  rowptr[1:] - rowptr[:-1])
    for n0 in range(0, num_targets, block_n):
        n1 = min(n0 + block_n, num_targets)
        lo, hi = int(rowptr[n0]), int(rowptr[n1])
        z = (h[lo:hi, :, None] * x[src[lo:hi]][:, None, :]).reshape(hi - lo, k * din)
        t = z.new_zeros(n1 - n0, k * din).index_add_(0, tgt[lo:hi] - n0, z)
        out[n0:n1] = t @ w2.T
    return out
