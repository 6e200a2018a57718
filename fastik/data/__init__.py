"""Data sets of the paper's studies.

N-body (generated, :mod:`.nbody`), QM9 (from the ``qm9pack`` package, :mod:`.qm9`),
ModelNet-40 (a local copy of the OFF meshes, :mod:`.modelnet`).
"""
from .batch import collate, fully_connected_edges, to_device

__all__ = ["collate", "to_device", "fully_connected_edges"]
