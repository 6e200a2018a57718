"""ImplicitKernel: a G-equivariant MLP from relative positions (and attributes) to kernel matrices."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..groups import (FieldType, O2Irrep, O3Irrep, RegularRep, Rep, TensorProductRep, circular_harmonics,
                      intertwiner_basis, spherical_harmonics)
from ._buffers import constant, register_constant
from .linear import EquivariantLinear, trivial_irrep
from .nonlinearities import FourierELU, GatedNonlinearity
from .norm import EquivariantNorm

__all__ = ["ImplicitKernel", "KernelHead", "kernel_irreps"]


def _product_irreps(a: Rep, b: Rep) -> list[Rep]:
    """O(3) / O(2) irreps in a ⊗ b (Clebsch–Gordan selection rules); regular reps pass through."""
    if isinstance(a, O3Irrep) and isinstance(b, O3Irrep):
        return [O3Irrep(l, a.p * b.p) for l in range(abs(a.l - b.l), a.l + b.l + 1)]
    if isinstance(a, O2Irrep) and isinstance(b, O2Irrep):
        if a.k == 0 or b.k == 0:
            return [O2Irrep(a.k + b.k, a.s * b.s if a.k + b.k == 0 else 1)]
        diff = abs(a.k - b.k)
        low = [O2Irrep(0, 1), O2Irrep(0, -1)] if diff == 0 else [O2Irrep(diff)]
        return low + [O2Irrep(a.k + b.k)]
    return [a if not isinstance(a, (O3Irrep, O2Irrep)) else b]


def harmonic_degree(rep: Rep) -> int:
    """Largest harmonic degree needed to reach ``rep``: l (O(3)), k (O(2)); for the regular
    representation of a finite G the smallest band limit with as many harmonics as |G|
    elements ((l+1)² ≥ |G| in 3D, capped at 6; 2k+1 ≥ |G| in 2D); 0 for other reps."""
    if isinstance(rep, O3Irrep):
        return rep.l
    if isinstance(rep, O2Irrep):
        return rep.k
    if isinstance(rep, RegularRep):
        n = rep.dim
        return min(6, math.ceil(math.sqrt(n)) - 1) if rep.group.dim == 3 else n // 2
    return 0


def kernel_irreps(in_type: FieldType, out_type: FieldType) -> list[Rep]:
    """Distinct irreps the kernel ρout ⊗ ρin contains (trivial first): the hidden fields of the G-MLP."""
    found: list[Rep] = [trivial_irrep(in_type.group.dim)]
    for _, ro in out_type.blocks:
        for _, ri in in_type.blocks:
            for r in _product_irreps(ro, ri):
                if r not in found:
                    found.append(r)
    return found


class KernelHead(nn.Module):
    """Last G-MLP layer: hidden fields -> ρout ⊗ ρin, returned as a (Dout, H+1, Din) weight.

    ``weight()[:, :H, :]`` maps the last hidden activation h (H = hidden_type.dim)
    to the kernel: ``K[o, c] = Σ_k W[o, k, c] h_k + W[o, H, c]``; the last slice is
    the bias, which lives only on the G-invariant kernels (the column of ones in
    h̃ = [h; 1], DESIGN §5).
    """

    def __init__(self, hidden_type: FieldType, in_type: FieldType, out_type: FieldType) -> None:
        super().__init__()
        group = in_type.group
        self.hidden_type, self.in_type, self.out_type = hidden_type, in_type, out_type
        self.weights = nn.ParameterDict()
        self._triples: list[tuple[int, int, int]] = []
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
                    register_constant(self, f"basis_{name}", basis.reshape(len(basis), ro.dim, ri.dim, rh.dim))
                    self.weights[name] = nn.Parameter(torch.randn(mo, mi, mh, len(basis)))
                    self._triples.append((o, i, h))
                    names.append(name)
                    fan_in += mi * mh * len(basis) / ro.dim
            for name in names:
                self.weights[name].data.mul_(1 / math.sqrt(fan_in))
        self._slices = (out_type.slices(), in_type.slices(), hidden_type.slices() + [slice(hidden_type.dim, hidden_type.dim + 1)])

    def weight(self, dtype: torch.dtype) -> Tensor:
        """(Dout, H+1, Din) dense weight W̃ (zeros where Schur's lemma forbids a connection)."""
        so, si, sh = self._slices
        dev = next(self.parameters()).device if len(self.weights) else None
        w = torch.zeros(self.out_type.dim, self.hidden_type.dim + 1, self.in_type.dim, dtype=dtype, device=dev)
        for o, i, h in self._triples:
            name = f"{o}_{i}_{h}"
            coef = self.weights[name].to(dtype)
            block = torch.einsum("uvwt,taib->uawbvi", coef, constant(self, f"basis_{name}", dtype))
            u, a, ww, b, v, ii = block.shape
            w[so[o], sh[h], si[i]] = block.reshape(u * a, ww * b, v * ii)
        return w


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
        sigma: initial width of the Gaussian envelope exp(-|r|²/2σ²) (learned); None: no envelope.
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, edge_attr_type: FieldType | None = None,
                 node_attr_type: FieldType | None = None, hidden_channels: int = 16, hidden_layers: int = 2,
                 nonlinearity: str = "gate", harmonics: int | None = None, norm: bool = True,
                 sigma: float | None = 1.0) -> None:
        super().__init__()
        group = in_type.group
        for name, t in (("out_type", out_type), ("edge_attr_type", edge_attr_type), ("node_attr_type", node_attr_type)):
            if t is not None and t.group is not group:
                raise ValueError(f"{name} belongs to {t.group.name}, in_type to {group.name}: use one group")
        if hidden_channels < 1 or hidden_layers < 0:
            raise ValueError(f"need hidden_channels >= 1 and hidden_layers >= 0, got {hidden_channels}, {hidden_layers}")
        if nonlinearity not in ("gate", "fourier_elu"):
            raise ValueError(f"nonlinearity must be 'gate' or 'fourier_elu', got {nonlinearity!r}")
        self.group, self.in_type, self.out_type = group, in_type, out_type
        self.edge_attr_type, self.node_attr_type = edge_attr_type, node_attr_type
        irreps = kernel_irreps(in_type, out_type)
        lmax = max(harmonic_degree(r) for r in irreps)
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
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma))) if sigma is not None else None

    def _input_type(self) -> FieldType:
        g = self.group
        if g.dim == 3:
            pos = [(1, O3Irrep(1, -1)), (1, O3Irrep(0, 1))] + [(1, O3Irrep(l, (-1) ** l)) for l in range(2, self.harmonics + 1)]
        else:
            pos = [(1, O2Irrep(1)), (1, O2Irrep(0))] + [(1, O2Irrep(k)) for k in range(2, self.harmonics + 1)]
        t = FieldType(g, pos)
        for extra in (self.edge_attr_type, self.node_attr_type, self.node_attr_type):
            if extra is not None:
                t = t + extra
        return t

    def embed(self, r: Tensor, edge_attr: Tensor | None = None, node_attr_target: Tensor | None = None,
              node_attr_source: Tensor | None = None) -> Tensor:
        """Kernel input (E, input_type.dim) from r (E, dim) and attributes."""
        norm = r.norm(dim=-1, keepdim=True)
        unit = r / norm.clamp_min(1e-12)
        harm = spherical_harmonics if self.group.dim == 3 else circular_harmonics
        parts = [r, norm] + [harm(l, unit) for l in range(2, self.harmonics + 1)]
        parts += [a for a in (edge_attr, node_attr_target, node_attr_source) if a is not None]
        return torch.cat(parts, -1)

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
