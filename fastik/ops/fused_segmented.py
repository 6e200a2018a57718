"""Aggregate-first ("segmented") fused implicit message passing (Triton).

    out[i, o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c] · h[e,k] · x[src[e],c]

computed as ``out_i = W_flat · vec(T_i)`` with ``T_i = Σ_{e→i} h_e ⊗ x_{src e}``:
the weight is shared by all edges, so the Dout-sized GEMM runs once per target
instead of once per edge (see :mod:`fastik.triton_kernels.segmented_fwd` and
``bench/NOTES.md``, aggregate-first section). T is kept in registers per block of targets and
k chunk, never materialised.

Edges must be sorted by target, with the CSR row pointer ``rowptr`` (M + 1,) —
``fastik.ops.aggregate.build_csr`` or :func:`fastik.ops.aggregate.csr_rowptr`.

Registered as the custom ops ``torch.ops.fastik.implicit_message_passing_segmented``
and ``..._segmented_backward`` (fake implementations, autograd for h, x, weight,
double backward through the same two ops).

Deterministic: the forward writes each output row once; the backward has no
atomics (grad_x is computed as the forward of the transposed graph, grad_weight
from per-split partials summed in a fixed order), so repeated calls give the
same bits on a given device and configuration.

Validation (dtypes, shapes, devices, index ranges, rowptr being the CSR row
pointer of ``tgt`` and ``tgt`` sorted) and autograd are the shared contract of
:mod:`fastik.ops._contract`, run before any launch (one host sync per call).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ._contract import check_indices, check_inputs, register_trilinear_autograd, require_triton

__all__ = ["implicit_message_passing_segmented"]


def _kernels():
    from fastik.triton_kernels import segmented_bwd, segmented_fwd

    return segmented_fwd, segmented_bwd


# ----------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------
def _forward_impl(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                  rowptr: Tensor, num_targets: int, precision: str = "ieee",
                  indices_checked: bool = False) -> Tensor:
    """Body of the forward op (plain function: tests trace the ops it runs)."""
    check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    if not indices_checked:
        check_indices(x, src, tgt, num_targets, rowptr)
    require_triton(x)
    fwd, _ = _kernels()
    return fwd.segmented_fwd(h.contiguous(), x.contiguous(), weight.contiguous(),
                             src.contiguous(), rowptr.contiguous(), num_targets, precision)


@torch.library.custom_op("fastik::implicit_message_passing_segmented", mutates_args=())
def _seg_forward(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                 rowptr: Tensor, num_targets: int, precision: str = "ieee",
                 indices_checked: bool = False) -> Tensor:
    return _forward_impl(h, x, weight, src, tgt, rowptr, num_targets, precision, indices_checked)


@_seg_forward.register_fake
def _seg_forward_fake(h, x, weight, src, tgt, rowptr, num_targets, precision="ieee", indices_checked=False):
    check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    return x.new_empty(num_targets, weight.shape[0])


def _backward_impl(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                   tgt: Tensor, rowptr: Tensor, precision: str, indices_checked: bool, need_h: bool,
                   need_x: bool, need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Body of the backward op: (grad_h, grad_x, grad_weight); gradients not
    needed come back as zeros."""
    num_targets = grad_out.shape[0]
    check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    if grad_out.dtype != torch.float32 or tuple(grad_out.shape) != (num_targets, weight.shape[0]):
        raise ValueError("grad_out must be float32 of shape (num_targets, Dout)")
    if not indices_checked:
        check_indices(x, src, tgt, num_targets, rowptr)
    require_triton(x)
    _, bwd = _kernels()
    return bwd.segmented_bwd(grad_out.contiguous(), h.contiguous(), x.contiguous(),
                             weight.contiguous(), src.contiguous(), tgt.contiguous(),
                             rowptr.contiguous(), precision, need_h, need_x, need_w)


@torch.library.custom_op("fastik::implicit_message_passing_segmented_backward", mutates_args=())
def _seg_backward(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                  tgt: Tensor, rowptr: Tensor, precision: str, indices_checked: bool, need_h: bool,
                  need_x: bool, need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_out, h, x, weight, src, tgt, rowptr, precision, indices_checked,
                          need_h, need_x, need_w)


@_seg_backward.register_fake
def _seg_backward_fake(grad_out, h, x, weight, src, tgt, rowptr, precision, indices_checked, need_h, need_x,
                       need_w):
    return h.new_empty(h.shape), x.new_empty(x.shape), weight.new_empty(weight.shape)


# autograd of both ops (double backward through the same two ops): the shared contract
register_trilinear_autograd(
    _seg_forward, _seg_backward,
    backward_graph=lambda g: (g[0], g[1], g[2], g[4], g[5]),            # (src, tgt, rowptr, precision, indices_checked)
    forward_graph=lambda g, n_t: (g[0], g[1], g[2], n_t, g[3], g[4]))    # (src, tgt, rowptr, num_targets, precision,
                                                                         #  indices_checked)


# ----------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------
def implicit_message_passing_segmented(h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                                       tgt: Tensor, rowptr: Tensor, num_targets: int, *,
                                       precision: str = "ieee", indices_checked: bool = False) -> Tensor:
    """Aggregate-first ``out[i,o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c]·h[e,k]·x[src[e],c]``.

    Same contract as :func:`fastik.ops.fused.implicit_message_passing_fused`
    (h (E, K), x (N, Din), weight (Dout, K, Din) float32, src / tgt (E,) int64 →
    (num_targets, Dout)), differentiable w.r.t. h, x and weight (any order), plus:
    the edges must be sorted by target and ``rowptr`` (num_targets + 1,) int64 must
    be their CSR row pointer (rowptr[0] = 0, rowptr[-1] = E, rowptr[i+1] - rowptr[i]
    = number of edges with tgt = i).

    Args:
        precision: "ieee" (default, true fp32) | "tf32" | "tf32x3" — applies to
            the per-target GEMMs; the edge-level products are always fp32 FMAs.
        indices_checked: the caller has validated these very index tensors and ``rowptr``
            and they are unchanged since: skip the check and its host syncs (as in
            :func:`fastik.ops.fused.implicit_message_passing_fused`).

    Errors (before any kernel launch): wrong dtypes / shapes / devices, indices out
    of range, ``rowptr`` not the CSR row pointer of ``tgt`` or ``tgt`` unsorted
    (ValueError); RuntimeError when Triton cannot run here.
    """
    num_targets = int(num_targets) if not isinstance(num_targets, torch.SymInt) else num_targets
    check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    return torch.ops.fastik.implicit_message_passing_segmented(
        h, x, weight, src, tgt, rowptr, num_targets, precision, bool(indices_checked))
