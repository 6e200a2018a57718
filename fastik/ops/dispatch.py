"""Backend choice for the implicit message passing operation."""
from __future__ import annotations

import os

from torch import Tensor

from .aggregate import CSR
from .reference import check_csr, implicit_message_passing_reference

__all__ = ["BACKENDS", "check_backend", "resolve_backend", "message_passing"]

BACKENDS = ("auto", "reference", "triton")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _triton_usable(x: Tensor) -> bool:
    try:
        from .fused import triton_available
    except ImportError:
        return False
    return triton_available(x)


def resolve_backend(backend: str, x: Tensor) -> str:
    """The concrete backend for inputs like ``x``: "auto" picks triton on CUDA when available."""
    check_backend(backend)
    if backend == "auto":
        return "triton" if x.is_cuda and _triton_usable(x) else "reference"
    if backend == "triton" and not _triton_usable(x):
        where = "CUDA tensors" if not x.is_cuda else "an importable triton"
        raise RuntimeError(
            f"backend='triton' needs triton and {where} (or TRITON_INTERPRET=1 for CPU tensors; "
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}); use backend='reference' or 'auto'"
        )
    return backend


def message_passing(backend: str, h: Tensor, x: Tensor, weight: Tensor, src: Tensor, tgt: Tensor,
                    num_targets: int, chunk_size: int | None = None, csr: CSR | None = None,
                    precision: str = "ieee") -> Tensor:
    """(M, Dout) = Σ_e weight · (h_e ⊗ x_src(e)) aggregated at tgt(e), on the chosen backend.

    ``precision`` ("ieee" | "tf32" | "tf32x3") applies to the triton backend; the
    reference backend follows torch's own matmul settings.  With a ``csr`` the
    triton backend runs the aggregate-first kernels (``fused_segmented``: E-level
    work O(E·K·Din) instead of O(E·K·Din·Dout), deterministic), without one the
    edge-wise kernels (``fused``, atomic aggregation).
    """
    if resolve_backend(backend, x) == "triton":
        if csr is None:  # edge-wise fused kernel, atomic aggregation
            from .fused import implicit_message_passing_fused

            return implicit_message_passing_fused(h, x, weight, src, tgt, num_targets, precision=precision)
        # target-sorted edges: aggregate h ⊗ x per target first, then one GEMM per target
        from .fused_segmented import implicit_message_passing_segmented

        check_csr(csr, h.shape[0], num_targets)
        perm = csr.perm
        return implicit_message_passing_segmented(h[perm], x, weight, src[perm], tgt[perm], csr.rowptr,
                                                  num_targets, precision=precision)
    return implicit_message_passing_reference(h, x, weight, src, tgt, num_targets, chunk_size, csr)
