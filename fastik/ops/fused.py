"""Fused implicit message passing: the Triton backend of docs/design.md §5.

    out[i, o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c] · h[e,k] · x[src[e],c]

computed by Triton kernels that never allocate anything of size E·Dout·Din,
forward and backward (the backward recomputes from h, x, weight).

Registered as the custom ops ``torch.ops.fastik.implicit_message_passing`` and
``torch.ops.fastik.implicit_message_passing_backward`` (both with fake
implementations and autograd), so ``torch.compile(fullgraph=True)`` traces
through them without graph breaks, and gradients of any order are available
(the backward's own backward is expressed with the same two ops).

Triton is optional: importing this module never imports triton; the ops raise a
clear error when called without it. Use :func:`triton_available` to decide.

Precision: float32 inputs only. By default every tl.dot runs with
``input_precision="ieee"`` (true fp32 FMA; relative error ~1e-7, same as torch
fp32 with TF32 off). ``precision="tf32"`` uses TF32 tensor cores (10-bit
mantissa: expect relative errors around 1e-3 on outputs and gradients, ~8×
faster on the GPU); ``precision="tf32x3"`` is the 3-pass split (≈fp32 accuracy,
about 3× the TF32 cost). The exact one-hot reduction of the segmented variant
always runs in IEEE.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._contract import check_indices, check_inputs, register_trilinear_autograd, require_triton, triton_available
from .aggregate import csr_rowptr

__all__ = [
    "implicit_message_passing_fused",
    "triton_available",
    "csr_rowptr",
]

def _kernels():
    from fastik.triton_kernels import message_bwd, message_fwd

    return message_fwd, message_bwd


# ----------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------
def _forward_impl(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                  num_targets: int, precision: str = "ieee",
                  tgt_rowptr: Optional[Tensor] = None, indices_checked: bool = False) -> Tensor:
    """Body of the forward op (plain function: tests trace the ops it runs)."""
    check_inputs(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
    if not indices_checked:
        check_indices(x, src, tgt, num_targets, tgt_rowptr)
    require_triton(x)
    fwd, _ = _kernels()
    h, x, weight = h.contiguous(), x.contiguous(), weight.contiguous()
    src, tgt = src.contiguous(), tgt.contiguous()
    if tgt_rowptr is not None:
        return fwd.message_fwd_segmented(h, x, weight, src, tgt, tgt_rowptr.contiguous(),
                                         num_targets, precision)
    return fwd.message_fwd(h, x, weight, src, tgt, num_targets, precision)


@torch.library.custom_op("fastik::implicit_message_passing", mutates_args=())
def _imp_forward(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                 num_targets: int, precision: str = "ieee",
                 tgt_rowptr: Optional[Tensor] = None, indices_checked: bool = False) -> Tensor:
    return _forward_impl(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr, indices_checked)


@_imp_forward.register_fake
def _imp_forward_fake(h, x, weight, src, tgt, num_targets, precision="ieee", tgt_rowptr=None, indices_checked=False):
    check_inputs(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
    return x.new_empty(num_targets, weight.shape[0])


def _backward_impl(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                   tgt: Tensor, precision: str, indices_checked: bool, need_h: bool, need_x: bool,
                   need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Body of the backward op: (grad_h, grad_x, grad_weight); gradients not
    needed come back as zeros."""
    num_targets = grad_out.shape[0]
    check_inputs(h, x, weight, src, tgt, num_targets, precision)
    if grad_out.dtype != torch.float32 or tuple(grad_out.shape) != (num_targets, weight.shape[0]):
        raise ValueError("grad_out must be float32 of shape (num_targets, Dout)")
    if not indices_checked:
        check_indices(x, src, tgt, num_targets)
    require_triton(x)
    _, bwd = _kernels()
    return bwd.message_bwd(grad_out.contiguous(), h.contiguous(), x.contiguous(),
                           weight.contiguous(), src.contiguous(), tgt.contiguous(),
                           precision, need_h, need_x, need_w)


@torch.library.custom_op("fastik::implicit_message_passing_backward", mutates_args=())
def _imp_backward(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                  tgt: Tensor, precision: str, indices_checked: bool, need_h: bool, need_x: bool,
                  need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_out, h, x, weight, src, tgt, precision, indices_checked, need_h, need_x, need_w)


@_imp_backward.register_fake
def _imp_backward_fake(grad_out, h, x, weight, src, tgt, precision, indices_checked, need_h, need_x, need_w):
    return h.new_empty(h.shape), x.new_empty(x.shape), weight.new_empty(weight.shape)


# autograd of both ops (double backward through the same two ops): the shared contract
register_trilinear_autograd(
    _imp_forward, _imp_backward,
    backward_graph=lambda g: (g[0], g[1], g[3], g[5]),                  # (src, tgt, precision, indices_checked)
    forward_graph=lambda g, n_t: (g[0], g[1], n_t, g[2], None, g[3]))    # (src, tgt, num_targets, precision, rowptr,
                                                                         #  indices_checked)


# ----------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------
def implicit_message_passing_fused(h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                                   tgt: Tensor, num_targets: int, *,
                                   precision: str = "ieee",
                                   tgt_rowptr: Optional[Tensor] = None,
                                   indices_checked: bool = False) -> Tensor:
    """Fused ``out[i,o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c]·h[e,k]·x[src[e],c]``.

    Same contract as :func:`fastik.ops.reference.implicit_message_passing_reference`
    (h (E, K), x (N, Din), weight (Dout, K, Din), src/tgt (E,) int64 → (num_targets,
    Dout)), float32 only, differentiable w.r.t. h, x and weight (any order), never
    allocating anything of size E·Dout·Din.

    Args:
        precision: tl.dot precision: "ieee" (fp32, default), "tf32" (TF32 tensor cores,
            ≈1e-3 relative error) or "tf32x3" (three TF32 passes, ≈fp32 accuracy).
        tgt_rowptr: if the edges are sorted by target, their CSR row pointer
            (num_targets + 1,) (see :func:`csr_rowptr`): the forward then writes
            every output row once without atomics (deterministic). The backward
            still scatters grad_x with atomics.
        indices_checked: the caller has validated these very index tensors (ranges, and
            ``tgt_rowptr`` against ``tgt``) and they are unchanged since: skip the check and
            its host sync, forward and backward. For callers that validate once per graph
            (:class:`fastik.ImplicitPointConv` does, once per call, then runs many chunks).

    Errors (raised before any kernel launch): wrong dtypes/shapes/devices,
    indices out of range (0 ≤ src < N, 0 ≤ tgt < num_targets), unsorted edges
    with ``tgt_rowptr`` (unless ``indices_checked``); RuntimeError when Triton cannot run here.
    """
    num_targets = int(num_targets) if not isinstance(num_targets, torch.SymInt) else num_targets
    check_inputs(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
    return torch.ops.fastik.implicit_message_passing(
        h, x, weight, src, tgt, num_targets, precision, tgt_rowptr, bool(indices_checked))
