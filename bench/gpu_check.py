"""GPU evidence in one window: every number of a GPU check, staged under one deadline.

    bash bench/gpu_check.sh                      # on the GPU machine (python3, or $PYTHON)
    bash bench/gpu_check.sh --dry-run            # CPU, tiny sizes, Triton interpreter (CI)
    python -m bench.gpu_check --stages c,d --deadline 300 --out /tmp/res

Stages, in order of value; each runs in its own process (a crash or a poisoned
CUDA context loses one stage, not the run) under its own time budget, a share
of the time left before the deadline:

  a  build the extension (pip install --no-build-isolation, MAX_JOBS = cores),
     import check, ``pytest -m cuda -x -q`` with a time cap;
  b  correctness at E = 1e5: every fused fastik path (each registered
     ``fastik-*`` benchmark implementation that runs Triton) x precision
     against the float64 reference layer: output and all gradients (fixed
     Triton configurations, FASTIK_TRITON_AUTOTUNE=0);
  c  the standard workload at E = 1e4, 1e5, 1e6, fwd and fwd+bwd: every
     ``fastik-*`` implementation (fused ones in each precision) at the default and
     the anchor-matched G-MLP width, plus e3nn-tfn and materialize (bench/runner.py);
  d  per-kernel split at E = 1e6: G-MLP, each Triton kernel, aggregation, index
     checks, sort; model FLOP/s and GB/s against the peaks measured in the same
     process; the configuration each kernel ran with (autotuned on the GPU);
  e  aggregation: segment_sum / scatter_sum vs index_add_ at E = 1e6, D = 64;
  f  escnn R3PointConv and the paper's construction, when escnn imports or a
     wheel folder is carried in (--escnn-wheels); skipped otherwise.

Output (under $OUT, else bench/results): ``<date>-<device>-gpu-check[-dry].{json,md,png,log}``.
The JSON is rewritten atomically whenever a stage (or a row of it) has a result, the
Markdown after every stage; SIGTERM stops the running stage and keeps every file
of the finished ones.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .envinfo import REPO_ROOT
from .report import fmt_bytes, fmt_ms, write_json

__all__ = ["main", "Sizes", "GPU_SIZES", "DRY_SIZES", "STAGES", "allocate_budget", "load_anchors", "anchor_ratios",
           "markdown", "fused_weight_reads", "fused_scratch_reads", "head_gradient_traffic"]

SCHEMA = "fastik-gpu-check/1"
ANCHORS_PATH = Path(__file__).resolve().parent / "anchors_h200.json"
DEFAULT_DEADLINE_S = 480.0
FINAL_RESERVE_S = 10.0     # time kept after the last stage for the Markdown and the PNG
KILL_GRACE_S = 10.0        # SIGTERM -> SIGKILL of a stage that overran its budget
TRAIN = {"need_z": False}  # the fused backward as a training step without forces asks for it (no z gradient)
DONE = ("ok", "partial", "failed", "timeout", "interrupted", "crashed", "skipped")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (GPU, or the tiny dry run)."""

    channels: int                     # fields of 0e + 1o: D = 4 * channels
    widths: tuple[tuple[str, int], ...]   # (label, hidden_channels): default and anchor-matched G-MLP width
    correctness_edges: int
    workload_edges: tuple[int, ...]
    repeats: int
    warmup: int
    split_edges: int
    agg_edges: int
    agg_dim: int
    escnn_edges: tuple[int, ...]
    peak_matmul_n: int
    copy_bytes: int
    head_chunks: tuple[int, ...]          # chunk sizes of the fused head kernel (grad_x, grad_env, head) in stage d
    precisions: tuple[str, ...]           # the fused paths' precisions: checked (b), run (c, besides ieee), timed (d)


GPU_SIZES = Sizes(channels=16, widths=(("default", 16), ("anchor", 5)), correctness_edges=100_000,
                  workload_edges=(10_000, 100_000, 1_000_000), repeats=5, warmup=2, split_edges=1_000_000,
                  agg_edges=1_000_000, agg_dim=64, escnn_edges=(100_000, 400_000, 1_000_000), peak_matmul_n=8192,
                  copy_bytes=2 ** 28, head_chunks=(64, 128, 256, 512), precisions=("tf32x3", "tf32", "ieee"))
DRY_SIZES = Sizes(channels=2, widths=(("default", 2), ("anchor", 1)), correctness_edges=48, workload_edges=(48,),
                  repeats=1, warmup=0, split_edges=64, agg_edges=4096, agg_dim=8, escnn_edges=(48,),
                  peak_matmul_n=128, copy_bytes=2 ** 20, head_chunks=(32,),
                  precisions=("tf32x3",))  # the interpreter runs every precision's dots alike


@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    weight_s: float      # nominal budget on the GPU; the time left is shared in these proportions
    min_s: float         # below this the stage is skipped
    run: Callable[["Context"], None]


# =====================================================================================================
# child side: one stage in its own process
# =====================================================================================================
class Context:
    """What a stage sees: sizes, device, its budget, and ``results`` (saved into the JSON by :meth:`save`)."""

    def __init__(self, stage: str, json_path: Path, budget_s: float, dry_run: bool, options: dict) -> None:
        import torch

        self.stage, self.json_path, self.dry_run, self.options = stage, json_path, dry_run, options
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.sizes = DRY_SIZES if dry_run else GPU_SIZES
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.doc = json.loads(json_path.read_text())
        self.results: dict = {}
        self.status: str | None = None     # None: decided from self.results["errors"]
        self.reason: str | None = None

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def save(self) -> None:
        entry = self.doc["stages"][self.stage]
        entry["results"] = self.results
        entry["child_status"], entry["reason"] = self.status, self.reason
        write_json(self.doc, self.json_path)

    def error(self, where: str, exc: BaseException) -> dict:
        """Record a failed sub-step (traceback to the log) and return its entry."""
        print(f"[{self.stage}] {where} failed:", flush=True)
        traceback.print_exc()
        entry = {"where": where, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"}
        self.results.setdefault("errors", []).append(entry)
        self.save()
        return entry

    def log(self, msg: str) -> None:
        print(f"[{self.stage} {time.perf_counter() - self.t0:5.0f}s] {msg}", flush=True)


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def child_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    ctx = Context(args.child, Path(args.json), args.budget, args.dry_run, json.loads(args.options))
    try:
        STAGES[args.child].run(ctx)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second SIGTERM must not interrupt the save
        ctx.results["interrupted"] = True
        ctx.status, ctx.reason = "interrupted", "SIGTERM: stopped before the end of the stage"
        ctx.save()
        return 130
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which goes on with the next stage
        traceback.print_exc()
        ctx.status, ctx.reason = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        ctx.save()
        return 1
    if ctx.status is None and ctx.results.get("errors"):
        ctx.status = "partial"
        ctx.reason = f"{len(ctx.results['errors'])} sub-step(s) failed: " + "; ".join(
            e["where"] for e in ctx.results["errors"])
    ctx.save()
    return 0


def run_command(cmd: list[str], timeout_s: float, env: dict | None = None, tail_lines: int = 40) -> dict:
    """Run ``cmd`` (output streamed to stdout, i.e. the log) in its own process group, killed after
    ``timeout_s``; returns {cmd, rc, seconds, timed_out, tail}."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        _kill_group(proc, grace_s=3.0)

    timer = threading.Timer(max(1.0, timeout_s), kill)
    timer.start()
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _kill_group(proc, grace_s=3.0)
    sys.stdout.flush()
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "timed_out": timed_out.is_set(), "tail": list(tail)}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group of ``proc`` (started with start_new_session), SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------------------------- stage a
IMPORT_CHECK = """
import json, fastik, fastik.ops.aggregate as a
from fastik.ops.fused import triton_available
import torch
print("IMPORT-CHECK " + json.dumps({"fastik": fastik.__version__, "file": fastik.__file__,
      "extension": a.has_extension(), "extension_cuda": a.extension_has_cuda(),
      "triton_available": triton_available(torch.device("cuda" if torch.cuda.is_available() else "cpu"))}))
"""


def stage_build(ctx: Context) -> None:
    """a: build the extension, check that it imports, run the CUDA-marked tests."""
    py, r = sys.executable, ctx.results
    if ctx.dry_run or ctx.options.get("skip_build"):
        why = "dry run: the extension is built by scripts/setup.sh" if ctx.dry_run else "--skip-build"
        r["build"] = {"status": "skipped", "reason": why}
    else:
        env = {**os.environ, "MAX_JOBS": str(os.cpu_count() or 1), "PIP_BREAK_SYSTEM_PACKAGES": "1"}
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")   # H100 / H200
        ctx.log(f"build: MAX_JOBS={env['MAX_JOBS']} TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}")
        res = run_command([py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
                          timeout_s=min(ctx.left() - 45, 0.7 * ctx.budget_s), env=env, tail_lines=8)
        r["build"] = {**res, "status": "ok" if res["rc"] == 0 else ("timeout" if res["timed_out"] else "failed")}
    ctx.save()
    res = run_command([py, "-c", IMPORT_CHECK], timeout_s=min(60.0, max(10.0, ctx.left() - 30)), tail_lines=5)
    line = next((ln for ln in res["tail"] if ln.startswith("IMPORT-CHECK ")), None)
    r["import"] = {"rc": res["rc"], "seconds": res["seconds"],
                   **(json.loads(line.split(" ", 1)[1]) if line else {"error": "\n".join(res["tail"][-3:])})}
    ctx.save()
    if ctx.left() < 10:
        r["pytest"] = {"status": "skipped", "reason": f"{ctx.left():.0f} s left in the stage"}
        return
    targets = ["tests/test_bench.py"] if ctx.dry_run else []
    res = run_command([py, "-m", "pytest", "-m", "cuda", "-x", "-q", "-p", "no:cacheprovider", *targets],
                      timeout_s=ctx.left() - 3, tail_lines=30)
    summary = next((ln for ln in reversed(res["tail"]) if " in " in ln and ("passed" in ln or "failed" in ln
                                                                           or "skipped" in ln or "error" in ln)), "")
    r["pytest"] = {**res, "summary": summary.strip("= ")}
    if res["rc"] not in (0, 5):  # 5: nothing collected
        r.setdefault("errors", []).append({"where": "pytest -m cuda", "error": summary or f"rc {res['rc']}"})
    if r["build"].get("status") in ("failed", "timeout"):
        r.setdefault("errors", []).append({"where": "build", "error": "\n".join(r["build"]["tail"][-3:])})


# ----------------------------------------------------------------------------------------------- stage b
def fastik_impls() -> list[str]:
    """Every registered fastik implementation (name ``fastik-*``) in registry order, but those with a G-MLP
    width of their own (``Impl.hidden_channels``): stages b and c set the width themselves."""
    from .impls import IMPLS

    return [n for n, impl in IMPLS.items() if n.startswith("fastik-") and impl.hidden_channels is None]


def fused_impls() -> list[str]:
    """The fused paths: fastik implementations that run Triton kernels."""
    from .impls import IMPLS

    return [n for n in fastik_impls() if "triton" in IMPLS[n].requires]


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (0-safe), in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item() if b.numel() else 0.0
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    return diff / scale if scale > 0 else diff


TOLERANCE = {"fp32": 1e-4, "ieee": 1e-4, "tf32x3": 1e-4, "tf32": 3e-2}
#: how much larger than IEEE's (fp32's) tf32x3's error may be for ``precision="auto"`` to pick it on CUDA
#: (``fastik.ops.dispatch.resolve_precision``; the issue's "matches fp32 within 1e-6 relative")
AUTO_TF32X3_MARGIN = 1e-6


def tf32x3_verdicts(checks: list[dict]) -> list[dict]:
    """Per path checked in both IEEE and tf32x3 (stage b's ``checks``): the largest excess of tf32x3's error over
    IEEE's on any tensor, and whether it is within AUTO_TF32X3_MARGIN."""
    errors = {(c["impl"], c["precision"]): c["errors"] for c in checks if "errors" in c}
    out = []
    for impl in dict.fromkeys(c["impl"] for c in checks):
        ieee, x3 = errors.get((impl, "ieee")), errors.get((impl, "tf32x3"))
        if ieee and x3:
            excess = max(x3[k] - ieee[k] for k in ieee)
            out.append({"impl": impl, "excess": excess, "within": excess <= AUTO_TF32X3_MARGIN})
    return out


def _outputs_and_grads(layer, x, pos, edge_index, gout):
    import torch

    x = x.detach().requires_grad_(True)
    pos = pos.detach().requires_grad_(True)
    params = [p for p in layer.parameters() if p.requires_grad]
    out = layer(x, pos, edge_index)
    grads = torch.autograd.grad((out * gout).sum(), [x, pos, *params], allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                      for g, p in zip(grads[2:], params)])
    return {"out": out.detach(), "grad_x": grads[0], "grad_pos": grads[1], "grad_params": flat}


def stage_correctness(ctx: Context) -> None:
    """b: every fused path x precision vs the float64 reference: output and all gradients."""
    import torch

    from .impls import IMPLS
    from .workload import PRECISIONS, LayerSpec, make_graph

    s = ctx.sizes
    hidden = s.widths[0][1]
    graph = make_graph(s.correctness_edges, 4 * s.channels, ctx.device, torch.float64, seed=1)
    spec64 = LayerSpec(channels=s.channels, device=str(ctx.device), dtype=torch.float64, hidden_channels=hidden)
    torch.manual_seed(0)
    truth_layer = IMPLS["fastik-reference"].build(spec64)
    gout = torch.randn(graph.num_nodes, spec64.dim, generator=torch.Generator().manual_seed(2),
                       dtype=torch.float64).to(ctx.device)
    truth = _outputs_and_grads(truth_layer, graph.x, graph.pos, graph.edge_index, gout)
    state = truth_layer.state_dict()
    x32, pos32, gout32 = graph.x.float(), graph.pos.float(), gout.float()
    ctx.results.update(edges=graph.num_edges, nodes=graph.num_nodes, dim=spec64.dim, hidden_channels=hidden,
                       reference="fastik-reference in float64", error="max|a - b| / max|b| per tensor; "
                       "grad_params: all parameter gradients flattened", checks=[])
    ctx.save()
    cases = [("fastik-reference", "ieee")] + [(n, p) for n in fused_impls() for p in PRECISIONS if p in s.precisions]
    for name, precision in cases:
        spec = LayerSpec(channels=s.channels, device=str(ctx.device), hidden_channels=hidden, precision=precision)
        label = "fp32" if name == "fastik-reference" else precision
        entry = {"impl": name, "precision": label, "tolerance": TOLERANCE[label]}
        reason = IMPLS[name].check(spec)
        if reason:
            entry.update(status="skipped", reason=reason)
        else:
            try:
                layer = IMPLS[name].build(spec)
                layer.load_state_dict(state)
                got = _outputs_and_grads(layer, x32, pos32, graph.edge_index, gout32)
                errs = {k: rel_err(got[k], truth[k]) for k in truth}
                ok = all(math.isfinite(v) and v <= TOLERANCE[label] for v in errs.values())
                entry.update(status="ok" if ok else "mismatch", errors={k: float(f"{v:.3g}") for k, v in errs.items()})
                del layer, got
            except Exception as exc:  # noqa: BLE001 - one failing path must not hide the others
                entry.update(status="error", **ctx.error(f"{name} {precision}", exc))
        ctx.log(f"{name:<22} {label:<7} {entry['status']:<8} {entry.get('errors', entry.get('reason', ''))}")
        ctx.results["checks"].append(entry)
        if entry["status"] == "mismatch":
            ctx.results.setdefault("errors", []).append({"where": f"{name} {label}",
                                                         "error": f"error above {TOLERANCE[label]:g}"})
        ctx.save()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    ctx.results["tf32x3_vs_ieee"] = tf32x3_verdicts(ctx.results["checks"])
    ctx.save()


# ----------------------------------------------------------------------------------------------- stage c
def workload_plan(widths: tuple[tuple[str, int], ...], precisions: tuple[str, ...]) -> list[dict]:
    """The bench runs of stage c, in order of value, with their shares of the stage's time: every fastik path in
    IEEE, then the fused ones in each other precision of ``precisions``."""
    from .impls import IMPLS

    baselines = [n for n in ("e3nn-tfn", "materialize") if n in IMPLS]
    (dlabel, dwidth), (alabel, awidth) = widths
    plan = [dict(precision="ieee", width=dlabel, hidden_channels=dwidth, impls=fastik_impls() + baselines, share=4),
            dict(precision="ieee", width=alabel, hidden_channels=awidth, impls=fastik_impls(), share=2)]
    moded = [n for n in fused_impls() if IMPLS[n].precisions]
    for label, width in widths:
        for precision in (p for p in precisions if p != "ieee"):
            plan.append(dict(precision=precision, width=label, hidden_channels=width, impls=moded, share=1))
    return [p for p in plan if p["impls"]]


def _bench_runs(ctx: Context, plan: list[dict], edges: tuple[int, ...], key: str = "rows") -> None:
    """Run ``plan`` (bench.runner configurations) within the stage's time, saving after every row."""
    from .runner import BenchConfig, run

    s = ctx.sizes
    rows = ctx.results.setdefault(key, [])
    ctx.results.setdefault("runs", [])
    for i, item in enumerate(plan):
        shares = sum(p["share"] for p in plan[i:])
        budget = (ctx.left() - 5) * item["share"] / shares
        if budget < 3:
            ctx.results["runs"].append({**item, "status": "skipped", "reason": f"{ctx.left():.0f} s left"})
            ctx.save()
            continue
        config = BenchConfig(impls=item["impls"], groups=["so3"], edges=list(edges), device=str(ctx.device),
                             repeats=s.repeats, warmup=s.warmup, row_budget_s=min(30.0, budget), budget_s=budget,
                             channels=s.channels, hidden_channels=item["hidden_channels"],
                             precision=item["precision"])
        done = list(rows)

        def checkpoint(partial: dict, done=done, item=item) -> None:
            rows[:] = done + [{**r, "width": item["width"]} for r in partial["rows"]]
            ctx.save()

        ctx.log(f"run {i + 1}/{len(plan)}: {item['precision']}, width {item['width']} "
                f"(hidden_channels={item['hidden_channels']}), budget {budget:.0f} s: {', '.join(item['impls'])}")
        result = run(config, progress=True, checkpoint=checkpoint)
        checkpoint(result)
        ctx.results["runs"].append({**{k: v for k, v in item.items() if k != "share"}, "status": "done",
                                    "elapsed_s": result["elapsed_s"]})
        ctx.results.setdefault("workload", result["workload"])
        ctx.results.setdefault("impl_summaries", {}).update(result["impls"])
        ctx.save()
        if result["interrupted"]:
            raise KeyboardInterrupt


def stage_workload(ctx: Context) -> None:
    """c: the standard workload for every fastik implementation (fused ones in each precision), both widths."""
    from .envinfo import configure_precision

    configure_precision()
    ctx.results["autotune"] = os.environ.get("FASTIK_TRITON_AUTOTUNE", "1") != "0" and not ctx.dry_run
    _bench_runs(ctx, workload_plan(ctx.sizes.widths, ctx.sizes.precisions), ctx.sizes.workload_edges)
    _collect_rows_errors(ctx, "rows")


def _collect_rows_errors(ctx: Context, key: str) -> None:
    for r in ctx.results.get(key, []):
        if r["status"] == "error":
            where = f"{r['impl']} {r['precision']} {r['width']} E={r['edges']} {r['pass']}"
            ctx.results.setdefault("errors", []).append({"where": where, "error": r["reason"]})


# ----------------------------------------------------------------------------------------------- stage d
def timer(ctx: Context) -> tuple[Callable[[Callable[[], object]], float], str]:
    """(time_ms(fn), description): triton.testing.do_bench on CUDA, bench.measure's wall clock on the CPU."""
    if ctx.device.type == "cuda":
        import triton.testing

        def cuda_ms(fn: Callable[[], object]) -> float:
            return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))

        return cuda_ms, "triton.testing.do_bench (median; L2 flushed between calls)"
    from .measure import measure

    def cpu_ms(fn: Callable[[], object]) -> float:  # callers make one untimed call first
        return measure(fn, ctx.device, repeats=ctx.sizes.repeats, warmup=0).median_ms

    return cpu_ms, f"wall clock, median of {ctx.sizes.repeats} after one untimed call (bench.measure)"


def measure_peaks(ctx: Context, time_ms) -> dict:
    """fp32 (and on CUDA TF32) matmul FLOP/s and device copy bandwidth, measured here."""
    import torch

    n = ctx.sizes.peak_matmul_n
    a = torch.randn(n, n, device=ctx.device)
    b = torch.randn(n, n, device=ctx.device)
    a @ b  # untimed first call
    peaks = {"matmul_n": n, "fp32_matmul_tflops": 2 * n ** 3 / time_ms(lambda: a @ b) / 1e9}
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            peaks["tf32_matmul_tflops"] = 2 * n ** 3 / time_ms(lambda: a @ b) / 1e9
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.empty(ctx.sizes.copy_bytes // 4, device=ctx.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    peaks["copy_bytes"] = ctx.sizes.copy_bytes
    peaks["copy_gb_s"] = 2 * ctx.sizes.copy_bytes / time_ms(lambda: dst.copy_(src)) / 1e6
    return {k: (_sig(v) if isinstance(v, float) else v) for k, v in peaks.items()}


def _sig(v: float, digits: int = 3) -> float:
    """``v`` to ``digits`` significant digits (tiny dry-run rates stay visible)."""
    return float(f"{v:.{digits}g}")


def kernel_configs() -> dict:
    """The configurations fastik.triton_kernels' kernels run with: per autotuned kernel its key and choices
    (GPU), per module without autotuner its fixed configurations (interpreter / FASTIK_TRITON_AUTOTUNE=0)."""
    import fastik.triton_kernels as tk
    from fastik.triton_kernels import _config

    out = {}
    for mod_info in pkgutil.iter_modules(tk.__path__):
        if mod_info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{tk.__name__}.{mod_info.name}")
        tuners = {}  # autotuners, also those inside _config.SizeBuckets (one per edge-count bucket)
        for attr, obj in vars(mod).items():
            if type(obj).__name__ == "Autotuner":
                tuners[attr] = (obj, False)
            elif isinstance(obj, _config.SizeBuckets):
                launched = obj.tuners
                for bucket, tuner in launched.items():
                    tuners[f"{attr}[E<={bucket}]"] = (tuner, True)
                if not launched:
                    tuners[attr] = (None, True)
        for attr, (obj, bucketed) in tuners.items():
            keys = list(getattr(obj, "keys", []))
            best = getattr(obj, "best_config", None)
            out[f"{mod_info.name}.{attr}"] = {
                "mode": "autotuned", "key": keys, "chosen": None if best is None else str(best),
                "cache": {str(k): str(v) for k, v in getattr(obj, "cache", {}).items()},
                "size_in_key": bucketed or any(k.lower() in _SIZE_ARGS or "bucket" in k.lower() for k in keys)}
        if not tuners:
            prefix = "INTERPRET" if _config.INTERPRET else "GPU"
            out[mod_info.name] = {"mode": "fixed (interpreter)" if _config.INTERPRET else "fixed",
                                  "configs": {k: v for k, v in vars(mod).items()
                                              if k.startswith(prefix) and isinstance(v, dict)}}
    return out


_SIZE_ARGS = {"e", "num_edges", "m", "n", "num_targets", "num_nodes"}


def _model(e: int, n: int, k: int, din: int, dout: int) -> dict[str, tuple[float, float]]:
    """Model (FLOPs, bytes) per item: the algorithm's GEMM work and its minimal memory traffic
    (fp32 values, int64 indices, each gathered row counted once per edge) — not instruction counts."""
    f4, i8 = 4, 8
    gemm = 2.0 * e * k * din * dout
    seg_gemm = 2.0 * n * k * din * dout
    edge_io = e * (k + din) * f4 + 2 * e * i8 + dout * k * din * f4
    return {
        "message_fwd": (gemm, edge_io + e * dout * f4),
        "message_fwd_segmented": (gemm, edge_io + n * dout * f4),
        "message_bwd": (2 * gemm, edge_io + e * (dout + k + din) * f4),
        "segmented_fwd": (2.0 * e * k * din + seg_gemm, edge_io - e * i8 + n * (dout * f4 + i8)),
        "segmented_bwd": (3 * seg_gemm + 2.0 * e * k * (2 * din + dout),
                          edge_io + e * (k + dout) * f4 + n * (din * f4 + 2 * i8)),
        "scatter_sum": (e * dout, e * (dout * f4 + i8) + n * dout * f4),
        "segment_sum": (e * dout, e * dout * f4 + n * (dout * f4 + i8)),
        "index_checks": (0.0, 2 * e * i8),
        "build_csr": (0.0, 4 * e * i8),
    }


def _layer_rows(packed, k0: int, precision: str) -> tuple[int, int, int]:
    """The rows the fused kernels' staged dots read of a product over a layer's output columns (PU) and over a
    later layer's input (HU), rounded up to the dots' operand width in ``precision`` (``gmlp_conv._ks``), and the
    columns of z's gradient the backward computes (ZN, ``gmlp_conv._zn``)."""
    from fastik.triton_kernels.gmlp_conv import _ks, _meta, _zn

    m = _meta(packed._asdict(), k0, precision)
    return (_ks(m["P"], m["PU"], m["PRECISION"]), _ks(m["IN_K"], m["HU"], m["PRECISION"]),
            _zn(m["K0P"], m["IN_K"], m["PRECISION"]))


def _layer_products(packed, k0: int, precision: str, need_z: bool = True) -> tuple[list[float], ...]:
    """FLOPs per edge of each hidden layer's three products as the fused kernels do them, on dense padded weights:
    its linear part (one MLP pass; layer 0 on K0P columns of z, a later one on the first HU of IN_K), its weight
    gradient (whole tiles) and its input gradient (PU rows; layer 0's — z's, ZN columns — only with ``need_z``)."""
    from fastik.triton_kernels.gmlp_conv import used_columns, z_columns

    size, layers = packed.weight.shape[1], packed.layers
    k, k0p = used_columns(size, k0, packed.hidden), z_columns(size, k0, layers)
    pu, hu, zn = _layer_rows(packed, k0, precision)
    return ([2.0 * (k0p if i == 0 else hu) * size for i in range(layers)],
            [2.0 * (k0p if i == 0 else k) * size for i in range(layers)],
            [2.0 * pu * (k if i else zn * need_z) for i in range(layers)])


def layer_flops(packed, k0: int, precision: str = "tf32", need_z: bool = True) -> dict[str, float]:
    """FLOPs per edge of the hidden layers' products in a training step (two MLP passes, the weight and the input
    gradients): "dense" as the fused kernels do them (``_layer_products``), "support" on the weights' support only —
    2 per support entry and product, what a layout without structural zeros inside the layers would do
    (bench/NOTES.md, the default width's floor)."""
    linear, weight_grads, input_grads = _layer_products(packed, k0, precision, need_z)
    entries = [2.0 * float(packed.weight_support[i].sum()) for i in range(packed.layers)]
    support = sum(3 * entries[i] + (entries[i] if i or need_z else 0.0) for i in range(packed.layers))
    return {"dense": 2 * sum(linear) + sum(weight_grads) + sum(input_grads), "support": support}


def _fused_model(e: int, n: int, packed, din: int, k0: int, precision: str = "tf32",
                 need_z: bool = True) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) of the fully fused kernels as written in ``precision`` (dense padded layer weights; layer 0 reads
    K0P columns, a later layer's linear part its input's first HU of IN_K columns, the products over a layer's outputs
    their first PU of P (``_layer_rows``); bench/NOTES.md). Forward: the MLP (per layer its linear part and the norm's
    two block sums, 4·PU·NB; the spreads onto the components and the gate scalars are gathers) and the head's non-zero
    (16 × 16) tiles, 2·16² per tile. Backward: the rows kernel's MLP, the backward's only one (saving every layer's
    state, SV floats per edge written and read back a wave of edges later; and h1's rows, IN_K floats, written and read
    back); the head kernel on those rows (no MLP): the tiles (grad_x and grad_env), and the head's gradient on 16
    channels' tiles at once per group of listed tiles (``head_groups``; listed or not); the head's tiles for grad_h̃ (no
    MLP; written to a buffer of IN_K floats per edge and read back); then per layer from its saved state the backward's
    sums per block and per gate (4·PU·NB + 2·PU·NG), its weight gradient (whole tiles) and input gradient (PU rows;
    nothing recomputed).  At a mean in-degree e / n ≥ POOL_MIN_DEGREE the head is pooled instead (``_pooled_head``): per
    edge the pooling dots (the backward's head side: pooling, grad_h̃ and grad_x's sums, three), per target the tiles
    (backward: G and the head's gradient, twice); its bytes: the edges' sort (z, env, src, tgt gathered and written) and
    one output row per target.  "fwd_edge_wise" / "bwd_edge_wise": the edge-wise head at any in-degree.  Without
    ``need_z`` (a training step without forces) the backward neither computes z's gradient (layer 0's input
    gradient) nor writes it."""
    from fastik.ops.fused_gmlp import HEAD_TILE
    from fastik.triton_kernels.gmlp_conv import output_columns, pools, saved_width, used_columns

    size, nb, ng = packed.weight.shape[1], packed.mean.shape[2], packed.gate_pick.shape[2]
    dout_p, layers, f4, i8 = packed.head.shape[2], packed.layers, 4, 8
    k = used_columns(size, k0, packed.hidden)
    pu = _layer_rows(packed, k0, precision)[0]
    norm = 4.0 * pu * nb
    sums = 4.0 * pu * nb + 2.0 * pu * ng
    linear, weight_grads, input_grads = _layer_products(packed, k0, precision, need_z)
    mlp = sum(linear) + layers * norm
    steps = sum(weight_grads) + sum(input_grads) + layers * sums  # from the saved state
    saved = 2 * e * saved_width(output_columns(size, packed.hidden, ng), nb, ng, k, layers) * f4  # written, read
    io = e * (16 * f4 + 2 * i8 + din * f4)  # z, env, indices, x[src]
    head_tiles = 2.0 * HEAD_TILE ** 2 * float(packed.head_block_count.sum())
    head_grad = 2.0 * HEAD_TILE ** 3 * head_groups(packed)
    fwd_edge_wise = (e * (mlp + head_tiles), io + e * dout_p * f4)
    bwd_edge_wise = (e * (mlp + 2 * head_tiles + head_grad + steps),
                     2 * io + 2 * e * dout_p * f4 + e * din * f4 + 4 * e * k * f4 + saved)
    if not pools(e, n):
        return {"fwd": fwd_edge_wise, "bwd": bwd_edge_wise, "fwd_edge_wise": fwd_edge_wise,
                "bwd_edge_wise": bwd_edge_wise}
    pool, tiles = _pooled_head(packed, din, k, e / n)
    sort = 2 * e * (k0 * f4 + f4 + 2 * i8)  # z, env, src, tgt gathered and written in target order
    unsort = 2 * e * (k0 * need_z + 1) * f4  # grad_z's and grad_env's sorted rows written and added back
    return {"fwd": (e * (mlp + pool + tiles), io + n * dout_p * f4 + sort),
            "bwd": (e * (mlp + 3 * pool + 2 * tiles + steps),
                    2 * io + n * dout_p * f4 + e * din * f4 + 4 * e * k * f4 + sort + unsort + saved),
            "fwd_edge_wise": fwd_edge_wise, "bwd_edge_wise": bwd_edge_wise}


def _pool_rows(degree: float, ke: int) -> float:
    """Rows per edge the pooled head's dots take: a target's edges rounded up to KE (in-degree ``degree``)."""
    return ke * math.ceil(degree / ke) / degree


def _pooled_head(packed, din: int, in_k: int, degree: float) -> tuple[float, float]:
    """FLOPs per edge of the pooled head at mean in-degree ``degree``, once: (the pooling dots, 2·DIN_P·IN_K per
    row (``_pool_rows``); the non-zero (16 × 16) tiles once per target, 2·16²·TB per TB targets)."""
    from fastik.ops.fused_gmlp import HEAD_TILE
    from fastik.triton_kernels.gmlp_conv import din_padded, launch_config

    din_p = din_padded(din)
    ke = launch_config("pool", in_k, interpret=False, din=din)["KE"]
    tiles = float(packed.head_block_count.sum())
    return 2.0 * din_p * in_k * _pool_rows(degree, ke), 2.0 * HEAD_TILE ** 2 * tiles / degree


def _flagged_reads(flags, kc: int, rows: int, n: int, row_major: bool) -> float:
    """Bytes a staged dot reads of an operand M (K × n) over its first ``rows`` rows in steps of ``kc``, loading only
    what its slab flags (``flags`` (K / 16, ≥ n), bool) keep: row-major, the 32-B sectors of the kept columns in each
    row; transposed (M = Aᵀ, A row-major), kc floats of each kept row of A; and the step's flags, a byte per column
    and slab of 16. ``flags`` None: the whole operand, no flags (``gmlp_conv._bwd_flags``)."""
    if flags is None:
        return float(rows * n * 4)
    total = 0.0
    for k in range(0, rows, kc):
        keep = flags[k // 16:(k + kc) // 16, :n].any(0)
        read = keep.reshape(-1, 8).any(1).sum() * 8 if row_major and n % 8 == 0 else keep.sum()
        total += kc * 4 * float(read) + kc // 16 * n
    return total


def _slab_reads(packed, k0: int, precision: str, need_z: bool = True) -> tuple[list[float], list[float]]:
    """Bytes of each layer's weight the fused kernels' dots read per MLP block in ``precision``
    (``_flagged_reads`` with ``weight_slabs``), forward (u @ W: layer 0's K0P rows, a later layer's first KS(HU)) and
    backward (da @ Wᵀ: W's first KS(PU) columns of IN_K rows, of ZN for layer 0 — only with ``need_z`` —, unflagged
    where ``gmlp_conv._bwd_flags`` says so)."""
    from fastik.triton_kernels.gmlp_conv import _bwd_flags, _kc, _ks, _meta, _zn

    m = _meta(packed._asdict(), k0, precision)
    size, prec, in_k = m["P"], m["PRECISION"], m["IN_K"]
    slabs = packed.weight_slabs.bool()
    fwd = [_flagged_reads(slabs[i, 0], m["K0P"], m["K0P"], size, True) if i == 0 else
           _flagged_reads(slabs[i, 0], _kc(in_k, prec), _ks(in_k, m["HU"], prec), size, True)
           for i in range(packed.layers)]
    kc, ks, zn = _kc(size, prec), _ks(size, m["PU"], prec), _zn(m["K0P"], in_k, prec)
    bwd = [_flagged_reads(slabs[i, 1] if i or _bwd_flags(size, prec, in_k) else None, kc, ks, zn if i == 0 else in_k,
                          False) if i or need_z else 0.0 for i in range(packed.layers)]
    return fwd, bwd


def _structure_reads(packed, k0: int, precision: str) -> tuple[list[float], list[float]]:
    """Bytes of each layer's structure matrices the fused kernels' dots read per MLP block (``_flagged_reads`` with
    ``structure_slabs``, in the structure's precision): forward MEAN and AVG (KS(PU) rows of NB), backward GEXPᵀ once
    and EXPᵀ twice (KS(PU) columns of NG / NB rows; unflagged where ``gmlp_conv._bwd_flags`` says so); MEAN, AVG
    and EXPᵀ only with a norm."""
    from fastik.triton_kernels.gmlp_conv import _bwd_flags, _kc, _ks, _meta, _structure_precision

    m = _meta(packed._asdict(), k0, precision)
    sp = _structure_precision(m["PRECISION"])
    size, nb, ng = m["P"], m["NB"], m["NG"]
    kc, ks = _kc(size, sp), _ks(size, m["PU"], sp)
    slabs = packed.structure_slabs.bool()
    back = _bwd_flags(1, m["PRECISION"], m["IN_K"])
    norm = 2 * int(packed.norm)
    fwd = [norm * _flagged_reads(slabs[i, :, :nb], kc, ks, nb, True) for i in range(packed.layers)]
    bwd = [_flagged_reads(slabs[i, :, nb:] if back else None, kc, ks, ng, False) +
           norm * _flagged_reads(slabs[i, :, :nb] if back else None, kc, ks, nb, False) for i in range(packed.layers)]
    return fwd, bwd


def fused_weight_reads(packed, k0: int, degree: float | None = None, precision: str = "tf32",
                       need_z: bool = True) -> dict[str, float]:
    """Bytes per edge of weights and structure each fused kernel reads from L2 at its GPU configuration (fp32;
    bench/NOTES.md): a layer's weight where ``weight_slabs`` flags it, forward and backward (``_slab_reads`` in
    ``precision``), and structure — MEAN / AVG as dot operands and GEXPᵀ / EXPᵀ in the backward where
    ``structure_slabs`` flags them (``_structure_reads``), a gather's index and scale (12 B per component and use),
    the gate columns (8 B each) —
    once per MLP block of BLOCK_E edges; of the head's non-zero (16 × 16) tiles the rows that ``head_row_flags`` keep,
    and the flags: once per chunk (forward), per chunk in the head kernel (grad_x and grad_env; and its gradient's
    atomics and support mask — uint8, a quarter of a tile —, whole tiles) and once per BLOCK_E edges (grad_h̃) —
    pooled, at a mean in-degree ``degree`` ≥ POOL_MIN_DEGREE: once per TB targets (forward) and, with the flags
    again for the gradient's tiles, once per TB targets in the backward (G), and the h1 rows' MLP per BLOCK_E
    edges (the head kernel and grad_h̃ do not run); edge-wise, the backward's rows pass ("rows": the MLP per BLOCK_E
    edges, saving the layers' state and the h1 rows the head kernel reads). The backward kernel reads each layer's state
    that the backward's G-MLP pass saved (per layer: the 1 / rms spread, the three sums, the spreads of the backward,
    the weight's transpose; nothing recomputed). Per-layer vectors (bias, scale, shift, trivial) and the L1 are left
    out: an upper bound on L2 traffic if nothing stays in L1. ``degree``: the standard workload's
    (bench.workload.DEGREE) by default; without ``need_z`` the backward kernel does not read layer 0's Wᵀ."""
    from fastik.ops.fused_gmlp import HEAD_TILE
    from fastik.triton_kernels.gmlp_conv import POOL_MIN_DEGREE, launch_config, used_columns

    from .workload import DEGREE

    degree = DEGREE if degree is None else degree

    f4 = 4
    size, ng = packed.weight.shape[1], packed.gate_pick.shape[2]
    layers, in_k = packed.layers, used_columns(size, k0, packed.hidden)
    weights, transposed = _slab_reads(packed, k0, precision, need_z)  # a = u @ W and du = da @ Wᵀ: the flagged parts
    sums, back_sums = _structure_reads(packed, k0, precision)  # the norms' and gates' sums, forward and backward
    vec, gates = size * 12, ng * 8  # one gather's vectors; the gate columns
    mlp = sum(weights) + sum(sums) + layers * (4 * vec + gates)  # norm (two spreads), gate columns and spread
    saved = sum(transposed) + sum(back_sums) + layers * 6 * vec  # _layer_bwd's six spreads
    listed = float(packed.head_block_count.sum())
    tiles = listed * HEAD_TILE ** 2 * f4  # whole tiles: the edge-wise head gradient's atomics
    mask = tiles / f4  # the support mask's bytes on the tiles (uint8)
    kept = _kept_entries(packed)
    read = kept * f4 + listed * HEAD_TILE  # a tile read: its flagged rows and its 16 flags
    config = {name: launch_config(name, in_k, interpret=False) for name in GPU_KERNELS}
    if degree >= POOL_MIN_DEGREE:
        rows = mlp / config["fwd"]["BLOCK_E"]
        out = {"fwd": rows + read / (config["pool"]["TB"] * degree),
               "pool_bwd": rows + (read + listed * HEAD_TILE) / (config["pool_bwd"]["TB"] * degree)}
    else:
        out = {"fwd": mlp / config["fwd"]["BLOCK_E"] + read / config["fwd"]["CHUNK"],
               "head_bwd": (read + tiles + mask) / config["head_bwd"]["CHUNK"],
               "grad_h": read / config["grad_h"]["BLOCK_E"], "rows": mlp / config["fwd"]["BLOCK_E"]}
    out["bwd"] = saved / config["bwd"]["BLOCK_E"]
    return {**out, "total": sum(out.values())}


def _kept_entries(packed) -> float:
    """The entries of the head's listed tiles in the rows that ``head_row_flags`` keep (what kernels load of them)."""
    from fastik.ops.fused_gmlp import HEAD_TILE

    return float(packed.head_row_flags.double().sum()) * HEAD_TILE


def head_gradient_traffic(packed, k0: int, degree: float | None = None, edges: int = 10 ** 6,
                          programs: int = 132) -> dict[str, float]:
    """Per edge, what the head's gradient costs the fused backward at its GPU configuration (fp32; bench/NOTES.md):
    ``atomics`` and ``bytes`` through L2. Pooled (mean in-degree ``degree`` ≥ POOL_MIN_DEGREE;
    ``_gmlp_pool_bwd_kernel``): no atomics — each of ``programs`` sums into its own copy of the listed tiles, a load
    and a store of each entry in their kept rows once per TB targets —, and per call of ``edges`` edges the copies
    zeroed and summed once (``pooled_bwd``). Edge-wise (``_gmlp_head_bwd_kernel``): one atomic per entry of the
    head's support per chunk of CHUNK edges."""
    from fastik.ops.fused_gmlp import HEAD_TILE
    from fastik.triton_kernels.gmlp_conv import POOL_MIN_DEGREE, launch_config, used_columns

    from .workload import DEGREE

    degree = DEGREE if degree is None else degree
    f4, in_k = 4, used_columns(packed.weight.shape[1], k0, packed.hidden)
    if degree < POOL_MIN_DEGREE:
        chunk = launch_config("head_bwd", in_k, interpret=False)["CHUNK"]
        return {"atomics": float(packed.head_support.double().sum()) / chunk, "bytes": 0.0}
    kept = _kept_entries(packed)
    copies = programs * float(packed.head_block_count.sum()) * HEAD_TILE ** 2 * f4
    tb = launch_config("pool_bwd", in_k, interpret=False)["TB"]
    return {"atomics": 0.0, "bytes": 2 * f4 * kept / (tb * degree) + 2 * copies / edges}


#: the fully fused kernels' configuration names (fastik.triton_kernels.gmlp_conv.launch_config)
GPU_KERNELS = ("fwd", "head_bwd", "bwd", "grad_h", "pool", "pool_bwd")


def _runs(blocks, counts, key: Callable[[int], object]) -> int:
    """Runs of equal key(entry) — an operand a kernel holds, or a group it sums at once — summed over the tile
    lists: row g of ``blocks`` (on the CPU) lists counts[g] tiles, and each list starts a run."""
    runs = 0
    for g, n in enumerate(counts.tolist()):
        keys = [key(b) for b in blocks[g, :n].tolist()]
        runs += sum(1 for i, k in enumerate(keys) if i == 0 or k != keys[i - 1])
    return runs


def head_groups(packed) -> int:
    """How many runs of listed head tiles the head kernel's gradient pass sums at once: per output tile, those
    sharing a row tile and a group of 16 input channels (``gmlp_conv._head_grad_group``)."""
    return _head_groups(packed.head_blocks.cpu(), packed.head_block_count.cpu(), packed.head.shape[0])


def _head_groups(blocks, counts, din: int) -> int:
    """:func:`head_groups` from the output tiles' lists on the CPU (``blocks``, ``counts``) and DIN."""
    from fastik.ops.fused_gmlp import HEAD_TILE as T

    return _runs(blocks, counts, lambda b: (b // din, b % din // T))


def fused_scratch_reads(packed, k0: int, degree: float | None = None) -> dict[str, float]:
    """Bytes per edge the fused kernels read from their own scratch rows and gathers, per non-zero head tile
    (fp32; bench/NOTES.md; L1 if the rows stay there): the forward's h1 slice (64 B) once per run of equal row
    tiles in an output tile's list (held in registers) and x[src, c] per tile — pooled (mean in-degree
    ``degree`` ≥ POOL_MIN_DEGREE; default the standard workload's): the wave's h1 row once per channel tile of CT,
    x[src] (DIN values), src and env per channel tile, and per listed tile the (TB × 16) slice of the TB targets'
    pooled features, once per TB targets, and in the backward (``_gmlp_pool_bwd_kernel``, instead of the head
    kernel and grad_h̃) the same pooling, per listed tile the slices of P and of grad_out (head gradient) and of
    grad_out again (G; each of G's tiles stored once, not read), and per KE edges of a target all of its G
    (DIN × IN_K), the edges' h1 rows, x[src], src and env; the head kernel's grad_x pass h1's (from
    the rows pass's wave buffer) and grad_out's slices per tile (128 B), x[src, c] per channel, its head-gradient
    pass both slices, src and env per group of channels (``head_groups``; 140 B) and x[src, c] per tile;
    grad_h̃'s gathered grad_out slice per run of output tiles and x[src, c] per tile, src, tgt and env per row
    tile; the backward kernel's grad_h̃ row, its weight-gradient rows and, per layer with a norm, its program's
    sums of the scale and shift gradients (2·PU values read, and written, per edge: the padding columns' stay
    zero), and the row of the layers'
    saved state (``saved_width``)."""
    from fastik.ops.fused_gmlp import HEAD_TILE as T
    from fastik.triton_kernels.gmlp_conv import (POOL_MIN_DEGREE, din_padded, launch_config, output_columns,
                                                 saved_width, used_columns, z_columns)

    from .workload import DEGREE

    degree = DEGREE if degree is None else degree
    f4, i8, slice_b = 4, 8, 4 * T
    size, dout_p, din = packed.weight.shape[1], packed.head.shape[2], packed.head.shape[0]
    in_k, layers = used_columns(size, k0, packed.hidden), packed.layers
    k0p = z_columns(size, k0, layers)
    cpu = {k: getattr(packed, k).cpu() for k in ("head_blocks", "head_block_count", "head_row_blocks",
                                                  "head_row_block_count", "head_channel_blocks",
                                                  "head_channel_block_count")}
    tiles = int(cpu["head_block_count"].sum())
    fwd_runs = _runs(cpu["head_blocks"], cpu["head_block_count"], lambda b: b // din)
    gh_runs = _runs(cpu["head_row_blocks"], cpu["head_row_block_count"], lambda b: b // din)
    weight_rows, stage = 0, launch_config("bwd", in_k, interpret=False)["BLOCK_E"] * max(size, dout_p)
    for i in range(layers):  # _weight_grad: u (KL) once per column tile of PT, da (P) once
        kl = k0p if i == 0 else in_k
        weight_rows += (size // min(size, stage // kl)) * kl + size
    grad_x = tiles * 2 * slice_b + din * f4
    groups = _head_groups(cpu["head_blocks"], cpu["head_block_count"], din)
    if degree >= POOL_MIN_DEGREE:
        fwd, bwd = (launch_config(name, in_k, interpret=False, din=din) for name in ("pool", "pool_bwd"))
        pooling = (din_padded(din) // fwd["CT"]) * (in_k * f4 + i8 + f4) + din * f4  # h1 rows per channel tile
        edges = din * in_k * f4 * _pool_rows(degree, bwd["KE"]) / bwd["KE"] + in_k * f4 + din * f4 + i8 + f4
        out = {"fwd": pooling + tiles * slice_b / degree,
               "pool_bwd": pooling + 3 * tiles * slice_b / degree + edges}
    else:
        out = {"fwd": fwd_runs * slice_b + tiles * f4,
               "head_bwd": grad_x + groups * (2 * slice_b + i8 + f4) + tiles * f4,
               "grad_h": gh_runs * slice_b + tiles * f4 + (in_k // T) * (2 * i8 + f4)}
    ng = packed.gate_pick.shape[2]
    pu = output_columns(size, packed.hidden, ng)
    saved = saved_width(pu, packed.mean.shape[2], ng, in_k, layers)
    out["bwd"] = (in_k + saved + weight_rows + (2 * layers * pu if packed.norm else 0)) * f4
    return {**out, "total": sum(out.values())}


def _forces_step(conv, z, env, x, src, tgt, gout) -> None:
    """What forces in the loss ask of the fused op beyond a training step: grad_z of ⟨gout, conv⟩ with its graph
    (the fused backward), then the gradient of ‖grad_z‖² w.r.t. the G-MLP's parameters (the op's double backward,
    torch chunk by chunk); gout: (targets, Dout), the edges' targets 0, …, targets - 1."""
    import torch

    from fastik.ops import fused_gmlp_conv

    z = z.detach().requires_grad_()
    y = fused_gmlp_conv(z, env, x, conv.kernel.packed(torch.float32), src, tgt, gout.shape[0], "tf32x3",
                        indices_checked=True)
    (gz,) = torch.autograd.grad((y * gout).sum(), z, create_graph=True)
    torch.autograd.grad(gz.square().sum(), list(conv.kernel.parameters()), allow_unused=True)


@contextlib.contextmanager
def _setting(gc, name: str, value) -> Iterator[None]:
    """Inside the block, module ``gc`` (fastik.triton_kernels.gmlp_conv) has its constant ``name`` set to ``value``:
    POOL_MIN_DEGREE = ∞ runs the head per edge, forward and backward, at any in-degree; WAVE_CHUNKS sets the
    backward's waves, WAVE_BYTES = 0 keeps the pooled kernels' waves at that length."""
    saved = getattr(gc, name)
    setattr(gc, name, value)
    try:
        yield
    finally:
        setattr(gc, name, saved)


@contextlib.contextmanager
def _gpu_config(gc, kernel: str, programs_per_sm: int | None = None, **config):
    """Inside the block, fused kernel ``kernel`` of module ``gc`` (fastik.triton_kernels.gmlp_conv) launches with
    its GPU configuration updated by ``config`` (and ``programs_per_sm`` persistent programs per SM): a variant
    to time against the default. The interpreter (dry run) keeps its own configuration."""
    saved = dict(gc.GPU_CONFIG[kernel]), gc.PROGRAMS_PER_SM.get(kernel)
    gc.GPU_CONFIG[kernel].update(config)
    if programs_per_sm is not None:
        gc.PROGRAMS_PER_SM[kernel] = programs_per_sm
    try:
        yield
    finally:
        gc.GPU_CONFIG[kernel] = saved[0]
        if saved[1] is not None:
            gc.PROGRAMS_PER_SM[kernel] = saved[1]


def _pooled_items(conv, h, graph, item: Callable[..., None]) -> None:
    """The reference backend's head, both ways: aggregate first (degree grouping, pooled bmm, per-target head)
    and edge-wise (structured messages + scatter sum), forward and forward + backward, given h̃ (E, K)."""
    import torch

    from fastik.ops import pooled
    from fastik.ops.reference import aggregated_messages

    head = conv.kernel.head.structured(torch.float32)
    src, tgt = graph.edge_index
    e, n, x = graph.num_edges, graph.num_nodes, graph.x
    plan = pooled.group_by_degree(tgt)
    h_sorted, src_sorted = h[plan.order].requires_grad_(), src[plan.order]
    h_edges = h.detach().requires_grad_()
    pooled_flops = 2.0 * e * head.k * head.din + n * head.contract_flops()
    edge_flops = float(e * head.flops_per_edge())
    item("group_by_degree (2 sorts, 1 sync)", lambda: pooled.group_by_degree(tgt), 0.0, 6.0 * e * 8)

    def pooled_fwd() -> object:
        return pooled.pooled_conv(head, h_sorted, x, src_sorted, plan.targets, plan.groups, n)

    def edge_fwd() -> object:
        return aggregated_messages(head, h_edges, x, src, tgt, None, n, indices_checked=True)

    for name, fwd, flops in (("pooled head", pooled_fwd, pooled_flops), ("edge-wise head", edge_fwd, edge_flops)):
        def fwd_only(fwd=fwd) -> None:
            with torch.no_grad():
                fwd()

        item(f"{name} fwd (reference)", fwd_only, flops, e * (head.k + head.din) * 4)
        item(f"{name} fwd+bwd (reference)", lambda fwd=fwd: fwd().sum().backward(), 3 * flops,
             2 * e * (head.k + head.din) * 4)


def stage_split(ctx: Context) -> None:
    """d: per-kernel times at E = 1e6 with model FLOP/s and GB/s, and each kernel's configuration."""
    import torch

    import fastik
    from fastik.ops import aggregate as agg
    from fastik.ops import build_csr
    from fastik.ops._contract import check_indices
    from fastik.ops.fused import csr_rowptr, triton_available
    from .envinfo import configure_precision
    from .workload import DEGREE, make_graph

    configure_precision()
    time_ms, how = timer(ctx)
    s, dev, r = ctx.sizes, ctx.device, ctx.results
    r.update(timer=how, precision="ieee", items=[])
    try:
        r["peaks"] = measure_peaks(ctx, time_ms)
    except Exception as exc:  # noqa: BLE001
        r["peaks"] = {}
        ctx.error("peaks", exc)
    ctx.save()
    graph = make_graph(s.split_edges, 4 * s.channels, dev, seed=3)
    hidden = s.widths[0][1]
    group = fastik.group("so3")
    ft = fastik.FieldType(group, f"{s.channels}x0e + {s.channels}x1o")
    torch.manual_seed(0)
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=hidden, backend="reference").to(dev)
    src, tgt = graph.edge_index
    e, n = graph.num_edges, graph.num_nodes
    with torch.no_grad():
        h = conv._edge_features(graph.pos[src] - graph.pos[tgt], None, None, None).contiguous()
        weight = conv.kernel.head.weight(torch.float32).contiguous()
    dout, k, din = weight.shape
    rowptr = csr_rowptr(tgt, n)
    gout = torch.randn(n, dout, device=dev)
    model = _model(e, n, k, din, dout)
    r.update(edges=e, nodes=n, K=k, din=din, dout=dout, hidden_channels=hidden)
    peaks = r["peaks"]

    def item(name: str, fn: Callable[[], object], flops: float | None = None, nbytes: float | None = None,
             **extra) -> None:
        if ctx.left() < 3:
            r["items"].append({"name": name, "status": "skipped", "reason": "stage time spent"})
            ctx.save()
            return
        try:
            fn()  # first call: compilation / autotuning outside the timing
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ms = time_ms(fn)
        except Exception as exc:  # noqa: BLE001
            r["items"].append({"name": name, "status": "error", **ctx.error(name, exc)})
            ctx.save()
            return
        row = {"name": name, "status": "ok", "ms": round(ms, 4), **extra}
        if flops:
            row["tflops"] = _sig(flops / ms / 1e9)
            if peaks.get("fp32_matmul_tflops"):
                row["pct_fp32_peak"] = _sig(100 * row["tflops"] / peaks["fp32_matmul_tflops"])
        if nbytes:
            row["gb_s"] = _sig(nbytes / ms / 1e6)
            if peaks.get("copy_gb_s"):
                row["pct_copy_bw"] = _sig(100 * row["gb_s"] / peaks["copy_gb_s"])
        ctx.log(f"{name:<34} {fmt_ms(ms):>9}  {row.get('tflops', '-')} TFLOP/s  {row.get('gb_s', '-')} GB/s")
        r["items"].append(row)
        ctx.save()

    from torch.utils.flop_counter import FlopCounterMode

    r_vec = graph.pos[src] - graph.pos[tgt]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        conv._edge_features(r_vec, None, None, None)
    mlp_flops = float(fc.get_total_flops())

    def mlp_fwd() -> None:
        with torch.no_grad():
            conv._edge_features(r_vec, None, None, None)

    def mlp_fwd_bwd() -> None:
        conv.zero_grad(set_to_none=True)
        conv._edge_features(r_vec, None, None, None).sum().backward()

    item("G-MLP fwd (h̃, E x K)", mlp_fwd, mlp_flops, e * (3 + k) * 4)
    item("G-MLP fwd+bwd", mlp_fwd_bwd, 3 * mlp_flops, 2 * e * (3 + k) * 4)
    item("index checks (aminmax src, tgt)", lambda: check_indices(graph.x, src, tgt, n), *model["index_checks"])
    shuffled = tgt[torch.randperm(e, device=dev)]
    item("build_csr (sort unsorted targets)", lambda: build_csr(shuffled, n), *model["build_csr"])
    msgs = torch.randn(e, dout, device=dev)
    item("scatter_sum (E x Dout messages)", lambda: agg.scatter_sum(msgs, tgt, n), *model["scatter_sum"],
         extension=agg.has_extension())
    item("segment_sum (E x Dout messages)", lambda: agg.segment_sum(msgs, rowptr), *model["segment_sum"],
         extension=agg.has_extension())
    _pooled_items(conv, h, graph, item)
    if not triton_available(dev):
        r["kernels_skipped"] = f"fastik.ops.fused.triton_available({str(dev)!r}) is False"
        ctx.save()
        return
    from fastik.triton_kernels import message_bwd as mb
    from fastik.triton_kernels import message_fwd as mf
    from fastik.triton_kernels import segmented_bwd as sb
    from fastik.triton_kernels import segmented_fwd as sf

    x = graph.x
    kernels = [
        ("segmented_fwd", lambda: sf.segmented_fwd(h, x, weight, src, rowptr, n)),
        ("message_fwd", lambda: mf.message_fwd(h, x, weight, src, tgt, n)),
        ("message_fwd_segmented", lambda: mf.message_fwd_segmented(h, x, weight, src, tgt, rowptr, n)),
        ("segmented_bwd", lambda: sb.segmented_bwd(gout, h, x, weight, src, tgt, rowptr)),
        ("message_bwd", lambda: mb.message_bwd(gout, h, x, weight, src, tgt)),
    ]
    for name, fn in kernels:
        item(f"{name} (Triton)", fn, *model[name])
        r["configs"] = kernel_configs()
        ctx.save()
    from fastik.triton_kernels import gmlp_conv as gc

    for label, channels in s.widths:  # the fully fused kernels (backend="fused"), both widths
        fconv = fastik.ImplicitPointConv(ft, ft, hidden_channels=channels, backend="fused").to(dev)
        with torch.no_grad():
            packed = fconv.kernel.packed(torch.float32)
            z = fconv.kernel.embed(r_vec).contiguous()
            env = (fconv.kernel.envelope(r_vec) * fconv.scale).contiguous()
        pdict = {k: v.detach().contiguous() if torch.is_tensor(v) else v for k, v in packed._asdict().items()}
        r.setdefault("scratch_reads_bytes_per_edge", {})[label] = {
            k: round(v) for k, v in fused_scratch_reads(packed, z.shape[1]).items()}  # the models beside the times
        r.setdefault("head_gradient_per_edge", {})[label] = {
            k: round(v, 1) for k, v in head_gradient_traffic(
                packed, z.shape[1], edges=e, programs=gc._programs(x, gc.PROGRAMS_PER_SM["pool_bwd"])).items()}
        size = packed.weight.shape[1]
        for precision in s.precisions:  # the backward as a training step without forces runs it (no z gradient:
            tag = f"{label}, P={size}, {precision}"  # the kernels stage c compiled), then with forces' z gradient
            fmodel = _fused_model(e, n, packed, din, z.shape[1], precision, need_z=False)
            r.setdefault("weight_reads_bytes_per_edge", {})[f"{label}, {precision}"] = {
                k: round(v) for k, v in fused_weight_reads(packed, z.shape[1], precision=precision,
                                                           need_z=False).items()}
            item(f"gmlp_conv fwd ({tag})",
                 lambda: gc.gmlp_conv_fwd(z, env, x, src, tgt, n, dout, pdict, precision), *fmodel["fwd"])
            item(f"gmlp_conv bwd ({tag})",
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, precision, **TRAIN), *fmodel["bwd"])
            item(f"gmlp_conv bwd with z's gradient, as forces ask ({tag})",
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, precision),
                 *_fused_model(e, n, packed, din, z.shape[1], precision)["bwd"])
            item(f"gmlp_conv bwd without parameter gradients ({tag})",  # forces at inference
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, precision, need_params=False))
            item(f"gmlp_conv bwd without x's gradient ({tag})",  # a first layer's: no grad_x atomics
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, precision, need_x=False, **TRAIN))
            with _setting(gc, "POOL_MIN_DEGREE", math.inf):  # the head per edge (the forward also at BLOCK_E = 16)
                item(f"gmlp_conv fwd, edge-wise head ({tag})",
                     lambda: gc.gmlp_conv_fwd(z, env, x, src, tgt, n, dout, pdict, precision), *fmodel["fwd_edge_wise"])
                item(f"gmlp_conv bwd, edge-wise head ({tag})",
                     lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, precision, **TRAIN),
                     *fmodel["bwd_edge_wise"])
                with _gpu_config(gc, "fwd", BLOCK_E=16, CHUNK=64, programs_per_sm=2):
                    item(f"gmlp_conv fwd, edge-wise head, BLOCK_E=16, CHUNK=64, 2 programs/SM ({tag})",
                         lambda: gc.gmlp_conv_fwd(z, env, x, src, tgt, n, dout, pdict, precision),
                         *fmodel["fwd_edge_wise"])
        gout_h = gc.head_order(gout, pdict)  # the edge-wise head kernel alone on all E edges' h1 rows, tf32x3
        sink = [torch.zeros_like(t) for t in (x, env, pdict["head"])]  # (gradients added, not kept)
        in_k = gc.used_columns(size, z.shape[1], packed.hidden)
        rows = gc.launch_chunk("head_bwd", in_k)
        hb = torch.rand(-(-e // rows) * rows, in_k, device=dev)
        item(f"gmlp_conv bwd head side ({label}, P={size}, tf32x3): grad_x, grad_env, head from h1 rows",
             lambda: gc.head_side_bwd(gout_h, hb, env, x, src, tgt, pdict, "tf32x3", sink, True))
        with _setting(gc, "WAVE_BYTES", 0):  # the pooled backward's waves not lengthened by the in-degree (at the
            item(f"gmlp_conv bwd, waves of two chunks per program ({label}, P={size}, tf32x3)",  # default width 66
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, "tf32x3", **TRAIN))  # blocks for 132 SMs)
            with _setting(gc, "WAVE_CHUNKS", 1):  # waves half as long: saved rows 26 MB at the anchors' width
                item(f"gmlp_conv bwd, one chunk per program per wave ({label}, P={size}, tf32x3)",
                     lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, "tf32x3", **TRAIN))
        with _gpu_config(gc, "bwd", BLOCK_E=16):  # the layers' backward on 16 edges at a time
            item(f"gmlp_conv bwd, saved layer states on 16-edge blocks ({label}, P={size}, tf32x3)",
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, "tf32x3", **TRAIN))
        with _gpu_config(gc, "pool", TB=32), _gpu_config(gc, "pool_bwd", TB=32):  # half the head gradient's copy
            item(f"gmlp_conv fwd, pooled head on 32-target blocks ({label}, P={size}, tf32x3)",  # traffic, twice the P
                 lambda: gc.gmlp_conv_fwd(z, env, x, src, tgt, n, dout, pdict, "tf32x3"))
            item(f"gmlp_conv bwd, pooled head on 32-target blocks ({label}, P={size}, tf32x3)",
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, "tf32x3", **TRAIN))
        for chunk in s.head_chunks:  # the head kernel's chunk: head-gradient atomics / CHUNK against scratch rows
            item(f"gmlp_conv bwd, head chunk {chunk} ({label}, P={size}, tf32x3)",
                 lambda: gc.gmlp_conv_bwd(gout, z, env, x, src, tgt, pdict, "tf32x3", head_chunk=chunk, **TRAIN))
        cut = max(DEGREE, e // 10) // DEGREE  # the first tenth of the targets, whole (make_graph sorts them)
        sub = slice(0, cut * DEGREE)
        for statement, least in (("pooled", gc.POOL_MIN_DEGREE), ("per edge", math.inf)):  # torch, chunk by chunk
            with _setting(gc, "POOL_MIN_DEGREE", least):
                item(f"forces in the loss: second derivatives, {statement} ({label}, P={size}, tf32x3, "
                     f"E={cut * DEGREE})",
                     lambda: _forces_step(fconv, z[sub], env[sub], x, src[sub], tgt[sub], gout[:cut]))
    r["fully_fused"] = ("backend='fused' kernels timed above (gmlp_conv fwd / bwd at both widths, the backward "
                        "without parameter gradients, the head kernel's chunk) and as layers in stage c "
                        "(fastik-fused* rows)")
    configs = r["configs"]
    r["autotune_without_size_key"] = sorted(name for name, c in configs.items()
                                            if c["mode"] == "autotuned" and not c["size_in_key"])
    ctx.save()


# ----------------------------------------------------------------------------------------------- stage e
def stage_aggregation(ctx: Context) -> None:
    """e: segment_sum / scatter_sum vs index_add_ at E = 1e6, D = 64: GB/s and % of copy bandwidth."""
    import torch

    from fastik.ops import aggregate as agg
    from .workload import make_graph

    time_ms, how = timer(ctx)
    s, dev, r = ctx.sizes, ctx.device, ctx.results
    d = s.agg_dim
    graph = make_graph(s.agg_edges, 4, dev, seed=4)
    tgt = graph.edge_index[1]
    e, n = graph.num_edges, graph.num_nodes
    gen = torch.Generator().manual_seed(5)
    msgs = torch.randn(e, d, generator=gen).to(dev)
    rowptr = agg.build_csr(tgt, n).rowptr
    shuffled = tgt[torch.randperm(e, generator=gen).to(dev)]
    r.update(timer=how, edges=e, nodes=n, dim=d, extension=agg.has_extension(),
             extension_cuda=agg.extension_has_cuda(), items=[])
    copy_dst = torch.empty_like(msgs)
    copy_dst.copy_(msgs)
    copy_ms = time_ms(lambda: copy_dst.copy_(msgs))
    r["copy"] = {"ms": round(copy_ms, 4), "gb_s": _sig(2 * msgs.numel() * 4 / copy_ms / 1e6),
                 "what": "msgs.clone-sized device copy (read + write E x D floats)"}
    ctx.save()
    reference = torch.zeros(n, d, device=dev, dtype=torch.float64).index_add_(0, tgt, msgs.double())
    nbytes = e * d * 4 + n * d * 4 + e * 8
    cases = [
        ("segment_sum (sorted, CSR)", lambda: agg.segment_sum(msgs, rowptr), nbytes - e * 8 + (n + 1) * 8),
        ("segment_sum (sorted, CSR, indices_checked)", lambda: agg.segment_sum(msgs, rowptr, indices_checked=True),
         nbytes - e * 8 + (n + 1) * 8),
        ("scatter_sum (sorted index)", lambda: agg.scatter_sum(msgs, tgt, n), nbytes),
        ("scatter_sum (sorted index, indices_checked)", lambda: agg.scatter_sum(msgs, tgt, n, indices_checked=True),
         nbytes),
        ("scatter_sum (shuffled index)", lambda: agg.scatter_sum(msgs, shuffled, n), nbytes),
        ("index_add_ (sorted index)", lambda: torch.zeros(n, d, device=dev).index_add_(0, tgt, msgs), nbytes),
        ("index_add_ (shuffled index)", lambda: torch.zeros(n, d, device=dev).index_add_(0, shuffled, msgs),
         nbytes),
    ]
    for name, fn, model_bytes in cases:
        try:
            out = fn()
            err = rel_err(out, reference) if "shuffled" not in name else None
            ms = time_ms(fn)
        except Exception as exc:  # noqa: BLE001
            r["items"].append({"name": name, "status": "error", **ctx.error(name, exc)})
            ctx.save()
            continue
        gb_s = model_bytes / ms / 1e6
        row = {"name": name, "status": "ok", "ms": round(ms, 4), "gb_s": _sig(gb_s),
               "pct_copy_bw": _sig(100 * gb_s / r["copy"]["gb_s"]), "model_bytes": model_bytes}
        if err is not None:
            row["rel_err_vs_float64"] = float(f"{err:.3g}")
        ctx.log(f"{name:<30} {fmt_ms(ms):>9} {row['gb_s']:>8} GB/s ({row['pct_copy_bw']} % of copy)")
        r["items"].append(row)
        ctx.save()


# ----------------------------------------------------------------------------------------------- stage f
def stage_escnn(ctx: Context) -> None:
    """f: escnn's R3PointConv and the paper's construction in escnn, vs the anchors."""
    from .envinfo import configure_precision
    from .impls.base import missing_modules

    missing = missing_modules("escnn")
    if missing:
        ctx.status, ctx.reason = "skipped", "escnn not importable and no --escnn-wheels folder"
        return
    import escnn  # noqa: F401 - fails here (not per row) when the numpy overlay is wrong

    import numpy

    configure_precision()
    ctx.results.update(escnn=importlib.metadata.version("escnn"), numpy=numpy.__version__,
                       overlay=ctx.options.get("escnn_overlay"))
    plan = [dict(precision="ieee", width="default", hidden_channels=ctx.sizes.widths[0][1],
                 impls=["escnn-pointconv", "escnn-implicit"], share=1)]
    _bench_runs(ctx, plan, ctx.sizes.escnn_edges)
    _collect_rows_errors(ctx, "rows")


STAGES: dict[str, Stage] = {s.key: s for s in (
    Stage("a", "build, import check, pytest -m cuda", 170, 20, stage_build),
    Stage("b", "correctness of every fused path vs float64 reference", 40, 10, stage_correctness),
    Stage("c", "standard workload (fastik, fused x precision x width, e3nn-tfn, materialize)", 150, 20,
          stage_workload),
    Stage("d", "per-kernel split", 80, 10, stage_split),
    Stage("e", "aggregation vs index_add_", 15, 5, stage_aggregation),
    Stage("f", "escnn R3PointConv and the paper's construction", 40, 10, stage_escnn),
)}


# =====================================================================================================
# driver side
# =====================================================================================================
def allocate_budget(stage: str, order: list[str], weights: dict[str, float], mins: dict[str, float],
                    left_s: float) -> float:
    """Seconds for ``stage``: its weight's share of ``left_s`` among itself and the stages after it, at most
    what leaves the later stages their minimum; 0 when it cannot get its own minimum."""
    rest = [k for k in order[order.index(stage) + 1:] if weights[k] > 0]
    share = left_s * weights[stage] / (weights[stage] + sum(weights[k] for k in rest)) if rest else left_s
    budget = min(max(share, mins[stage]), left_s - sum(mins[k] for k in rest))
    return budget if budget >= mins[stage] else 0.0


def load_anchors(path: Path = ANCHORS_PATH) -> dict:
    return json.loads(Path(path).read_text())


def anchor_ratios(rows: list[dict], anchors: dict) -> list[dict]:
    """For every measured fwd+bwd row at an anchor's E: anchor time / measured time and anchor peak / measured
    peak (> 1: the measured one is faster / leaner)."""
    out = []
    by_edges: dict[int, list[dict]] = collections.defaultdict(list)
    for a in anchors["rows"]:
        by_edges[a["edges"]].append(a)
    for r in rows:
        if r["status"] != "ok" or r["pass"] != anchors["pass"] or r["edges"] not in by_edges:
            continue
        mem = r.get("peak_mem_bytes")
        for a in by_edges[r["edges"]]:
            out.append({"impl": r["impl"], "precision": r["precision"], "width": r.get("width"),
                        "hidden_channels": r.get("hidden_channels"), "edges": r["edges"], "anchor": a["anchor"],
                        "ms": r["median_ms"], "anchor_ms": a["ms"],
                        "speedup": round(a["ms"] / r["median_ms"], 3),
                        "mem_ratio": None if not mem else round(a["peak_gib"] * 2 ** 30 / mem, 3)})
    return out


class Driver:
    """Runs the selected stages one after another, each in a child process, under one deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.terminated = False
        self.child: subprocess.Popen | None = None
        out = args.out or os.environ.get("OUT") or str(REPO_ROOT / "bench" / "results")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.order = [k for k in STAGES if k in args.stages]

    # ------------------------------------------------------------------ helpers
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str) -> None:
        line = f"[gpu_check {self.elapsed():5.0f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def write(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 1)
        write_json(self.doc, self.json_path)

    def _on_signal(self, signum, frame) -> None:  # the stage loop forwards it to the running stage
        self.terminated = True

    # ------------------------------------------------------------------ set-up
    def _environment(self) -> dict:
        import torch

        from .envinfo import device_slug, environment

        cuda = (not self.args.dry_run) and torch.cuda.is_available()
        device = torch.device("cuda" if cuda else "cpu")
        env = environment(device, torch.float32, probe_fastik=False)  # stage a rebuilds fastik._C: not loaded here
        env["driver"] = env["nvidia_smi"] = None
        if shutil.which("nvidia-smi"):
            try:
                q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
                env["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
                parts = [p.strip() for p in env["nvidia_smi"].splitlines()[0].split(",")]
                env["driver"] = parts[1] if len(parts) > 1 else None
            except (OSError, subprocess.SubprocessError, IndexError) as exc:
                env["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
        env["slug"] = device_slug(device)
        return env

    def _escnn_plan(self) -> tuple[bool, dict]:
        """Whether stage f can run, and the environment changes for its process (the wheel overlay)."""
        from .impls.base import missing_modules

        if not missing_modules("escnn"):
            return True, {}
        wheels = self.args.escnn_wheels or os.environ.get("FASTIK_ESCNN_WHEELS")
        if not wheels or not list(Path(wheels).glob("*.whl")):
            return False, {}
        return True, {"wheels": str(Path(wheels).resolve())}

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        import torch

        if not self.args.dry_run and not torch.cuda.is_available():
            print(f"error: no CUDA device (torch {torch.__version__}, cuda {torch.version.cuda}); "
                  "run with --dry-run for the CPU rehearsal", file=sys.stderr)
            return 2
        # from here on SIGTERM only sets a flag: the stage loop stops the running stage and writes every file
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        env = self._environment()
        date = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
        stem = self.out / f"{date}-{env['slug']}-gpu-check{'-dry' if self.args.dry_run else ''}"
        self.json_path, self.md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
        self.png_path, self.log_path = stem.with_suffix(".png"), stem.with_suffix(".log")
        self.log_path.write_text("")
        escnn_ok, escnn_info = self._escnn_plan()
        anchors = load_anchors()
        self.doc = {
            "schema": SCHEMA,
            "env": env,
            "config": {"deadline_s": self.args.deadline, "dry_run": self.args.dry_run, "stages": self.order,
                       "sizes": (DRY_SIZES if self.args.dry_run else GPU_SIZES).__dict__,
                       "autotune_stage_c": self.args.autotune, "skip_build": self.args.skip_build,
                       "escnn": escnn_info or ("importable" if escnn_ok else "absent")},
            "anchors": {k: anchors[k] for k in ("card", "date", "software", "workload", "pass", "peaks", "target")},
            "stages": {k: {"title": STAGES[k].title, "status": "pending"} for k in self.order},
            "outputs": {"json": self.json_path.name, "md": self.md_path.name, "png": None,
                        "log": self.log_path.name},
            "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "finished": False,
        }
        self.write()
        try:
            self.say(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | commit "
                     f"{(env.get('git_commit') or '?')[:10]} | deadline {self.args.deadline:g} s"
                     + (" | DRY RUN (CPU, tiny sizes, Triton interpreter)" if self.args.dry_run else ""))
            weights = {k: (STAGES[k].weight_s if (k != "f" or escnn_ok) else 0.0) for k in self.order}
            mins = {k: STAGES[k].min_s for k in self.order}
            for key in self.order:
                entry = self.doc["stages"][key]
                if self.terminated:
                    entry.update(status="skipped", reason="not started: SIGTERM")
                    continue
                if key == "f" and not escnn_ok:
                    entry.update(status="skipped", reason="escnn not importable and no wheel folder "
                                                          "(--escnn-wheels / FASTIK_ESCNN_WHEELS)")
                    self.say(f"stage f skipped: {entry['reason']}")
                    self.write()
                    continue
                left = self.args.deadline - FINAL_RESERVE_S - self.elapsed()
                budget = allocate_budget(key, self.order, weights, mins, left)
                if budget <= 0:
                    entry.update(status="skipped", reason=f"deadline: {max(left, 0):.0f} s left")
                    self.say(f"stage {key} skipped: {entry['reason']}")
                    self.write()
                    continue
                self._run_stage(key, budget, escnn_info if key == "f" else {})
                self._finish_outputs(png=False)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.doc["finished"] = not self.terminated
        self.doc["interrupted"] = self.terminated
        self._finish_outputs(png=True)
        statuses = {k: v["status"] for k, v in self.doc["stages"].items()}
        self.say("done: " + ", ".join(f"{k}={v}" for k, v in statuses.items())
                 + f"; files in {self.out}: " + ", ".join(v for v in self.doc["outputs"].values() if v))
        if not self.args.quiet:
            print()
            print(self.md_path.read_text())
        if self.terminated:
            return 143
        return 0 if all(v in ("ok", "skipped") for v in statuses.values()) else 1

    def _run_stage(self, key: str, budget: float, escnn_info: dict) -> None:
        entry = self.doc["stages"][key]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
        if self.args.dry_run:
            env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
        if key == "b" or (key == "c" and not self.args.autotune):  # compile one config per kernel, not dozens
            env["FASTIK_TRITON_AUTOTUNE"] = "0"
        options = {"skip_build": self.args.skip_build}
        t0 = time.monotonic()
        if escnn_info.get("wheels"):
            overlay = self._escnn_overlay(escnn_info["wheels"], budget / 3)
            if overlay is None:
                entry.update(status="failed", reason="installing the escnn wheel overlay failed (see the log)",
                             seconds=round(time.monotonic() - t0, 1), budget_s=round(budget, 1))
                self.write()
                return
            env["PYTHONPATH"] = overlay + os.pathsep + env["PYTHONPATH"]
            options["escnn_overlay"] = overlay
        budget_left = budget - (time.monotonic() - t0)
        entry.update(status="running", budget_s=round(budget, 1), started_s=round(self.elapsed(), 1))
        self.write()
        self.say(f"stage {key}: {STAGES[key].title} (budget {budget_left:.0f} s)")
        cmd = [sys.executable, "-m", "bench.gpu_check", "--child", key, "--json", str(self.json_path),
               "--budget", f"{budget_left:.1f}", "--options", json.dumps(options)]
        if self.args.dry_run:
            cmd.append("--dry-run")
        with open(self.log_path, "a") as log:
            self.child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        timed_out, stopping, kill_at = False, False, math.inf
        while self.child.poll() is None:
            now = time.monotonic()
            if not stopping and (self.terminated or now - t0 > budget + 2):
                stopping, timed_out = True, not self.terminated
                if timed_out:
                    self.say(f"stage {key}: budget spent, stopping it")
                _signal_group(self.child, signal.SIGTERM)
                kill_at = now + KILL_GRACE_S
            elif now > kill_at:
                _signal_group(self.child, signal.SIGKILL)
                kill_at = math.inf
            time.sleep(0.1)
        rc = self.child.returncode
        self.child = None
        try:  # the child's results (it wrote the JSON last; the driver's copy is authoritative elsewhere)
            child_entry = json.loads(self.json_path.read_text())["stages"][key]
        except (OSError, ValueError, KeyError):
            child_entry = {}
        entry["results"] = child_entry.get("results", {})
        if self.terminated:
            status, reason = "interrupted", "SIGTERM: stopped during the stage; its results so far are kept"
        elif timed_out:
            status, reason = "timeout", f"ran past its budget of {budget:.0f} s; results so far are kept"
        elif rc == 0:
            status = child_entry.get("child_status") or "ok"
            reason = child_entry.get("reason")
        elif rc < 0:
            status, reason = "crashed", f"killed by signal {-rc} (see the log)"
        else:
            status = child_entry.get("child_status") or "failed"
            reason = child_entry.get("reason") or f"exit status {rc} (traceback in the log)"
        entry.update(status=status, reason=reason, rc=rc, seconds=round(time.monotonic() - t0, 1))
        self.say(f"stage {key}: {status}" + (f" ({reason})" if reason else "") + f" in {entry['seconds']} s")
        self.write()

    def _escnn_overlay(self, wheels: str, timeout_s: float) -> str | None:
        """Install every wheel of ``wheels`` (escnn with numpy < 2, scipy, ...) into a folder put in front of
        PYTHONPATH for stage f only; returns the folder, or None on failure."""
        target = tempfile.mkdtemp(prefix="gpu-check-escnn-")
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", target,
               *sorted(str(p) for p in Path(wheels).glob("*.whl"))]
        self.say(f"stage f: installing the escnn overlay from {wheels} into {target}")
        with open(self.log_path, "a") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        return target if rc == 0 else None

    def _finish_outputs(self, png: bool) -> None:
        self.write()
        try:
            self.md_path.write_text(markdown(self.doc, load_anchors()))
        except Exception:  # noqa: BLE001 - the JSON is the record; a report bug must not lose it
            self.say("Markdown failed:\n" + traceback.format_exc())
        if png:
            try:
                path, why = write_png(self.doc, load_anchors(), self.png_path)
            except Exception:  # noqa: BLE001
                path, why = None, "PNG failed:\n" + traceback.format_exc()
            self.doc["outputs"]["png"] = path.name if path else None
            self.doc["outputs"]["png_skipped"] = why
            self.write()


# =====================================================================================================
# reports
# =====================================================================================================
def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 30:.3g} GiB"


def _variant(r: dict) -> str:
    return f"{r['impl']} · {r['precision']} · {r.get('width', '')} (hc={r.get('hidden_channels')})"


def markdown(doc: dict, anchors: dict) -> str:
    """The summary: environment, stage table, then one section per stage with results."""
    env, cfg = doc["env"], doc["config"]
    commit = (env.get("git_commit") or "unknown") + (" (uncommitted changes)" if env.get("git_dirty") else "")
    lines = [f"# fastik GPU check — {env['date']}, {env['device']}", ""]
    if cfg["dry_run"]:
        lines += ["**Dry run**: CPU, tiny sizes, Triton interpreter — proves the script, not the code's speed.", ""]
    if doc.get("interrupted"):
        lines += ["**Interrupted** (SIGTERM): finished stages are complete, the running one partial.", ""]
    lines += [
        f"- **card**: {env['device']}" + (f", driver {env['driver']}" if env.get("driver") else "")
        + (f", {fmt_bytes(env['device_memory_bytes'])}" if env.get("device_memory_bytes") else ""),
        f"- **software**: torch {env['torch']} (CUDA {env.get('cuda')}), triton {env.get('triton')}, "
        f"numpy {env.get('numpy')}, e3nn {env.get('e3nn')}, escnn {env.get('escnn')}, python {env['python']}",
        f"- **commit**: {commit}; started {doc['started_utc']}, {doc.get('elapsed_s', 0):.0f} s of the "
        f"{cfg['deadline_s']:g} s deadline",
        f"- **anchors**: {anchors['card']}, {anchors['date']} ({anchors['software']}); {anchors['workload']}",
        "",
        "| stage | what | status | seconds (budget) | note |",
        "|---|---|---|---:|---|",
    ]
    for k, st in doc["stages"].items():
        secs = f"{st.get('seconds', '')} ({st.get('budget_s', '—')})" if "budget_s" in st else ""
        lines.append(f"| {k} | {st['title']} | {st['status']} | {secs} | {st.get('reason') or ''} |")
    lines.append("")
    same_card = "H200" in str(env.get("device", ""))
    for key, fn in (("a", _md_build), ("b", _md_correctness), ("c", _md_workload), ("d", _md_split),
                    ("e", _md_aggregation), ("f", _md_workload)):
        st = doc["stages"].get(key)
        if st and st.get("results"):
            lines += fn(key, st, st["results"], anchors, same_card)
    lines += ["## Files", "", ", ".join(f"`{v}`" for k, v in doc["outputs"].items() if v and k != "png_skipped"), ""]
    return "\n".join(lines)


def _md_build(key, st, r, anchors, same_card) -> list[str]:
    lines = [f"## a — {st['title']}", ""]
    b = r.get("build", {})
    lines.append(f"- build: {b.get('status')}" + (f" in {b['seconds']} s (rc {b['rc']})" if "rc" in b else "")
                 + (f" — {b['reason']}" if b.get("reason") else ""))
    imp = r.get("import", {})
    if imp:
        lines.append(f"- import: fastik {imp.get('fastik')}, extension {imp.get('extension')}, CUDA kernels "
                     f"{imp.get('extension_cuda')}, triton available {imp.get('triton_available')}"
                     + (f" — {imp['error']}" if imp.get("error") else ""))
    p = r.get("pytest", {})
    if p:
        lines.append(f"- pytest -m cuda: {p.get('summary') or p.get('reason') or p.get('rc')}"
                     + (" (timed out)" if p.get("timed_out") else ""))
    return lines + [""]


def _md_correctness(key, st, r, anchors, same_card) -> list[str]:
    lines = [f"## b — {st['title']}", "",
             f"E = {r.get('edges', 0):,}, D = {r.get('dim')}, hidden_channels = {r.get('hidden_channels')}; "
             f"error = {r.get('error')}; truth: {r.get('reference')}.", "",
             "| path | precision | out | grad x | grad pos | grad params | tolerance | status |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for c in r.get("checks", []):
        e = c.get("errors", {})
        cells = [f"{e[k]:.2g}" if k in e else "—" for k in ("out", "grad_x", "grad_pos", "grad_params")]
        note = c["status"] + (f": {c.get('reason') or c.get('error')}" if c["status"] in ("skipped", "error") else "")
        lines.append(f"| {c['impl']} | {c['precision']} | " + " | ".join(cells) + f" | {c['tolerance']:g} | {note} |")
    verdicts = r.get("tf32x3_vs_ieee", [])
    if verdicts:
        lines += ["", "tf32x3's error less IEEE's, at most (`precision=\"auto\"` picks tf32x3 for the fused backend "
                  f"on CUDA while this is ≤ {AUTO_TF32X3_MARGIN:g}): " +
                  "; ".join(f"{v['impl']} {v['excess']:+.2g} ({'within' if v['within'] else '**over**'})"
                            for v in verdicts)]
    return lines + [""]


def _md_workload(key, st, r, anchors, same_card) -> list[str]:
    rows = r.get("rows", [])
    lines = [f"## {key} — {st['title']}", ""]
    if key == "c":
        lines += [f"Triton autotuning: {'on' if r.get('autotune') else 'off (fixed configurations)'}; "
                  "cells: median time · peak memory (" + ("torch.cuda.max_memory_allocated" if rows and
                                                         rows[0].get("peak_mem_bytes") is not None else
                                                         "CPU: sampled RSS increase") + ").", ""]
    edges = sorted({x["edges"] for x in rows if x["edges"] is not None})
    for pass_ in ("fwd+bwd", "fwd"):
        variants = list(dict.fromkeys(_variant(x) for x in rows if x["pass"] == pass_))
        if not variants:
            continue
        lines += [f"### {pass_}", "", "| implementation · precision · width | " +
                  " | ".join(f"E = {e:,}" for e in edges) + " |", "|---|" + "---:|" * len(edges)]
        for v in variants:
            cells = []
            for e in edges:
                x = next((x for x in rows if _variant(x) == v and x["pass"] == pass_ and x["edges"] == e), None)
                if x is None:
                    cells.append("")
                elif x["status"] == "ok":
                    mem = x["peak_mem_bytes"] if x.get("peak_mem_bytes") is not None else x.get("step_mem_bytes")
                    cells.append(f"{fmt_ms(x['median_ms'])} · {fmt_bytes(mem)}")
                else:
                    cells.append(x["status"])
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    problems = [x for x in rows if x["status"] != "ok"]
    if problems:
        lines += ["Skipped / failed rows:", ""]
        seen = set()
        for x in problems:
            line = f"- {_variant(x)} {x['pass']}: {x['status']} — {x['reason']}"
            if line not in seen:
                seen.add(line)
                lines.append(line)
        lines.append("")
    ratios = anchor_ratios(rows, anchors)
    if not ratios:
        anchor_edges = sorted({a["edges"] for a in anchors["rows"]})
        lines += [f"No {anchors['pass']} row at an anchor's E ({', '.join(f'{e:,}' for e in anchor_edges)}): "
                  "no ratios against the anchors.", ""]
    else:
        lines += [f"### Against the anchors ({anchors['card']}, {anchors['date']}, {anchors['pass']})", ""]
        if not same_card:
            lines += ["*Not the anchors' card: ratios are not comparable.*", ""]
        names = list(dict.fromkeys(a["anchor"] for a in anchors["rows"]))
        lines += ["time ratio anchor / measured (> 1: faster), memory ratio in brackets", "",
                  "| implementation · precision · width | E | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        grouped: dict[tuple, dict] = collections.OrderedDict()
        for q in ratios:
            grouped.setdefault((_variant(q), q["edges"]), {})[q["anchor"]] = q
        for (v, e), cells in grouped.items():
            out = []
            for name in names:
                q = cells.get(name)
                out.append("" if q is None else f"×{q['speedup']:.3g}"
                           + ("" if q["mem_ratio"] is None else f" (×{q['mem_ratio']:.3g})"))
            lines.append(f"| {v} | {e:,} | " + " | ".join(out) + " |")
        tgt = anchors["target"]
        best = [x for x in rows if x["status"] == "ok" and x["pass"] == "fwd+bwd" and x["edges"] == tgt["edges"]
                and x["impl"].startswith("fastik-") and x["impl"] != "fastik-reference"]
        if best:
            b = min(best, key=lambda x: x["median_ms"])
            lines += ["", f"Target at E = {tgt['edges']:,}: ≤ {tgt['ms']:g} ms and ≤ {tgt['peak_gib']:g} GiB; best "
                      f"fused: {_variant(b)} {fmt_ms(b['median_ms'])}, {_gib(b.get('peak_mem_bytes'))}."]
        lines.append("")
    return lines


def _md_split(key, st, r, anchors, same_card) -> list[str]:
    p = r.get("peaks", {})
    lines = [f"## d — {st['title']}", "",
             f"E = {r.get('edges', 0):,}, N = {r.get('nodes', 0):,}, K = {r.get('K')}, Din = {r.get('din')}, "
             f"Dout = {r.get('dout')}, precision {r.get('precision')}; timer: {r.get('timer')}.",
             f"Peaks measured here: fp32 matmul {p.get('fp32_matmul_tflops', '—')} TFLOP/s, TF32 "
             f"{p.get('tf32_matmul_tflops', '—')} TFLOP/s, copy {p.get('copy_gb_s', '—')} GB/s (anchors' card: "
             f"{anchors['peaks']['fp32_matmul_tflops']} / {anchors['peaks']['tf32_matmul_tflops']} TFLOP/s, "
             f"{anchors['peaks']['copy_tb_s'] * 1000:g} GB/s). FLOPs and bytes are model counts (GEMM work, "
             "minimal traffic).", "",
             "| item | time | TFLOP/s | % fp32 peak | GB/s | % copy | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for it in r.get("items", []):
        if it["status"] != "ok":
            lines.append(f"| {it['name']} | {it['status']} | | | | | {it.get('reason') or it.get('error')} |")
            continue
        note = "" if "extension" not in it else f"extension {it['extension']}"
        lines.append(f"| {it['name']} | {fmt_ms(it['ms'])} | {it.get('tflops', '')} | {it.get('pct_fp32_peak', '')} "
                     f"| {it.get('gb_s', '')} | {it.get('pct_copy_bw', '')} | {note} |")
    lines.append("")
    if r.get("kernels_skipped"):
        lines += [f"Triton kernels skipped: {r['kernels_skipped']}", ""]
    if r.get("configs"):
        lines += ["Kernel configurations:", ""]
        for name, c in r["configs"].items():
            if c["mode"] == "autotuned":
                lines.append(f"- `{name}`: autotuned on key ({', '.join(c['key'])}), chose {c['chosen']}")
            else:
                lines.append(f"- `{name}`: {c['mode']} — " + "; ".join(f"{k} {v}" for k, v in c["configs"].items()))
        if r.get("autotune_without_size_key"):
            lines.append(f"- no edge-count bucket in the autotune key of {', '.join(r['autotune_without_size_key'])}:"
                         " the first size tuned in a process decides for every size (here E = "
                         f"{r.get('edges', 0):,}, tuned first)")
        lines.append("")
    if r.get("fully_fused"):
        lines += [f"Fully fused layer: {r['fully_fused']}.", ""]
    return lines


def _md_aggregation(key, st, r, anchors, same_card) -> list[str]:
    c = r.get("copy", {})
    lines = [f"## e — {st['title']}", "",
             f"E = {r.get('edges', 0):,}, N = {r.get('nodes', 0):,}, D = {r.get('dim')}; extension "
             f"{r.get('extension')} (CUDA kernels {r.get('extension_cuda')}); timer: {r.get('timer')}; copy "
             f"bandwidth {c.get('gb_s', '—')} GB/s.", "",
             "| op | time | GB/s | % copy | rel. error vs float64 |", "|---|---:|---:|---:|---:|"]
    for it in r.get("items", []):
        if it["status"] != "ok":
            lines.append(f"| {it['name']} | {it['status']} | | | {it.get('error')} |")
            continue
        lines.append(f"| {it['name']} | {fmt_ms(it['ms'])} | {it['gb_s']} | {it['pct_copy_bw']} | "
                     f"{it.get('rel_err_vs_float64', '')} |")
    return lines + [""]


def write_png(doc: dict, anchors: dict, path: Path) -> tuple[Path | None, str | None]:
    """Time and memory vs E (stage c and f rows, anchors as black markers) and the stage d split."""
    rows = [r for k in ("c", "f") for r in doc["stages"].get(k, {}).get("results", {}).get("rows", [])
            if r["status"] == "ok" and r["pass"] == "fwd+bwd"]
    items = [i for i in doc["stages"].get("d", {}).get("results", {}).get("items", []) if i["status"] == "ok"]
    if not rows and not items:
        return None, "nothing measured yet"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return None, f"matplotlib not installed ({exc})"
    fig, (ax_t, ax_m, ax_k) = plt.subplots(1, 3, figsize=(19, 6))
    variants = list(dict.fromkeys(_variant(r) for r in rows))
    cmap = plt.get_cmap("tab20")
    for i, v in enumerate(variants):
        sel = sorted((r for r in rows if _variant(r) == v), key=lambda r: r["edges"])
        e = [r["edges"] for r in sel]
        style = dict(color=cmap(i % 20), marker="o", ls="-" if "fastik" in v else "--", label=v)
        ax_t.plot(e, [r["median_ms"] for r in sel], **style)
        mem = [(r["edges"], r.get("peak_mem_bytes") or r.get("step_mem_bytes")) for r in sel]
        mem = [m for m in mem if m[1]]
        if mem:
            ax_m.plot([m[0] for m in mem], [m[1] / 2 ** 30 for m in mem], **style)
    markers = "xv^sD*"
    for j, name in enumerate(dict.fromkeys(a["anchor"] for a in anchors["rows"])):
        sel = [a for a in anchors["rows"] if a["anchor"] == name]
        kw = dict(color="black", marker=markers[j % len(markers)], ls=":", lw=0.8, label=f"anchor: {name}")
        ax_t.plot([a["edges"] for a in sel], [a["ms"] for a in sel], **kw)
        ax_m.plot([a["edges"] for a in sel], [a["peak_gib"] for a in sel], **kw)
    for ax, title, ylabel in ((ax_t, "fwd+bwd time", "median ms"), (ax_m, "fwd+bwd peak memory", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edges E")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    if items:
        ax_k.barh([i["name"] for i in items], [i["ms"] for i in items], color="tab:blue")
        ax_k.set_xscale("log")
        ax_k.invert_yaxis()
        ax_k.tick_params(axis="y", labelsize=7)
        ax_k.set_xlabel("ms")
        d = doc["stages"]["d"]["results"]
        ax_k.set_title(f"per-kernel split, E = {d.get('edges', 0):,}")
    else:
        ax_k.axis("off")
    env = doc["env"]
    commit = (env.get("git_commit") or "?")[:10]
    fig.suptitle(f"fastik GPU check — {env['device']} — {env['date']} — commit {commit}"
                 + (" — DRY RUN (CPU, tiny sizes)" if doc["config"]["dry_run"] else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path), None


# =====================================================================================================
# command line
# =====================================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU rehearsal: tiny sizes, TRITON_INTERPRET=1, CUDA-only steps skipped with the reason")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                   help=f"seconds for the whole run, from its start (default {DEFAULT_DEADLINE_S:g})")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else bench/results)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--skip-build", action="store_true", help="stage a: do not rebuild the extension")
    p.add_argument("--autotune", action="store_true",
                   help="stage c with Triton autotuning (default: the fixed configurations, "
                        "FASTIK_TRITON_AUTOTUNE=0; stage d always autotunes on the GPU)")
    p.add_argument("--escnn-wheels", default=None,
                   help="folder of .whl files (escnn, numpy<2, scipy, ...) installed as an overlay for stage f "
                        "(default: $FASTIK_ESCNN_WHEELS)")
    p.add_argument("--quiet", action="store_true", help="do not print the Markdown summary at the end")
    p.add_argument("--child", choices=list(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        p.error(f"--stages: unknown {', '.join(bad) or '(none given)'}; choose from {','.join(STAGES)}")
    args.stages = stages
    if args.deadline <= FINAL_RESERVE_S:
        p.error(f"--deadline must exceed {FINAL_RESERVE_S:g} s")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return Driver(args).run()


if __name__ == "__main__":
    sys.exit(main())
