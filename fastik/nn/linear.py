"""EquivariantLinear: the general G-equivariant linear map between two field types."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..groups import FieldType, intertwiner_basis, trivial_irrep
from ..ops.structured import LinearTerm, StructuredLinear
from ._buffers import constant, register_constant
from ._checks import check_field_type
from ._compat import CoefficientModule

__all__ = ["EquivariantLinear", "InvariantBias", "invariant_bias", "trivial_irrep", "invariant_basis"]


def invariant_basis(field_type: FieldType) -> Tensor:
    """Orthonormal basis (t, field_type.dim) float64 of the G-invariant vectors of a field type."""
    rows = []
    for (m, r), sl in zip(field_type.blocks, field_type.slices()):
        inv = intertwiner_basis(field_type.group, r, trivial_irrep(field_type.group.dim))[..., 0]  # (t0, d)
        for u in range(m):
            block = torch.zeros(len(inv), field_type.dim, dtype=torch.float64)
            block[:, sl.start + u * r.dim: sl.start + (u + 1) * r.dim] = inv
            rows.append(block)
    return torch.cat(rows) if rows else torch.zeros(0, field_type.dim, dtype=torch.float64)


def reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters()`` of every sub-module that has one (recursing into those that do not),
    in registration order — the order in which their constructors drew random numbers."""
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)


def coefficient_view(weight: Tensor) -> Tensor:
    """``weight`` as a view whose gradient has the parameter's own (contiguous) strides.

    Backward through permutes and einsums of a parameter with size-1 dimensions yields gradients with
    odd strides on those dimensions, which autograd stores as they are and DistributedDataParallel warns
    about ("Grad strides do not match bucket view strides"); flattening and viewing back re-strides them.
    """
    return weight.reshape(-1).view(weight.shape)


def normal_coefficients_(weights: nn.ParameterDict, std: dict[str, float]) -> None:
    """Draw each coefficient tensor, in order, from N(0, std[name]²) in place."""
    with torch.no_grad():
        for name, w in weights.items():
            w.normal_(0.0, std[name])


class InvariantBias(CoefficientModule):
    """A learned bias on the G-invariant subspace of ``field_type``: ``y = x + b``, ρ(g) b = b.

    Shapes: (..., field_type.dim) -> same.  Parameter ``coefficients`` (t,), zero at init.
    """

    def __init__(self, field_type: FieldType) -> None:
        super().__init__()
        self.field_type = field_type
        basis = invariant_basis(field_type)
        register_constant(self, "basis", basis)
        self.coefficients = nn.Parameter(torch.zeros(len(basis)))

    def reset_parameters(self) -> None:
        """Zero the bias (its value at construction)."""
        with torch.no_grad():
            self.coefficients.zero_()

    def bias(self, dtype: torch.dtype) -> Tensor:
        """(field_type.dim,) the bias vector."""
        return self.coefficients.to(dtype) @ constant(self, "basis", dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., field_type.dim) -> x + b, same shape."""
        return x + self.bias(x.dtype)


def invariant_bias(field_type: FieldType, enabled: bool = True) -> InvariantBias | None:
    """An :class:`InvariantBias` for ``field_type``, or None when disabled or G fixes no vector of it."""
    if not enabled:
        return None
    bias = InvariantBias(field_type)
    return bias if len(bias.coefficients) else None


class EquivariantLinear(CoefficientModule):
    """``y = x Wᵀ + b`` with W a learned combination of G-intertwiners (and b invariant).

    G acts on the input by ``in_type.representation(g)`` and on the output by
    ``out_type.representation(g)``; ``W ρin(g) = ρout(g) W`` for all g ∈ G.
    The bias lives only on the G-invariant subspace of the output.

    Shapes: x (..., in_type.dim) -> y (..., out_type.dim).
    Parameters: ``weights[f"{o}_{i}"]`` (mul_out, mul_in, t) per pair of blocks with
    t > 0 intertwiners; ``bias`` an :class:`InvariantBias` (or None).  Initialised so
    that unit variance inputs give outputs of variance ``gain``.
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, bias: bool = True, gain: float = 1.0) -> None:
        super().__init__()
        check_field_type(in_type, "in_type")
        check_field_type(out_type, "out_type")
        if in_type.group is not out_type.group:
            raise ValueError("in_type and out_type must belong to the same group")
        self.in_type, self.out_type = in_type, out_type
        group = in_type.group
        self.weights = nn.ParameterDict()
        self._pairs: list[tuple[int, int]] = []
        self._init_std: dict[str, float] = {}
        self._in_slices, self._out_slices = in_type.slices(), out_type.slices()
        for o, (mo, ro) in enumerate(out_type.blocks):
            fan_in, names = 0.0, []
            for i, (mi, ri) in enumerate(in_type.blocks):
                basis = intertwiner_basis(group, ro, ri)
                if len(basis) == 0:
                    continue
                register_constant(self, f"basis_{o}_{i}", basis)
                self.weights[f"{o}_{i}"] = nn.Parameter(torch.empty(mo, mi, len(basis)))
                self._pairs.append((o, i))
                names.append(f"{o}_{i}")
                fan_in += mi * len(basis) / ro.dim
            self._init_std.update({name: math.sqrt(gain / fan_in) for name in names})
        self.bias = invariant_bias(out_type, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the weights as at construction (N(0, gain / fan-in of the output block)), bias zero."""
        normal_coefficients_(self.weights, self._init_std)
        reset_children(self)

    def structured(self, dtype: torch.dtype) -> StructuredLinear:
        """The weight as blocks (coefficients × intertwiner basis): no structural zeros stored."""
        terms = [LinearTerm(self._out_slices[o], self._in_slices[i], coefficient_view(self.weights[f"{o}_{i}"]),
                            constant(self, f"basis_{o}_{i}", dtype)) for o, i in self._pairs]
        return StructuredLinear(self.out_type.dim, self.in_type.dim, terms)

    def weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The dense (out_type.dim, in_type.dim) matrix."""
        dtype = dtype or next(iter(self.parameters()), torch.empty(0)).dtype
        return self.structured(dtype).dense(dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_type.dim) -> y (..., out_type.dim)."""
        if x.shape[-1] != self.in_type.dim:
            raise ValueError(f"EquivariantLinear expects (..., {self.in_type.dim}) inputs, got {tuple(x.shape)}")
        bias = None if self.bias is None else self.bias.bias(x.dtype)
        return self.structured(x.dtype)(x.reshape(-1, x.shape[-1]), bias).reshape(*x.shape[:-1], self.out_type.dim)
