"""Shared escnn set-up: the gspace for a fastik group name and the workload's field type."""
from __future__ import annotations

import warnings

__all__ = ["ESCNN_GSPACES", "escnn_setup"]

# fastik group name (lower case) -> escnn gspace on R^3 (the same abstract group; axis conventions may differ,
# which does not change the cost of a layer)
ESCNN_GSPACES = {
    "so3": "rot3dOnR3", "o3": "flipRot3dOnR3", "cinf": "rot2dOnR3", "cinfv": "conicalOnR3",
    "dinf": "dihedralOnR3", "cinfh": "cylindricalOnR3", "dinfh": "fullCylindricalOnR3",
    "o": "octaOnR3", "oh": "fullOctaOnR3", "i": "icoOnR3", "ih": "fullIcoOnR3",
    "c1": "trivialOnR3", "ci": "invOnR3", "cs": "mirOnR3",
}
ESCNN_GROUPS = ("so3", "o3", "Cinf", "Cinfv", "Dinf", "Cinfh", "Dinfh", "O", "Oh", "I", "Ih", "C1", "Ci", "Cs")


def _patch_np_matrix() -> None:
    """escnn hands np.matrix to scikit-learn's randomized_svd, which current scikit-learn rejects; pass an array."""
    import numpy as np
    import escnn.group._numerical as num

    svd = getattr(num, "randomized_svd", None)
    if svd is None or getattr(svd, "_bench_patched", False):
        return

    def randomized_svd(a, *args, **kwargs):
        return svd(np.asarray(a), *args, **kwargs)

    randomized_svd._bench_patched = True
    num.randomized_svd = randomized_svd


def escnn_setup(group: str, channels: int):
    """(gspace, group, field, FieldType of ``channels`` fields): field = trivial ⊕ the action on R^3 (0e + 1o)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from escnn import group as egroup
        from escnn import gspaces, nn
    _patch_np_matrix()
    gspace = getattr(gspaces, ESCNN_GSPACES[group.lower()])()
    G = gspace.fibergroup
    field = egroup.directsum([G.trivial_representation, gspace.basespace_action], name="l0+l1")
    return gspace, G, field, nn.FieldType(gspace, [field] * channels)
