"""The Triton kernels compile for the GPU (sm_90a) without a GPU: `python -m bench.aot` in a subprocess
(the interpreter mode of this test session is fixed at import, so it cannot compile here)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="needs ptxas (CUDA toolkit) on PATH")
def test_default_configs_compile_for_sm90_without_spills_in_ieee(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = tmp_path / "aot.json"
    res = subprocess.run([sys.executable, "-m", "bench.aot", "--kernels",
                          "_message_fwd_kernel,_message_bwd_dxdh_kernel", "--json", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 6 and all(r["error"] is None for r in rows)
    assert all(0 < r["registers"] <= 255 for r in rows)
    assert all(r["spill_stores"] == 0 for r in rows if r["precision"] == "ieee"), rows


def test_autotuning_is_bucketed_by_edge_count():
    """A configuration tuned at E = 1e4 does not decide E = 1e6: one tuner per power-of-two bucket."""
    from fastik.triton_kernels._config import SizeBuckets

    made = []
    buckets = SizeBuckets(lambda: made.append(object()) or made[-1])
    assert buckets.for_size(10_000) is buckets.for_size(16_384)
    assert buckets.for_size(1_000_000) is not buckets.for_size(10_000)
    assert sorted(buckets.tuners) == [16_384, 1_048_576] and len(made) == 2
