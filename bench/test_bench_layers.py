"""pytest-benchmark suite: one benchmark per (implementation, group, E, pass).

Run from the repository root (bench/ is not collected by a plain ``pytest``)::

    pytest bench/ --benchmark-only
    FASTIK_BENCH_EDGES=1e4,1e5 FASTIK_BENCH_GROUPS=so3,O pytest bench/ --benchmark-only \\
        --benchmark-json=bench/results/pytest-benchmark.json

Environment: FASTIK_BENCH_EDGES (default 1e3), FASTIK_BENCH_GROUPS (default so3),
FASTIK_BENCH_IMPLS (default: the harness's default selection), FASTIK_BENCH_DEVICE
(default cuda when available), FASTIK_BENCH_ROUNDS (default 5).  Unavailable
implementations skip with their reason; each benchmark's extra_info records the
workload (and, on CUDA, the peak allocated memory of the measured rounds).
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

pytest.importorskip("pytest_benchmark", reason="pip install pytest-benchmark (the 'bench' extra)")

from bench.envinfo import configure_precision  # noqa: E402
from bench.impls import DEFAULT_IMPLS, PASSES, get_impl, make_step  # noqa: E402
from bench.workload import LayerSpec, make_graph, parse_edges  # noqa: E402

DEVICE = os.environ.get("FASTIK_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
EDGES = parse_edges(os.environ.get("FASTIK_BENCH_EDGES", "1e3"))
GROUPS = [g for g in os.environ.get("FASTIK_BENCH_GROUPS", "so3").split(",") if g]
IMPLS = [i for i in os.environ.get("FASTIK_BENCH_IMPLS", ",".join(DEFAULT_IMPLS)).split(",") if i]
ROUNDS = int(os.environ.get("FASTIK_BENCH_ROUNDS", "5"))


@functools.lru_cache(maxsize=None)
def _layer(impl_name: str, group: str):
    """The built layer, or the reason it cannot run (built once per session)."""
    impl = get_impl(impl_name)
    spec = LayerSpec(group=group, device=DEVICE)
    reason = impl.check(spec)
    if reason:
        return reason
    try:
        return impl.build(spec)
    except Exception as exc:  # noqa: BLE001 - unavailable backends skip, they do not fail the suite
        return f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=2)
def _graph(edges: int):
    return make_graph(edges, LayerSpec().dim, DEVICE)


def _sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("edges", EDGES, ids=lambda e: f"E{e}")
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("impl_name", IMPLS)
def test_layer(benchmark, impl_name, group, edges, pass_):
    configure_precision()
    impl = get_impl(impl_name)
    if impl.group_agnostic and group != GROUPS[0]:
        pytest.skip(f"{impl_name} does not depend on the group: measured for {GROUPS[0]} only")
    if impl_name.startswith("fastik-triton") and not DEVICE.startswith("cuda"):
        pytest.skip("fastik-triton needs CUDA (the Triton CPU interpreter is for correctness, not timing)")
    layer = _layer(impl_name, group)
    if isinstance(layer, str):
        pytest.skip(layer)
    graph = _graph(edges)
    step = make_step(layer, graph, training=pass_ == "fwd+bwd")

    def call():
        step()
        _sync()

    benchmark.group = f"{group} E={graph.num_edges} {pass_}"
    benchmark.extra_info.update(impl=impl_name, group=group, edges=graph.num_edges, nodes=graph.num_nodes,
                                pass_=pass_, device=DEVICE, dtype="float32", tf32=False)
    if DEVICE.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if DEVICE.startswith("cuda"):
        benchmark.extra_info["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
