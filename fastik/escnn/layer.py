"""The escnn drop-in layer :class:`ImplicitPointConv`.

It takes escnn ``FieldType`` s, is an ``escnn.nn.EquivariantModule`` and is called like
escnn's ``R2PointConv`` / ``R3PointConv`` (and like the paper's ``ImplicitPointConv``)::

    conv = fastik.escnn.ImplicitPointConv(in_type, out_type)
    y = conv(x, edge_index)            # x: GeometricTensor with x.coords (N, d); y: GeometricTensor

The escnn types are converted once, at construction (:mod:`fastik.escnn.field_types`),
and the layer runs a plain :class:`fastik.ImplicitPointConv` (every fastik backend is
available): ``y = fastik_layer(x.tensor @ Q_in, coords @ Cᵀ, edge_index) @ Q_out``.
Positions follow escnn: ``edge_delta = pos[row] - pos[col]`` with ``edge_index = (row,
col) = (source j, target i)`` (PyG's source-to-target flow), i.e. ``pos_j - pos_i`` —
fastik's ``r_e`` as well.
"""
from __future__ import annotations

import numpy as np
import torch
from escnn import nn as enn
from torch import Tensor

import fastik
from .. import graphs
from ..nn._buffers import constant, register_constant
from .arguments import EscnnArguments
from .field_types import convert_field_type
from .groups import convert_gspace

__all__ = ["ImplicitPointConv"]


class ImplicitPointConv(enn.EquivariantModule):
    """Steerable point convolution with an implicit G-MLP kernel, as an escnn module.

    A drop-in for escnn's ``R2PointConv`` / ``R3PointConv`` with the signature of the
    paper's ``ImplicitPointConv``: it maps a ``GeometricTensor`` of ``in_type`` (tensor
    (N, in_type.size), coords (N, d)) to one of ``out_type`` on the same points, and is
    equivariant under every element of the gspace's fibre group acting on both the
    features and the coordinates (``GeometricTensor.transform``).

    Normalisation follows escnn's point convolutions: messages are averaged over the
    incoming edges and not rescaled (``aggr="mean"``, ``avg_degree=1``), so outputs have
    escnn's scale; pass ``aggr="sum", avg_degree=d`` for fastik's own convention (sum
    scaled by 1/√d).

    Args:
        in_type, out_type: escnn ``FieldType`` s of one gspace on R² or R³ (any fields,
            non-uniform types included; representations must be orthogonal, as escnn's are).
        edge_attr_type: optional escnn ``FieldType`` of edge attributes fed to the kernel.
        n_layers: linear layers of the kernel G-MLP, the output layer included (the
            paper's convention): fastik's ``hidden_layers = n_layers - 1``.
        n_channels: copies of each hidden irrep (fastik's ``hidden_channels``).
        init_scheme: ``"he"``: fastik's fan-in scaled Gaussian initialisation (the only one).
        knn, radius: how to build edges from ``x.coords`` when ``forward`` gets no
            ``edge_index`` (needed inside ``escnn.nn.SequentialModule``, which passes only x):
            :func:`fastik.graphs.knn_graph` / :func:`fastik.graphs.radius_graph` with
            self-loops (a convolution includes its centre point, as in escnn's own tests).
        aggr, avg_degree: aggregation over incoming edges (see above).
        envelope_sigma: initial σ of fastik's learned Gaussian envelope exp(-|r|²/2σ²)
            (fastik's ``sigma``); None: fastik's default.  escnn's ``width`` sets it too.
        groups, bias, width, sigma, n_rings, rings, frequencies_cutoff, basis_filter,
            recompute, initialize: escnn's arguments, each mapped to a fastik meaning or
            refused with an explanation (:class:`fastik.escnn.arguments.EscnnArguments`).
        **fastik_kwargs: passed to :class:`fastik.ImplicitPointConv` (``backend``,
            ``nonlinearity``, ``harmonics``, ``norm``, ``chunk_size``, ...).

    Attributes:
        fastik: the inner :class:`fastik.ImplicitPointConv` (all parameters live there).
        in_conversion, out_conversion, edge_conversion: :class:`TypeConversion` s.
        group_conversion: :class:`GroupConversion` (fastik group, coordinate change C).
        escnn_arguments: the validated :class:`EscnnArguments`.
    """

    def __init__(self, in_type, out_type, edge_attr_type=None, n_layers: int = 2, n_channels: int = 16,
                 init_scheme: str = "he", *, knn: int | None = None, radius: float | None = None,
                 aggr: str = "mean", avg_degree: float = 1.0, envelope_sigma: float | None = None,
                 groups: int = 1, bias: bool = True, width: float | None = None, sigma=None,
                 n_rings: int | None = None, rings=None, frequencies_cutoff=None, basis_filter=None,
                 recompute: bool = False, initialize: bool = True, **fastik_kwargs) -> None:
        super().__init__()
        EscnnArguments.refuse_grid_arguments(fastik_kwargs)
        args = EscnnArguments(groups=groups, bias=bias, width=width, sigma=sigma, n_rings=n_rings, rings=rings,
                              frequencies_cutoff=frequencies_cutoff, basis_filter=basis_filter,
                              recompute=recompute, initialize=initialize)
        for name, t in (("in_type", in_type), ("out_type", out_type), ("edge_attr_type", edge_attr_type)):
            if t is not None and not isinstance(t, enn.FieldType):
                raise TypeError(f"{name} must be an escnn FieldType, got {type(t).__name__}")
        if out_type.gspace != in_type.gspace or (edge_attr_type is not None and edge_attr_type.gspace != in_type.gspace):
            raise ValueError("in_type, out_type and edge_attr_type must belong to the same gspace")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers (linear layers of the kernel MLP, output layer included) must be >= 1, got {n_layers}")
        if init_scheme != "he":
            raise ValueError(f"init_scheme must be 'he' (fastik's fan-in scaled initialisation), got {init_scheme!r}")
        if "hidden_layers" in fastik_kwargs or "hidden_channels" in fastik_kwargs:
            raise TypeError("pass n_layers / n_channels (escnn-style names) instead of hidden_layers / hidden_channels")
        if knn is not None and radius is not None:
            raise ValueError("give at most one of knn and radius")
        self.in_type, self.out_type, self.edge_attr_type = in_type, out_type, edge_attr_type
        self.space = in_type.gspace
        self.d = self.space.dimensionality
        self.knn, self.radius = knn, radius
        self.n_layers, self.n_channels, self.init_scheme = n_layers, n_channels, init_scheme
        self.escnn_arguments = args
        self.group_conversion = convert_gspace(self.space, args.recompute)
        gc = self.group_conversion
        self.in_conversion = convert_field_type(in_type, gc, args.recompute)
        self.out_conversion = convert_field_type(out_type, gc, args.recompute)
        self.edge_conversion = None if edge_attr_type is None else convert_field_type(edge_attr_type, gc, args.recompute)
        envelope = args.envelope_sigma(envelope_sigma)
        if envelope is not None:
            fastik_kwargs["sigma"] = envelope
        self.fastik = fastik.ImplicitPointConv(
            self.in_conversion.fastik_type, self.out_conversion.fastik_type,
            None if self.edge_conversion is None else self.edge_conversion.fastik_type,
            hidden_channels=n_channels, hidden_layers=n_layers - 1, aggr=aggr, avg_degree=avg_degree, bias=args.bias,
            **fastik_kwargs)
        if not args.initialize:  # escnn leaves its kernel weights at zero: the kernel's output layer starts at zero
            with torch.no_grad():
                for p in self.fastik.kernel.head.parameters():
                    p.zero_()
        register_constant(self, "in_change", self.in_conversion.matrix.T)    # x_fastik = x @ in_change
        register_constant(self, "out_change", self.out_conversion.matrix)    # y = y_fastik @ out_change
        if self.edge_conversion is not None:
            register_constant(self, "edge_change", self.edge_conversion.matrix.T)
        self._move_coords = not gc.identity_coords
        if self._move_coords:
            register_constant(self, "coords_change", gc.coords.T)  # pos_fastik = pos @ Cᵀ

    # --- conversions, public so that the inner fastik layer can be used (and tested) directly ---

    @property
    def padding(self) -> tuple[int, int]:
        """Unused dimensions of the fastik (input, output) types (see :class:`TypeConversion`)."""
        return self.in_conversion.padding, self.out_conversion.padding

    def to_fastik(self, x: Tensor) -> Tensor:
        """escnn features (…, in_type.size) -> fastik features (…, fastik.in_type.dim)."""
        return x @ constant(self, "in_change", x.dtype)

    def from_fastik(self, y: Tensor) -> Tensor:
        """fastik output features (…, fastik.out_type.dim) -> escnn features (…, out_type.size)."""
        return y @ constant(self, "out_change", y.dtype)

    def coords_to_fastik(self, pos: Tensor) -> Tensor:
        """escnn coordinates (…, d) -> fastik coordinates (identity unless the gspace's axis is not z)."""
        return pos @ constant(self, "coords_change", pos.dtype) if self._move_coords else pos

    def edge_attr_to_fastik(self, edge_attr: Tensor) -> Tensor:
        return edge_attr @ constant(self, "edge_change", edge_attr.dtype)

    # --- escnn module API ---

    def forward(self, x, edge_index: Tensor | None = None, edge_delta: Tensor | None = None,
                edge_attr: Tensor | None = None, *, idx_downsampled: Tensor | None = None):
        """Convolve; returns a ``GeometricTensor`` of ``out_type``.

        Args:
            x: ``GeometricTensor`` of ``in_type``; ``x.coords`` (N, d) holds the positions.
            edge_index: (2, E) int64, row 0 the source j, row 1 the target i (PyG / escnn).
                None: built from ``x.coords`` with the layer's ``knn`` / ``radius`` rule.
            edge_delta: (E, d) relative positions; default ``coords[j] - coords[i]`` (escnn's).
            edge_attr: (E, edge_attr_type.size) tensor or ``GeometricTensor`` of ``edge_attr_type``.
            idx_downsampled: (M,) indices of the target points (the paper's downsampling
                variant): targets index ``coords[idx_downsampled]`` and the output lives there.
        """
        if not isinstance(x, enn.GeometricTensor):
            raise TypeError(f"x must be an escnn GeometricTensor, got {type(x).__name__}")
        if x.type != self.in_type:
            raise ValueError(f"x has type {x.type}, the layer expects {self.in_type}")
        if x.tensor.dim() != 2:
            raise ValueError(f"point convolutions take (N, C) tensors, got {tuple(x.tensor.shape)}")
        coords = x.coords
        if coords is None and (edge_delta is None or edge_index is None or idx_downsampled is not None):
            raise ValueError("x.coords is None: give the GeometricTensor coordinates (N, d), "
                             "or pass both edge_index and edge_delta")
        coords_out = None if coords is None else (coords if idx_downsampled is None else coords[idx_downsampled])
        if edge_index is None:
            edge_index = self._build_graph(coords, idx_downsampled)
        if self.edge_attr_type is not None:
            if isinstance(edge_attr, enn.GeometricTensor):
                if edge_attr.type != self.edge_attr_type:
                    raise ValueError(f"edge_attr has type {edge_attr.type}, the layer expects {self.edge_attr_type}")
                edge_attr = edge_attr.tensor
            if edge_attr is None:
                raise ValueError(f"the layer was built with edge_attr_type={self.edge_attr_type}; pass edge_attr")
            if edge_attr.dim() != 2 or edge_attr.shape[-1] != self.edge_attr_type.size:
                raise ValueError(f"edge_attr must be (E, {self.edge_attr_type.size}), got {tuple(edge_attr.shape)}")
            edge_attr = self.edge_attr_to_fastik(edge_attr)
        elif edge_attr is not None:
            raise ValueError("edge_attr was given but the layer was built without edge_attr_type")
        xf = self.to_fastik(x.tensor)
        if edge_delta is None:
            pos = self.coords_to_fastik(coords)
            pos_t = None if idx_downsampled is None else pos[idx_downsampled]
            y = self.fastik(xf, pos, edge_index, edge_attr, pos_target=pos_t)
        else:
            # explicit relative positions: one virtual source per edge at r_e, targets at the origin,
            # so that the fastik layer's r = pos[src] - pos_target[tgt] is exactly edge_delta
            if edge_delta.shape != (edge_index.shape[1], self.d):
                raise ValueError(f"edge_delta must be (E, {self.d}) = ({edge_index.shape[1]}, {self.d}), got {tuple(edge_delta.shape)}")
            num_targets = x.tensor.shape[0] if idx_downsampled is None else idx_downsampled.shape[0]
            src, tgt = edge_index[0], edge_index[1]
            virtual = torch.stack([torch.arange(src.shape[0], device=src.device), tgt])
            origin = edge_delta.new_zeros(num_targets, self.d)
            y = self.fastik(xf[src], self.coords_to_fastik(edge_delta), virtual, edge_attr, pos_target=origin)
        return enn.GeometricTensor(self.from_fastik(y), self.out_type, coords=coords_out)

    def _build_graph(self, coords: Tensor, idx_downsampled: Tensor | None) -> Tensor:
        """The layer's graph rule on ``coords`` (self-loops included); targets ``idx_downsampled`` if given."""
        if self.radius is not None:
            edges = graphs.radius_graph(coords, self.radius, loop=True)
        elif self.knn is not None:
            edges = graphs.knn_graph(coords, self.knn, loop=True)
        else:
            raise ValueError("no edge_index given and the layer has no graph rule: pass edge_index, or build the "
                             "layer with radius=... or knn=... (needed inside escnn.nn.SequentialModule)")
        if idx_downsampled is None:
            return edges
        # keep the edges into the chosen targets, renumbered as positions in idx_downsampled
        slot = torch.full((coords.shape[0],), -1, dtype=torch.int64, device=coords.device)
        slot[idx_downsampled] = torch.arange(idx_downsampled.shape[0], device=coords.device)
        tgt = slot[edges[1]]
        keep = tgt >= 0
        return torch.stack([edges[0][keep], tgt[keep]])

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        if len(input_shape) < 2 or input_shape[1] != self.in_type.size:
            raise ValueError(f"expected an input shape (N, {self.in_type.size}), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size, *input_shape[2:])

    def check_equivariance(self, atol: float = 1e-5, rtol: float = 5e-6, assertion: bool = True,
                           verbose: bool = False, points: int = 30) -> list:
        """Equivariance on a random point cloud for every testing element of the gspace (escnn's protocol).

        The transformed clouds of all testing elements are evaluated as one batch of disjoint
        copies of the graph (one forward, the same per-cloud computation as one forward each).
        Returns [(element, mean absolute error)]; with ``assertion`` raises AssertionError when an
        error exceeds ``atol + rtol·|output|``.
        """
        param = next(self.parameters())
        gen = torch.Generator().manual_seed(0)
        pos = torch.randn(points, self.d, generator=gen, dtype=param.dtype).to(param.device)
        feats = torch.randn(points, self.in_type.size, generator=gen, dtype=param.dtype).to(param.device)
        x = enn.GeometricTensor(feats, self.in_type, pos)
        dist = torch.cdist(pos, pos)
        thr = sorted(dist.reshape(-1).tolist())[points * points // 16]
        edge_index = (dist < thr).nonzero().T.contiguous()
        edge_attr = None
        if self.edge_attr_type is not None:
            ea = torch.randn(edge_index.shape[1], self.edge_attr_type.size, generator=gen, dtype=param.dtype)
            delta = pos[edge_index[0]] - pos[edge_index[1]]  # escnn wants coordinates for (E, C) tensors
            edge_attr = enn.GeometricTensor(ea.to(param.device), self.edge_attr_type, delta)
        elements = list(self.space.testing_elements)
        moved = [x.transform(el) for el in elements]
        batch = enn.GeometricTensor(torch.cat([m.tensor for m in moved]), self.in_type,
                                    torch.cat([m.coords for m in moved]))
        batch_edges = torch.cat([edge_index + k * points for k in range(len(elements))], 1)
        batch_attr = None if edge_attr is None else torch.cat([edge_attr.transform_fibers(el).tensor for el in elements])
        errors = []
        with torch.no_grad():
            y = self(x, edge_index, edge_attr=edge_attr)
            y_moved = self(batch, batch_edges, edge_attr=batch_attr).tensor.reshape(len(elements), points, -1)
            for el, out2 in zip(elements, y_moved.cpu().numpy()):
                out1 = y.transform(el).tensor.cpu().numpy()
                errs = np.abs(out1 - out2)
                tol = rtol * np.maximum(np.abs(out1), np.abs(out2)) + atol
                if verbose and np.any(errs > tol):
                    print(el, errs.max())
                if assertion:
                    assert np.all(errs <= tol), (f'The error found during equivariance check with element "{el}" is too '
                                                 f"high: max = {errs.max()}, mean = {errs.mean()} var ={errs.var()}")
                errors.append((el, float(errs.mean())))
        return errors

    def extra_repr(self) -> str:
        pad = self.padding
        s = f"{self.in_type} -> {self.out_type}, group={self.group_conversion.group.name}"
        if any(pad):
            s += f", padding={pad}"
        if self.radius is not None:
            s += f", radius={self.radius}"
        if self.knn is not None:
            s += f", knn={self.knn}"
        return s
