"""ImplicitPointConv: steerable message passing with an implicit G-MLP kernel (paper Eq. 5)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..groups import FieldType
from ..ops import dispatch
from ..ops.aggregate import CSR
from ..ops.fused_gmlp import fused_gmlp_conv
from ..ops.reference import validated_csr_targets
from ._checks import check_int
from .kernel import ImplicitKernel, compact_repr
from .linear import invariant_bias, reset_children

__all__ = ["ImplicitPointConv"]


class ImplicitPointConv(nn.Module):
    """Point convolution ``y_i = Σ_{e=(j→i)} k(pos_j - pos_i, z_ij, z_i, z_j) x_j`` with an implicit kernel.

    G = ``in_type.group`` (any point group of :func:`fastik.group`) acts on
    positions by ``pos -> pos @ g.T``, on features by ``x -> x @ ρ(g).T``, and
    ``conv(x ρin(g)ᵀ, pos gᵀ, ei) = conv(x, pos, ei) ρout(g)ᵀ``.

    Shapes (forward):
        x (N, in_type.dim), pos (N, G.dim), edge_index (2, E) int64 (or int32) with row 0 the
        source j and row 1 the target i, edge vector r_e = pos[j] - pos[i];
        edge_attr (E, edge_attr_type.dim); node_attr (N, node_attr_type.dim) fed to
        the kernel for both ends; pos_target (M, G.dim) for bipartite use (targets
        index pos_target; then node attributes of targets come from
        ``node_attr_target`` (M, ·)).  ``csr``: optional
        :func:`fastik.ops.aggregate.build_csr` of ``edge_index[1]``, built once per
        graph and shared by its layers, for deterministic target-ordered
        aggregation (one built from other targets is refused: :meth:`~fastik.ops.aggregate.CSR.check`).
        Returns y (N or M, out_type.dim).  A RuntimeWarning says when the envelope underflows on every
        edge (positions in other units than ``sigma``; :meth:`ImplicitKernel.check_envelope`).
        ``edge_index`` (and a CSR's row pointer) is range-checked once per call — one host sync on
        CUDA — and the chunks' ops then skip their own checks.

    Args:
        aggr: ``"sum"`` (default) or ``"mean"`` over incoming edges.
        backend: ``"reference"`` (plain torch, the paper's algorithm in chunks; each target's messages
            summed before the kernel head where that is cheaper, :mod:`fastik.ops.pooled`),
            ``"triton"`` (G-MLP in torch, messages and aggregation in fused kernels; CUDA, or CPU
            under TRITON_INTERPRET=1), ``"fused"`` (the whole G-MLP inside one Triton op, recomputed
            in backward: nothing of size E × H exists; float32 or float64; gate nonlinearity only —
            with ``fourier_elu`` it runs as ``"triton"``; with a ``csr`` the edges are taken in its
            order, so the op does not sort them; edges are summed with atomics) or ``"auto"``
            (triton on CUDA, else reference).  A run-time choice: it changes no parameter or
            state_dict key.
        avg_degree: expected number of incoming edges d; messages are scaled by 1/√d
            (sum) or √d (mean) so that outputs start with roughly unit variance.
        chunk_size: edges per chunk (None: ``mlp_chunk_size``, and on the reference
            backend at most about 2^24 floats of intermediates per chunk).  The G-MLP,
            the messages and their aggregation run chunk by chunk; in training each
            chunk is recomputed in backward (activation checkpointing), so nothing of
            size E × H is stored — only per-edge inputs (r, attributes).
        mlp_chunk_size: the default chunk size (65536 edges).
        precision: matmul precision of the triton and fused backends: ``"auto"`` (default: ``"tf32x3"`` for
            the fused backend on CUDA in float32, else ``"ieee"``; :func:`fastik.ops.dispatch.resolve_precision`),
            ``"ieee"`` (fp32 FMAs), ``"tf32"`` (TF32 tensor cores, ≈1e-3 relative error) or ``"tf32x3"``
            (three TF32 passes, ≈fp32 accuracy).  float64 needs the reference or fused backend (every dot IEEE).
        bias: learn a bias on the G-invariant output channels.
        **kernel_kwargs: passed to :class:`ImplicitKernel` (nonlinearity, harmonics, norm, sigma).
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, edge_attr_type: FieldType | None = None,
                 node_attr_type: FieldType | None = None, hidden_channels: int = 16, hidden_layers: int = 2,
                 aggr: str = "sum", backend: str = "auto", *, avg_degree: float = 16.0,
                 chunk_size: int | None = None, mlp_chunk_size: int = 65536, bias: bool = True,
                 precision: str = "auto", **kernel_kwargs) -> None:
        super().__init__()
        if aggr not in ("sum", "mean"):
            raise ValueError(f"aggr must be 'sum' or 'mean', got {aggr!r}")
        dispatch.check_backend(backend)
        if avg_degree <= 0:
            raise ValueError(f"avg_degree must be positive, got {avg_degree}")
        self.in_type, self.out_type = in_type, out_type
        self.edge_attr_type, self.node_attr_type = edge_attr_type, node_attr_type
        dispatch.check_precision(precision)
        chunk_size = check_int(chunk_size, "chunk_size", 1, optional=True)
        mlp_chunk_size = check_int(mlp_chunk_size, "mlp_chunk_size", 1)
        self.aggr, self.backend, self.chunk_size, self.precision = aggr, backend, chunk_size, precision
        self.mlp_chunk_size = mlp_chunk_size
        self.kernel = ImplicitKernel(in_type, out_type, edge_attr_type, node_attr_type, hidden_channels,
                                     hidden_layers, **kernel_kwargs)
        self.scale = avg_degree ** (-0.5 if aggr == "sum" else 0.5)
        self.bias = invariant_bias(out_type, bias)
        self._envelope_checked = False

    def reset_parameters(self) -> None:
        """Re-draw every parameter as at construction (same random draws for the same seed)."""
        reset_children(self)

    def __repr__(self) -> str:
        return compact_repr(self, self.kernel, f"aggr={self.aggr}, backend={self.backend}, bias={self.bias is not None}")

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                node_attr: Tensor | None = None, pos_target: Tensor | None = None,
                node_attr_target: Tensor | None = None, csr: CSR | None = None) -> Tensor:
        """x (N, in_type.dim), pos (N, dim), edge_index (2, E) -> (N or M, out_type.dim); see the class docstring."""
        pos_t = pos if pos_target is None else pos_target
        indices_checked = self._validate(x, pos, edge_index, edge_attr, node_attr, pos_target, node_attr_target)
        src, tgt = edge_index.long()  # int32 indices: one copy, the kernels index with int64
        num_targets = pos_t.shape[0]
        backend = dispatch.resolve_backend(self.backend, x)
        fused = backend == "fused" and self.kernel.fusable
        runs = "triton" if backend == "fused" and not fused else backend  # a Fourier ELU runs as triton
        precision = dispatch.resolve_precision(self.precision, runs, x)
        rowptr = None
        if fused and csr is not None:  # the edges in the CSR's order: the fused op does not sort them again
            tgt = validated_csr_targets(csr, tgt, num_targets, indices_checked)
            src, rowptr = src[csr.perm], csr.rowptr
            edge_attr = None if edge_attr is None else edge_attr[csr.perm]
        r = pos[src] - pos_t[tgt]
        if pos_target is None:  # a self-loop's r is identically 0: its exact derivative is zero, so stop
            r = torch.where((src == tgt)[:, None], r.detach(), r)  # the ±huge terms that cancel only to fp32 round-off
        self._check_envelope(r)
        z_t = None
        if node_attr is not None:
            z_t = (node_attr if pos_target is None else node_attr_target)[tgt]
        parts = (r, edge_attr, z_t, None if node_attr is None else node_attr[src])
        if fused:
            out = fused_gmlp_conv(self.kernel.embed(*parts), self.kernel.envelope(r) * self.scale, x,
                                  self.kernel.packed(x.dtype), src, tgt, num_targets, precision,
                                  indices_checked=indices_checked, tgt_rowptr=rowptr)
        else:
            out = dispatch.implicit_conv(self.backend, self._edge_features, parts, x,
                                         self.kernel.head.structured(x.dtype), src, tgt, num_targets,
                                         self.chunk_size, csr, precision, self.mlp_chunk_size,
                                         indices_checked=indices_checked)
        if self.aggr == "mean":
            # a CSR from build_csr is its targets' row pointer by construction; one assembled by hand may not be
            deg = torch.bincount(tgt, minlength=num_targets) if csr is None or csr.checksum is None else csr.rowptr.diff()
            out = out / deg.clamp_min(1).to(x.dtype)[:, None]
        return out if self.bias is None else self.bias(out)

    def _edge_features(self, r: Tensor, edge_attr: Tensor | None, z_t: Tensor | None,
                       z_s: Tensor | None) -> Tensor:
        """h̃_e = s(|r_e|)·α·[h_e; 1]: (E, H+1), the per-edge input of the fused operation (docs/design.md §5)."""
        h = self.kernel.hidden(r, edge_attr, z_t, z_s)
        s = self.kernel.envelope(r) * self.scale
        return torch.cat([h, h.new_ones(h.shape[0], 1)], -1) * s[:, None]

    def _check_envelope(self, r: Tensor) -> None:
        """:meth:`ImplicitKernel.check_envelope` (a warning when every message underflows the envelope): every
        call on CPU; on CUDA only the layer's first call, as it costs a host sync; never under torch.compile."""
        if torch.compiler.is_compiling() or (r.is_cuda and self._envelope_checked):
            return
        self._envelope_checked = True
        self.kernel.check_envelope(r)

    def _validate(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None,
                  node_attr: Tensor | None, pos_target: Tensor | None, node_attr_target: Tensor | None) -> bool:
        """Raise on bad inputs; returns whether ``edge_index``'s ranges were checked (not under torch.compile)."""
        dim = self.in_type.group.dim
        for name, t in (("x", x), ("pos", pos), ("edge_index", edge_index)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_type.dim:
            raise ValueError(f"x must be (N, {self.in_type.dim}) for in_type {self.in_type}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got {x.dtype}")
        param = next(self.parameters())
        if x.dtype != param.dtype:
            raise TypeError(f"x is {x.dtype} but the layer's parameters are {param.dtype}; convert one (e.g. conv.to({x.dtype}))")
        if pos.dim() != 2 or pos.shape != (x.shape[0], dim):
            raise ValueError(f"pos must be (N, {dim}) = ({x.shape[0]}, {dim}) to match x, got {tuple(pos.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
        if edge_index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"edge_index must be int64 (torch.long) or int32, got {edge_index.dtype}")
        tensors = {"x": x, "pos": pos, "edge_index": edge_index, "edge_attr": edge_attr, "node_attr": node_attr,
                   "pos_target": pos_target, "node_attr_target": node_attr_target, "parameters": param}
        devices = {k: t.device for k, t in tensors.items() if t is not None}
        if len(set(devices.values())) > 1:
            raise ValueError(f"all inputs must be on one device, got {devices}")
        for k in ("pos", "edge_attr", "node_attr", "pos_target", "node_attr_target"):
            t = tensors[k]
            if t is not None and t.dtype != x.dtype:
                raise TypeError(f"{k} is {t.dtype} but x is {x.dtype}")
        num_targets = x.shape[0]
        if pos_target is not None:
            if pos_target.dim() != 2 or pos_target.shape[1] != dim:
                raise ValueError(f"pos_target must be (M, {dim}), got {tuple(pos_target.shape)}")
            num_targets = pos_target.shape[0]
        e = edge_index.shape[1]
        # Index values need a host sync; under torch.compile they are left to the custom ops,
        # which check them inside their (opaque) bodies before any kernel touches memory.
        indices_checked = not torch.compiler.is_compiling()
        if e and indices_checked:
            (smin, tmin), (smax, tmax) = torch.stack(torch.aminmax(edge_index, dim=1)).tolist()  # one host sync
            if smin < 0 or smax >= x.shape[0]:
                raise IndexError(f"edge_index[0] (sources) must be in [0, {x.shape[0]}), got range [{smin}, {smax}]")
            if tmin < 0 or tmax >= num_targets:
                raise IndexError(f"edge_index[1] (targets) must be in [0, {num_targets}), got range [{tmin}, {tmax}]")
        self._check_attr("edge_attr", edge_attr, self.edge_attr_type, e)
        self._check_attr("node_attr", node_attr, self.node_attr_type, x.shape[0])
        if pos_target is not None and node_attr is not None:
            self._check_attr("node_attr_target", node_attr_target, self.node_attr_type, num_targets)
        elif node_attr_target is not None:
            raise ValueError("node_attr_target is only used with pos_target and node_attr")
        return indices_checked

    @staticmethod
    def _check_attr(name: str, value: Tensor | None, ftype: FieldType | None, rows: int) -> None:
        if ftype is None:
            if value is not None:
                raise ValueError(f"{name} was given but the layer was built without a {name}_type")
            return
        if value is None:
            raise ValueError(f"the layer was built with {name}_type={ftype}; pass {name}")
        if value.dim() != 2 or value.shape != (rows, ftype.dim):
            raise ValueError(f"{name} must be ({rows}, {ftype.dim}), got {tuple(value.shape)}")
