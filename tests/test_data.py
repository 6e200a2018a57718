"""Data sets of the paper's studies: N-body physics, QM9 bond perception and loading, ModelNet-40 OFF meshes."""
import math

import numpy as np
import pytest
import torch

from fastik.data import collate, fully_connected_edges
from fastik.data import nbody


def test_nbody_simulation_matches_closed_form():
    """Plane spring alone: z(t) = ℓ + (z0-ℓ)cos ωt + v/ω sin ωt, ω = √k; x, y move uniformly.
    Two particles on one pair spring (k = 0): the separation oscillates with ω² = 2·0.1."""
    k, t, steps = 2.0, 1.0, 1000
    pos = np.array([[[0.3, -0.2, 0.9], [1.0, 1.0, 1.0]]])
    vel = np.array([[[0.1, 0.2, -0.4], [0.0, 0.0, 0.0]]])
    anchors = np.array([[0.25, 1.0]])
    p, v = nbody.simulate(pos, vel, np.zeros((1, 2, 2)), anchors, k, steps)
    w = math.sqrt(k)
    z = 0.25 + (0.9 - 0.25) * math.cos(w * t) + (-0.4) / w * math.sin(w * t)
    np.testing.assert_allclose(p[0, 0], [0.3 + 0.1 * t, -0.2 + 0.2 * t, z], atol=2e-3)
    np.testing.assert_allclose(p[0, 1], [1.0, 1.0, 1.0], atol=1e-12)  # at its anchor, at rest

    springs = np.array([[[0, 1], [1, 0]]], dtype=float)
    pos = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    vel = np.array([[[0.0, 0.5, 0.0], [0.0, 0.1, 0.0]]])
    p, _ = nbody.simulate(pos, vel, springs, np.zeros((1, 2)), 0.0, steps)
    w = math.sqrt(2 * nbody.PAIR_STIFFNESS)
    sep = p[0, 1] - p[0, 0]
    np.testing.assert_allclose(sep, [math.cos(w * t), (0.1 - 0.5) / w * math.sin(w * t), 0.0], atol=2e-3)
    np.testing.assert_allclose(p[0].mean(0), [0.5, 0.3 * t, 0.0], atol=1e-9)  # centre of mass


def test_nbody_generate_is_seeded_and_well_formed(tmp_path):
    a = nbody.generate(6, 1.5, seed=3)
    b = nbody.generate(6, 1.5, seed=3)
    assert all(np.array_equal(a[key], b[key]) for key in a)
    assert not np.array_equal(a["pos"], nbody.generate(6, 1.5, seed=4)["pos"])
    np.testing.assert_allclose(a["springs"], a["springs"].transpose(0, 2, 1))
    assert (np.diagonal(a["springs"], axis1=1, axis2=2) == 0).all()
    assert a["anchors"].min() >= 0 and a["anchors"].max() < 1
    nbody.save(a, tmp_path / "d" / "train.npz")
    c = nbody.load(tmp_path / "d" / "train.npz")
    assert all(np.array_equal(a[key], c[key]) for key in a)

    ds = nbody.NBodyDataset(a)
    s = ds[2]
    assert s["x"].shape == (5, 7) and s["edge_index"].shape == (2, 20) and s["edge_attr"].shape == (20, 2)
    j, i = s["edge_index"]
    assert torch.equal(s["edge_attr"][:, 1], torch.as_tensor(a["springs"][2][j, i], dtype=torch.float32))


def test_collate_offsets_edges_and_builds_batch():
    ei = fully_connected_edges(3)
    assert ei.shape == (2, 6) and not (ei[0] == ei[1]).any()
    s1 = {"pos": torch.zeros(3, 3), "edge_index": ei, "edge_attr": torch.ones(6, 1), "y": torch.tensor([1.0])}
    s2 = {"pos": torch.ones(2, 3), "edge_index": torch.tensor([[0], [1]]), "edge_attr": torch.zeros(1, 1),
          "y": torch.tensor([2.0])}
    b = collate([s1, s2])
    assert torch.equal(b["edge_index"][:, -1], torch.tensor([3, 4]))
    assert torch.equal(b["batch"], torch.tensor([0, 0, 0, 1, 1])) and int(b["num_graphs"]) == 2
    assert torch.equal(b["y"], torch.tensor([1.0, 2.0])) and b["edge_attr"].shape == (7, 1)


# --------------------------------------------------------------------------- QM9

from fastik.data import qm9  # noqa: E402


def _ring(n, radius, z=0.0):
    a = 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a), np.full(n, z)], -1)


@pytest.mark.parametrize("name,z,pos,expected", [
    ("ethane C-C", [1, 1], [[0, 0, 0], [1.53, 0, 0]], [0]),
    ("ethylene C=C", [1, 1], [[0, 0, 0], [1.33, 0, 0]], [1]),
    ("acetylene C#C", [1, 1], [[0, 0, 0], [1.20, 0, 0]], [2]),
    ("formaldehyde C=O", [1, 3], [[0, 0, 0], [1.21, 0, 0]], [1]),
    ("HCN C#N", [1, 2], [[0, 0, 0], [1.16, 0, 0]], [2]),
    ("HF", [0, 4], [[0, 0, 0], [0.92, 0, 0]], [0]),
])
def test_bond_types_from_lengths(name, z, pos, expected):
    edges, types = qm9.perceive_bonds(np.array(z), np.array(pos, dtype=float))
    assert edges.tolist() == [[0, 1]] and types.tolist() == expected, name


def test_benzene_ring_is_aromatic_and_hydrogens_single():
    pos = np.concatenate([_ring(6, 1.39), _ring(6, 1.39 + 1.09)])
    z = np.array([1] * 6 + [0] * 6)
    edges, types = qm9.perceive_bonds(z, pos)
    cc = [(set(e) <= set(range(6))) for e in edges.tolist()]
    assert sum(cc) == 6 and len(edges) == 12  # 6 ring bonds, 6 C-H, no 1,3 contacts
    assert all(t == 3 for t, c in zip(types, cc) if c) and all(t == 0 for t, c in zip(types, cc) if not c)
    # the same bond length in an open chain (no ring) is not aromatic
    edges, types = qm9.perceive_bonds(np.array([1, 1]), np.array([[0, 0, 0], [1.40, 0, 0]], dtype=float))
    assert types.tolist() != [3]


def test_split_sizes_and_seed():
    tr, va, te = qm9.split_indices(seed=0)
    assert (len(tr), len(va), len(te)) == (110_000, 10_000, qm9.NUM_MOLECULES - 120_000)
    assert len(np.unique(np.concatenate([tr, va, te]))) == qm9.NUM_MOLECULES
    assert np.array_equal(tr, qm9.split_indices(seed=0)[0]) and not np.array_equal(tr, qm9.split_indices(seed=1)[0])


needs_qm9pack = pytest.mark.skipif(__import__("importlib").util.find_spec("qm9pack") is None,
                                   reason="qm9pack not installed (pip install qm9pack: the experiments extra)")


@needs_qm9pack
def test_qm9pack_molecules_bonds_and_units():
    d = qm9.read_qm9(rows=[0, 3, 5])  # CH4, C2H2, CH2O
    assert d["index"].tolist() == [1, 4, 6]
    types = [d["bond_type"][d["bond_ptr"][i]:d["bond_ptr"][i + 1]].tolist() for i in range(3)]
    assert sorted(types[0]) == [0, 0, 0, 0] and sorted(types[1]) == [0, 0, 2] and sorted(types[2]) == [0, 0, 1]
    np.testing.assert_allclose(d["homo"][0], -0.3877 * qm9.HARTREE_TO_MEV)  # hartree -> meV
    np.testing.assert_allclose(d["mu"], [0.0, 0.0, 2.1089], atol=1e-4)  # debye
    assert d["atom_ptr"].tolist() == [0, 5, 9, 13] and d["pos"].shape == (13, 3)


@needs_qm9pack
def test_qm9pack_valences_of_perceived_bonds():
    """Bond orders from the rules add up to the usual valences (H 1, C 4, N 3, O 2, F 1) for the
    atoms without aromatic bonds, in the first 300 molecules."""
    d = qm9.read_qm9(rows=range(300))
    off = np.repeat(d["atom_ptr"][:-1], np.diff(d["bond_ptr"]))
    order = np.array([1.0, 2.0, 3.0, 1.5])[d["bond_type"]]
    val = np.zeros(len(d["z"]))
    aromatic = np.zeros(len(d["z"]), dtype=bool)
    for k in range(2):
        np.add.at(val, d["bonds"][:, k] + off, order)
        aromatic[d["bonds"][:, k][d["bond_type"] == 3] + off[d["bond_type"] == 3]] = True
    ok = val == np.array([1, 4, 3, 2, 1])[d["z"]]
    assert ok[~aromatic].mean() > 0.97


# --------------------------------------------------------------------------- ModelNet-40 (generated meshes)

from fastik.data import modelnet  # noqa: E402

BOX_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float)
BOX_F = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
TET_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
TET_F = [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]


def write_off(path, verts, faces, fused_header=False):
    """An OFF file; ``fused_header`` writes ``OFF8 6 0`` on one line as some ModelNet files do."""
    head = f"OFF{len(verts)} {len(faces)} 0\n" if fused_header else f"OFF\n{len(verts)} {len(faces)} 0\n"
    body = "".join(f"{a:.6f} {b:.6f} {c:.6f}\n" for a, b, c in verts)
    body += "".join(f"{len(f)} " + " ".join(map(str, f)) + "\n" for f in faces)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + body)


def make_modelnet(root, per_class=(5, 2), seed=0):
    """A two-class ModelNet-style tree: boxes and tetrahedra with random axis scalings."""
    rng = np.random.default_rng(seed)
    for name, v, f in (("box", BOX_V, BOX_F), ("tetra", TET_V, TET_F)):
        for part, n in zip(("train", "test"), per_class):
            for i in range(n):
                write_off(root / name / part / f"{name}_{i:04d}.off", v * rng.uniform(0.5, 2.0, 3), f, i % 2 == 1)
    return root


@pytest.mark.parametrize("fused", [False, True])
def test_read_off_triangulates_polygons(tmp_path, fused):
    write_off(tmp_path / "box.off", BOX_V, BOX_F, fused)
    v, f = modelnet.read_off(tmp_path / "box.off")
    assert v.shape == (8, 3) and f.shape == (12, 3)  # 6 quads -> 12 triangles
    np.testing.assert_array_equal(v, BOX_V)


def test_surface_samples_lie_on_faces_weighted_by_area():
    scale = np.array([1.0, 1.0, 4.0])  # a 1 x 1 x 4 box: side faces 4 each, ends 1 each -> 16 of 18 on the sides
    f = np.array([t for q in BOX_F for t in ([q[0], q[1], q[2]], [q[0], q[2], q[3]])])
    pts, normals = modelnet.sample_surface(BOX_V * scale, f, 20000, torch.Generator().manual_seed(0))
    pts, normals = pts.numpy(), normals.numpy()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-12)
    axis = np.abs(normals).argmax(1)  # each point's face is perpendicular to one axis ...
    coord = pts[np.arange(len(pts)), axis]
    assert (np.isclose(coord, 0) | np.isclose(coord, scale[axis])).all()  # ... and the point lies on it
    assert abs((axis != 2).mean() - 16 / 18) < 0.01


def test_find_meshes_and_clear_error(tmp_path):
    make_modelnet(tmp_path / "mn")
    classes, parts = modelnet.find_meshes(tmp_path / "mn")
    assert classes == ["box", "tetra"] and len(parts["train"]) == 10 and len(parts["test"]) == 4
    with pytest.raises(FileNotFoundError, match=r"<class>/\{train,test\}"):
        modelnet.find_meshes(tmp_path / "missing")
    (tmp_path / "empty" / "chair" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="expected"):
        modelnet.find_meshes(tmp_path / "empty")


def test_modelnet_samples_rotate_about_z_only(tmp_path):
    make_modelnet(tmp_path / "mn")
    _, parts = modelnet.find_meshes(tmp_path / "mn")
    ds = modelnet.ModelNetDataset(parts["test"], 128, augment=False)
    a, b = ds[0], ds[0]
    assert torch.equal(a["pos"], b["pos"])  # evaluation samples are fixed
    assert a["pos"].norm(dim=1).max() <= 1 + 1e-6 and a["x"].shape == (128, 3)
    # the evaluation draw for index 0 (seed 0 + 0), unrotated: same heights and radii, other x, y
    v, f = modelnet.read_off(parts["test"][0][0])
    pts, _ = modelnet.sample_surface(v, f, 128, torch.Generator().manual_seed(0))
    pts = pts - pts.mean(0)
    pts = (pts / pts.norm(dim=1).max()).float()
    torch.testing.assert_close(a["pos"][:, 2], pts[:, 2])
    torch.testing.assert_close(a["pos"][:, :2].norm(dim=1), pts[:, :2].norm(dim=1))
    assert not torch.allclose(a["pos"][:, :2], pts[:, :2], atol=1e-3)
    aug = modelnet.ModelNetDataset(parts["test"], 128, augment=True)
    assert not torch.equal(aug[0]["pos"], aug[0]["pos"])  # training: fresh draws
    r = modelnet.rotation_z(0.7)
    np.testing.assert_allclose((r @ r.T).numpy(), np.eye(3), atol=1e-12)
    assert r[2, 2] == 1
