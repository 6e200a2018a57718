"""``fastik train``: the studies' smoke runs, exact resume, and a 2-process DDP (gloo) run."""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastik
from fastik.cli import main
from fastik.data.modelnet import rotation_z
from fastik.train import load_checkpoint
from fastik.train.models import PointCloudClassifier, knn_to_subset, random_subset

FAST = ["--quick", "--no-progress", "--threads", "1"]


def _metrics(out):
    with open(out / "metrics.json") as f:
        return json.load(f)


def test_train_nbody_quick_writes_metrics_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "nbody", *FAST, "--model", "cinf", "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["task"] == "nbody-cinf-k1" and m["epochs_done"] == 2 and len(m["history"]) == 2
    assert set(m["test"]) >= {"mse", "mae"} and m["test"]["mse"] > 0
    # the quick data: positions move by O(0.3) in one time unit; even two epochs beat predicting no motion
    assert m["history"][-1]["val_mse"] < m["history"][0]["val_mse"] * 1.5
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "val_mse"} <= set(header)
    ck = load_checkpoint(out / "last.pt")  # weights_only=True
    assert ck["state"]["epoch"] == 2 and set(ck["rng"][0]) == {"torch", "python", "numpy", "cuda"}
    assert (out / "best.pt").exists() and not list(out.glob("*.tmp"))


def test_resume_is_bit_identical(tmp_path):
    """2 epochs straight == 1 epoch, then --resume to 2: same parameters, optimiser state, metrics."""
    args = ["train", "nbody", *FAST, "--model", "o3"]
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    one = load_checkpoint(tmp_path / "b" / "last.pt")
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    drop = lambda h: [{k: v for k, v in row.items() if k != "time_s"} for row in h]  # noqa: E731
    assert drop(a["state"]["history"]) == drop(b["state"]["history"])
    assert _metrics(tmp_path / "a")["test"] == _metrics(tmp_path / "b")["test"]
    assert not all(torch.equal(one["model"][k], a["model"][k]) for k in a["model"])  # the check can fail


def test_resume_mid_epoch_after_a_crash(tmp_path, monkeypatch):
    """Checkpoints every step; a crash in step 3 of epoch 1; --resume finishes like an uninterrupted run."""
    import fastik.train.nbody as nb
    args = ["train", "nbody", *FAST, "--model", "o3", "--epochs", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    real, calls = nb._step, []

    def crashing(model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(nb, "_step", crashing)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "b"), "--ckpt-every", "1"])
    assert load_checkpoint(tmp_path / "b" / "last.pt")["state"]["step"] == 2
    monkeypatch.setattr(nb, "_step", real)
    assert main([*args, "--out", str(tmp_path / "b"), "--ckpt-every", "1", "--resume"]) == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    drop = lambda h: [{k: v for k, v in row.items() if k != "time_s"} for row in h]  # noqa: E731
    assert drop(a["state"]["history"]) == drop(b["state"]["history"])  # the resumed epoch's mean loss too


def test_two_process_ddp_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fastik.cli", "train", "nbody", *FAST, "--model", "o3", "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Grad strides do not match" not in r.stderr  # every parameter's gradient is laid out as DDP expects
    m = _metrics(out)
    assert m["world_size"] == 2 and m["epochs_done"] == 2 and m["test"]["mse"] > 0
    ck = load_checkpoint(out / "last.pt")
    assert len(ck["rng"]) == 2  # every rank's RNG state, for an exact resume with 2 processes
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])


@pytest.mark.skipif(__import__("importlib").util.find_spec("qm9pack") is None,
                    reason="qm9pack not installed (pip install qm9pack: the experiments extra)")
def test_train_qm9_quick(tmp_path):
    out = tmp_path / "qm9"
    assert main(["train", "qm9", *FAST, "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["task"] == "qm9-homo" and m["unit"] == "meV" and m["molecules"] == {"train": 96, "val": 9, "test": 9}
    # a HOMO-energy MAE in meV: between a perfect fit and the spread of the target (std ~ 600 meV)
    assert 0 < m["test"]["mae"] < 3 * m["target_std"] and 200 < m["target_std"] < 2000


def test_train_modelnet_quick_on_generated_meshes(tmp_path):
    from test_data import make_modelnet
    data = make_modelnet(tmp_path / "ModelNet40")
    out = tmp_path / "mn"
    assert main(["train", "modelnet", *FAST, "--data", str(data), "--group", "cinf", "--out", str(out)]) == 0
    m = _metrics(out)
    assert m["classes"] == ["box", "tetra"] and m["meshes"] == {"train": 8, "val": 2, "test": 4}
    assert 0 <= m["test"]["accuracy"] <= 1 and m["group"] == "cinf"


def test_modelnet_missing_data_names_the_layout(tmp_path, capsys):
    assert main(["train", "modelnet", *FAST, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "<class>/{train,test}/<name>.off" in capsys.readouterr().err


def test_point_cloud_classifier_is_invariant_to_its_group_only():
    """Cinf model: logits unchanged when the cloud turns about z, changed when it tilts."""
    torch.manual_seed(0)
    model = PointCloudClassifier(fastik.group("cinf"), 3, "4x0e + 2x1o", layers=2, k=6, keep=0.5,
                                 hidden_channels=4, backend="reference").double().eval()
    pos = torch.randn(2 * 40, 3, dtype=torch.float64)
    normals = torch.nn.functional.normalize(torch.randn_like(pos), dim=1)
    batch = torch.arange(2).repeat_interleave(40)
    with torch.no_grad():
        y = model(normals, pos, batch, 2)
        rz = rotation_z(1.1)
        torch.testing.assert_close(model(normals @ rz.T, pos @ rz.T, batch, 2), y, rtol=1e-7, atol=1e-9)
        tilt = torch.linalg.matrix_exp(torch.tensor([[0, 0, 0.9], [0, 0, 0], [-0.9, 0, 0]], dtype=torch.float64))
        assert (model(normals @ tilt.T, pos @ tilt.T, batch, 2) - y).abs().max() > 1e-4


def test_random_subset_and_knn_to_subset():
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    kept = random_subset(batch, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(batch[kept]), torch.tensor([2, 2])) and torch.equal(kept, kept.sort().values)
    pos = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [0, 5, 0], [0, 6, 0], [0, 7, 0]])
    ei = knn_to_subset(pos, 2, batch, kept)
    assert ei[1].max() < len(kept) and (batch[ei[0]] == batch[kept][ei[1]]).all()
    for t in range(len(kept)):  # each kept point: itself and its nearest other point
        src = ei[0, ei[1] == t]
        d = (pos[src] - pos[kept[t]]).norm(dim=1)
        assert len(src) == 2 and d.min() == 0 and d.max() == 1
