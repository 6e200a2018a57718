"""The contract every fused message-passing backend declares against.

Each backend (edge-wise :mod:`fastik.ops.fused`, aggregate-first
:mod:`fastik.ops.fused_segmented`) registers a forward custom op
``F(h, x, W, *graph) -> out`` and a backward custom op
``B(g, h, x, W, *graph', need_h, need_x, need_w) -> (grad_h, grad_x, grad_W)`` of the
4-linear form

    Φ(g, h, x, W) = Σ_e Σ_{o,k,c} W[o,k,c] · h[e,k] · x[src e, c] · g[tgt e, o],

and gets from here: availability of Triton, the input checks (shapes, dtypes, devices —
valid on fake tensors — and index ranges before any launch, which the ops skip when their
``indices_checked`` argument says the caller validated the very same index tensors), and
autograd of both ops
(:func:`register_trilinear_autograd`: first and second order, the latter through the
same two ops, since every derivative of a multilinear form is the form with one factor
replaced).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "triton_importable", "interpret_mode", "triton_available", "require_triton",
           "check_inputs", "check_indices", "check_rowptr", "register_trilinear_autograd"]

PRECISIONS = ("ieee", "tf32", "tf32x3")


def triton_importable() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # pragma: no cover
        return False


def interpret_mode() -> bool:
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
    if not triton_importable():
        return False
    if interpret_mode():
        return True
    if isinstance(device, Tensor):
        device = device.device
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def require_triton(x: Tensor) -> None:
    """RuntimeError unless the fused Triton kernels can run on ``x``'s device."""
    if not triton_importable():
        raise RuntimeError("fastik's fused message passing needs Triton, which is not installed. "
                           "Install it (it ships with CUDA builds of torch), or use backend='reference'.")
    if not triton_available(x.device):
        raise RuntimeError(
            f"the fused Triton kernels need a CUDA tensor (got {x.device}) or "
            "TRITON_INTERPRET=1 set before triton is imported (CPU interpreter, slow). "
            "Use backend='reference' on CPU.")


def check_inputs(h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                 num_targets: int, precision: str = "ieee",
                 tgt_rowptr: Optional[Tensor] = None) -> None:
    """Shape / dtype / device checks (valid on fake tensors too)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, t in (("h", h), ("x", x), ("weight", weight)):
        if t.dtype != torch.float32:
            hint = (" float64 is not supported by the Triton kernels (they are written "
                    "for fp32 tensor-core/FMA dots); use backend='reference' for float64, "
                    "or cast to float32.") if t.dtype == torch.float64 else \
                   " Cast to float32 (half/bfloat16 kernels are not implemented yet)."
            raise TypeError(f"fused message passing: {name} must be float32, "
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


def check_indices(x: Tensor, src: Tensor, tgt: Tensor, num_targets: int,
                  tgt_rowptr: Optional[Tensor] = None, also: Optional[tuple[Tensor, Exception]] = None) -> None:
    """Index range checks on real tensors, before any kernel launch, and with ``tgt_rowptr`` that it is the
    row pointer of the edges sorted by target (``check_rowptr``); ``also``: a further check of the op's own, a 0-dim
    bool tensor and the exception to raise where it is false. One host sync in all."""
    e = src.shape[0]
    if e == 0:
        checks = []  # (0-dim bool, exception to raise where it is false): all read in one host sync
        if tgt_rowptr is not None and num_targets >= 0:
            nonzero = ValueError("tgt_rowptr must be all zeros when there are no edges")
            checks.append(((tgt_rowptr == 0).all(), nonzero))
        if also is not None:
            checks.append(also)
        if checks:
            for ok, (_, exc) in zip(torch.stack([c for c, _ in checks]).tolist(), checks):
                if not ok:
                    raise exc
        return
    n = x.shape[0]
    values = [*torch.aminmax(src), *torch.aminmax(tgt)]
    if tgt_rowptr is not None:
        values.append(_is_rowptr(tgt, tgt_rowptr, num_targets).long())
    if also is not None:
        values.append(also[0].long())
    smin, smax, tmin, tmax, *rowptr_ok = torch.stack(values).tolist()
    also_ok = also is None or bool(rowptr_ok.pop())
    if smin < 0 or smax >= n:
        raise IndexError(f"src indices must lie in [0, N={n}), got range [{smin}, {smax}]")
    if tmin < 0 or tmax >= num_targets:
        raise IndexError(f"tgt indices must lie in [0, num_targets={num_targets}), "
                         f"got range [{tmin}, {tmax}]")
    if rowptr_ok and not rowptr_ok[0]:
        raise ValueError(_NOT_ROWPTR)
    if not also_ok:
        raise also[1]


_NOT_ROWPTR = ("tgt_rowptr given, but edges are not sorted by target or tgt_rowptr is not their CSR row pointer "
               "(see fastik.ops.aggregate.csr_rowptr)")


def _is_rowptr(tgt: Tensor, tgt_rowptr: Tensor, num_targets: int) -> Tensor:
    """0-dim bool, no host sync: ``tgt`` (E,) is sorted and ``tgt_rowptr`` (num_targets + 1,) is its CSR row
    pointer — for sorted targets in range, the first position of each target t = 0, …, num_targets in ``tgt``."""
    if tgt_rowptr.shape != (num_targets + 1,):
        return torch.zeros((), dtype=torch.bool, device=tgt.device)
    first = torch.searchsorted(tgt.contiguous(), torch.arange(num_targets + 1, device=tgt.device, dtype=tgt.dtype))
    return (tgt[1:] >= tgt[:-1]).all() & (tgt_rowptr == first).all()


def check_rowptr(tgt: Tensor, tgt_rowptr: Tensor, num_targets: int) -> None:
    """ValueError unless the edges are sorted by target and ``tgt_rowptr`` is their CSR row pointer
    (``tgt`` in range already; one host sync)."""
    if not bool(_is_rowptr(tgt, tgt_rowptr, num_targets)):
        raise ValueError(_NOT_ROWPTR)


def _save(ctx, *args) -> None:
    """Save tensors for backward and keep the other arguments, in order."""
    ctx.save_for_backward(*(a for a in args if isinstance(a, Tensor)))
    ctx.layout = [None if isinstance(a, Tensor) else (a,) for a in args]


def _load(ctx) -> list:
    tensors = iter(ctx.saved_tensors)
    return [next(tensors) if slot is None else slot[0] for slot in ctx.layout]


def register_trilinear_autograd(fwd_op, bwd_op, *, backward_graph: Callable[[tuple], tuple],
                                forward_graph: Callable[[tuple, int], tuple]) -> None:
    """Autograd (any order) for a backend's forward / backward custom ops.

    ``backward_graph(graph)`` maps the forward's trailing arguments (after h, x, W) to the
    backward's (before the three need flags); ``forward_graph(graph', num_targets)`` maps
    them back, for the forward calls of the double backward.  The cotangents (a_h, a_x, a_W)
    of (grad_h, grad_x, grad_W) map back through the same ops:
    ∂/∂g = F(a_h, x, W) + F(h, a_x, W) + F(h, x, a_W), and ∂/∂h = B_h(g; h, a_x, W) +
    B_h(g; h, x, a_W), likewise for x and W.
    """
    def fwd_setup(ctx, inputs, output) -> None:
        h, x, w, *graph = inputs
        _save(ctx, h, x, w, *backward_graph(tuple(graph)))
        ctx.n_inputs = len(inputs)

    def fwd_backward(ctx, grad_out):
        h, x, w, *graph = _load(ctx)
        need = ctx.needs_input_grad[:3]
        rest = (None,) * (ctx.n_inputs - 3)
        if not any(need):
            return (None, None, None, *rest)
        grads = bwd_op(grad_out, h, x, w, *graph, *need)
        return (*(g if n else None for g, n in zip(grads, need)), *rest)

    def bwd_setup(ctx, inputs, output) -> None:
        g, h, x, w, *rest = inputs
        _save(ctx, g, h, x, w, *rest[:-3])
        ctx.computed, ctx.n_inputs = tuple(rest[-3:]), len(inputs)

    def bwd_backward(ctx, a_h, a_x, a_w):
        g, h, x, w, *graph = _load(ctx)
        # cotangents of outputs that were not computed (returned as zeros) are ignored
        cot = [a if (done and a is not None) else None for a, done in zip((a_h, a_x, a_w), ctx.computed)]
        need_g, need = ctx.needs_input_grad[0], ctx.needs_input_grad[1:4]  # g; h, x, W
        base = (h, x, w)
        grads: list[Optional[Tensor]] = [None, None, None, None]          # g, h, x, W

        def acc(i: int, t: Tensor) -> None:
            grads[i] = t if grads[i] is None else grads[i] + t

        for slot, a in enumerate(cot):
            if a is None:
                continue
            args = list(base)
            args[slot] = a                                                  # one factor replaced
            if need_g:
                acc(0, fwd_op(*args, *forward_graph(tuple(graph), g.shape[0])))
            want = [need[i] and i != slot for i in range(3)]
            if any(want):
                outs = bwd_op(g, *args, *graph, *want)
                for i in range(3):
                    if want[i]:
                        acc(i + 1, outs[i])
        for i, (needed, like) in enumerate(zip((need_g, *need), (g, h, x, w))):
            if needed and grads[i] is None:
                grads[i] = torch.zeros_like(like)
        return (*grads, *(None,) * (ctx.n_inputs - 4))

    fwd_op.register_autograd(fwd_backward, setup_context=fwd_setup)
    bwd_op.register_autograd(bwd_backward, setup_context=bwd_setup)
