"""State dicts saved by fastik 0.1.0 (commit e478b1e, O(3) irreps in the textbook basis) load exactly."""
import importlib.util
import math
import os
from collections import OrderedDict

import pytest
import torch

import fastik
from fastik.groups import O3Irrep, spherical_harmonics
from fastik.nn._compat import legacy_basis_change

DATA = os.path.join(os.path.dirname(__file__), "data")
CHECKPOINT = os.path.join(DATA, "checkpoint_e478b1e.pt")
# the layers are rebuilt exactly as the script that wrote the checkpoint built them
_spec = importlib.util.spec_from_file_location("make_checkpoint_e478b1e", os.path.join(DATA, "make_checkpoint_e478b1e.py"))
_maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_maker)
build = _maker.build


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return torch.load(CHECKPOINT, weights_only=True)


def run(conv: fastik.ImplicitPointConv, inputs: dict) -> torch.Tensor:
    """The layer on the stored (version-1 basis) inputs, output in the version-1 basis."""
    kw = dict(inputs)
    x, pos, edge_index = kw.pop("x"), kw.pop("pos"), kw.pop("edge_index")
    for key, ft in (("edge_attr", conv.edge_attr_type), ("node_attr", conv.node_attr_type)):
        if key in kw:
            kw[key] = kw[key] @ legacy_basis_change(ft).T
    with torch.no_grad():
        y = conv(x @ legacy_basis_change(conv.in_type).T, pos, edge_index, **kw)
    return y @ legacy_basis_change(conv.out_type)  # back to version-1 coordinates (Q orthogonal)


NAMES = ["so3", "o3", "O", "Cinf", "D4"]


@pytest.mark.parametrize("name", NAMES)
def test_version1_checkpoint_reproduces_stored_output(checkpoint, name):
    entry = checkpoint[name]
    conv = build(entry["config"])
    conv.load_state_dict(entry["state_dict"])
    expected = entry["output"]
    assert (run(conv, entry["inputs"]) - expected).abs().max() < 1e-12 * expected.abs().max()


@pytest.mark.parametrize("name", ["o3", "O"])
def test_unconverted_coefficients_would_differ(checkpoint, name):
    """Control: the same coefficients read as version 2 (no conversion) give another output (l = 2 hidden fields)."""
    entry = checkpoint[name]
    state = OrderedDict(entry["state_dict"])
    state._metadata = {k: {**v, "version": 2} for k, v in entry["state_dict"]._metadata.items()}
    conv = build(entry["config"])
    conv.load_state_dict(state)
    expected = entry["output"]
    assert (run(conv, entry["inputs"]) - expected).abs().max() > 1e-3 * expected.abs().max()


def test_current_state_dict_round_trips_unchanged(checkpoint):
    conv = build(checkpoint["o3"]["config"])
    state = conv.state_dict()
    assert state._metadata["kernel.head"]["version"] == 2
    other = build(checkpoint["o3"]["config"])
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(conv.state_dict().values(), other.state_dict().values()))
    with pytest.warns(UserWarning, match="no version metadata"):  # a plain dict is taken as version 1
        other.load_state_dict(dict(state))


def test_legacy_basis_change_maps_textbook_harmonics_to_e3nn():
    """Q_2 takes fastik 0.1.0's degree-2 harmonics (textbook, polar axis z) to the current ones."""
    v = torch.randn(20, 3, dtype=torch.float64)
    x, y, z = v.unbind(-1)
    c = math.sqrt(15 / (4 * math.pi))
    textbook = torch.stack([c * x * y, c * y * z, math.sqrt(5 / (16 * math.pi)) * (3 * z * z - v.pow(2).sum(-1)),
                            c * x * z, c / 2 * (x * x - y * y)], -1)
    q = legacy_basis_change(O3Irrep(2, 1))
    assert (textbook @ q.T - spherical_harmonics(2, v)).abs().max() < 1e-12
    assert torch.equal(legacy_basis_change(O3Irrep(1, -1)), torch.eye(3, dtype=torch.float64))
