"""Fused implicit message passing: the Triton backend of DESIGN.md §5.

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
fp32 with TF32 off). ``allow_tf32=True`` uses TF32 tensor cores (10-bit
mantissa: expect relative errors around 1e-3 on outputs and gradients, ~8×
faster on the GPU); ``precision="tf32x3"`` is the 3-pass split (≈fp32 accuracy,
about 3× the TF32 cost). The exact one-hot reduction of the segmented variant
always runs in IEEE.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "implicit_message_passing_fused",
    "triton_available",
    "csr_rowptr",
]

_PRECISIONS = ("ieee", "tf32", "tf32x3")


# ----------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------
def _triton_importable() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # pragma: no cover
        return False


def _interpret_mode() -> bool:
    mod = sys.modules.get("fastik.triton_kernels._config")
    if mod is not None:  # kernels already built: their mode is fixed
        return bool(mod.INTERPRET)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: Optional[torch.device | str | Tensor] = None) -> bool:
    """True when the fused Triton path can run for ``device``.

    Needs triton importable and either a CUDA device or ``TRITON_INTERPRET=1``
    (the CPU interpreter, slow: tests only). ``device`` may be a tensor, a
    device or None (None: CUDA available or interpreter on).
    """
    if not _triton_importable():
        return False
    if _interpret_mode():
        return True
    if isinstance(device, Tensor):
        device = device.device
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def _kernels():
    if not _triton_importable():
        raise RuntimeError(
            "fastik's fused message passing needs Triton, which is not installed. "
            "Install it (it ships with CUDA builds of torch), or use backend='reference'.")
    from fastik.triton_kernels import message_bwd, message_fwd

    return message_fwd, message_bwd


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------
def _check_inputs(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                  num_targets: int, precision: str = "ieee",
                  tgt_rowptr: Optional[Tensor] = None) -> None:
    """Shape / dtype / device checks (valid on fake tensors too)."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    for name, t in (("h", h), ("x", x), ("weight", weight)):
        if t.dtype != torch.float32:
            hint = (" float64 is not supported by the Triton kernels (they are written "
                    "for fp32 tensor-core/FMA dots); use backend='reference' for float64, "
                    "or cast to float32.") if t.dtype == torch.float64 else \
                   " Cast to float32 (half/bfloat16 kernels are not implemented yet)."
            raise TypeError(f"implicit_message_passing_fused: {name} must be float32, "
                            f"got {t.dtype}.{hint}")
    if h.dim() != 2:
        raise ValueError(f"h must be (E, K), got shape {tuple(h.shape)}")
    if x.dim() != 2:
        raise ValueError(f"x must be (N, Din), got shape {tuple(x.shape)}")
    if weight.dim() != 3:
        raise ValueError(f"weight must be (Dout, K, Din), got shape {tuple(weight.shape)}")
    dout, k, din = weight.shape
    if h.shape[1] != k:
        raise ValueError(f"h has {h.shape[1]} hidden columns but weight expects K={k} "
                         f"(weight shape {tuple(weight.shape)} = (Dout, K, Din))")
    if x.shape[1] != din:
        raise ValueError(f"x has {x.shape[1]} features but weight expects Din={din} "
                         f"(weight shape {tuple(weight.shape)} = (Dout, K, Din))")
    e = h.shape[0]
    for name, t in (("src", src), ("tgt", tgt)):
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be int64, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != e:
            raise ValueError(f"{name} must be 1-D of length E={e} (rows of h), "
                             f"got shape {tuple(t.shape)}")
    if not isinstance(num_targets, int) and not isinstance(num_targets, torch.SymInt):
        raise TypeError(f"num_targets must be an int, got {type(num_targets).__name__}")
    if num_targets < 0:
        raise ValueError(f"num_targets must be ≥ 0, got {num_targets}")
    dev = x.device
    others = [("h", h), ("weight", weight), ("src", src), ("tgt", tgt)]
    if tgt_rowptr is not None:
        others.append(("tgt_rowptr", tgt_rowptr))
    for name, t in others:
        if t.device != dev:
            raise ValueError(f"all inputs must be on one device: x is on {dev}, "
                             f"{name} is on {t.device}")
    if tgt_rowptr is not None:
        if tgt_rowptr.dtype != torch.int64 or tgt_rowptr.dim() != 1 \
                or tgt_rowptr.shape[0] != num_targets + 1:
            raise ValueError(f"tgt_rowptr must be int64 of shape (num_targets + 1,) = "
                             f"({num_targets + 1},), got {tgt_rowptr.dtype} "
                             f"{tuple(tgt_rowptr.shape)}")


def _check_indices(x: Tensor, src: Tensor, tgt: Tensor, num_targets: int,
                   tgt_rowptr: Optional[Tensor] = None) -> None:
    """Index range checks on real tensors, before any kernel launch (one sync)."""
    e = src.shape[0]
    if e == 0:
        if tgt_rowptr is not None and num_targets >= 0 and bool((tgt_rowptr != 0).any()):
            raise ValueError("tgt_rowptr must be all zeros when there are no edges")
        return
    n = x.shape[0]
    smin, smax = torch.aminmax(src)
    tmin, tmax = torch.aminmax(tgt)
    smin, smax, tmin, tmax = torch.stack([smin, smax, tmin, tmax]).tolist()
    if smin < 0 or smax >= n:
        raise IndexError(f"src indices must lie in [0, N={n}), got range [{smin}, {smax}]")
    if tmin < 0 or tmax >= num_targets:
        raise IndexError(f"tgt indices must lie in [0, num_targets={num_targets}), "
                         f"got range [{tmin}, {tmax}]")
    if tgt_rowptr is not None:
        counts = torch.bincount(tgt, minlength=num_targets)
        ok = bool((tgt_rowptr[0] == 0).item()) and bool(
            torch.equal(tgt_rowptr[1:] - tgt_rowptr[:-1], counts)) and bool(
            (tgt[1:] >= tgt[:-1]).all().item())
        if not ok:
            raise ValueError("tgt_rowptr given, but edges are not sorted by target or "
                             "tgt_rowptr is not their CSR row pointer (see csr_rowptr())")


def csr_rowptr(tgt: Tensor, num_targets: int) -> Tensor:
    """CSR row pointer (num_targets + 1,) int64 of target-sorted edges ``tgt``."""
    rowptr = torch.zeros(num_targets + 1, dtype=torch.int64, device=tgt.device)
    if tgt.numel():
        torch.cumsum(torch.bincount(tgt, minlength=num_targets), 0, out=rowptr[1:])
    return rowptr


# ----------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------
def _forward_impl(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                  num_targets: int, precision: str = "ieee",
                  tgt_rowptr: Optional[Tensor] = None) -> Tensor:
    """Body of the forward op (plain function: tests trace the ops it runs)."""
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
    _check_indices(x, src, tgt, num_targets, tgt_rowptr)
    if not triton_available(x.device):
        raise RuntimeError(
            f"the fused Triton kernels need a CUDA tensor (got {x.device}) or "
            "TRITON_INTERPRET=1 set before triton is imported (CPU interpreter, slow). "
            "Use backend='reference' on CPU.")
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
                 tgt_rowptr: Optional[Tensor] = None) -> Tensor:
    return _forward_impl(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)


@_imp_forward.register_fake
def _imp_forward_fake(h, x, weight, src, tgt, num_targets, precision="ieee", tgt_rowptr=None):
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
    return x.new_empty(num_targets, weight.shape[0])


def _backward_impl(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                   tgt: Tensor, precision: str, need_h: bool, need_x: bool,
                   need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Body of the backward op: (grad_h, grad_x, grad_weight); gradients not
    needed come back as zeros."""
    num_targets = grad_out.shape[0]
    _check_inputs(h, x, weight, src, tgt, num_targets, precision)
    if grad_out.dtype != torch.float32 or tuple(grad_out.shape) != (num_targets, weight.shape[0]):
        raise ValueError("grad_out must be float32 of shape (num_targets, Dout)")
    _check_indices(x, src, tgt, num_targets)
    if not triton_available(x.device):
        raise RuntimeError(f"the fused Triton kernels need a CUDA tensor (got {x.device}) "
                           "or TRITON_INTERPRET=1.")
    _, bwd = _kernels()
    return bwd.message_bwd(grad_out.contiguous(), h.contiguous(), x.contiguous(),
                           weight.contiguous(), src.contiguous(), tgt.contiguous(),
                           precision, need_h, need_x, need_w)


@torch.library.custom_op("fastik::implicit_message_passing_backward", mutates_args=())
def _imp_backward(grad_out: Tensor, h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                  tgt: Tensor, precision: str, need_h: bool, need_x: bool,
                  need_w: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_out, h, x, weight, src, tgt, precision, need_h, need_x, need_w)


@_imp_backward.register_fake
def _imp_backward_fake(grad_out, h, x, weight, src, tgt, precision, need_h, need_x, need_w):
    return h.new_empty(h.shape), x.new_empty(x.shape), weight.new_empty(weight.shape)


# -- autograd of the forward ---------------------------------------------------
def _fwd_setup_context(ctx, inputs, output):
    h, x, weight, src, tgt, num_targets, precision, _rowptr = inputs
    ctx.save_for_backward(h, x, weight, src, tgt)
    ctx.precision = precision


def _fwd_backward(ctx, grad_out):
    h, x, weight, src, tgt = ctx.saved_tensors
    need_h, need_x, need_w = ctx.needs_input_grad[:3]
    if not (need_h or need_x or need_w):
        return None, None, None, None, None, None, None, None
    gh, gx, gw = torch.ops.fastik.implicit_message_passing_backward(
        grad_out, h, x, weight, src, tgt, ctx.precision, need_h, need_x, need_w)
    return (gh if need_h else None, gx if need_x else None, gw if need_w else None,
            None, None, None, None, None)


_imp_forward.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


# -- autograd of the backward (double backward, e.g. force training) ----------
# The backward outputs are partial derivatives of the 4-linear form
#   T(g, h, x, W) = Σ_e Σ_{o,k,c} W[o,k,c] h[e,k] x[src e, c] g[tgt e, o],
# so their cotangents (a_h, a_x, a_W) map back through the same two ops:
#   ∂/∂g = F(a_h, x, W) + F(h, a_x, W) + F(h, x, a_W)          F = forward op
#   ∂/∂h = B_h(g; h, a_x, W) + B_h(g; h, x, a_W)                 B = backward op
#   ∂/∂x = B_x(g; a_h, x, W) + B_x(g; h, x, a_W)
#   ∂/∂W = B_W(g; a_h, x, W) + B_W(g; h, a_x, W)
def _bwd_setup_context(ctx, inputs, output):
    grad_out, h, x, weight, src, tgt, precision, need_h, need_x, need_w = inputs
    ctx.save_for_backward(grad_out, h, x, weight, src, tgt)
    ctx.precision = precision
    ctx.computed = (need_h, need_x, need_w)


def _bwd_backward(ctx, a_h, a_x, a_w):
    g, h, x, w, src, tgt = ctx.saved_tensors
    prec = ctx.precision
    n_t = g.shape[0]
    ch, cx, cw = ctx.computed
    # a cotangent of an output that was not computed (returned as zeros) is ignored
    a_h = a_h if (ch and a_h is not None) else None
    a_x = a_x if (cx and a_x is not None) else None
    a_w = a_w if (cw and a_w is not None) else None
    need_g, need_h, need_x, need_w = ctx.needs_input_grad[:4]
    bwd = torch.ops.fastik.implicit_message_passing_backward
    fwd = torch.ops.fastik.implicit_message_passing

    d_g = d_h = d_x = d_w = None

    def acc(cur, new):
        return new if cur is None else cur + new

    if need_g:
        if a_h is not None:
            d_g = acc(d_g, fwd(a_h, x, w, src, tgt, n_t, prec, None))
        if a_x is not None:
            d_g = acc(d_g, fwd(h, a_x, w, src, tgt, n_t, prec, None))
        if a_w is not None:
            d_g = acc(d_g, fwd(h, x, a_w, src, tgt, n_t, prec, None))
    if a_h is not None and (need_x or need_w):
        _, bx, bw = bwd(g, a_h, x, w, src, tgt, prec, False, need_x, need_w)
        if need_x:
            d_x = acc(d_x, bx)
        if need_w:
            d_w = acc(d_w, bw)
    if a_x is not None and (need_h or need_w):
        bh, _, bw = bwd(g, h, a_x, w, src, tgt, prec, need_h, False, need_w)
        if need_h:
            d_h = acc(d_h, bh)
        if need_w:
            d_w = acc(d_w, bw)
    if a_w is not None and (need_h or need_x):
        bh, bx, _ = bwd(g, h, x, a_w, src, tgt, prec, need_h, need_x, False)
        if need_h:
            d_h = acc(d_h, bh)
        if need_x:
            d_x = acc(d_x, bx)
    # zeros where a gradient is asked for but no term contributes
    if need_g and d_g is None:
        d_g = torch.zeros_like(g)
    if need_h and d_h is None:
        d_h = torch.zeros_like(h)
    if need_x and d_x is None:
        d_x = torch.zeros_like(x)
    if need_w and d_w is None:
        d_w = torch.zeros_like(w)
    return d_g, d_h, d_x, d_w, None, None, None, None, None, None


_imp_backward.register_autograd(_bwd_backward, setup_context=_bwd_setup_context)


# ----------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------
def implicit_message_passing_fused(h: Tensor, x: Tensor, weight: Tensor, src: Tensor,
                                   tgt: Tensor, num_targets: int, *,
                                   allow_tf32: bool = False,
                                   precision: Optional[str] = None,
                                   tgt_rowptr: Optional[Tensor] = None) -> Tensor:
    """Fused ``out[i,o] = Σ_{e: tgt[e]=i} Σ_{k,c} weight[o,k,c]·h[e,k]·x[src[e],c]``.

    Same contract as :func:`fastik.ops.reference.implicit_message_passing_reference`
    (h (E, K), x (N, Din), weight (Dout, K, Din), src/tgt (E,) int64 → (num_targets,
    Dout)), float32 only, differentiable w.r.t. h, x and weight (any order), never
    allocating anything of size E·Dout·Din.

    Args:
        allow_tf32: run the dots on TF32 tensor cores (≈1e-3 relative error,
            several times faster on Ampere+). Default False: IEEE fp32.
        precision: explicit tl.dot precision, "ieee" | "tf32" | "tf32x3";
            overrides ``allow_tf32``.
        tgt_rowptr: if the edges are sorted by target, their CSR row pointer
            (num_targets + 1,) (see :func:`csr_rowptr`): the forward then writes
            every output row once without atomics (deterministic). The backward
            still scatters grad_x with atomics.

    Errors (raised before any kernel launch): wrong dtypes/shapes/devices,
    indices out of range (0 ≤ src < N, 0 ≤ tgt < num_targets), unsorted edges
    with ``tgt_rowptr``; RuntimeError when Triton cannot run here.
    """
    if precision is None:
        precision = "tf32" if allow_tf32 else "ieee"
    num_targets = int(num_targets) if not isinstance(num_targets, torch.SymInt) else num_targets
    _check_inputs(h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
    return torch.ops.fastik.implicit_message_passing(
        h, x, weight, src, tgt, num_targets, precision, tgt_rowptr)
