"""The benchmark loop: every (size, group, implementation, pass) row, within time and memory budgets.

Rows run size by size (smallest first), so that when the time budget runs
out every implementation has its small sizes measured.  Before a row runs, its
cost is predicted from the same implementation's previous size (time and
memory scale linearly in E for all of them) and from the implementation's own
memory estimate; rows predicted to exceed the per-row time budget, the time
left in the run or the memory limit are skipped with the reason recorded, and
so are the larger sizes after an out-of-memory error.
"""
from __future__ import annotations

import gc
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .envinfo import configure_precision, environment
from .impls import IMPLS, PASSES, Unavailable, get_impl, make_step
from .measure import Measurement, is_oom, measure, memory_method
from .workload import DEGREE, PRECISIONS, LayerSpec, make_graph, nodes_for_edges

__all__ = ["BenchConfig", "run", "SCHEMA"]

SCHEMA = "fastik-bench/1"
GiB = 2 ** 30


@dataclass
class BenchConfig:
    impls: list[str]
    groups: list[str]
    edges: list[int]
    passes: list[str] = field(default_factory=lambda: list(PASSES))
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 5
    warmup: int = 2
    rounds: int = 1                      # each row's repeats this many times, interleaved with the other rows
    row_budget_s: float | None = 120.0   # per row: warm-up + repeats
    budget_s: float | None = None        # whole run
    mem_limit_bytes: int | None = None   # None: derived from the device
    channels: int = 16
    hidden_channels: int = 16
    hidden_layers: int = 2
    precision: str = "ieee"              # matmul precision of the implementations that have modes
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        for name in self.impls:
            get_impl(name)
        for p in self.passes:
            if p not in PASSES:
                raise ValueError(f"unknown pass {p!r}; choose from {', '.join(PASSES)}")
        if self.repeats < 1 or self.warmup < 0 or self.rounds < 1:
            raise ValueError("need repeats >= 1, warmup >= 0 and rounds >= 1")
        if not self.edges or min(self.edges) < 1:
            raise ValueError("need at least one positive edge count")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def default_mem_limit(device: torch.device) -> int | None:
    """CUDA: 92 % of the card; CPU: 70 % of the memory available now (an OOM kill cannot be caught)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.92)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * 0.7)
    except (OSError, ValueError):
        pass
    return None


class _Progress:
    def __init__(self, total: int, enabled: bool, printer: Callable[[str], None]) -> None:
        self.total, self.done, self.enabled, self.printer = total, 0, enabled, printer
        self.t0 = time.perf_counter()

    def row(self, row: dict) -> None:
        self.done += 1
        if not self.enabled:
            return
        edges = "all" if row["edges"] is None else f"{row['edges']:,}"
        name = row["impl"] + ("" if row["precision"] in ("ieee", "fp32") else f" [{row['precision']}]")
        head = (f"[{self.done:>{len(str(self.total))}}/{self.total}] {row['group']:<5} {name:<20} "
                f"E={edges:>9} {row['pass']:<8}")
        if row["status"] == "ok":
            mem = row["peak_mem_bytes"] if row["peak_mem_bytes"] is not None else row["step_mem_bytes"]
            mem_s = "mem n/a" if mem is None else f"mem {mem / 2**20:9.1f} MiB"
            body = f"{row['median_ms']:10.2f} ms (median of {row['repeats']})  {mem_s}"
        else:
            body = f"{row['status']}: {row['reason']}"
        self.printer(f"{head} {body}  [{time.perf_counter() - self.t0:.0f} s]")


def _row(impl: str, spec: LayerSpec, pass_: str, edges: int | None, status: str, reason: str | None = None,
         **values) -> dict:
    row = {"impl": impl, "group": spec.group, "fields": spec.fields, "dim": spec.dim, "pass": pass_,
           "precision": spec.precision if spec.precision in IMPLS[impl].precisions else "fp32",
           "hidden_channels": IMPLS[impl].hidden_channels or spec.hidden_channels,
           "nodes": None if edges is None else nodes_for_edges(edges),
           "edges": None if edges is None else nodes_for_edges(edges) * DEGREE,
           "status": status, "reason": reason, "median_ms": None, "min_ms": None, "q1_ms": None, "q3_ms": None,
           "times_ms": None, "repeats": None, "warmup": None, "peak_mem_bytes": None, "step_mem_bytes": None,
           "medges_per_s": None, "build_s": None, "group_agnostic": IMPLS[impl].group_agnostic, "notes": []}
    row.update(values)
    return row


def run(config: BenchConfig, progress: bool = True, printer: Callable[[str], None] = print,
        checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Run the benchmark; returns ``{"schema", "env", "config", "workload", "impls", "rows", ...}``.

    ``checkpoint`` (optional) receives the partial result after every row (``"partial": True``), so that a
    run killed from outside still leaves its rows behind. A KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM
    into one) ends the run early: the rows measured so far are returned with ``"interrupted": True``.
    """
    configure_precision()
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    dtype = config.torch_dtype
    mem_limit = config.mem_limit_bytes if config.mem_limit_bytes is not None else default_mem_limit(device)
    env = environment(device, dtype)
    env["memory_method"] = memory_method(device)
    env["mem_limit_bytes"] = mem_limit
    if progress:
        printer(f"fastik bench: {env['device']} | torch {env['torch']} | {env['dtype']}, TF32 "
                f"{'on' if env['tf32_matmul'] else 'off'} | groups {','.join(config.groups)} | "
                f"E {','.join(f'{e:,}' for e in config.edges)} | repeats {config.repeats} (+{config.warmup} warm-up)")

    specs = {g: LayerSpec(group=g, channels=config.channels, device=str(device), dtype=dtype,
                          hidden_channels=config.hidden_channels, hidden_layers=config.hidden_layers,
                          precision=config.precision)
             for g in config.groups}
    plan = [(g, name) for g in config.groups for name in config.impls
            if not (IMPLS[name].group_agnostic and g != config.groups[0])]
    rows: list[dict] = []
    prog = _Progress(len(plan) * len(config.edges) * len(config.passes), progress, printer)
    layers: dict[tuple[str, str], torch.nn.Module | str] = {}     # built layer, or the reason it is unavailable
    last_ok: dict[tuple[str, str, str], dict] = {}                # (group, impl, pass) -> last measured row
    stopped: dict[tuple[str, str, str], str] = {}
    t_start = time.perf_counter()

    def emit(row: dict, covers: int = 1) -> None:
        rows.append(row)
        prog.done += covers - 1
        prog.row(row)
        if checkpoint is not None:
            checkpoint({**result(False), "partial": True})

    def result(interrupted: bool) -> dict:
        return {
            "schema": SCHEMA,
            "env": env,
            "config": {**asdict(config), "mem_limit_bytes": mem_limit},
            "workload": {
                "description": (f"one point-convolution layer, {config.channels} fields of (0e + 1o) in and out "
                                f"(D = {4 * config.channels}); E = {DEGREE}·N edges, every node the target of "
                                f"{DEGREE} edges with sources uniform over the other nodes; positions and "
                                f"features standard normal; {config.dtype}, TF32 off"),
                "passes": {"fwd": "inference: eval mode, torch.no_grad()",
                           "fwd+bwd": "training step: train mode, forward + backward of sum(out²) to x and all "
                                      "parameters (gradients reset to None before each call)"},
                "timing": (f"median over the timed repeats after {config.warmup} warm-up call(s), "
                           "synchronised wall clock"
                           + ("" if config.rounds == 1 else
                              f"; {config.rounds} rounds of repeats per row, the rows of one size interleaved "
                              "round by round (each later round after one more warm-up call)")),
                "degree": DEGREE,
            },
            "impls": {name: IMPLS[name].summary for name in config.impls},
            "elapsed_s": round(time.perf_counter() - t_start, 2),
            "rows": list(rows),
            "interrupted": interrupted,
            "partial": False,
        }

    def ok_row(name: str, spec: LayerSpec, pass_: str, edges: int, e_actual: int, m: Measurement,
               rounds_done: int) -> dict:
        q1, q3 = m.quartiles_ms()
        notes = m.notes + ([] if rounds_done == config.rounds else
                           [f"interrupted: {rounds_done} of {config.rounds} rounds measured"])
        row = _row(name, spec, pass_, edges, "ok", None, median_ms=round(m.median_ms, 4),
                   min_ms=round(m.min_ms, 4), q1_ms=round(q1, 4), q3_ms=round(q3, 4),
                   times_ms=[round(t, 4) for t in m.times_ms], repeats=len(m.times_ms),
                   warmup=m.warmup, peak_mem_bytes=m.peak_mem_bytes, step_mem_bytes=m.step_mem_bytes,
                   medges_per_s=round(e_actual / m.median_ms / 1e3, 5),
                   build_s=getattr(layers.get((spec.group, name)), "_bench_build_s", None), notes=notes)
        if config.rounds > 1:
            row["round_medians_ms"] = [round(t, 4) for t in m.round_medians_ms]
        return row

    interrupted = False
    # rows of the current size measured in the rounds so far: (group, impl, pass) -> (measurement, row arguments)
    pending: dict[tuple[str, str, str], tuple[Measurement, tuple]] = {}
    try:
        for edges in config.edges:
            graph = make_graph(edges, 4 * config.channels, device, dtype, seed=config.seed)
            e_actual = graph.num_edges
            pending.clear()
            for rnd in range(config.rounds):
                last_round = rnd == config.rounds - 1
                for group, name in plan:
                    impl, spec = IMPLS[name], specs[group]
                    key = (group, name)
                    if key not in layers:
                        layers[key] = _build(impl, spec)
                        if isinstance(layers[key], str):  # unavailable: one row says why, for every size and pass
                            emit(_row(name, spec, "all", None, "skipped", layers[key]),
                                 covers=len(config.edges) * len(config.passes))
                    layer = layers[key]
                    if isinstance(layer, str):
                        continue
                    for pass_ in config.passes:
                        training = pass_ == "fwd+bwd"
                        rkey = (group, name, pass_)
                        if rnd == 0:
                            reason = stopped.get(rkey) or _predict_skip(impl, spec, e_actual, training,
                                                                       last_ok.get(rkey), config, mem_limit, t_start)
                            if reason:
                                emit(_row(name, spec, pass_, edges, "skipped", reason))
                                continue
                        elif rkey not in pending:  # skipped or failed in an earlier round
                            continue
                        left = None if config.budget_s is None else config.budget_s - (time.perf_counter() - t_start)
                        row_budget = min(b for b in (config.row_budget_s, left, float("inf")) if b is not None)
                        try:
                            step = make_step(layer, graph, training)
                            m = measure(step, device, config.repeats, config.warmup if rnd == 0 else min(1, config.warmup),
                                        None if row_budget == float("inf") else row_budget)
                        except Exception as exc:  # noqa: BLE001 - one failing row must not hide the others
                            pending.pop(rkey, None)
                            status = "oom" if is_oom(exc) else "error"
                            msg = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                            if status == "oom":
                                stopped[rkey] = f"OOM at E={e_actual:,}"
                            elif progress:
                                printer(traceback.format_exc(limit=4).rstrip())
                            emit(_row(name, spec, pass_, edges, status, msg))
                        else:
                            m = pending[rkey][0].merge(m) if rkey in pending else m
                            if not last_round:
                                pending[rkey] = (m, (name, spec, pass_, edges, e_actual))
                                continue
                            pending.pop(rkey, None)
                            row = ok_row(name, spec, pass_, edges, e_actual, m, config.rounds)
                            last_ok[rkey] = row
                            emit(row)
                        finally:
                            step = None
                            _release(device, layer)
                if progress and not last_round and pending:
                    printer(f"E={e_actual:,}: round {rnd + 1}/{config.rounds} done for {len(pending)} rows")
            del graph
            _release(device)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (see cli): keep what was measured
        interrupted = True
        for m, args in pending.values():  # rows with some of their rounds done: what they have
            emit(ok_row(*args, m, rounds_done=len(m.round_medians_ms)))
        if progress:
            printer(f"interrupted after {len(rows)} rows; writing what was measured")
    return result(interrupted)


def _build(impl, spec: LayerSpec):
    reason = impl.check(spec)
    if reason:
        return reason
    t0 = time.perf_counter()
    try:
        layer = impl.build(spec)
    except Unavailable as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. escnn present but not importable (numpy >= 2)
        return f"build failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    layer._bench_build_s = round(time.perf_counter() - t0, 3)
    return layer


def _predict_skip(impl, spec: LayerSpec, edges: int, training: bool, prev: dict | None, config: BenchConfig,
                  mem_limit: int | None, t_start: float) -> str | None:
    """The reason to skip a row whose predicted time or memory does not fit, else None."""
    elapsed = time.perf_counter() - t_start
    if config.budget_s is not None and elapsed >= config.budget_s:
        return f"run time budget ({config.budget_s:g} s) spent"
    mem = impl.estimate_step_bytes(spec, edges, training)
    if prev is not None:
        scale = edges / prev["edges"]
        call_s = prev["median_ms"] / 1e3 * scale
        min_cost = call_s * (max(1, config.warmup) + 1)   # at least one warm-up and one timed call
        if config.row_budget_s is not None and min_cost > config.row_budget_s:
            return (f"predicted {call_s:.3g} s per call (x{scale:.3g} the E={prev['edges']:,} time) "
                    f"exceeds the row budget of {config.row_budget_s:g} s")
        if config.budget_s is not None and min_cost > config.budget_s - elapsed:
            return f"predicted {min_cost:.3g} s exceeds the {config.budget_s - elapsed:.0f} s left in the run budget"
        measured = prev["peak_mem_bytes"] if prev["peak_mem_bytes"] is not None else prev["step_mem_bytes"]
        if measured is not None:
            mem = max(mem or 0, int(measured * scale))
    if mem_limit is not None and mem is not None and mem > mem_limit:
        return f"predicted memory {mem / GiB:.3g} GiB exceeds the limit of {mem_limit / GiB:.3g} GiB"
    return None


def _release(device: torch.device, layer: torch.nn.Module | None = None) -> None:
    if layer is not None:
        for p in layer.parameters():
            p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
