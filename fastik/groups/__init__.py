"""Point groups G ≤ O(2), O(3), their representations and the intertwiner solver (torch + numpy only)."""
from .field_type import FieldType, RegularRep, Rep, TensorProductRep
from .harmonics import circular_harmonics, spherical_harmonics
from .intertwiners import intertwiner_basis
from .irreps import Irrep, O2Irrep, O3Irrep, parse_irrep
from .point_groups import GROUP_NAMES_2D, GROUP_NAMES_3D, Group, group, group_from_generators

__all__ = [
    "Group", "group", "group_from_generators", "GROUP_NAMES_2D", "GROUP_NAMES_3D",
    "Irrep", "O3Irrep", "O2Irrep", "parse_irrep", "RegularRep", "TensorProductRep", "Rep", "FieldType",
    "intertwiner_basis", "spherical_harmonics", "circular_harmonics",
]
