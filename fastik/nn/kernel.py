"""ImplicitKernel: a G-equivariant MLP from relative positions (and attributes) to kernel matrices."""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ..groups import FieldType, Rep, TensorProductRep, harmonic_irrep, harmonics, intertwiner_basis, trivial_irrep
from ..ops.structured import HeadTerm, StructuredHead
from ._buffers import constant, register_constant
from ._checks import check_field_type, check_int, check_sigma
from ._compat import CoefficientModule
from .linear import EquivariantLinear, coefficient_view, normal_coefficients_, reset_children
from .nonlinearities import FourierELU, GatedNonlinearity
from .norm import EquivariantNorm
from .packing import PackedGMLP, fusable, pack_gmlp

__all__ = ["ImplicitKernel", "KernelHead", "kernel_irreps"]

_UNDERFLOW = 30 * math.log(10)  # |r|²/2σ² above this: envelope < 1e-30


def kernel_irreps(in_type: FieldType, out_type: FieldType) -> list[Rep]:
    """Distinct irreps the kernel ρout ⊗ ρin contains (trivial first): the hidden fields of the G-MLP."""
    found: list[Rep] = [trivial_irrep(in_type.group.dim)]
    for _, ro in out_type.blocks:
        for _, ri in in_type.blocks:
            for r in ro.tensor_irreps(ri):
                if r not in found:
                    found.append(r)
    return found


def compact_repr(layer: nn.Module, kernel: "ImplicitKernel", options: str = "") -> str:
    """``layer`` (which samples ``kernel``) in at most six lines: types and group, the G-MLP, options,
    parameter count — instead of every sub-module's repr."""
    attrs = [f", {name}={t}" for name, t in (("edge_attr_type", kernel.edge_attr_type),
                                              ("node_attr_type", kernel.node_attr_type)) if t is not None]
    lines = [f"{kernel.in_type} -> {kernel.out_type}, group={kernel.group.name}" + "".join(attrs),
             f"kernel={kernel.describe()}", options, f"parameters={sum(p.numel() for p in layer.parameters()):,}"]
    return f"{type(layer).__name__}(\n" + "".join(f"  {line}\n" for line in lines if line) + ")"


class KernelHead(CoefficientModule):
    """Last G-MLP layer: hidden fields -> ρout ⊗ ρin, returned as a (Dout, H+1, Din) weight.

    ``weight()[:, :H, :]`` maps the last hidden activation h (H = hidden_type.dim)
    to the kernel: ``K[o, c] = Σ_k W[o, k, c] h_k + W[o, H, c]``; the last slice is
    the bias, which lives only on the G-invariant kernels (the column of ones in
    h̃ = [h; 1], docs/design.md §5).
    """

    def __init__(self, hidden_type: FieldType, in_type: FieldType, out_type: FieldType) -> None:
        super().__init__()
        group = in_type.group
        self.hidden_type, self.in_type, self.out_type = hidden_type, in_type, out_type
        self.weights = nn.ParameterDict()
        self._triples: list[tuple[int, int, int]] = []
        self._init_std: dict[str, float] = {}
        for o, (mo, ro) in enumerate(out_type.blocks):
            fan_in, names = 0.0, []
            for i, (mi, ri) in enumerate(in_type.blocks):
                tp = TensorProductRep(ro, ri)
                sources = list(enumerate(hidden_type.blocks)) + [(len(hidden_type.blocks), (1, trivial_irrep(group.dim)))]
                for h, (mh, rh) in sources:
                    basis = intertwiner_basis(group, tp, rh)
                    if len(basis) == 0:
                        continue
                    name = f"{o}_{i}_{h}"
                    basis = basis.reshape(len(basis), ro.dim, ri.dim, rh.dim)
                    register_constant(self, f"basis_{name}", basis)
                    self.weights[name] = nn.Parameter(torch.empty(mo, mi, mh, len(basis)))
                    self._triples.append((o, i, h))
                    names.append(name)
                    fan_in += mi * mh * len(basis) / ro.dim
            self._init_std.update({name: 1 / math.sqrt(fan_in) for name in names})
        self._slices = (out_type.slices(), in_type.slices(), hidden_type.slices() + [slice(hidden_type.dim, hidden_type.dim + 1)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the coefficients as at construction: N(0, 1 / fan-in of the output block)."""
        normal_coefficients_(self.weights, self._init_std)

    def structured(self, dtype: torch.dtype) -> StructuredHead:
        """W̃ as blocks (coefficients × intertwiner basis of ρh -> ρout ⊗ ρin), no structural zeros."""
        so, si, sh = self._slices
        terms = [HeadTerm(so[o], si[i], sh[h], coefficient_view(self.weights[f"{o}_{i}_{h}"]),
                          constant(self, f"basis_{o}_{i}_{h}", dtype))
                 for o, i, h in self._triples]
        return StructuredHead(self.out_type.dim, self.hidden_type.dim + 1, self.in_type.dim, terms)

    def weight(self, dtype: torch.dtype) -> Tensor:
        """(Dout, H+1, Din) dense weight W̃ (zeros where Schur's lemma forbids a connection)."""
        return self.structured(dtype).dense(dtype)


class ImplicitKernel(nn.Module):
    """The implicit kernel k(r, z) : R^dim -> R^{Dout × Din} as a G-MLP (paper §3.1–3.2).

    G = ``in_type.group`` acts on r by the standard representation and on the
    kernel by ``k(g r) = ρout(g) k(r) ρin(g)ᵀ``.  Input fields, in order: r
    (``1o`` / ``1``), |r| (``0e`` / ``0``), the harmonic embedding Y_l(r/|r|) for
    l = 2..``harmonics``, edge attributes, node attributes of the target, node
    attributes of the source.  Then ``hidden_layers`` × [EquivariantLinear ->
    EquivariantNorm (optional) -> nonlinearity], then :class:`KernelHead`.

    Args:
        hidden_channels: copies of each hidden irrep (gate) / sphere functions (fourier_elu).
        nonlinearity: ``"gate"`` (exact for every G) or ``"fourier_elu"`` (the paper's).
        harmonics: largest harmonic degree fed in; default: the largest degree in ρout ⊗ ρin.
        sigma: initial width of the Gaussian envelope exp(-|r|²/2σ²) (learned), in the units of the
            positions; None: no envelope.
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, edge_attr_type: FieldType | None = None,
                 node_attr_type: FieldType | None = None, hidden_channels: int = 16, hidden_layers: int = 2,
                 nonlinearity: str = "gate", harmonics: int | None = None, norm: bool = True,
                 sigma: float | None = 1.0) -> None:
        super().__init__()
        check_field_type(in_type, "in_type")
        check_field_type(out_type, "out_type")
        check_field_type(edge_attr_type, "edge_attr_type", optional=True)
        check_field_type(node_attr_type, "node_attr_type", optional=True)
        group = in_type.group
        for name, t in (("out_type", out_type), ("edge_attr_type", edge_attr_type), ("node_attr_type", node_attr_type)):
            if t is not None and t.group is not group:
                raise ValueError(f"{name} belongs to {t.group.name}, in_type to {group.name}: use one group")
        hidden_channels = check_int(hidden_channels, "hidden_channels", 1)
        hidden_layers = check_int(hidden_layers, "hidden_layers", 0)
        harmonics = check_int(harmonics, "harmonics", 0, optional=True)
        sigma = check_sigma(sigma)
        if nonlinearity not in ("gate", "fourier_elu"):
            raise ValueError(f"nonlinearity must be 'gate' or 'fourier_elu', got {nonlinearity!r}")
        self.group, self.in_type, self.out_type = group, in_type, out_type
        self.hidden_channels, self.hidden_layers, self.nonlinearity, self.norm = (hidden_channels, hidden_layers,
                                                                                  nonlinearity, norm)
        self.edge_attr_type, self.node_attr_type = edge_attr_type, node_attr_type
        irreps = kernel_irreps(in_type, out_type)
        lmax = max(r.degree for r in irreps)
        self.harmonics = lmax if harmonics is None else harmonics
        self.input_type = self._input_type()
        layers: list[nn.Module] = []
        t = self.input_type
        for _ in range(hidden_layers):
            if nonlinearity == "gate":
                act: nn.Module = GatedNonlinearity(FieldType(group, [(hidden_channels, r) for r in irreps]))
            else:
                act = FourierELU(group, hidden_channels, max(lmax, 1))
            layers.append(EquivariantLinear(t, act.in_type))
            if norm:
                layers.append(EquivariantNorm(act.in_type))
            layers.append(act)
            t = act.out_type
        self.mlp = nn.Sequential(*layers)
        self.hidden_type = t
        self.head = KernelHead(t, in_type, out_type)
        self.initial_sigma = sigma
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma))) if sigma is not None else None

    def describe(self) -> str:
        """One line: the G-MLP's hyper-parameters and the envelope width (its current, learned value)."""
        sigma = self.log_sigma
        width = "None" if sigma is None else "?" if sigma.is_meta else f"{math.exp(sigma.item()):.4g}"
        return (f"G-MLP(hidden_channels={self.hidden_channels}, hidden_layers={self.hidden_layers}, "
                f"nonlinearity={self.nonlinearity}, norm={self.norm}, harmonics={self.harmonics}, sigma={width})")

    def __repr__(self) -> str:
        return compact_repr(self, self)

    def reset_parameters(self) -> None:
        """Re-draw every parameter as at construction (same draws for the same seed); sigma back to its initial value."""
        reset_children(self)
        if self.log_sigma is not None:
            with torch.no_grad():
                self.log_sigma.fill_(math.log(self.initial_sigma))

    def _input_type(self) -> FieldType:
        g = self.group
        degrees = [1, 0] + list(range(2, self.harmonics + 1))  # r (the standard rep), |r|, Y_l(r/|r|)
        t = FieldType(g, [(1, harmonic_irrep(g.dim, l)) for l in degrees])
        for extra in (self.edge_attr_type, self.node_attr_type, self.node_attr_type):
            if extra is not None:
                t = t + extra
        return t

    @property
    def fusable(self) -> bool:
        """Whether :meth:`packed` applies: every hidden nonlinearity is a gate."""
        return fusable(self)

    def packed(self, dtype: torch.dtype) -> PackedGMLP:
        """The G-MLP and head as the padded dense tensors of the fully fused op (backend="fused");
        differentiable w.r.t. the parameters.  Gate nonlinearity only."""
        return pack_gmlp(self, dtype)

    def embed(self, r: Tensor, edge_attr: Tensor | None = None, node_attr_target: Tensor | None = None,
              node_attr_source: Tensor | None = None) -> Tensor:
        """Kernel input (E, input_type.dim) from r (E, dim) and attributes."""
        norm = r.norm(dim=-1, keepdim=True)
        unit = r / norm.clamp_min(1e-12)
        parts = [r, norm] + [harmonics(l, unit) for l in range(2, self.harmonics + 1)]
        parts += [a for a in (edge_attr, node_attr_target, node_attr_source) if a is not None]
        return torch.cat(parts, -1)

    def check_envelope(self, r: Tensor) -> None:
        """Warn when the envelope is below 1e-30 on every edge r (E, dim) of non-zero length.

        Then the messages vanish and a convolution returns its bias (plus self-loops): the
        positions are in other units than sigma.  One reduction over E; on CUDA one host sync.
        """
        if self.log_sigma is None or r.shape[0] == 0:
            return
        r2 = r.detach().pow(2).sum(-1)
        far = r2 > 0
        shortest = torch.where(far, r2, torch.inf).min()
        if bool(far.any() & (0.5 * shortest * torch.exp(-2 * self.log_sigma.detach()) > _UNDERFLOW)):
            warnings.warn(f"every edge (but self-loops) is at least {shortest.sqrt().item():.3g} long and the "
                          f"envelope width is sigma={self.log_sigma.exp().item():.3g}: the envelope exp(-|r|²/2σ²) "
                          "is below 1e-30 on all of them, so the messages vanish and the output is the bias; rescale "
                          "the positions (neighbours about sigma apart) or build the layer with a larger sigma= or "
                          "sigma=None",
                          RuntimeWarning, stacklevel=2)

    def envelope(self, r: Tensor) -> Tensor:
        """exp(-|r|²/2σ²): (E, dim) -> (E,) (ones without an envelope)."""
        if self.log_sigma is None:
            return r.new_ones(r.shape[0])
        return torch.exp(-0.5 * r.pow(2).sum(-1) * torch.exp(-2 * self.log_sigma))

    def hidden(self, r: Tensor, edge_attr: Tensor | None = None, node_attr_target: Tensor | None = None,
               node_attr_source: Tensor | None = None) -> Tensor:
        """Last hidden activation h (E, H) of the G-MLP."""
        return self.mlp(self.embed(r, edge_attr, node_attr_target, node_attr_source))

    def forward(self, r: Tensor, edge_attr: Tensor | None = None, node_attr_target: Tensor | None = None,
                node_attr_source: Tensor | None = None) -> Tensor:
        """Materialised kernel (E, Dout, Din), envelope included — for inspection and tests.

        The convolution never calls this: it contracts h with the weight directly.
        """
        h = self.hidden(r, edge_attr, node_attr_target, node_attr_source)
        h1 = torch.cat([h, h.new_ones(h.shape[0], 1)], -1) * self.envelope(r)[:, None]
        return torch.einsum("okc,ek->eoc", self.head.weight(h.dtype), h1)
