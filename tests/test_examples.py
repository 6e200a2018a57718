"""The example model trains, and its heads are rotation invariant / equivariant."""
import importlib.util
import pathlib

import torch

import fastik

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "steerable_model.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("steerable_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steerable_model_trains_and_is_equivariant(capsys):
    ex = _load_example()
    model, history = ex.train(steps=60, seconds=25.0, log_every=20)
    assert "held-out MSE" in capsys.readouterr().out
    assert len(history) >= 2 and history[-1] < 0.6 * history[0], history

    data = ex.make_clouds(6, torch.Generator().manual_seed(123))
    model.eval()
    with torch.no_grad():
        gyration, dipole = model(data.charge, data.pos, data.batch, data.num_graphs)
        for g in fastik.group("so3").sample(3, seed=7).float():
            assert torch.allclose(fastik.FieldType(fastik.group("so3"), "1x1o").representation(g), g, atol=1e-6)
            gyr_rot, dip_rot = model(data.charge, data.pos @ g.T, data.batch, data.num_graphs)
            assert torch.allclose(gyr_rot, gyration, rtol=1e-5, atol=1e-5 * gyration.abs().max())
            assert torch.allclose(dip_rot, dipole @ g.T, rtol=1e-5, atol=1e-5 * dipole.abs().max())
