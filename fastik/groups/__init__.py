"""Point groups G ≤ O(2), O(3), their representations and the intertwiner solver (torch + numpy only)."""
from .field_type import FieldType, RegularRep, Rep, TensorProductRep, require_field_type
from .harmonics import circular_harmonics, spherical_harmonics
from .intertwiners import intertwiner_basis
from .irreps import Irrep, O2Irrep, O3Irrep, as_irrep, harmonic_irrep, harmonics, parse_irrep, trivial_irrep
from .point_groups import GROUP_NAMES_2D, GROUP_NAMES_3D, Group, group, group_from_generators

__all__ = [
    "Group", "group", "group_from_generators", "GROUP_NAMES_2D", "GROUP_NAMES_3D",
    "Irrep", "O3Irrep", "O2Irrep", "parse_irrep", "as_irrep", "RegularRep", "TensorProductRep", "Rep", "FieldType",
    "require_field_type",
    "intertwiner_basis", "spherical_harmonics", "circular_harmonics", "harmonics", "harmonic_irrep", "trivial_irrep",
]
