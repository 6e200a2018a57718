"""N-body spring system with plane springs (paper §5.2).

Physics (unit masses, 3D): ``n`` particles start at positions ~ N(0, 0.5²) with
velocities of random direction and norm 0.5.  Each unordered pair is joined with
probability 1/2 by a zero-rest-length spring, force on i ``-0.1·(x_i - x_j)``.
Every particle is also tied to the XY plane by a spring acting only along z,
``F_z = -k·(z_i - ℓ_i)`` with ℓ_i ~ U[0, 1) — its anchor slides freely in x and y,
so the system keeps only the rotations about z (and translations in x, y).
Integration: symplectic Euler (v += F dt, then x += v dt), dt = 0.001, a frame
every 100 steps.  A sample is (positions, velocities) at frame ``frame_in`` and
positions at frame ``frame_out`` (default 30 -> 40: 1000 steps, 1 time unit).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .batch import fully_connected_edges

__all__ = ["simulate", "generate", "save", "load", "NBodyDataset"]

PAIR_STIFFNESS = 0.1


def simulate(pos: np.ndarray, vel: np.ndarray, springs: np.ndarray, anchors: np.ndarray, k: float,
             steps: int, dt: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Advance S systems by ``steps`` symplectic-Euler steps (vectorised over systems).

    Shapes: pos, vel (S, n, 3); springs (S, n, n) symmetric 0/1 with zero diagonal;
    anchors (S, n) the ℓ_i.  Returns (pos, vel) (S, n, 3) after the steps.
    """
    pos, vel = pos.copy(), vel.copy()
    lap = springs.sum(-1)[..., None] * 1.0  # degree, for Σ_j A_ij (x_i - x_j) = deg_i x_i - (A x)_i
    for _ in range(steps):
        force = -PAIR_STIFFNESS * (lap * pos - springs @ pos)
        force[..., 2] -= k * (pos[..., 2] - anchors)
        vel += dt * force
        pos += dt * vel
    return pos, vel


def generate(num_samples: int, k: float, seed: int = 0, n_particles: int = 5, frame_in: int = 30,
             frame_out: int = 40, steps_per_frame: int = 100, dt: float = 1e-3) -> dict[str, np.ndarray]:
    """``num_samples`` independent systems with plane-spring stiffness ``k`` (seeded, reproducible).

    Returns float64 arrays: ``pos``, ``vel`` (S, n, 3) at frame_in, ``target`` (S, n, 3)
    positions at frame_out, ``springs`` (S, n, n), ``anchors`` (S, n), and ``k`` (scalar).
    """
    if not 0 <= frame_in < frame_out:
        raise ValueError(f"need 0 <= frame_in < frame_out, got {frame_in}, {frame_out}")
    rng = np.random.default_rng(seed)
    s, n = num_samples, n_particles
    pos = rng.normal(0.0, 0.5, (s, n, 3))
    vel = rng.normal(size=(s, n, 3))
    vel *= 0.5 / np.linalg.norm(vel, axis=-1, keepdims=True)
    upper = np.triu(rng.random((s, n, n)) < 0.5, 1)
    springs = (upper | upper.transpose(0, 2, 1)).astype(np.float64)
    anchors = rng.random((s, n))
    pos, vel = simulate(pos, vel, springs, anchors, k, frame_in * steps_per_frame, dt)
    target, _ = simulate(pos, vel, springs, anchors, k, (frame_out - frame_in) * steps_per_frame, dt)
    return {"pos": pos, "vel": vel, "target": target, "springs": springs, "anchors": anchors,
            "k": np.array(float(k))}


def save(data: dict[str, np.ndarray], path: str | Path) -> None:
    """Write a :func:`generate` result as .npz (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Read a :func:`save`\\ d data set."""
    with np.load(path) as f:
        return {key: f[key] for key in f.files}


class NBodyDataset(torch.utils.data.Dataset):
    """Graph samples of one N-body data set: a fully connected graph per system.

    Sample keys: ``pos`` (n, 3), ``x`` (n, 7) = [position (1o), velocity (1o), ℓ (0e)],
    ``node_attr`` (n, 1) = ℓ, ``edge_index`` (2, n(n-1)), ``edge_attr`` (n(n-1), 2)
    one-hot [no spring, spring], ``target`` (n, 3) positions at the later frame.
    """

    def __init__(self, data: dict[str, np.ndarray], dtype: torch.dtype = torch.float32) -> None:
        self.pos = torch.as_tensor(data["pos"], dtype=dtype)
        self.vel = torch.as_tensor(data["vel"], dtype=dtype)
        self.target = torch.as_tensor(data["target"], dtype=dtype)
        self.anchors = torch.as_tensor(data["anchors"], dtype=dtype)
        springs = torch.as_tensor(data["springs"], dtype=dtype)
        n = self.pos.shape[1]
        self.edge_index = fully_connected_edges(n)
        spring = springs[:, self.edge_index[0], self.edge_index[1]]  # (S, E)
        self.edge_attr = torch.stack([1 - spring, spring], -1)

    def __len__(self) -> int:
        return self.pos.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        ell = self.anchors[i][:, None]
        return {"pos": self.pos[i], "x": torch.cat([self.pos[i], self.vel[i], ell], -1), "node_attr": ell,
                "edge_index": self.edge_index, "edge_attr": self.edge_attr[i], "target": self.target[i]}
