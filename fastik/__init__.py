"""fastik — fast implicit steerable kernels (Zhdanov, Hoffmann, Cesa, NeurIPS 2023).

Steerable convolutions whose kernels are G-equivariant MLPs, for any point group
G ≤ O(2) or O(3), on point clouds and graphs.
"""
from . import graphs, ops
from .groups import FieldType, Group, group, group_from_generators
from .nn import (EquivariantLinear, EquivariantNorm, FourierELU, GatedNonlinearity, ImplicitKernel,
                 ImplicitPointConv, ImplicitR2Conv, ImplicitR3Conv)

__version__ = "0.2.0"

__all__ = [
    "__version__", "graphs", "ops", "Group", "group", "group_from_generators", "FieldType", "EquivariantLinear",
    "GatedNonlinearity", "FourierELU", "EquivariantNorm", "ImplicitKernel", "ImplicitPointConv",
    "ImplicitR2Conv", "ImplicitR3Conv",
]
