"""ImplicitPointConv: steerable message passing with an implicit G-MLP kernel (paper Eq. 5)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..groups import FieldType
from ..ops import dispatch
from ..ops.aggregate import CSR
from .kernel import ImplicitKernel
from .linear import invariant_bias

__all__ = ["ImplicitPointConv"]


class ImplicitPointConv(nn.Module):
    """Point convolution ``y_i = Σ_{e=(j→i)} k(pos_j - pos_i, z_ij, z_i, z_j) x_j`` with an implicit kernel.

    G = ``in_type.group`` (any point group of :func:`fastik.group`) acts on
    positions by ``pos -> pos @ g.T``, on features by ``x -> x @ ρ(g).T``, and
    ``conv(x ρin(g)ᵀ, pos gᵀ, ei) = conv(x, pos, ei) ρout(g)ᵀ``.

    Shapes (forward):
        x (N, in_type.dim), pos (N, G.dim), edge_index (2, E) int64 with row 0 the
        source j and row 1 the target i, edge vector r_e = pos[j] - pos[i];
        edge_attr (E, edge_attr_type.dim); node_attr (N, node_attr_type.dim) fed to
        the kernel for both ends; pos_target (M, G.dim) for bipartite use (targets
        index pos_target; then node attributes of targets come from
        ``node_attr_target`` (M, ·)).  ``csr``: optional
        :func:`fastik.ops.aggregate.build_csr` of ``edge_index[1]``, built once per
        graph and shared by its layers, for deterministic target-ordered
        aggregation.  Returns y (N or M, out_type.dim).

    Args:
        aggr: ``"sum"`` (default) or ``"mean"`` over incoming edges.
        backend: ``"reference"`` (plain torch, the paper's algorithm in chunks),
            ``"triton"`` (fused kernels; CUDA, or CPU under TRITON_INTERPRET=1) or
            ``"auto"``.  A run-time choice: it changes no parameter or state_dict key.
        avg_degree: expected number of incoming edges d; messages are scaled by 1/√d
            (sum) or √d (mean) so that outputs start with roughly unit variance.
        chunk_size: edges per chunk on the reference backend (None: automatic).
        mlp_chunk_size: in training, the kernel G-MLP runs in chunks of this many
            edges and is recomputed in backward (activation checkpointing), so only
            its (E, H+1) output is stored, not every hidden activation.
        precision: matmul precision of the triton backend: ``"ieee"`` (fp32, default),
            ``"tf32"`` (TF32 tensor cores, ≈1e-3 relative error) or ``"tf32x3"``
            (three TF32 passes, ≈fp32 accuracy).  float64 needs the reference backend.
        bias: learn a bias on the G-invariant output channels.
        **kernel_kwargs: passed to :class:`ImplicitKernel` (nonlinearity, harmonics, norm, sigma).
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, edge_attr_type: FieldType | None = None,
                 node_attr_type: FieldType | None = None, hidden_channels: int = 16, hidden_layers: int = 2,
                 aggr: str = "sum", backend: str = "auto", *, avg_degree: float = 16.0,
                 chunk_size: int | None = None, mlp_chunk_size: int = 65536, bias: bool = True,
                 precision: str = "ieee", **kernel_kwargs) -> None:
        super().__init__()
        if aggr not in ("sum", "mean"):
            raise ValueError(f"aggr must be 'sum' or 'mean', got {aggr!r}")
        dispatch.check_backend(backend)
        if avg_degree <= 0:
            raise ValueError(f"avg_degree must be positive, got {avg_degree}")
        self.in_type, self.out_type = in_type, out_type
        self.edge_attr_type, self.node_attr_type = edge_attr_type, node_attr_type
        if precision not in ("ieee", "tf32", "tf32x3"):
            raise ValueError(f"precision must be 'ieee', 'tf32' or 'tf32x3', got {precision!r}")
        if mlp_chunk_size < 1:
            raise ValueError(f"mlp_chunk_size must be >= 1, got {mlp_chunk_size}")
        self.aggr, self.backend, self.chunk_size, self.precision = aggr, backend, chunk_size, precision
        self.mlp_chunk_size = mlp_chunk_size
        self.kernel = ImplicitKernel(in_type, out_type, edge_attr_type, node_attr_type, hidden_channels,
                                     hidden_layers, **kernel_kwargs)
        self.scale = avg_degree ** (-0.5 if aggr == "sum" else 0.5)
        self.bias = invariant_bias(out_type, bias)

    def extra_repr(self) -> str:
        return f"{self.in_type} -> {self.out_type}, group={self.in_type.group.name}, aggr={self.aggr}, backend={self.backend}"

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None,
                node_attr: Tensor | None = None, pos_target: Tensor | None = None,
                node_attr_target: Tensor | None = None, csr: CSR | None = None) -> Tensor:
        pos_t = pos if pos_target is None else pos_target
        self._validate(x, pos, edge_index, edge_attr, node_attr, pos_target, node_attr_target)
        src, tgt = edge_index[0], edge_index[1]
        num_targets = pos_t.shape[0]
        r = pos[src] - pos_t[tgt]
        if pos_target is None:  # a self-loop's r is identically 0: its exact derivative is zero, so stop
            r = torch.where((src == tgt)[:, None], r.detach(), r)  # the ±huge terms that cancel only to fp32 round-off
        z_t = None
        if node_attr is not None:
            z_t = (node_attr if pos_target is None else node_attr_target)[tgt]
        parts = (r, edge_attr, z_t, None if node_attr is None else node_attr[src])
        e, step = r.shape[0], self.mlp_chunk_size
        if torch.is_grad_enabled() and e > step:
            h1 = torch.cat([checkpoint(self._edge_features, *[None if p is None else p[i:i + step] for p in parts],
                                       use_reentrant=False) for i in range(0, e, step)])
        else:
            h1 = self._edge_features(*parts)
        weight = self.kernel.head.weight(x.dtype)
        out = dispatch.message_passing(self.backend, h1, x, weight, src, tgt, num_targets, self.chunk_size, csr,
                                       self.precision)
        if self.aggr == "mean":
            deg = torch.bincount(tgt, minlength=num_targets) if csr is None else csr.rowptr.diff()
            out = out / deg.clamp_min(1).to(x.dtype)[:, None]
        return out if self.bias is None else self.bias(out)

    def _edge_features(self, r: Tensor, edge_attr: Tensor | None, z_t: Tensor | None,
                       z_s: Tensor | None) -> Tensor:
        """h̃_e = s(|r_e|)·α·[h_e; 1]: (E, H+1), the per-edge input of the fused operation (DESIGN §5)."""
        h = self.kernel.hidden(r, edge_attr, z_t, z_s)
        s = self.kernel.envelope(r) * self.scale
        return torch.cat([h, h.new_ones(h.shape[0], 1)], -1) * s[:, None]

    def _validate(self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None,
                  node_attr: Tensor | None, pos_target: Tensor | None, node_attr_target: Tensor | None) -> None:
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
        if edge_index.dtype != torch.int64:
            raise TypeError(f"edge_index must be int64 (torch.long), got {edge_index.dtype}")
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
        if e and not torch.compiler.is_compiling():
            src, tgt = edge_index[0], edge_index[1]
            if int(src.min()) < 0 or int(src.max()) >= x.shape[0]:
                raise IndexError(f"edge_index[0] (sources) must be in [0, {x.shape[0]}), got range [{int(src.min())}, {int(src.max())}]")
            if int(tgt.min()) < 0 or int(tgt.max()) >= num_targets:
                raise IndexError(f"edge_index[1] (targets) must be in [0, {num_targets}), got range [{int(tgt.min())}, {int(tgt.max())}]")
        self._check_attr("edge_attr", edge_attr, self.edge_attr_type, e)
        self._check_attr("node_attr", node_attr, self.node_attr_type, x.shape[0])
        if pos_target is not None and node_attr is not None:
            self._check_attr("node_attr_target", node_attr_target, self.node_attr_type, num_targets)
        elif node_attr_target is not None:
            raise ValueError("node_attr_target is only used with pos_target and node_attr")

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
