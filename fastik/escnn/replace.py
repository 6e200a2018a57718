"""Swap escnn's point convolutions in a model for fastik's: :func:`replace_point_convs`."""
from __future__ import annotations

from escnn import nn as enn
from torch import nn

from .arguments import EscnnArguments
from .layer import ImplicitPointConv

__all__ = ["replace_point_convs"]


def _point_conv_classes() -> tuple[type, ...]:
    return tuple(getattr(enn, n) for n in ("R2PointConv", "R3PointConv") if hasattr(enn, n))


def _arguments_of(conv) -> EscnnArguments:
    """The escnn arguments of a built ``R2PointConv`` / ``R3PointConv`` that carry over to fastik.

    ``groups`` and ``bias`` map directly; ``width`` is the outermost ring radius (the support
    radius of escnn's filter).  The ring radii and thicknesses, the frequency cutoff and any
    basis filter define escnn's analytical kernel basis, which is exactly what the replacement
    swaps for fastik's implicit G-MLP kernel, so they are not carried over; neither are the
    learned escnn weights (a different parameterisation).
    """
    rings = [float(r) for r in getattr(conv, "_rings", [])]
    width = max(rings) if rings and max(rings) > 0 else None
    return EscnnArguments(groups=int(conv.groups), bias=conv.bias is not None, width=width)


def replace_point_convs(module: nn.Module, **kwargs) -> nn.Module:
    """Replace every escnn ``R2PointConv`` / ``R3PointConv`` inside ``module`` (in place).

    Each becomes an :class:`ImplicitPointConv` on the same field types with the escnn
    layer's ``groups`` (only 1 is possible: ValueError otherwise), ``bias`` and ``width``
    (the outermost ring radius: fastik's envelope starts at σ = width / 2), and escnn's
    normalisation (the drop-in's defaults ``aggr="mean"``, ``avg_degree=1``).  ``kwargs``
    go to :class:`ImplicitPointConv` and override these (``n_layers``, ``n_channels``,
    ``backend``, ``envelope_sigma``, ...); escnn's basis arguments (``sigma``, ``n_rings``,
    ``rings``, ``frequencies_cutoff``, ``basis_filter``) are refused there as in the
    constructor.  Learned escnn weights are not carried over.

    Returns ``module``; a module that is itself a point convolution is returned converted.
    """
    classes = _point_conv_classes()

    def convert(conv) -> ImplicitPointConv:
        found = _arguments_of(conv)  # raises for groups > 1
        opts = {"bias": found.bias}
        if "envelope_sigma" not in kwargs and found.width is not None:
            opts["width"] = found.width
        opts.update(kwargs)
        return ImplicitPointConv(conv.in_type, conv.out_type, **opts)

    if classes and isinstance(module, classes):
        return convert(module)
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if classes and isinstance(child, classes):
                setattr(parent, name, convert(child))
    return module
