"""QM9 (paper §5.4) from the PyPI package ``qm9pack`` (all 130 831 molecules ship inside it as CSV).

Nothing is downloaded at run time: the CSV files are read from the installed package
(``pip install qm9pack``, part of the ``experiments`` extra).  Molecular graphs come
from bond perception on the DFT coordinates (:func:`perceive_bonds`, covalent-radius
rules, no RDKit needed).  Targets are converted to the units of the paper's Table 2
(energies in meV; μ in D; α in bohr³; C_v in cal/mol K; R² in bohr²).
"""
from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["ELEMENTS", "BOND_TYPES", "TARGETS", "HARTREE_TO_MEV", "data_dir", "perceive_bonds", "read_qm9",
           "load_qm9", "split_indices", "select_molecules", "QM9Dataset"]

ELEMENTS = ("H", "C", "N", "O", "F")
BOND_TYPES = ("single", "double", "triple", "aromatic")
HARTREE_TO_MEV = 27211.386245988
# name -> (qm9pack column, factor to the paper's unit, unit)
TARGETS = {
    "homo": ("HOMO_au", HARTREE_TO_MEV, "meV"),
    "lumo": ("LUMO_au", HARTREE_TO_MEV, "meV"),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_MEV, "meV"),
    "zpve": ("ZPVE_au", HARTREE_TO_MEV, "meV"),
    "mu": ("Dipole_debye", 1.0, "D"),
    "alpha": ("Polarizability_bohr3", 1.0, "bohr³"),
    "cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/mol K"),
    "r2": ("R2_bohr2", 1.0, "bohr²"),
}
NUM_MOLECULES = 130831

# Pyykkö's covalent radii (Å) for single, double and triple bonds (H: single only).
_R1 = np.array([0.32, 0.75, 0.71, 0.63, 0.64])
_R2 = np.array([np.nan, 0.67, 0.60, 0.57, np.nan])  # H and F: single bonds only
_R3 = np.array([np.nan, 0.60, 0.54, 0.53, np.nan])
BOND_TOLERANCE = 0.4      # Å beyond the single-bond length still counted as a bond
AROMATIC_WINDOW = 0.04    # Å around the single/double midpoint, for ring bonds between C, N, O


def data_dir() -> Path:
    """The folder of qm9pack's CSV files; a clear error when the package is missing."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("QM9 needs the qm9pack package: pip install qm9pack "
                                  "(or pip install 'fastik[experiments]')")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _in_ring(n: int, edges: np.ndarray) -> np.ndarray:
    """For undirected edges (B, 2): whether each lies on a cycle (its ends stay connected without it)."""
    adj: list[set[int]] = [set() for _ in range(n)]
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    out = np.zeros(len(edges), dtype=bool)
    for e, (a, b) in enumerate(edges):
        seen, stack = {a}, [a]
        while stack and not out[e]:
            u = stack.pop()
            for v in adj[u]:
                if (u, v) in ((a, b), (b, a)) or v in seen:
                    continue
                if v == b:
                    out[e] = True
                    break
                seen.add(v)
                stack.append(v)
    return out


def perceive_bonds(z: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covalent bonds and their types from element indices z (n,) into ELEMENTS and positions (n, 3) in Å.

    Rules: atoms i, j are bonded when ``d_ij <= r1_i + r1_j + 0.4 Å`` (r1: Pyykkö's
    single-bond radii).  The bond's type is the one among single / double / triple
    whose predicted length (sum of Pyykkö's radii of that order) is nearest to ``d_ij`` (H and F:
    single only),
    except that a bond between two of C, N, O that lies on a ring and within 0.04 Å of
    the single/double midpoint is aromatic.

    Returns (edges (B, 2) int64 with i < j, types (B,) int64 index into BOND_TYPES).
    """
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    i, j = np.nonzero(np.triu(d <= _R1[z][:, None] + _R1[z][None] + BOND_TOLERANCE, 1))
    dij = d[i, j]
    lengths = np.stack([_R1[z[i]] + _R1[z[j]], _R2[z[i]] + _R2[z[j]], _R3[z[i]] + _R3[z[j]]], -1)
    types = np.nanargmin(np.where(np.isnan(lengths), np.inf, np.abs(lengths - dij[:, None])), -1)
    heavy = (z[i] >= 1) & (z[i] <= 3) & (z[j] >= 1) & (z[j] <= 3)
    mid = 0.5 * (lengths[:, 0] + lengths[:, 1])
    cand = heavy & (np.abs(dij - mid) <= AROMATIC_WINDOW)
    edges = np.stack([i, j], -1).astype(np.int64)
    if cand.any():
        ring = _in_ring(len(z), edges)
        types = np.where(cand & ring, 3, types)
    return edges, types.astype(np.int64)


def _count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b"")) - 1


def read_qm9(rows: Sequence[int] | None = None, directory: Path | None = None) -> dict[str, np.ndarray]:
    """Parse qm9pack's CSV files (molecules in file order; ``rows`` selects some, default all).

    Returns flat arrays: ``z`` (A,) int8 element index, ``pos`` (A, 3) float32 Å,
    ``atom_ptr`` (M+1,), ``bonds`` (B, 2) int32 atom indices local to each molecule,
    ``bond_type`` (B,) int8, ``bond_ptr`` (M+1,), ``index`` (M,) the QM9 ids, and one
    float64 array per target of :data:`TARGETS` in the paper's units.
    """
    directory = directory or data_dir()
    files = [directory / f"qm9_part{p}.csv" for p in (1, 2, 3)]
    wanted = None if rows is None else {int(r): k for k, r in enumerate(rows)}
    count = len(wanted) if wanted is not None else None
    mols: list = [None] * count if count is not None else []
    elem = {e: k for k, e in enumerate(ELEMENTS)}
    row = 0
    for path in files:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            col = {name: k for k, name in enumerate(next(reader))}
            for rec in reader:
                slot = row if wanted is None else wanted.get(row)
                row += 1
                if slot is None:
                    continue
                z = np.array([elem[s.strip().strip("'")] for s in rec[col["Elements"]].strip("[]").split(",")],
                             dtype=np.int64)
                pos = np.array(rec[col["XYZ_Ang"]].replace("[", "").replace("]", "").split(","),
                               dtype=np.float64).reshape(-1, 3)
                values = [float(rec[col[c]]) * factor for c, factor, _ in TARGETS.values()]
                mol = (z, pos, *perceive_bonds(z, pos), int(rec[col["Index"]]), values)
                if wanted is None:
                    mols.append(mol)
                else:
                    mols[slot] = mol
    if wanted is not None and any(m is None for m in mols):
        raise IndexError(f"rows out of range: QM9 has {row} molecules")
    n_atoms = np.array([len(m[0]) for m in mols])
    n_bonds = np.array([len(m[2]) for m in mols])
    out = {"z": np.concatenate([m[0] for m in mols]).astype(np.int8),
           "pos": np.concatenate([m[1] for m in mols]).astype(np.float32),
           "atom_ptr": np.concatenate([[0], np.cumsum(n_atoms)]),
           "bonds": np.concatenate([m[2] for m in mols]).astype(np.int32),
           "bond_type": np.concatenate([m[3] for m in mols]).astype(np.int8),
           "bond_ptr": np.concatenate([[0], np.cumsum(n_bonds)]),
           "index": np.array([m[4] for m in mols])}
    for k, name in enumerate(TARGETS):
        out[name] = np.array([m[5][k] for m in mols])
    return out


def split_indices(num: int = NUM_MOLECULES, seed: int = 0, sizes: tuple[int, int] = (110_000, 10_000)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train / val / test row indices: ``sizes`` molecules for train and val, the rest for test."""
    if sum(sizes) >= num:
        raise ValueError(f"split sizes {sizes} leave no test molecules out of {num}")
    perm = np.random.default_rng(seed).permutation(num)
    return perm[:sizes[0]], perm[sizes[0]:sizes[0] + sizes[1]], perm[sizes[0] + sizes[1]:]


def load_qm9(cache: str | Path | None = None, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """:func:`read_qm9`, cached as .npz at ``cache`` when reading every molecule (``rows`` None)."""
    if rows is not None:
        return read_qm9(rows)
    if cache is not None and Path(cache).exists():
        with np.load(cache) as f:
            return {k: f[k] for k in f.files}
    data = read_qm9()
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache) + ".tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, cache)
    return data


def select_molecules(data: dict[str, np.ndarray], mols: np.ndarray) -> dict[str, np.ndarray]:
    """The molecules ``mols`` (indices into ``data``) as a new flat data dict."""
    a0, a1 = data["atom_ptr"][mols], data["atom_ptr"][mols + 1]
    b0, b1 = data["bond_ptr"][mols], data["bond_ptr"][mols + 1]
    atoms = np.concatenate([np.arange(s, e) for s, e in zip(a0, a1)])
    bonds = np.concatenate([np.arange(s, e) for s, e in zip(b0, b1)])
    out = {"z": data["z"][atoms], "pos": data["pos"][atoms], "bonds": data["bonds"][bonds],
           "bond_type": data["bond_type"][bonds], "atom_ptr": np.concatenate([[0], np.cumsum(a1 - a0)]),
           "bond_ptr": np.concatenate([[0], np.cumsum(b1 - b0)]), "index": data["index"][mols]}
    for name in TARGETS:
        out[name] = data[name][mols]
    return out


class QM9Dataset(torch.utils.data.Dataset):
    """Molecular graphs of QM9 for one target.

    Sample keys: ``pos`` (n, 3) Å, ``x`` and ``node_attr`` (n, 5) one-hot H, C, N, O, F,
    ``edge_index`` (2, 2B) both directions of every bond, ``edge_attr`` (2B, 4) one-hot
    bond type, ``y`` (1,) the target standardised with (mean, std), ``y_raw`` (1,) in the
    paper's unit.
    """

    def __init__(self, data: dict[str, np.ndarray], target: str, mean: float, std: float) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown QM9 target {target!r}; choose from {', '.join(TARGETS)}")
        self.data, self.mean, self.std = data, mean, std
        self.y = torch.as_tensor(data[target], dtype=torch.float64)
        self.onehot = torch.eye(len(ELEMENTS))[torch.as_tensor(data["z"].astype(np.int64))]
        self.bond_onehot = torch.eye(len(BOND_TYPES))[torch.as_tensor(data["bond_type"].astype(np.int64))]
        self.pos = torch.as_tensor(data["pos"])
        self.bonds = torch.as_tensor(data["bonds"].astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        a0, a1 = self.data["atom_ptr"][i], self.data["atom_ptr"][i + 1]
        b0, b1 = self.data["bond_ptr"][i], self.data["bond_ptr"][i + 1]
        ij = self.bonds[b0:b1].T
        attr = self.bond_onehot[b0:b1]
        onehot = self.onehot[a0:a1]
        y = self.y[i:i + 1]
        return {"pos": self.pos[a0:a1], "x": onehot, "node_attr": onehot,
                "edge_index": torch.cat([ij, ij.flip(0)], 1), "edge_attr": torch.cat([attr, attr]),
                "y": ((y - self.mean) / self.std).float(), "y_raw": y}
