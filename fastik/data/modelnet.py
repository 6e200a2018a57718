"""ModelNet-40 (paper §5.3) from a local copy of the OFF meshes.

Expected layout (the Princeton release, unzipped)::

    <root>/<class>/train/<name>.off
    <root>/<class>/test/<name>.off

Each mesh is sampled uniformly by area (points with the normals of their faces),
centred and scaled into the unit ball, and rotated about z by a random angle
(training: fresh draws from the global RNG; validation / test: a fixed draw per
sample, so evaluation is deterministic).  Validation is a seeded 20 % of the
training meshes, as in the paper.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_off", "sample_surface", "rotation_z", "find_meshes", "ModelNetDataset", "LAYOUT"]

LAYOUT = "<root>/<class>/{train,test}/<name>.off (the ModelNet40 release unzipped)"


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and triangles (F, 3) int64 of an OFF file (polygons fan-triangulated).

    Accepts the header on its own line (``OFF`` then counts) or fused with the counts
    (``OFF490 518 0``, as in some ModelNet files).
    """
    tokens = Path(path).read_text().split("\n")
    lines = [ln.split("#")[0].strip() for ln in tokens]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file (first line must start with 'OFF')")
    head = lines[0][3:].split()
    rest = lines[1:]
    if not head:
        head, rest = rest[0].split(), rest[1:]
    nv, nf = int(head[0]), int(head[1])
    verts = np.array([ln.split()[:3] for ln in rest[:nv]], dtype=np.float64).reshape(nv, 3)
    tris = []
    for ln in rest[nv:nv + nf]:
        f = [int(t) for t in ln.split()]
        poly = f[1:1 + f[0]]
        tris += [(poly[0], poly[k], poly[k + 1]) for k in range(1, len(poly) - 1)]
    faces = np.array(tris, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0:
        raise ValueError(f"{path}: the mesh has no faces")
    return verts, faces


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
    """``n`` points uniform on the surface (faces chosen ∝ area) and their faces' unit normals, both (n, 3)."""
    v = torch.as_tensor(verts, dtype=torch.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    cross = torch.linalg.cross(b - a, c - a)
    area = cross.norm(dim=-1)
    if not area.sum() > 0:
        raise ValueError("the mesh has zero area")
    face = torch.multinomial(area, n, replacement=True, generator=generator)
    u, w = torch.rand(2, n, 1, generator=generator, dtype=torch.float64)
    su = u.sqrt()
    pts = (1 - su) * a[face] + su * (1 - w) * b[face] + su * w * c[face]
    normals = cross[face] / area[face, None].clamp_min(1e-300)
    return pts, normals


def rotation_z(theta: float) -> Tensor:
    """(3, 3) rotation by ``theta`` about the z axis."""
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def find_meshes(root: str | Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (sorted) and the (path, label) lists of the ``train`` and ``test`` partitions."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ModelNet-40 not found at {root}: expected {LAYOUT}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and any((d / p).is_dir() for p in ("train", "test")))
    parts: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for label, name in enumerate(classes):
        for part in parts:
            parts[part] += [(p, label) for p in sorted((root / name / part).glob("*.off"))]
    if not parts["train"] or not parts["test"]:
        raise FileNotFoundError(f"no OFF meshes in both partitions under {root}: expected {LAYOUT} "
                                f"(found {len(parts['train'])} train and {len(parts['test'])} test files)")
    return classes, parts


class ModelNetDataset(torch.utils.data.Dataset):
    """Point clouds of a list of (OFF path, label) pairs.

    Sample keys: ``pos`` (points, 3) in the unit ball, ``x`` (points, 3) unit normals,
    ``y`` (1,) int64 class.  ``augment=True``: fresh surface samples and rotation about z
    from the global torch RNG; otherwise a fixed draw per index (seed ``seed + index``).
    Parsed meshes are kept in memory.
    """

    def __init__(self, items: list[tuple[Path, int]], points: int, augment: bool, seed: int = 0) -> None:
        self.items, self.points, self.augment, self.seed = items, points, augment, seed
        self._meshes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if i not in self._meshes:
            self._meshes[i] = read_off(self.items[i][0])
        verts, faces = self._meshes[i]
        gen = None if self.augment else torch.Generator().manual_seed(self.seed + i)
        pts, normals = sample_surface(verts, faces, self.points, gen)
        pts = pts - pts.mean(0)
        pts = pts / pts.norm(dim=-1).max().clamp_min(1e-12)
        theta = 2 * math.pi * torch.rand((), generator=gen, dtype=torch.float64).item()
        rot = rotation_z(theta)
        return {"pos": (pts @ rot.T).float(), "x": (normals @ rot.T).float(),
                "y": torch.tensor([self.items[i][1]], dtype=torch.int64)}
