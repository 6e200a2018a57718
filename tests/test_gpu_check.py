"""bench/gpu_check.py: the CPU dry run end to end (every stage's code path), SIGTERM mid-run, and its pieces."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import gpu_check  # noqa: E402
from bench.impls import IMPLS  # noqa: E402

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
HAVE_TRITON = importlib.util.find_spec("triton") is not None
HANG_GUARD_S = 900   # the dry run takes ≈ 4 min on 2 busy cores (CI): only catches a hang


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.Popen(["bash", "bench/gpu_check.sh", "--dry-run", "--quiet", "--out", str(out), *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _doc(out: Path) -> dict:
    (path,) = out.glob("*-gpu-check-dry.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _start(out)
    stdout, _ = proc.communicate(timeout=HANG_GUARD_S)
    return proc.returncode, stdout, out


@pytest.mark.slow
@pytest.mark.xdist_group("dry_run")  # one worker runs the module's dry run once (scripts/test.sh: --dist loadgroup)
@pytest.mark.skipif(not HAVE_TRITON, reason="the dry run exercises the Triton kernels in the interpreter")
def test_dry_run_files_and_stages(dry_run):
    rc, stdout, out = dry_run
    assert rc == 0, stdout[-4000:]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 6, names
    assert {Path(n).suffix for n in names} == {".json", ".md", ".log"} | ({".png"} if HAVE_MPL else set()), names
    doc = _doc(out)
    assert doc["schema"] == "fastik-gpu-check/1" and doc["finished"] and not doc["interrupted"]
    assert doc["config"]["dry_run"] and doc["env"]["device_type"] == "cpu"
    for key in ("device", "driver", "torch", "triton", "git_commit"):
        assert key in doc["env"], key
    status = {k: v["status"] for k, v in doc["stages"].items()}
    assert status == {"a": "ok", "b": "ok", "c": "ok", "d": "ok", "e": "ok", "f": status["f"]}, doc["stages"]
    assert status["f"] in ("ok", "skipped")
    assert all(v["seconds"] <= v["budget_s"] + 3 for v in doc["stages"].values() if "budget_s" in v)
    log = next(out.glob("*.log")).read_text()
    assert "stage c:" in log and "Traceback" not in log


@pytest.mark.slow
@pytest.mark.xdist_group("dry_run")
@pytest.mark.skipif(not HAVE_TRITON, reason="the dry run exercises the Triton kernels in the interpreter")
def test_dry_run_stage_results(dry_run):
    _, _, out = dry_run
    stages = _doc(out)["stages"]
    a = stages["a"]["results"]
    assert a["build"]["status"] == "skipped" and a["import"]["fastik"] and a["pytest"]["rc"] == 0
    fused = gpu_check.fused_impls()
    assert {"fastik-triton", "fastik-triton-csr"} <= set(fused) and "fastik-reference" not in fused
    # b: every fused path x precision against the float64 reference, all within tolerance
    checks = stages["b"]["results"]["checks"]
    assert {(c["impl"], c["precision"]) for c in checks} == (
        {("fastik-reference", "fp32")} | {(n, p) for n in fused for p in gpu_check.DRY_SIZES.precisions})
    for c in checks:
        if IMPLS[c["impl"]].precisions or c["precision"] in ("ieee", "fp32"):
            assert c["status"] == "ok", c
            assert max(c["errors"].values()) <= c["tolerance"]
        else:  # a fused path without precision modes
            assert c["status"] == "skipped" and "precision" in c["reason"]
    ref = next(c for c in checks if c["impl"] == "fastik-reference")
    assert max(ref["errors"].values()) < 1e-5
    # c: every fastik implementation at both widths, the fused ones in every precision, plus the baselines
    rows = stages["c"]["results"]["rows"]
    ok = {(r["impl"], r["precision"], r["width"], r["pass"]) for r in rows if r["status"] == "ok"}
    for width in ("default", "anchor"):
        for p in ("fwd", "fwd+bwd"):
            assert ("fastik-reference", "fp32", width, p) in ok
            for name in (n for n in fused if IMPLS[n].precisions):
                for precision in {"ieee", *gpu_check.DRY_SIZES.precisions}:
                    assert (name, precision, width, p) in ok, (name, precision, width, p)
    assert ("materialize", "fp32", "default", "fwd+bwd") in ok
    # d: the per-kernel split ran every Triton kernel and reports their (interpreter) configurations
    d = stages["d"]["results"]
    names = {i["name"] for i in d["items"] if i["status"] == "ok"}
    for kernel in ("segmented_fwd", "message_fwd", "message_fwd_segmented", "segmented_bwd", "message_bwd"):
        assert f"{kernel} (Triton)" in names
    assert any(n.startswith("G-MLP") for n in names) and "index checks (aminmax src, tgt)" in names
    for width in ("default", "anchor"):  # the fully fused kernels, their parts and the head gradient's chunk
        for part in ("fwd", "bwd", "bwd with z's gradient, as forces ask", "bwd without parameter gradients",
                     "bwd without x's gradient", "fwd, edge-wise head", "bwd, edge-wise head",
                     "bwd head side"):  # pooled (the default at in-degree 16), then edge-wise
            assert any(n.startswith(f"gmlp_conv {part} ({width}") for n in names), (part, width)
        assert any(n.startswith(f"gmlp_conv bwd, head chunk 32 ({width}") for n in names), width
        for variant in ("fwd, edge-wise head, BLOCK_E=16, CHUNK=64, 2 programs/SM",
                        "bwd, saved layer states on 16-edge blocks", "bwd, waves of two chunks per program",
                        "bwd, one chunk per program per wave",
                        "fwd, pooled head on 32-target blocks",
                        "bwd, pooled head on 32-target blocks"):
            assert any(n.startswith(f"gmlp_conv {variant} ({width}") for n in names), (variant, width)
        for statement in ("pooled", "per edge"):  # the double backward's two torch statements
            assert any(n.startswith(f"forces in the loss: second derivatives, {statement} ({width}") for n in names)
    assert {"message_fwd", "message_bwd", "segmented_fwd", "segmented_bwd"} <= set(d["configs"])
    assert set(d["scratch_reads_bytes_per_edge"]) == {"default", "anchor"}  # the models beside the times
    assert set(d["weight_reads_bytes_per_edge"]) == {"default, tf32x3", "anchor, tf32x3"}  # and per precision
    assert all(c["mode"] == "fixed (interpreter)" for c in d["configs"].values())
    assert d["peaks"]["fp32_matmul_tflops"] > 0 and d["peaks"]["copy_gb_s"] > 0
    # e: aggregation ops agree with the float64 index_add_ and report bandwidth
    e = stages["e"]["results"]
    assert len(e["items"]) == 7 and all(i["status"] == "ok" for i in e["items"])
    for i in e["items"]:
        assert i["gb_s"] > 0 and i["pct_copy_bw"] > 0
        assert i.get("rel_err_vs_float64", 0.0) < 1e-5


@pytest.mark.slow
@pytest.mark.xdist_group("dry_run")
@pytest.mark.skipif(not HAVE_TRITON, reason="the dry run exercises the Triton kernels in the interpreter")
def test_dry_run_markdown(dry_run):
    _, _, out = dry_run
    text = next(out.glob("*.md")).read_text()
    assert text.startswith("# fastik GPU check") and "**Dry run**" in text
    assert "| a | build, import check, pytest -m cuda | ok |" in text
    for section in ("## b —", "## c —", "## d —", "## e —", "Kernel configurations:"):
        assert section in text, section
    assert "no ratios against the anchors" in text  # the dry run's E matches no anchor


@pytest.mark.slow
@pytest.mark.xdist_group("dry_run")
@pytest.mark.skipif(not HAVE_TRITON, reason="the dry run exercises the Triton kernels in the interpreter")
def test_markdown_anchor_ratios(dry_run):
    """The dry run's report with one fused row moved to E = 1e6: the ratios against each anchor appear."""
    _, _, out = dry_run
    doc = _doc(out)
    row = next(r for r in doc["stages"]["c"]["results"]["rows"]
               if r["impl"] == "fastik-triton" and r["pass"] == "fwd+bwd" and r["status"] == "ok")
    row.update(edges=1_000_000, median_ms=7.7563, peak_mem_bytes=2 ** 30)
    text = gpu_check.markdown(doc, gpu_check.load_anchors())
    assert "Against the anchors (NVIDIA H200" in text and "Not the anchors' card" in text
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {gpu_check._variant(row)} | 1,000,000 |"))
    assert "×10 (×32.6)" in line          # materialize: 77.563 ms, 32.566 GiB
    assert "×53.1 (×56.1)" in line        # escnn-implicit: 411.911 ms, 56.075 GiB
    assert "Target at E = 1,000,000" in text


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TRITON, reason="the dry run exercises the Triton kernels in the interpreter")
def test_sigterm_keeps_finished_stages(tmp_path):
    proc = _start(tmp_path, "--stages", "a,b,c")
    first = None
    try:
        t_end = time.monotonic() + HANG_GUARD_S
        while first is None and time.monotonic() < t_end and proc.poll() is None:
            time.sleep(0.2)
            try:
                doc = _doc(tmp_path)
            except ValueError:  # the glob found nothing yet
                continue
            if doc["stages"]["a"]["status"] in gpu_check.DONE:
                first = doc["stages"]["a"]
        assert first is not None and proc.poll() is None, "stage a did not finish while the run went on"
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stdout[-3000:]
    doc = _doc(tmp_path)  # valid JSON
    assert doc["interrupted"] and not doc["finished"]
    assert doc["stages"]["a"] == first and first["status"] == "ok"
    b, c = doc["stages"]["b"], doc["stages"]["c"]
    assert b["status"] == "interrupted" or (b["status"] == "skipped" and "SIGTERM" in b["reason"]), b
    assert c["status"] == "skipped" and "SIGTERM" in c["reason"]
    assert "**Interrupted**" in next(tmp_path.glob("*.md")).read_text()
    assert len(list(tmp_path.iterdir())) <= 6


def test_budget_allocation():
    order, weights, mins = ["a", "b", "c"], {"a": 100, "b": 100, "c": 200}, {"a": 10, "b": 10, "c": 20}
    assert gpu_check.allocate_budget("a", order, weights, mins, 400) == pytest.approx(100)
    assert gpu_check.allocate_budget("c", order, weights, mins, 150) == pytest.approx(150)  # the last gets all
    assert gpu_check.allocate_budget("b", order, {**weights, "c": 0}, mins, 50) == pytest.approx(50)
    assert gpu_check.allocate_budget("a", order, weights, mins, 35) == 0.0      # later minimums come first
    assert gpu_check.allocate_budget("a", order, weights, mins, 45) == pytest.approx(11.25)
    assert gpu_check.allocate_budget("a", order, {**weights, "a": 10}, mins, 100) == pytest.approx(10)  # its minimum


def test_anchor_ratios_and_anchor_file():
    anchors = gpu_check.load_anchors()
    assert anchors["card"].startswith("NVIDIA H200") and anchors["date"] == "2026-11-27"
    assert anchors["peaks"] == {"fp32_matmul_tflops": 50.7, "tf32_matmul_tflops": 397.7, "copy_tb_s": 4.08}
    assert all(a["impl"] in IMPLS for a in anchors["rows"])
    rows = [{"impl": "fastik-triton", "precision": "ieee", "width": "default", "hidden_channels": 16,
             "edges": 1_000_000, "pass": "fwd+bwd", "status": "ok", "median_ms": 7.7563, "peak_mem_bytes": 2 ** 30},
            {"impl": "fastik-triton", "precision": "ieee", "width": "default", "hidden_channels": 16,
             "edges": 10_000, "pass": "fwd+bwd", "status": "ok", "median_ms": 1.0, "peak_mem_bytes": 2 ** 20}]
    ratios = gpu_check.anchor_ratios(rows, anchors)
    assert {q["edges"] for q in ratios} == {1_000_000}   # no anchor at E = 1e4
    q = next(q for q in ratios if q["anchor"] == "materialize")
    assert q["speedup"] == pytest.approx(10.0) and q["mem_ratio"] == pytest.approx(32.566, abs=1e-3)


def test_escnn_stage_skips_cleanly(tmp_path, monkeypatch):
    import bench.impls.base as base

    doc = {"stages": {"f": {"title": "escnn", "status": "running"}}}
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(base, "missing_modules", lambda *names: list(names))
    ctx = gpu_check.Context("f", path, budget_s=10, dry_run=True, options={})
    gpu_check.stage_escnn(ctx)
    assert ctx.status == "skipped" and "escnn" in ctx.reason
    # the driver: no escnn and no wheel folder -> stage f is not started; a folder of wheels -> overlay plan
    args = gpu_check.parse_args(["--dry-run", "--out", str(tmp_path), "--escnn-wheels", str(tmp_path)])
    driver = gpu_check.Driver(args)
    assert driver._escnn_plan() == (False, {})
    (tmp_path / "escnn-1.0.11-py3-none-any.whl").write_bytes(b"")
    assert driver._escnn_plan() == (True, {"wheels": str(tmp_path.resolve())})


def test_gpu_run_plans_every_precision():
    """The GPU run checks (b), runs (c) and times (d) the fused paths in every precision; the dry run fewer."""
    gpu, dry = gpu_check.GPU_SIZES.precisions, gpu_check.DRY_SIZES.precisions
    assert set(gpu) == {"ieee", "tf32x3", "tf32"} and set(dry) < set(gpu)
    plan = gpu_check.workload_plan(gpu_check.GPU_SIZES.widths, gpu)
    assert {(p["precision"], p["width"]) for p in plan} == {(q, w) for q in gpu for w in ("default", "anchor")}
    assert len(gpu_check.workload_plan(gpu_check.GPU_SIZES.widths, dry)) < len(plan)


def test_gpu_config_variant_is_restored():
    """Stage d times the fused kernels' previous block sizes inside `_gpu_config` (and module constants inside
    `_setting`): the variant is what launch_config returns on a GPU inside the block, and the default comes back
    after it, also after an error."""
    pytest.importorskip("triton")
    import torch

    from fastik.triton_kernels import gmlp_conv as gc

    before, programs = {k: dict(v) for k, v in gc.GPU_CONFIG.items()}, dict(gc.PROGRAMS_PER_SM)
    with gpu_check._gpu_config(gc, "fwd", BLOCK_E=16, CHUNK=64, programs_per_sm=2):
        assert gc.launch_config("fwd", 64, interpret=False) == {**before["fwd"], "BLOCK_E": 16, "CHUNK": 64}
        assert gc.PROGRAMS_PER_SM["fwd"] == 2
    with pytest.raises(RuntimeError), gpu_check._gpu_config(gc, "head_bwd", BLOCK_E=16):
        assert gc.launch_config("head_bwd", 64, interpret=False)["BLOCK_E"] == 16
        raise RuntimeError
    assert gc.GPU_CONFIG == before and gc.PROGRAMS_PER_SM == programs
    waves = gc.WAVE_CHUNKS
    with pytest.raises(RuntimeError), gpu_check._setting(gc, "WAVE_CHUNKS", waves + 1):
        assert gc._wave(torch.empty(0), {"IN_K": 64}) == (waves + 1) * gc.launch_config("bwd", 64)["CHUNK"] * 2
        raise RuntimeError
    assert gc.WAVE_CHUNKS == waves


def test_read_models_follow_the_code():
    """bench/NOTES.md's models of the fused kernels' reads per edge, computed from the packed sizes, the tile lists and
    the GPU configuration, at the standard workload (in-degree 16: the head pools per target): weights from L2 in TF32
    5.54 KB at the anchors' width (6.56 in IEEE: the backward kernel reads z's gradient's weight and the structure
    unflagged there), 22.3 KB at the default (edge-wise 10.6 / 33.3; either way the backward kernel reads the layers'
    saved state, and the parts of every weight and structure matrix its slab flags keep: ``_slab_reads``, the dense
    reads with every flag set; ``_structure_reads``; the head the rows of its tiles ``head_row_flags`` keep) —
    the forward's MLP part doubles when its blocks halve;
    scratch rows and gathers 15.3 / 48.4 KB (edge-wise 87.6 / 145.5). The edge-wise forward (in-degree below
    POOL_MIN_DEGREE) reads h1's slices once per run of row tiles (15 of the 528 listed tiles at the anchors' width) and
    the head's tiles once per chunk, its head gradient the slices once per group of channels (51); the pooled forward
    the wave's h1 rows once per channel tile (one at the anchors' width) and each listed tile's slice of pooled features
    once per 16 targets.  Without z's gradient (a training step without forces) the backward neither reads layer 0's
    Wᵀ nor spends its FLOPs (``_fused_model``) nor writes grad_z's sorted rows.  The head's gradient: pooled, a load
    and a store per kept entry in each program's copy per 16 targets, no atomics (1.73 / 5.21 KB per edge with the
    copies' zeroing and sum at E = 10⁶); edge-wise an atomic per support entry per chunk (199 / 628 per edge)."""
    pytest.importorskip("triton")
    import torch

    import fastik
    from fastik.triton_kernels import gmlp_conv as gc

    ft = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    reads, scratch = {}, {}
    for hidden in (5, 16):
        kernel = fastik.ImplicitPointConv(ft, ft, hidden_channels=hidden, backend="fused").kernel
        packed, k0 = kernel.packed(torch.float32), kernel.input_type.dim
        reads[hidden] = gpu_check.fused_weight_reads(packed, k0)
        scratch[hidden] = gpu_check.fused_scratch_reads(packed, k0)
        kept = float(packed.head_row_flags.double().sum()) * 16  # the head's gradient: per program copies pooled
        assert gpu_check.head_gradient_traffic(packed, k0, edges=10 ** 6, programs=132) == pytest.approx(
            {"atomics": 0, "bytes": 8 * kept / (16 * 16) + 2 * 132 * float(packed.head_block_count.sum()) * 1024e-6})
        assert gpu_check.head_gradient_traffic(packed, k0, degree=1) == {  # an atomic per support entry per chunk
            "atomics": {5: 199, 16: 628}[hidden], "bytes": 0}
        if hidden == 5:
            assert int(packed.head_block_count.sum()) == 528 and gpu_check.head_groups(packed) == 51
            assert gpu_check.fused_scratch_reads(packed, k0, degree=1)["fwd"] == 15 * 64 + 528 * 4
            assert scratch[5]["fwd"] == 64 * 4 + 12 + 64 * 4 + 528 * 64 / 16
            assert reads[5]["bwd"] == gpu_check.fused_weight_reads(packed, k0, degree=1)["bwd"]  # either head
        ieee = gpu_check.fused_weight_reads(packed, k0, precision="ieee")  # z's gradient on 32 columns at P = 256
        assert ieee["total"] == pytest.approx({5: 6.56e3, 16: 19.55e3}[hidden], rel=0.005)
        m = gc._meta(packed._asdict(), k0, "tf32")
        dense = gpu_check._slab_reads(packed._replace(weight_slabs=torch.ones_like(packed.weight_slabs)), k0, "tf32")
        ks_hu, ks_pu, zn = {5: (64, 96, 64), 16: (192, 256, 128)}[hidden]  # HU, PU rounded up to 32; ZN in TF32
        assert dense == ([m["K0P"] * m["P"] * 4 + m["K0P"] // 16 * m["P"], ks_hu * m["P"] * 4 + ks_hu // 16 * m["P"]],
                         [zn * ks_pu * 4 + ks_pu // 16 * zn, m["IN_K"] * ks_pu * 4 + ks_pu // 16 * m["IN_K"]])
        no_z = gpu_check.fused_weight_reads(packed, k0, need_z=False)  # the backward without layer 0's Wᵀ
        blocks = gc.launch_config("bwd", m["IN_K"], interpret=False)["BLOCK_E"]
        assert reads[hidden]["bwd"] - no_z["bwd"] == pytest.approx(gpu_check._slab_reads(packed, k0, "tf32")[1][0] /
                                                                   blocks)
        e, (pu, _, zn) = 10 ** 6, gpu_check._layer_rows(packed, k0, "tf32")  # nor its FLOPs nor grad_z's rows
        fwd_bwd = [gpu_check._fused_model(e, e // 16, packed, 64, k0, need_z=n)["bwd"] for n in (True, False)]
        assert (fwd_bwd[0][0] - fwd_bwd[1][0], fwd_bwd[0][1] - fwd_bwd[1][1]) == (2.0 * pu * zn * e, 2 * e * k0 * 4)
    assert scratch[5]["total"] == pytest.approx(15.33e3, rel=0.005)
    assert scratch[16]["total"] == pytest.approx(48.4e3, rel=0.01)
    assert reads[5]["total"] == pytest.approx(5.54e3, rel=0.005)
    assert reads[16]["total"] == pytest.approx(22.26e3, rel=0.005)
    assert set(reads[5]) == set(scratch[5]) == {"fwd", "pool_bwd", "bwd", "total"}
    edge_wise = [gpu_check.fused_scratch_reads(packed, k0, degree=1), gpu_check.fused_weight_reads(packed, k0, 1)]
    assert [m["total"] for m in edge_wise] == [pytest.approx(145.5e3, rel=0.01), pytest.approx(33.32e3, rel=0.005)]
    assert reads[16]["total"] == pytest.approx(sum(v for k, v in reads[16].items() if k != "total"))
    read = float(packed.head_row_flags.double().sum()) * 16 * 4 + float(packed.head_block_count.sum()) * 16
    # a listed tile's flagged rows and its 16 flags: per 16 targets × 16 edges pooled, per chunk (128) edge-wise
    assert reads[16]["fwd"] - gpu_check.fused_weight_reads(packed, k0, degree=1)["fwd"] == \
        pytest.approx(read / (16 * 16) - read / 128)
    with gpu_check._gpu_config(gc, "fwd", BLOCK_E=16, CHUNK=64):
        before = gpu_check.fused_weight_reads(packed, k0, degree=1)["fwd"]
    assert before - read / 64 == pytest.approx(2 * (reads[16]["fwd"] - read / (16 * 16)))


def test_layer_flops_dense_and_on_the_support():
    """bench/NOTES.md's count of the hidden layers' products at the standard workload, training step without z's
    gradient, tf32x3: as the fused kernels do them on dense padded weights 71.7 k / 483.3 k FLOPs per edge (of the
    model's 191.0 k / 844.3 k), on the weights' support only 4.65 k / 44.45 k — two MLP passes, the weight and the
    input gradients, 2 FLOPs per support entry each; with z's gradient layer 0's input gradient too."""
    pytest.importorskip("triton")
    import torch

    import fastik

    ft = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    expected = {5: (71.7e3, 4.65e3, 191.0e3), 16: (483.3e3, 44.45e3, 844.3e3)}
    for hidden, (dense, support, total) in expected.items():
        kernel = fastik.ImplicitPointConv(ft, ft, hidden_channels=hidden, backend="fused").kernel
        packed, k0 = kernel.packed(torch.float32), kernel.input_type.dim
        flops = gpu_check.layer_flops(packed, k0, "tf32x3", need_z=False)
        assert flops == {"dense": pytest.approx(dense, rel=1e-3), "support": pytest.approx(support, rel=1e-3)}
        e = 10 ** 6
        model = gpu_check._fused_model(e, e // 16, packed, 64, k0, "tf32x3", need_z=False)
        assert (model["fwd"][0] + model["bwd"][0]) / e == pytest.approx(total, rel=1e-3)
        entries = [2.0 * float(packed.weight_support[i].sum()) for i in range(packed.layers)]
        assert flops["support"] == 4 * sum(entries) - entries[0]  # linear twice, weight and input gradients
        with_z = gpu_check.layer_flops(packed, k0, "tf32x3")
        assert with_z["support"] - flops["support"] == entries[0] and with_z["dense"] > flops["dense"]


def test_tf32x3_verdict_compares_with_ieee_per_path():
    """Stage b's verdict on ``precision="auto"``: per path checked in both IEEE and tf32x3, tf32x3's largest excess
    error over IEEE's on any tensor against AUTO_TF32X3_MARGIN; paths without both are left out; the Markdown says
    which side of the margin each is on."""
    def check(impl, precision, out, grad_x):
        return {"impl": impl, "precision": precision, "status": "ok", "tolerance": 1e-4,
                "errors": {"out": out, "grad_x": grad_x, "grad_pos": 1e-7, "grad_params": 1e-7}}

    checks = [check("fastik-reference", "fp32", 2e-7, 2e-7), check("a", "ieee", 2e-7, 3e-7),
              check("a", "tf32x3", 4e-7, 2e-7), check("b", "ieee", 2e-7, 2e-7), check("b", "tf32x3", 2e-7, 5e-6),
              check("c", "tf32", 1e-3, 1e-3)]
    verdicts = gpu_check.tf32x3_verdicts(checks)
    assert [(v["impl"], v["within"]) for v in verdicts] == [("a", True), ("b", False)]
    assert verdicts[0]["excess"] == pytest.approx(2e-7) and verdicts[1]["excess"] == pytest.approx(4.8e-6)
    lines = gpu_check._md_correctness("b", {"title": "t"}, {"checks": checks, "tf32x3_vs_ieee": verdicts}, {}, True)
    assert "a +2e-07 (within); b +4.8e-06 (**over**)" in lines[-2]
