"""Bad inputs to groups and field types give errors that name the problem and the fix; near misses are fixed."""
import math
import re

import numpy as np
import pytest
import torch

import fastik
from fastik.groups import FieldType, require_field_type
from fastik.groups.point_groups import rot_axis, rot_z

S3 = math.sqrt(3) / 2


@pytest.mark.parametrize("name,dim,message", [
    ("S03", 3, r"invalid 3D point group name 'S03'.*Did you mean 'so3'"),
    ("S3", 3, r"S2n needs an even index.*Did you mean 'so3'"),
    ("C3d", 3, r"there is no C3d.*'D3d'"),
    ("Dinfhh", 3, r"unknown name.*Did you mean 'Dinfh'"),
    ("X7", 3, r"invalid 3D point group name 'X7': unknown name\. Known names: so3, o3"),
    ("D0", 2, r"invalid 2D point group name 'D0'.*Known names: so2, o2, Cn, Dn"),
    ("so3", 4, r"dim must be 2 or 3, got 4"),
])
def test_group_name_errors(name, dim, message):
    with pytest.raises(ValueError, match=message):
        fastik.group(name, dim=dim)


C4 = [[0.0, -1.0], [1.0, 0.0]]
FLIP = [[-1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize("matrices", [
    [torch.tensor(C4), torch.tensor(FLIP)],  # a list of tensors
    [np.array(C4), np.array(FLIP)],  # a list of arrays
    np.array([C4, FLIP]),  # one array
    [C4, FLIP],  # nested lists
    (torch.tensor(C4, dtype=torch.float32), FLIP),  # mixed, float32
], ids=["tensors", "arrays", "array", "lists", "mixed"])
def test_group_from_generators_accepts_lists_and_arrays(matrices):
    G = fastik.group_from_generators(matrices)
    assert G.order == 8 and G.dim == 2
    assert bool(fastik.group("D4", dim=2).contains(G.elements).all())


def test_near_orthogonal_generators_are_snapped_to_the_exact_group():
    c6 = [[0.5, -0.86603, 0.0], [0.86603, 0.5, 0.0], [0.0, 0.0, 1.0]]  # √3/2 to 5 digits: off by 8e-6
    mirror = [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    with pytest.warns(UserWarning, match=r"snapped.*generator 0 \(max \|g gᵀ - I\| = 8\.0e-06\)"):
        G = fastik.group_from_generators([c6, mirror])
    assert G.order == 12
    assert (G.generators[0] - rot_z(math.pi / 3)).abs().max() < 1e-14
    assert bool(fastik.group("C6v").contains(G.elements, atol=1e-13).all())
    with pytest.warns(UserWarning, match="generator 0"):  # within a looser stated tolerance
        rough = [[0.5, -0.866, 0.0], [0.866, 0.5, 0.0], [0.0, 0.0, 1.0]]
        assert fastik.group_from_generators([rough, mirror]).order == 12


@pytest.mark.parametrize("matrices,kwargs,message", [
    ([[[0.5, -0.86603], [0.86603, 0.5]]], {"snap_tol": 1e-6},
     r"generator 0 is off by max \|g gᵀ - I\| = 7\.9\de-06 \(above snap_tol = 1e-06"),
    ([C4, [[-1.0, 0.0], [0.02, 1.0]]], {}, r"generator 1 is off by max \|g gᵀ - I\| = 2\.0\de-02"),
    ([rot_axis([0.0, 0.0, 1.0], 1.0)], {},
     r"more than 10000 elements.*generator 0: rotation by 57\.2958° about \(0\.0000, 0\.0000, 1\.0000\), "
     r"no finite order"),
    ([rot_z(2 * math.pi / 5), rot_axis([1.0, 0.0, 0.3], math.pi)], {},
     r"more than 10000 elements.*generator 0: rotation by 72° .*order 5; generator 1: rotation by 180°.*order 2"),
    ([torch.eye(2), torch.eye(3)], {}, r"equally shaped \(n, n\) matrices"),
    ([], {}, r"at least one generator"),
    (torch.zeros(1, 4, 4), {}, r"\(k, n, n\) with n in \(2, 3\), got \(1, 4, 4\)"),
], ids=["beyond-snap_tol", "not-orthogonal", "infinite-order", "axes-at-wrong-angle", "shapes", "empty", "4x4"])
def test_group_from_generators_errors(matrices, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fastik.group_from_generators(matrices, **kwargs)


@pytest.mark.parametrize("spec,dim,error,message", [
    ("", 3, ValueError, r"field type '' has no fields \(dimension 0\): give at least one, e\.g\. '1x0e'"),
    ("0x0e", 3, ValueError, r"field type '0x0e' has no fields"),
    ("0x1", 2, ValueError, r"no fields"),
    ("2x1x", 3, ValueError, r"bad O\(3\) irrep label '1x': expected like '0e', '1o', '2e' or '1y'"),
    ("2x1o", 2, ValueError, r"bad O\(2\) irrep label '1o'"),
    ("1xreg", 3, ValueError, r"'reg' needs a finite group"),
    ([(1.5, "0e")], 3, TypeError, r"\(multiplicity: int, irrep\) pairs"),
    ([(2, 3.0)], 3, TypeError, r"expected an irrep"),
    (17, 3, TypeError, r"field type spec must be a string"),
], ids=["empty", "zero-mul", "zero-mul-2d", "bad-label", "o3-label-in-2d", "reg-continuous", "float-mul",
        "bad-irrep", "int"])
def test_field_type_errors(spec, dim, error, message):
    with pytest.raises(error, match=message):
        FieldType(fastik.group("so3" if dim == 3 else "so2", dim=dim), spec)


@pytest.mark.parametrize("value,message", [
    ("16x0e", "in_type must be a fastik FieldType, got str '16x0e': build one with fastik.FieldType(group, '16x0e')"),
    (3, "in_type must be a fastik FieldType, got int 3"),
])
def test_require_field_type(value, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        require_field_type(value, "in_type")
    ft = FieldType(fastik.group("so3"), "1x0e")
    assert require_field_type(ft, "in_type") is ft
