"""Message aggregation: segment sums over target-sorted edges and scatter sums.

Two ways to sum per-edge messages ``src (E, D)`` into per-target rows ``(N, D)``:

* :func:`segment_sum` – edges sorted by target, described by a CSR row pointer
  ``rowptr (N+1,)``; deterministic (bitwise identical across runs, no atomics).
* :func:`scatter_sum` – unsorted edges with a target ``index (E,)``; uses
  atomics on CUDA (not bitwise reproducible there), deterministic on CPU.

:func:`build_csr` sorts a graph's edges by target once (a :class:`CSR`), and
:func:`aggregate` picks segment_sum (with a CSR) or scatter_sum (without).

Both ops are ``torch.library.custom_op`` s (``fastik::segment_sum``,
``fastik::scatter_sum``) with fake (meta) implementations and autograd
(backward = gather: ``grad_src = grad_out[index]``), so they work under
``torch.compile(fullgraph=True)`` and ``gradcheck``. They run the compiled
extension ``fastik._C`` when it is built (CPU kernels always, CUDA kernels when
built with CUDA) and otherwise a pure-torch ``index_add_`` fallback, with a
one-time warning.

Supported: ``src`` float32 / float64 / bfloat16 (bfloat16 accumulates in
float32), indices int32 / int64. Inputs are validated before any kernel runs:
shapes, dtypes and devices (cheap, also under ``torch.compile``) and index
values (a min/max reduction; on CUDA that costs one host sync per call).
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from ._contract import check_rowptr

__all__ = [
    "CSR",
    "aggregate",
    "build_csr",
    "csr_rowptr",
    "extension_has_cuda",
    "has_extension",
    "scatter_sum",
    "segment_sum",
]

#: Module-level switch: when True, never use ``fastik._C`` (pure-torch fallback).
#: Tests flip it to exercise both paths; ``FASTIK_FORCE_FALLBACK=1`` sets it.
_FORCE_FALLBACK: bool = os.environ.get("FASTIK_FORCE_FALLBACK", "0").strip() == "1"

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)

_ext_module: Optional[ModuleType] = None
_ext_tried: bool = False
_ext_error: Optional[str] = None
_fallback_warned: bool = False


# --------------------------------------------------------------------------- extension


def _load_extension() -> Optional[ModuleType]:
    """Import ``fastik._C`` once (lazily); None when it is not built or fails to load."""
    global _ext_module, _ext_tried, _ext_error
    if not _ext_tried:
        _ext_tried = True
        try:
            _ext_module = importlib.import_module("fastik._C")
        except (ImportError, OSError) as exc:  # not built, or built against another torch
            _ext_module = None
            _ext_error = f"{type(exc).__name__}: {exc}"
    return _ext_module


def has_extension() -> bool:
    """Whether the compiled extension ``fastik._C`` is importable (loaded lazily)."""
    return _load_extension() is not None


def extension_has_cuda() -> bool:
    """Whether ``fastik._C`` is loaded *and* was compiled with its CUDA kernels."""
    ext = _load_extension()
    return ext is not None and bool(ext.has_cuda())


def _warn_fallback(reason: str) -> None:
    global _fallback_warned
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"fastik: {reason}; using the pure-torch aggregation fallback (index_add_), which is "
            "slower and, on CUDA, not deterministic. Build the extension with "
            "`pip install --no-build-isolation -e .` to get the compiled kernels.",
            RuntimeWarning,
            stacklevel=5,  # skip _warn_fallback, _use_extension, _run_kernel and the custom op
        )


def _use_extension(device: torch.device) -> bool:
    """Decide (at run time, inside the ops) whether the compiled kernels handle ``device``."""
    if _FORCE_FALLBACK:
        return False
    if device.type not in ("cpu", "cuda"):
        return False  # e.g. meta / mps: let the torch fallback handle it
    ext = _load_extension()
    if ext is None:
        _warn_fallback(f"the C++/CUDA extension fastik._C is not available ({_ext_error})")
        return False
    if device.type == "cuda" and not ext.has_cuda():
        _warn_fallback("fastik._C was built without CUDA kernels")
        return False
    return True


# --------------------------------------------------------------------------- validation


def _describe(t: Tensor) -> str:
    return f"shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device}"


def _check_src(src: Tensor, op: str, name: str = "src") -> None:
    if not isinstance(src, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(src).__name__}")
    if src.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float32, float64 or bfloat16, got dtype={src.dtype} "
            f"({_describe(src)})"
        )
    if src.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D (E, D), got shape={tuple(src.shape)}")


def _check_index_tensor(index: Tensor, op: str, name: str) -> None:
    if not isinstance(index, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype not in _INDEX_DTYPES:
        raise TypeError(
            f"{op}: {name} must be int32 or int64, got dtype={index.dtype} ({_describe(index)})"
        )
    if index.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D, got shape={tuple(index.shape)}")


def _check_same_device(a: Tensor, b: Tensor, op: str, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(
            f"{op}: {name_a} (device={a.device}) and {name_b} (device={b.device}) must be on "
            "the same device"
        )


def _check_size(value: object, op: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 0:
        raise ValueError(f"{op}: {name} must be >= 0, got {value}")


def _check_index_values(index: Tensor, dim_size: int, op: str, name: str = "index") -> None:
    """0 <= index < dim_size, with one min/max reduction (one host sync on CUDA)."""
    if index.numel() == 0:
        return
    if dim_size == 0:
        raise ValueError(f"{op}: {name} has {index.numel()} entries but dim_size=0")
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(index)).tolist())
    if lo < 0 or hi >= dim_size:
        raise ValueError(
            f"{op}: {name} values must lie in [0, dim_size={dim_size}), got min={lo}, max={hi} "
            f"({_describe(index)})"
        )


def _check_rowptr_values(rowptr: Tensor, num_edges: int, op: str) -> None:
    """rowptr[0] == 0, rowptr[-1] == E, non-decreasing (one host sync on CUDA)."""
    first_last_bad = torch.stack(
        [rowptr[0].long(), rowptr[-1].long(), (rowptr[1:] < rowptr[:-1]).any().long()]
    ).tolist()
    first, last, bad = first_last_bad
    if first != 0:
        raise ValueError(f"{op}: rowptr[0] must be 0, got {first} ({_describe(rowptr)})")
    if last != num_edges:
        raise ValueError(
            f"{op}: rowptr[-1] must equal the number of edges E=src.shape[0]={num_edges}, "
            f"got {last} ({_describe(rowptr)})"
        )
    if bad:
        pos = int(torch.nonzero(rowptr[1:] < rowptr[:-1])[0, 0]) + 1
        raise ValueError(
            f"{op}: rowptr must be monotone non-decreasing, but rowptr[{pos}]={int(rowptr[pos])} "
            f"< rowptr[{pos - 1}]={int(rowptr[pos - 1])} ({_describe(rowptr)})"
        )


# --------------------------------------------------------------------------- fallbacks


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _rows_of_edges(rowptr: Tensor, num_edges: int) -> Tensor:
    """(E,) int64 row id of every CSR position."""
    counts = (rowptr[1:] - rowptr[:-1]).long()
    rows = torch.arange(counts.numel(), device=rowptr.device)
    return torch.repeat_interleave(rows, counts, output_size=num_edges)


def _segment_sum_fallback(src: Tensor, rowptr: Tensor) -> Tensor:
    n, d = rowptr.numel() - 1, src.shape[1]
    out = torch.zeros((n, d), dtype=_acc_dtype(src.dtype), device=src.device)
    out.index_add_(0, _rows_of_edges(rowptr, src.shape[0]), src.to(out.dtype))
    return out.to(src.dtype)


def _scatter_sum_fallback(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    out = torch.zeros((dim_size, src.shape[1]), dtype=_acc_dtype(src.dtype), device=src.device)
    out.index_add_(0, index.long(), src.to(out.dtype))
    return out.to(src.dtype)


def _segment_gather_fallback(src: Tensor, rowptr: Tensor, num_edges: int) -> Tensor:
    return src.index_select(0, _rows_of_edges(rowptr, num_edges))


def _run_kernel(
    out_shape: tuple[int, int], raw_op: str, fallback: Callable[..., Tensor], src: Tensor, *args
) -> Tensor:
    """The custom ops' body once inputs are checked: zeros of ``out_shape`` when ``src`` or the
    output is empty, else the compiled ``torch.ops.fastik.<raw_op>(src, *args)`` where it handles
    ``src.device``, else the pure-torch ``fallback(src, *args)``."""
    if src.numel() == 0 or out_shape[0] == 0 or out_shape[1] == 0:
        return src.new_zeros(out_shape)
    if _use_extension(src.device):  # loads fastik._C, which registers the raw ops
        return getattr(torch.ops.fastik, raw_op)(src, *args)
    return fallback(src, *args)


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op("fastik::segment_sum", mutates_args=())
def _segment_sum_op(src: Tensor, rowptr: Tensor, indices_checked: bool = False) -> Tensor:
    """(E, D), (N+1,) -> (N, D); src contiguous, inputs already shape/dtype/device-checked."""
    if not indices_checked:
        _check_rowptr_values(rowptr, src.shape[0], "fastik.segment_sum")
    out_shape = (rowptr.numel() - 1, src.shape[1])
    return _run_kernel(out_shape, "segment_sum_raw", _segment_sum_fallback, src, rowptr)


@_segment_sum_op.register_fake
def _(src: Tensor, rowptr: Tensor, indices_checked: bool = False) -> Tensor:
    return src.new_empty((rowptr.shape[0] - 1, src.shape[1]))


@torch.library.custom_op("fastik::segment_gather", mutates_args=())
def _segment_gather_op(src: Tensor, rowptr: Tensor, num_edges: int) -> Tensor:
    """(N, D), (N+1,) -> (E, D): out[k] = src[i] for rowptr[i] <= k < rowptr[i+1].

    Backward of segment_sum; rowptr was validated by the forward op.
    """
    src = src.contiguous()
    out_shape = (num_edges, src.shape[1])
    return _run_kernel(
        out_shape, "segment_gather_raw", _segment_gather_fallback, src, rowptr, num_edges
    )


@_segment_gather_op.register_fake
def _(src: Tensor, rowptr: Tensor, num_edges: int) -> Tensor:
    return src.new_empty((num_edges, src.shape[1]))


@torch.library.custom_op("fastik::scatter_sum", mutates_args=())
def _scatter_sum_op(src: Tensor, index: Tensor, dim_size: int, indices_checked: bool = False) -> Tensor:
    """(E, D), (E,) -> (dim_size, D); src contiguous, inputs already shape/dtype/device-checked."""
    if not indices_checked:
        _check_index_values(index, dim_size, "fastik.scatter_sum")
    out_shape = (dim_size, src.shape[1])
    return _run_kernel(out_shape, "scatter_sum_raw", _scatter_sum_fallback, src, index, dim_size)


@_scatter_sum_op.register_fake
def _(src: Tensor, index: Tensor, dim_size: int, indices_checked: bool = False) -> Tensor:
    return src.new_empty((dim_size, src.shape[1]))


def _segment_sum_setup_context(ctx, inputs, output) -> None:
    src, rowptr, _checked = inputs
    ctx.save_for_backward(rowptr)
    ctx.num_edges = src.shape[0]


def _segment_sum_backward(ctx, grad_out: Tensor):
    (rowptr,) = ctx.saved_tensors
    grad_src = None
    if ctx.needs_input_grad[0]:
        grad_src = _segment_gather_op(grad_out.contiguous(), rowptr, ctx.num_edges)
    return grad_src, None, None


_segment_sum_op.register_autograd(_segment_sum_backward, setup_context=_segment_sum_setup_context)


def _segment_gather_setup_context(ctx, inputs, output) -> None:
    _src, rowptr, _num_edges = inputs
    ctx.save_for_backward(rowptr)


def _segment_gather_backward(ctx, grad_out: Tensor):
    (rowptr,) = ctx.saved_tensors
    grad_src = None
    if ctx.needs_input_grad[0]:
        grad_src = _segment_sum_op(grad_out.contiguous(), rowptr)
    return grad_src, None, None


_segment_gather_op.register_autograd(
    _segment_gather_backward, setup_context=_segment_gather_setup_context
)


def _scatter_sum_setup_context(ctx, inputs, output) -> None:
    _src, index, _dim_size, _checked = inputs
    ctx.save_for_backward(index)


def _scatter_sum_backward(ctx, grad_out: Tensor):
    (index,) = ctx.saved_tensors
    grad_src = None
    if ctx.needs_input_grad[0]:
        grad_src = grad_out.index_select(0, index)
    return grad_src, None, None, None


_scatter_sum_op.register_autograd(_scatter_sum_backward, setup_context=_scatter_sum_setup_context)


# --------------------------------------------------------------------------- public API


def segment_sum(src: Tensor, rowptr: Tensor, *, indices_checked: bool = False) -> Tensor:
    """Deterministic sum of consecutive row segments (edges sorted by target).

    ``out[i] = src[rowptr[i]:rowptr[i+1]].sum(0)``.

    Args:
        src: ``(E, D)`` float32 / float64 / bfloat16 messages, ordered by target.
            A non-contiguous ``src`` is copied to a contiguous one first.
        rowptr: ``(N+1,)`` int32 / int64 CSR row pointer on ``src.device`` with
            ``rowptr[0] == 0``, ``rowptr[-1] == E``, non-decreasing (empty
            segments allowed).
        indices_checked: the caller has validated this very ``rowptr`` (e.g. it comes from
            :func:`build_csr`) and it is unchanged since: skip the value check and its host sync.

    Returns:
        ``(N, D)`` tensor of ``src.dtype`` (bfloat16 is accumulated in float32).
        Bitwise identical across runs; differentiable w.r.t. ``src``.

    Raises:
        TypeError: wrong dtype / non-tensor input.
        ValueError: wrong shape, device mismatch or invalid ``rowptr`` values.
    """
    op = "fastik.segment_sum"
    _check_src(src, op)
    _check_index_tensor(rowptr, op, "rowptr")
    _check_same_device(src, rowptr, op, "src", "rowptr")
    if rowptr.shape[0] < 1:
        raise ValueError(f"{op}: rowptr must have N+1 >= 1 entries, got shape={tuple(rowptr.shape)}")
    return _segment_sum_op(src.contiguous(), rowptr.contiguous(), bool(indices_checked))


def scatter_sum(src: Tensor, index: Tensor, dim_size: int, *, indices_checked: bool = False) -> Tensor:
    """Sum rows of ``src`` into ``dim_size`` buckets: ``out[index[e]] += src[e]``.

    Args:
        src: ``(E, D)`` float32 / float64 / bfloat16 messages (any edge order).
            A non-contiguous ``src`` is copied to a contiguous one first.
        index: ``(E,)`` int32 / int64 target of every row, ``0 <= index < dim_size``,
            on ``src.device``.
        dim_size: number of targets ``N >= 0``.
        indices_checked: the caller has validated this very ``index`` against ``dim_size`` and it
            is unchanged since: skip the range check and its host sync.

    Returns:
        ``(dim_size, D)`` tensor of ``src.dtype`` (bfloat16 accumulated in float32);
        differentiable w.r.t. ``src``. On CUDA the compiled kernel uses atomics, so
        float results may differ in the last bits between runs; on CPU it is
        deterministic. Use :func:`segment_sum` / :func:`aggregate` with a
        :class:`CSR` for bitwise reproducibility.

    Raises:
        TypeError: wrong dtype / non-tensor input / non-int ``dim_size``.
        ValueError: wrong shape, device mismatch, ``dim_size < 0`` or out-of-range index.
    """
    op = "fastik.scatter_sum"
    _check_src(src, op)
    _check_index_tensor(index, op, "index")
    _check_same_device(src, index, op, "src", "index")
    if index.shape[0] != src.shape[0]:
        raise ValueError(
            f"{op}: index must have length E=src.shape[0]={src.shape[0]}, "
            f"got shape={tuple(index.shape)}"
        )
    _check_size(dim_size, op, "dim_size")
    return _scatter_sum_op(src.contiguous(), index.contiguous(), dim_size, bool(indices_checked))


_MIX = 0x9E3779B1  # odd: position weights ((e+1)·_MIX) mod 2^31 are distinct and non-zero for E < 2^31


def _fingerprint(target: Tensor) -> Tensor:
    """0-d int64 ``Σ_e target[e]·w_e`` (wrapping) with distinct pseudo-random weights ``w_e`` per position.

    Changing any one entry, or swapping two different entries, changes it. Costs four
    passes over E int64 values and no host sync.
    """
    w = torch.arange(1, target.shape[0] + 1, dtype=torch.int64, device=target.device)
    return w.mul_(_MIX).bitwise_and_(0x7FFFFFFF).mul_(target).sum()


class CSR(NamedTuple):
    """Edges of a graph grouped by target (compressed sparse rows).

    Build it once per graph with :func:`build_csr` and reuse it in every layer; each
    use calls :meth:`check` with the graph's targets, which refuses a CSR built from
    another graph.

    Attributes:
        perm: ``(E,)`` int64 edge order sorted by target (stable: edges with the
            same target keep their original order).
        rowptr: ``(N+1,)`` int64; the edges of target ``i`` are
            ``perm[rowptr[i]:rowptr[i+1]]``.
        num_targets: ``N``.
        target: the ``(E,)`` target index it was built from (a reference, not a copy;
            None for a CSR assembled by hand, which is checked for sizes only).
        target_version: ``target._version`` at build time (in-place edits bump it).
        checksum: 0-d int64 fingerprint of ``target`` (see :meth:`check`).
    """

    perm: Tensor
    rowptr: Tensor
    num_targets: int
    target: Optional[Tensor] = None
    target_version: int = 0
    checksum: Optional[Tensor] = None

    @property
    def num_edges(self) -> int:
        """``E``."""
        return self.perm.shape[0]

    def to(self, device: Union[torch.device, str]) -> "CSR":
        """The same CSR with its index tensors on ``device``."""
        target = self.target
        if target is not None and target._version != self.target_version:
            target = None  # edited in place since build_csr: only the checksum still describes the graph
        moved = None if target is None else target.to(device)
        rowptr = self.rowptr.to(device)
        if _made_by_build_csr(self.rowptr, self.num_edges, self.num_targets):
            _mark_built(rowptr, self.num_edges)
        return CSR(self.perm.to(device), rowptr, self.num_targets, moved,
                   self.target_version if moved is target else 0 if moved is None else moved._version,
                   None if self.checksum is None else self.checksum.to(device))

    def check_row_pointer(self, sorted_targets: Tensor) -> None:
        """ValueError unless ``rowptr`` is a row pointer over the E edges (starts at 0, ends at E, never
        decreases: one host sync on CUDA) and, for a CSR assembled by hand, that of ``sorted_targets``
        (the targets in CSR order, in range; one more sync). A CSR from :func:`build_csr` is its
        targets' row pointer by construction: free while ``rowptr`` is the tensor it made (or moved with
        :meth:`to`), not edited in place since."""
        if self.checksum is not None and _made_by_build_csr(self.rowptr, self.num_edges, self.num_targets):
            return
        _check_rowptr_values(self.rowptr, self.num_edges, "fastik: csr.rowptr")
        if self.checksum is None:
            check_rowptr(sorted_targets, self.rowptr, self.num_targets)

    def _built_from(self, tgt: Tensor) -> bool:
        """Whether ``tgt`` is the very tensor (same memory, no in-place edit since) the CSR was built from.

        Sound because the CSR holds ``target``, so its memory cannot be reused by another tensor.
        """
        t = self.target
        return (t is not None and tgt.dtype == t.dtype and tgt.device == t.device and tgt.shape == t.shape
                and tgt.stride() == t.stride() and tgt.data_ptr() == t.data_ptr()
                and tgt._version == t._version == self.target_version)

    def check(self, num_edges: int, num_targets: int, tgt: Optional[Tensor] = None) -> None:
        """Raise a ValueError unless this CSR describes the graph with targets ``tgt`` (E,).

        Sizes are compared always. The targets are compared when given, outside
        ``torch.compile``, and for a CSR from :func:`build_csr`: free when ``tgt`` is
        (a view of the same memory as) the tensor it was built from and not edited in
        place since; otherwise by :func:`_fingerprint` (four passes over E int64 values
        and, on CUDA, one host sync). A CSR depends only on the targets, so one built
        from another graph with the same ``edge_index[1]`` is accepted (and correct).
        """
        fix = "build one per graph with fastik.ops.build_csr(edge_index[1], num_targets) and pass it with that graph"
        if self.num_edges != num_edges or self.num_targets != num_targets:
            raise ValueError(f"csr describes {self.num_edges} edges / {self.num_targets} targets, "
                             f"expected {num_edges} / {num_targets}: {fix}")
        if tgt is None or self.checksum is None or torch.compiler.is_compiling() or self._built_from(tgt):
            return
        if tgt.shape != (num_edges,):
            raise ValueError(f"the targets must be ({num_edges},) to match the csr, got {tuple(tgt.shape)}")
        if tgt.device != self.checksum.device:
            raise ValueError(f"csr is on {self.checksum.device} but the edges are on {tgt.device}: move it with "
                             f"csr.to({str(tgt.device)!r})")
        if bool(_fingerprint(tgt) != self.checksum):
            raise ValueError(f"csr was built from another graph: it has the same {num_edges} edges and "
                             f"{num_targets} targets but different targets edge_index[1] (or they were edited "
                             f"in place); {fix}")


def _mark_built(rowptr: Tensor, num_edges: int) -> Tensor:
    """``rowptr``, marked as :func:`build_csr`'s row pointer of ``num_edges`` edges in its present version."""
    rowptr._fastik_built = (rowptr._version, num_edges)
    return rowptr


def _made_by_build_csr(rowptr: Tensor, num_edges: int, num_targets: int) -> bool:
    """Whether ``rowptr`` is a row pointer :func:`build_csr` made (or :meth:`CSR.to` moved) for ``num_edges`` edges
    and ``num_targets`` targets, not edited in place since (in-place edits, through views too, bump ``_version``;
    copies and other tensors carry no mark): then its values lie in [0, E] and never decrease."""
    return (getattr(rowptr, "_fastik_built", None) == (rowptr._version, num_edges)
            and rowptr.shape == (num_targets + 1,))


def csr_rowptr(target_index: Tensor, num_targets: int) -> Tensor:
    """(num_targets + 1,) int64 CSR row pointer: ``rowptr[i+1] - rowptr[i]`` edges have target i
    (the row pointer of the edges once sorted by target; values are not checked here)."""
    rowptr = torch.zeros(num_targets + 1, dtype=torch.int64, device=target_index.device)
    if target_index.numel():
        torch.cumsum(torch.bincount(target_index.long(), minlength=num_targets), 0, out=rowptr[1:])
    return rowptr


def build_csr(target_index: Tensor, num_targets: int) -> CSR:
    """Sort edges by target once: returns a :class:`CSR` for :func:`aggregate`.

    Args:
        target_index: ``(E,)`` int32 / int64 target of every edge, ``0 <= t < num_targets``
            (``edge_index[1]`` in fastik's convention).
        num_targets: ``N >= 0``.

    Returns:
        ``CSR(perm (E,) int64, rowptr (N+1,) int64, num_targets, target_index, its version,
        checksum)`` on ``target_index.device``; it keeps a reference to ``target_index`` so
        that :meth:`CSR.check` recognises it for free.

    Raises:
        TypeError / ValueError: invalid dtype, shape, ``num_targets`` or index values.
    """
    op = "fastik.build_csr"
    _check_index_tensor(target_index, op, "target_index")
    _check_size(num_targets, op, "num_targets")
    _check_index_values(target_index, int(num_targets), op, "target_index")
    target = target_index.long()
    perm = torch.sort(target, stable=True).indices
    rowptr = _mark_built(csr_rowptr(target, int(num_targets)), target.shape[0])
    return CSR(perm=perm, rowptr=rowptr, num_targets=int(num_targets), target=target_index,
               target_version=target_index._version, checksum=_fingerprint(target))


def aggregate(
    messages: Tensor,
    target_index: Tensor,
    num_targets: int,
    csr: Optional[CSR] = None,
) -> Tensor:
    """Sum per-edge messages into their targets.

    Args:
        messages: ``(E, D)`` float32 / float64 / bfloat16, in the original edge order.
        target_index: ``(E,)`` int32 / int64 target of every edge.
        num_targets: ``N``.
        csr: optional :class:`CSR` from ``build_csr(target_index, num_targets)``.
            With it: deterministic :func:`segment_sum` of ``messages[csr.perm]``;
            without it: :func:`scatter_sum` (atomics on CUDA).

    Returns:
        ``(num_targets, D)``.

    Raises:
        ValueError: a ``csr`` of other sizes, or built from other targets (:meth:`CSR.check`).
    """
    op = "fastik.aggregate"
    if csr is None:
        return scatter_sum(messages, target_index, num_targets)
    if not isinstance(csr, CSR):
        raise TypeError(f"{op}: csr must be a fastik.ops.aggregate.CSR or None, got {type(csr).__name__}")
    _check_src(messages, op, "messages")
    if csr.num_targets != num_targets:
        raise ValueError(
            f"{op}: csr was built for num_targets={csr.num_targets}, got num_targets={num_targets}"
        )
    if csr.perm.shape[0] != messages.shape[0]:
        raise ValueError(
            f"{op}: csr has E={csr.perm.shape[0]} edges but messages has shape="
            f"{tuple(messages.shape)}"
        )
    _check_same_device(messages, csr.perm, op, "messages", "csr.perm")
    _check_index_tensor(target_index, op, "target_index")
    csr.check(messages.shape[0], num_targets, target_index)
    return segment_sum(messages.index_select(0, csr.perm), csr.rowptr)
