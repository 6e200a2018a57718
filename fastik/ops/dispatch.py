"""Backend choice for the implicit message passing operation."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
from torch import Tensor

from ._contract import PRECISIONS
from .aggregate import CSR
from .pooled import plan_pooling, pooled_conv
from .reference import aggregated_messages, auto_chunk_size, chunked_conv, validated_csr_targets
from .structured import StructuredHead

__all__ = ["BACKENDS", "LAYER_PRECISIONS", "check_backend", "check_precision", "resolve_backend",
           "resolve_precision", "implicit_conv"]

BACKENDS = ("auto", "reference", "triton", "fused")
#: a layer's ``precision``: the ops' (``_contract.PRECISIONS``) or "auto" (``resolve_precision``)
LAYER_PRECISIONS = ("auto", *PRECISIONS)


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_precision(precision: str) -> None:
    if precision not in LAYER_PRECISIONS:
        *first, last = LAYER_PRECISIONS
        raise ValueError(f"precision must be {', '.join(map(repr, first))} or {last!r}, got {precision!r}")


def _triton_usable(x: Tensor) -> bool:
    try:
        from .fused import triton_available
    except ImportError:
        return False
    return triton_available(x)


def resolve_backend(backend: str, x: Tensor) -> str:
    """The concrete backend for inputs like ``x``: "auto" picks triton on CUDA when available.

    "fused" (the whole G-MLP inside the Triton op, :mod:`fastik.ops.fused_gmlp`) needs what "triton" needs.
    """
    check_backend(backend)
    if backend == "auto":
        return "triton" if x.is_cuda and _triton_usable(x) else "reference"
    if backend in ("triton", "fused") and not _triton_usable(x):
        where = "CUDA tensors" if not x.is_cuda else "an importable triton"
        raise RuntimeError(
            f"backend={backend!r} needs triton and {where} (or TRITON_INTERPRET=1 for CPU tensors; "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}); use backend='reference' or 'auto'"
        )
    return backend


def resolve_precision(precision: str, backend: str, x: Tensor) -> str:
    """The dots' precision for a layer's ``precision`` on the concrete ``backend`` with inputs like ``x``:
    "auto" is "tf32x3" where the fused backend runs float32 on CUDA — three TF32 tensor-core products per dot, the
    layer's relative error within 1e-6 of fp32's as modelled on the CPU (``python -m bench.precision``), its
    configurations spill-free under ptxas — and "ieee" everywhere else (the triton backend's tf32x3 configurations
    spill under Triton 3.8; on the CPU the interpreter computes in fp32 either way). Others are returned as given."""
    if precision != "auto":
        return precision
    return "tf32x3" if backend == "fused" and x.is_cuda and x.dtype == torch.float32 else "ieee"


def implicit_conv(backend: str, edge_features: Callable[..., Tensor], edge_inputs: Sequence[Tensor | None],
                  x: Tensor, head: StructuredHead, src: Tensor, tgt: Tensor, num_targets: int,
                  chunk_size: int | None = None, csr: CSR | None = None, precision: str = "ieee",
                  max_chunk_size: int = 65536, indices_checked: bool = False) -> Tensor:
    """(M, Dout): the whole implicit convolution, G-MLP included, chunk by chunk on the chosen backend.

    ``edge_features(*edge_inputs[chunk]) -> h̃ (chunk, K)`` evaluates the G-MLP of a chunk
    of edges; its messages ``W̃ · (h̃_e ⊗ x_src(e))`` are aggregated at once (reference:
    pooled per target first where that pays, :mod:`fastik.ops.pooled` — the edges then run in
    (in-degree, target) order — else the structured head + segment / scatter sum; triton: the
    fused kernels on the dense W̃).  In training each chunk is recomputed in backward (:func:`chunked_conv`), so no
    tensor of E × H elements is ever stored — only the per-edge inputs (r, attributes).
    ``chunk_size`` None: ``max_chunk_size``, and on the reference backend at most
    :func:`~fastik.ops.reference.auto_chunk_size` (≈ 2^24 floats of intermediates).
    ``indices_checked``: the caller has validated ``src`` / ``tgt`` (see :func:`chunked_conv`).
    """
    use_triton = resolve_backend(backend, x) in ("triton", "fused")
    weight = head.dense(x.dtype) if use_triton else None
    if chunk_size is None:
        chunk_size = max_chunk_size if use_triton else min(max_chunk_size, auto_chunk_size(head))

    plan = None if use_triton else plan_pooling(head, tgt, chunk_size)
    if plan is not None:  # aggregate first: edges by (in-degree, target), one grouping (host sync) per call
        if csr is not None:  # not used here, but one that is not this graph's is still refused
            validated_csr_targets(csr, tgt, num_targets, indices_checked)
        edge_inputs = [None if t is None else t[plan.order] for t in edge_inputs]
        src, tgt, csr = src[plan.order], tgt[plan.order], None

    def contribution(*args) -> Tensor:
        *inputs, src_c, tgt_c, rowptr_c, checked, start = args
        if plan is not None:
            targets, groups = plan.chunk(start, start + src_c.shape[0])
            return pooled_conv(head, edge_features(*inputs), x, src_c, targets, groups, num_targets)
        if not use_triton:
            return aggregated_messages(head, edge_features(*inputs), x, src_c, tgt_c, rowptr_c, num_targets,
                                       indices_checked=checked)
        h = edge_features(*inputs)
        if rowptr_c is None:  # edge-wise fused kernel, atomic aggregation
            from .fused import implicit_message_passing_fused

            return implicit_message_passing_fused(h, x, weight, src_c, tgt_c, num_targets, precision=precision,
                                                  indices_checked=checked)
        from .fused_segmented import implicit_message_passing_segmented  # aggregate-first per target

        return implicit_message_passing_segmented(h, x, weight, src_c, tgt_c, rowptr_c, num_targets,
                                                  precision=precision, indices_checked=checked)

    return chunked_conv(contribution, edge_inputs, src, tgt, num_targets, chunk_size, csr, indices_checked)
