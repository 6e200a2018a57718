"""The benchmark harness (bench/) end to end at a tiny size, with the implementations that are always available."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import cli  # noqa: E402
from bench.impls import IMPLS  # noqa: E402
from bench.runner import BenchConfig, _predict_skip  # noqa: E402
from bench.workload import LayerSpec, make_graph, parse_edges  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = cli.main(["--impls", "fastik-reference,materialize", "--groups", "so3", "--edges", "100",
                   "--repeats", "2", "--warmup", "1", "--device", "cpu", "--out", str(out), "--tag", "test",
                   "--quiet"])
    return rc, out


def test_outputs_written(tiny_run):
    rc, out = tiny_run
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    stems = {Path(n).stem for n in names}
    assert len(stems) == 1 and next(iter(stems)).endswith("-cpu-test"), names
    assert any(n.endswith(".json") for n in names) and any(n.endswith(".md") for n in names)
    png = [p for p in out.iterdir() if p.suffix == ".png"]
    if HAVE_MPL:
        assert len(png) == 1 and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not png


def _result(out: Path) -> dict:
    return json.loads(next(out.glob("*.json")).read_text())


def test_json_fields(tiny_run):
    _, out = tiny_run
    result = _result(out)
    assert result["schema"] == "fastik-bench/1"
    env = result["env"]
    for key in ("date", "device", "device_type", "cpu", "torch", "triton", "escnn", "e3nn", "numpy", "dtype",
                "tf32_matmul", "git_commit", "memory_method"):
        assert key in env, key
    assert env["device_type"] == "cpu" and env["dtype"] == "float32" and env["tf32_matmul"] is False
    assert result["config"]["edges"] == [100] and result["config"]["groups"] == ["so3"]
    assert set(result["outputs"]) >= {"json", "md", "png"}
    rows = result["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["impl"], r["pass"]) for r in ok} == {(i, p) for i in ("fastik-reference", "materialize")
                                                   for p in ("fwd+bwd", "fwd")}
    for r in ok:
        assert r["precision"] == "fp32" and r["hidden_channels"] == 16  # neither has precision modes
        assert r["edges"] == 96 and r["nodes"] == 6 and r["dim"] == 64 and r["group"] == "so3"
        assert r["median_ms"] > 0 and r["repeats"] == 2 and len(r["times_ms"]) == 2 and r["warmup"] == 1
        assert r["min_ms"] <= r["median_ms"] and r["medges_per_s"] > 0
        assert r["peak_mem_bytes"] is None  # CPU: no allocator peak, only the sampled RSS increase
        assert r["step_mem_bytes"] is None or r["step_mem_bytes"] >= 0


def test_markdown_table(tiny_run):
    _, out = tiny_run
    text = next(out.glob("*.md")).read_text()
    assert text.startswith("# fastik benchmark")
    assert "| implementation | E = 96 |" in text
    assert "forward + backward" in text and "forward (inference)" in text
    assert "| fastik-reference | " in text and "| materialize ⁽*⁾ | " in text
    assert " ms · " in text and "## Implementations" in text


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU skip")
def test_unavailable_impl_is_a_skipped_row(tmp_path, monkeypatch):
    # tests/conftest.py turns the Triton interpreter on; without it triton needs CUDA
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    rc = cli.main(["--impls", "fastik-triton", "--groups", "so3", "--edges", "100", "--device", "cpu",
                   "--out", str(tmp_path), "--quiet"])
    assert rc == 1  # nothing could be measured
    (row,) = _result(tmp_path)["rows"]
    assert row["impl"] == "fastik-triton" and row["status"] == "skipped" and "CUDA" in row["reason"]
    assert row["edges"] is None and row["pass"] == "all"
    text = next(tmp_path.glob("*.md")).read_text()
    assert "Skipped and failed" in text and "fastik-triton" in text


def test_memory_limit_skips_rows(tmp_path):
    rc = cli.main(["--impls", "materialize", "--groups", "so3", "--edges", "1e5", "--passes", "fwd",
                   "--device", "cpu", "--mem-limit-gib", "0.01", "--out", str(tmp_path), "--no-plot", "--quiet"])
    assert rc == 1  # nothing measured
    (row,) = _result(tmp_path)["rows"]
    assert row["status"] == "skipped" and "predicted memory" in row["reason"]
    assert not list(tmp_path.glob("*.png"))


def test_time_prediction_skips_rows():
    config = BenchConfig(impls=["materialize"], groups=["so3"], edges=[1000, 100000], row_budget_s=1.0)
    prev = {"edges": 1000, "median_ms": 100.0, "peak_mem_bytes": None, "step_mem_bytes": 1000}
    import time

    spec = LayerSpec()
    reason = _predict_skip(IMPLS["materialize"], spec, 100_000, True, prev, config, None, time.perf_counter())
    assert reason and "row budget" in reason
    assert _predict_skip(IMPLS["materialize"], spec, 2000, False, prev, config, None, time.perf_counter()) is None


def test_parse_edges_and_graph():
    assert parse_edges("1e3, 100,1e3") == [100, 1000]
    with pytest.raises(ValueError):
        parse_edges("1.5")
    g = make_graph(160, 64)
    assert g.num_nodes == 10 and g.num_edges == 160 and g.x.shape == (10, 64) and g.pos.shape == (10, 3)
    assert (g.edge_index[1].diff() >= 0).all()  # targets sorted, 16 per node


def test_cli_rejects_unknown_impl(capsys):
    assert cli.main(["--impls", "nope", "--quiet"]) == 2
    assert "unknown implementation" in capsys.readouterr().err


def test_list(capsys):
    assert cli.main(["--list", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in IMPLS)


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_records_allocator_peak(tmp_path):
    rc = cli.main(["--impls", "fastik-reference,fastik-triton,materialize", "--groups", "so3", "--edges", "1e3",
                   "--repeats", "2", "--warmup", "1", "--device", "cuda", "--out", str(tmp_path), "--no-plot",
                   "--quiet"])
    assert rc == 0
    result = _result(tmp_path)
    assert result["env"]["device_type"] == "cuda" and result["env"]["device_memory_bytes"] > 0
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    assert {r["impl"] for r in ok} >= {"fastik-reference", "materialize"}
    for r in ok:
        assert r["peak_mem_bytes"] > 0 and r["step_mem_bytes"] is not None
    for r in result["rows"]:  # the fused backend may still be missing: then its rows say why
        assert r["status"] == "ok" or r["reason"]


def test_graph_has_no_self_loops():
    g = make_graph(16 * 50, 8, seed=3)
    assert (g.edge_index[0] != g.edge_index[1]).all()
    assert g.edge_index[0].min() >= 0 and g.edge_index[0].max() < 50


def test_precision_modes():
    """--precision reaches the implementations that have modes; the others are skipped rows, not fp32 rows."""
    assert set(IMPLS["fastik-triton"].precisions) == {"ieee", "tf32x3", "tf32"}
    assert IMPLS["materialize"].check(LayerSpec(precision="tf32")) == "no precision='tf32' mode (runs fp32, TF32 off)"
    assert IMPLS["materialize"].check(LayerSpec(precision="ieee")) is None
    layer = IMPLS["fastik-reference"].build(LayerSpec(channels=2, hidden_channels=1, precision="tf32x3"))
    assert layer.conv.precision == "tf32x3"
    with pytest.raises(ValueError, match="precision must be one of"):
        LayerSpec(precision="bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        BenchConfig(impls=["materialize"], groups=["so3"], edges=[100], precision="fp16")


def test_measure_without_warmup():
    """warmup=0 (dry runs): exactly ``repeats`` calls, all timed."""
    import torch

    from bench.measure import measure

    calls = []
    m = measure(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=0)
    assert len(calls) == 3 and len(m.times_ms) == 3 and m.warmup == 0
    calls.clear()
    m = measure(lambda: calls.append(1), torch.device("cpu"), repeats=2, warmup=2)
    assert len(calls) == 4 and len(m.times_ms) == 2 and m.warmup == 2


def test_rounds_interleave_rows_and_merge_their_calls(monkeypatch):
    """--rounds 3: the rows of one size are measured A, B, A, B, A, B; each row reports every call, each round's
    median, the full warm-up only once (one call per later round) and the largest memory peak."""
    import torch

    from bench import runner
    from bench.measure import Measurement

    order: list[str] = []

    def fake_measure(step, device, repeats, warmup, budget):
        order.append(step)
        k = order.count(step)
        return Measurement([10.0 * k + i for i in range(repeats)], warmup, None, 100 * k, notes=[])

    monkeypatch.setattr(runner, "make_step", lambda layer, graph, training: type(layer).__name__ + ("+bwd" if training else ""))
    monkeypatch.setattr(runner, "measure", fake_measure)
    config = BenchConfig(impls=["fastik-reference", "materialize"], groups=["so3"], edges=[60], passes=["fwd"],
                         repeats=2, warmup=2, rounds=3, row_budget_s=None)
    result = runner.run(config, progress=False)
    first, second = sorted(set(order), key=order.index)
    assert order == [first, second] * 3
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    assert len(rows) == 2
    for r in rows:
        assert r["times_ms"] == [10.0, 11.0, 20.0, 21.0, 30.0, 31.0] and r["repeats"] == 6
        assert r["round_medians_ms"] == [10.5, 20.5, 30.5] and r["median_ms"] == 20.5
        assert r["warmup"] == 2 + 1 + 1 and r["step_mem_bytes"] == 300
    assert "3 rounds" in result["workload"]["timing"]
    assert torch.device(result["config"]["device"]).type == "cpu" and result["config"]["rounds"] == 3
    with pytest.raises(ValueError, match="rounds >= 1"):
        BenchConfig(impls=["materialize"], groups=["so3"], edges=[100], rounds=0)


def test_rounds_interrupted_keep_the_rounds_measured(monkeypatch):
    """Ctrl-C / SIGTERM in round 2 of 2: the rows measured in round 1 are reported, with a note saying so."""
    from bench import runner
    from bench.measure import Measurement

    calls = []

    def fake_measure(step, device, repeats, warmup, budget):
        calls.append(step)
        if len(calls) == 3:  # the first row's second round
            raise KeyboardInterrupt
        return Measurement([5.0] * repeats, warmup, None, 10, notes=[])

    monkeypatch.setattr(runner, "make_step", lambda layer, graph, training: type(layer).__name__)
    monkeypatch.setattr(runner, "measure", fake_measure)
    config = BenchConfig(impls=["fastik-reference", "materialize"], groups=["so3"], edges=[60], passes=["fwd"],
                         repeats=2, warmup=1, rounds=2, row_budget_s=None)
    result = runner.run(config, progress=False)
    assert result["interrupted"]
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    assert len(rows) == 2 and all(r["repeats"] == 2 and r["round_medians_ms"] == [5.0] for r in rows)
    assert all("interrupted: 1 of 2 rounds measured" in r["notes"] for r in rows)
