"""Aggregate-first ("segmented") fused implicit message passing (Triton).

    out[i, o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c] · h[e,k] · x[src[e],c]

computed as ``out_i = W_flat · vec(T_i)`` with ``T_i = Σ_{e→i} h_e ⊗ x_{src e}``:
the weight is shared by all edges, so the Dout-sized GEMM runs once per target
instead of once per edge (see :mod:`fastik.triton_kernels.segmented_fwd` and
``bench/NOTES_segmented.md``). T is kept in registers per block of targets and
k chunk, never materialised.

Edges must be sorted by target, with the CSR row pointer ``rowptr`` (M + 1,) —
``fastik.ops.aggregate.build_csr`` or :func:`fastik.ops.fused.csr_rowptr`.

Registered as the custom ops ``torch.ops.fastik.implicit_message_passing_segmented``
and ``..._segmented_backward`` (fake implementations, autograd for h, x, weight,
double backward through the same two ops).

Deterministic: the forward writes each output row once; the backward has no
atomics (grad_x is computed as the forward of the transposed graph, grad_weight
from per-split partials summed in a fixed order), so repeated calls give the
same bits on a given device and configuration.

Validation (dtypes, shapes, devices, index ranges, rowptr being the CSR row
pointer of ``tgt`` and ``tgt`` sorted) is the one of :mod:`fastik.ops.fused`, run
before any launch (one host sync per call).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .fused import _check_indices, _check_inputs, _triton_importable, triton_available

__all__ = ["implicit_message_passing_segmented"]


def _kernels():
    if not _triton_importable():
        raise RuntimeError(
            "fastik's segmented message passing needs Triton, which is not installed. "
            "Install it (it ships with CUDA builds of torch), or use backend='reference'.")
    from fastik.triton_kernels import segmented_bwd, segmented_fwd

    return segmented_fwd, segmented_bwd


def _need_device(x: Tensor) -> None:
    if not triton_available(x.device):
        raise RuntimeError(
            f"the fused Triton kernels need a CUDA tensor (got {x.device}) or "
            "TRITON_INTERPRET=1 set before triton is imported (CPU interpreter, slow). "
            "Use backend='reference' on CPU.")


# ----------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------
def _forward_impl(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                  rowptr: Tensor, num_targets: int, precision: str = "ieee") -> Tensor:
    """Body of the forward op (plain function: tests trace the ops it runs)."""
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    _check_indices(x, src, tgt, num_targets, rowptr)
    fwd, _ = _kernels()
    _need_device(x)
    return fwd.segmented_fwd(h.contiguous(), x.contiguous(), weight.contiguous(),
                             src.contiguous(), rowptr.contiguous(), num_targets, precision)


@torch.library.custom_op("fastik::implicit_message_passing_segmented", mutates_args=())
def _seg_forward(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                 rowptr: Tensor, num_targets: int, precision: str = "ieee") -> Tensor:
    return _forward_impl(h, x, weight, src, tgt, rowptr, num_targets, precision)


@_seg_forward.register_fake
def _seg_forward_fake(h, x, weight, src, tgt, rowptr, num_targets, precision="ieee"):
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    return x.new_empty(num_targets, weight.shape[0])


def _backward_impl(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                   tgt: Tensor, rowptr: Tensor, precision: str, need_h: bool, need_x: bool,
                   need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Body of the backward op: (grad_h, grad_x, grad_weight); gradients not
    needed come back as zeros."""
    num_targets = grad_out.shape[0]
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    if grad_out.dtype != torch.float32 or tuple(grad_out.shape) != (num_targets, weight.shape[0]):
        raise ValueError("grad_out must be float32 of shape (num_targets, Dout)")
    _check_indices(x, src, tgt, num_targets, rowptr)
    _, bwd = _kernels()
    _need_device(x)
    return bwd.segmented_bwd(grad_out.contiguous(), h.contiguous(), x.contiguous(),
                             weight.contiguous(), src.contiguous(), tgt.contiguous(),
                             rowptr.contiguous(), precision, need_h, need_x, need_w)


@torch.library.custom_op("fastik::implicit_message_passing_segmented_backward", mutates_args=())
def _seg_backward(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                  tgt: Tensor, rowptr: Tensor, precision: str, need_h: bool, need_x: bool,
                  need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_out, h, x, weight, src, tgt, rowptr, precision,
                          need_h, need_x, need_w)


@_seg_backward.register_fake
def _seg_backward_fake(grad_out, h, x, weight, src, tgt, rowptr, precision, need_h, need_x,
                       need_w):
    return h.new_empty(h.shape), x.new_empty(x.shape), weight.new_empty(weight.shape)


# -- autograd of the forward ---------------------------------------------------
def _fwd_setup_context(ctx, inputs, output):
    h, x, weight, src, tgt, rowptr, _num_targets, precision = inputs
    ctx.save_for_backward(h, x, weight, src, tgt, rowptr)
    ctx.precision = precision


def _fwd_backward(ctx, grad_out):
    h, x, weight, src, tgt, rowptr = ctx.saved_tensors
    need_h, need_x, need_w = ctx.needs_input_grad[:3]
    if not (need_h or need_x or need_w):
        return (None,) * 8
    gh, gx, gw = torch.ops.fastik.implicit_message_passing_segmented_backward(
        grad_out, h, x, weight, src, tgt, rowptr, ctx.precision, need_h, need_x, need_w)
    return (gh if need_h else None, gx if need_x else None, gw if need_w else None,
            None, None, None, None, None)


_seg_forward.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# -- autograd of the backward (double backward) --------------------------------
# The backward's outputs are partial derivatives of the 4-linear form
#   Φ(g, h, x, W) = Σ_e Σ_{o,k,c} W[o,k,c] h[e,k] x[src e, c] g[tgt e, o],
# so the cotangents (a_h, a_x, a_W) of (grad_h, grad_x, grad_W) map back through
# the same two ops (F = forward, B = backward), exactly as in fastik.ops.fused:
#   ∂/∂g = F(a_h, x, W) + F(h, a_x, W) + F(h, x, a_W)
#   ∂/∂h = B_h(g; h, a_x, W) + B_h(g; h, x, a_W),  and likewise for x and W.
def _bwd_setup_context(ctx, inputs, output):
    grad_out, h, x, weight, src, tgt, rowptr, precision, need_h, need_x, need_w = inputs
    ctx.save_for_backward(grad_out, h, x, weight, src, tgt, rowptr)
    ctx.precision = precision
    ctx.computed = (need_h, need_x, need_w)


def _bwd_backward(ctx, a_h, a_x, a_w):
    g, h, x, w, src, tgt, rowptr = ctx.saved_tensors
    prec = ctx.precision
    fwd = torch.ops.fastik.implicit_message_passing_segmented
    bwd = torch.ops.fastik.implicit_message_passing_segmented_backward
    # cotangents of outputs that were not computed (returned as zeros) are ignored
    cot = [a if (done and a is not None) else None
           for a, done in zip((a_h, a_x, a_w), ctx.computed)]
    need_g = ctx.needs_input_grad[0]
    need = ctx.needs_input_grad[1:4]                     # h, x, W
    base = (h, x, w)
    grads = [None, None, None, None]                     # g, h, x, W

    def acc(i, t):
        grads[i] = t if grads[i] is None else grads[i] + t

    for slot, a in enumerate(cot):
        if a is None:
            continue
        args = list(base)
        args[slot] = a                                   # base with one factor replaced
        if need_g:
            acc(0, fwd(*args, src, tgt, rowptr, g.shape[0], prec))
        want = [need[i] and i != slot for i in range(3)]
        if any(want):
            outs = bwd(g, *args, src, tgt, rowptr, prec, *want)
            for i in range(3):
                if want[i]:
                    acc(i + 1, outs[i])
    like = (g, h, x, w)
    for i, needed in enumerate((need_g, *need)):
        if needed and grads[i] is None:
            grads[i] = torch.zeros_like(like[i])
    return (*grads, None, None, None, None, None, None, None)


_seg_backward.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# ----------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------
def implicit_message_passing_segmented(h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                                       tgt: Tensor, rowptr: Tensor, num_targets: int, *,
                                       precision: str = "ieee") -> Tensor:
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

    Errors (before any kernel launch): wrong dtypes / shapes / devices, indices out
    of range, ``rowptr`` not the CSR row pointer of ``tgt`` or ``tgt`` unsorted
    (ValueError); RuntimeError when Triton cannot run here.
    """
    num_targets = int(num_targets) if not isinstance(num_targets, torch.SymInt) else num_targets
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, rowptr)
    return torch.ops.fastik.implicit_message_passing_segmented(
        h, x, weight, src, tgt, rowptr, num_targets, precision)
