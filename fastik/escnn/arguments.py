"""escnn's point-convolution arguments, each mapped to a fastik meaning or refused.

escnn's ``R2PointConv`` / ``R3PointConv`` take ``groups, bias, sigma, width, n_rings,
frequencies_cutoff, rings, basis_filter, recompute, initialize``.  Most of them describe
escnn's *analytical* kernel basis (Gaussian rings × circular / spherical harmonics),
which fastik replaces by an implicit G-MLP kernel.  :class:`EscnnArguments` holds what
a caller gave and says, for each one, what it becomes in fastik — or raises an error
explaining why it has no counterpart.  The mapping (also in ``docs/escnn.md``):

- ``groups``: 1 only — fastik has no grouped (block-diagonal) point convolution.
- ``bias``: the inner fastik layer's ``bias`` (on the G-invariant output channels).
- ``width``: the kernel's support radius — fastik's Gaussian envelope starts at σ = width / 2.
- ``sigma``: None only — escnn's ring thickness; fastik's kernel has no rings (its own
  envelope σ, a different quantity, is ``envelope_sigma=``).
- ``n_rings``, ``rings``: None only — radial resolution comes from the G-MLP (``n_channels``).
- ``frequencies_cutoff``: None only — fastik feeds harmonics up to ``harmonics=`` at every radius.
- ``basis_filter``: None only — there is no basis of analytical kernels to filter.
- ``recompute``: rebuild the escnn → fastik conversion instead of reusing the cached one.
- ``initialize``: True — fastik's fan-in scaled initialisation; False — the kernel's output
  layer starts at zero, as escnn leaves its ``weights`` (then load a state_dict).
- ``maximum_offset``, ``kernel_size``, ``padding``, ``stride``, ``dilation``, ``padding_mode``:
  arguments of escnn's *grid* convolutions, refused.

escnn-facing defaults of the drop-in (escnn's normalisation): messages are averaged over
incoming edges (``aggr="mean"``) and not rescaled (``avg_degree=1``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["EscnnArguments", "GRID_ARGUMENTS"]

#: escnn grid-convolution (R2Conv / R3Conv) arguments that a point convolution cannot take
GRID_ARGUMENTS = ("kernel_size", "padding", "stride", "dilation", "padding_mode", "maximum_offset")

_BASIS_REASONS = {
    "sigma": "escnn's sigma is the thickness of the Gaussian rings of its analytical radial basis; fastik's "
             "kernel is an MLP of r with no rings, so sigma has no counterpart (fastik's Gaussian envelope width "
             "is another quantity: pass width= for the kernel's support radius or envelope_sigma= for the "
             "envelope's σ)",
    "n_rings": "fastik's kernel is an MLP of r, not a sum over rings: its radial resolution comes from the G-MLP "
               "(n_channels, n_layers); drop n_rings and keep width= for the support radius",
    "rings": "fastik's kernel is an MLP of r, not a sum over rings: drop rings and pass width= (the support "
             "radius) instead",
    "frequencies_cutoff": "fastik feeds the G-MLP harmonics up to one degree at every radius, with no "
                          "radius-dependent cutoff: drop frequencies_cutoff and pass harmonics=<int> to bound "
                          "the degree",
    "basis_filter": "fastik's kernel is an MLP, not a basis of analytical kernels, so there is nothing to filter; "
                    "drop basis_filter",
}


@dataclass(frozen=True)
class EscnnArguments:
    """The escnn point-convolution arguments of one layer (escnn's names and defaults).

    Construction validates them: an argument with no fastik counterpart must keep its
    escnn default (None), otherwise ValueError says why and what to pass instead.
    """

    groups: int = 1
    bias: bool = True
    width: float | None = None
    sigma: Any = None
    n_rings: int | None = None
    rings: Any = None
    frequencies_cutoff: Any = None
    basis_filter: Any = None
    recompute: bool = False
    initialize: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"groups must be a positive int, got {self.groups!r}")
        if self.groups != 1:
            raise ValueError(f"groups={self.groups}: fastik has no grouped (block-diagonal) point convolution. "
                             "Use groups=1 (a dense layer contains the grouped one), or build one layer per group "
                             "on in_type.index_select(...) / out_type.index_select(...) and concatenate")
        for name, reason in _BASIS_REASONS.items():
            if getattr(self, name) is not None:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported: {reason}")
        if self.width is not None and not (isinstance(self.width, (int, float)) and math.isfinite(self.width)
                                           and self.width > 0):
            raise ValueError(f"width (the kernel's support radius) must be a positive number, got {self.width!r}")
        for name in ("bias", "recompute", "initialize"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    @staticmethod
    def refuse_grid_arguments(kwargs: dict) -> None:
        """ValueError naming the first escnn grid-convolution argument in ``kwargs``."""
        for name in GRID_ARGUMENTS:
            if name in kwargs:
                raise ValueError(f"{name} is an argument of escnn's grid convolutions (R2Conv / R3Conv); a point "
                                 "convolution has no grid, so it has no counterpart here. fastik's grid layers are "
                                 "fastik.ImplicitR2Conv / fastik.ImplicitR3Conv")

    def envelope_sigma(self, envelope_sigma: float | None) -> float | None:
        """The fastik envelope σ: ``envelope_sigma`` if given, else width / 2, else None (fastik's default)."""
        if envelope_sigma is not None and self.width is not None:
            raise ValueError("give at most one of width (support radius: envelope σ = width / 2) and envelope_sigma")
        if self.width is not None:
            return self.width / 2
        return envelope_sigma
