"""Timing and peak-memory measurement of one benchmark step.

Time: wall clock (``time.perf_counter``) around each call, with
``torch.cuda.synchronize()`` before and after on CUDA; warm-up calls first (they
absorb lazy initialisation, autotuning and compilation), then the timed
repeats; the row reports the median (and min / quartiles / every sample).

Memory:

* CUDA — ``torch.cuda.max_memory_allocated()`` over the timed repeats, after
  ``reset_peak_memory_stats()``: the absolute peak of the caching allocator
  (inputs, parameters and graph included), the number the anchors quote; the
  increase over what was allocated before the repeats is reported too.
* CPU — torch keeps no allocator statistics on the CPU and tracemalloc does not
  see torch's allocations, so a background thread samples the process's
  resident set size (``/proc/self/statm``) every ~1 ms during the timed
  repeats; the row reports the peak increase over the RSS measured just before
  them (after ``gc.collect()`` and glibc ``malloc_trim(0)``, which hands freed
  heap memory back to the OS so that the repeats have to grow the RSS again).
  It is an estimate: spikes shorter than the sampling interval can be missed,
  and memory the allocator keeps cached between repeats is counted once.
  Where ``/proc`` is unavailable the memory is reported as n/a (None).
"""
from __future__ import annotations

import ctypes
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["Measurement", "measure", "memory_method", "is_oom"]


@dataclass
class Measurement:
    times_ms: list[float]
    warmup: int
    peak_mem_bytes: int | None      # CUDA: absolute max_memory_allocated; CPU: None
    step_mem_bytes: int | None      # peak increase over the memory in use before the timed repeats
    notes: list[str] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # timed calls per round, when merged from several

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def round_sizes(self) -> list[int]:
        """Timed calls per round (one round: all of them)."""
        return self.rounds or [len(self.times_ms)]

    @property
    def round_medians_ms(self) -> list[float]:
        """The median of each round's calls (one round: the median)."""
        out, start = [], 0
        for n in self.round_sizes:
            out.append(statistics.median(self.times_ms[start:start + n]))
            start += n
        return out

    def merge(self, later: "Measurement") -> "Measurement":
        """This round and a later one of the same row: all calls, the larger memory peaks, both rounds' notes."""
        def peak(a: int | None, b: int | None) -> int | None:
            return None if a is None and b is None else max(a or 0, b or 0)
        return Measurement(self.times_ms + later.times_ms, self.warmup + later.warmup,
                           peak(self.peak_mem_bytes, later.peak_mem_bytes), peak(self.step_mem_bytes, later.step_mem_bytes),
                           self.notes + [n for n in later.notes if n not in self.notes],
                           self.round_sizes + later.round_sizes)

    def quartiles_ms(self) -> tuple[float, float]:
        if len(self.times_ms) < 2:
            return self.times_ms[0], self.times_ms[0]
        q = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q[0], q[2]


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated over the timed repeats (absolute peak, inputs and parameters included)"
    if _rss_bytes() is None:
        return "n/a (no /proc/self/statm on this platform)"
    return ("peak resident-set-size increase over the timed repeats, sampled every ~1 ms from /proc/self/statm "
            "after gc + malloc_trim (estimate; CPU torch has no allocator statistics)")


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _RssSampler:
    """Samples the RSS in a background thread (torch releases the GIL in its kernels)."""

    def __init__(self, interval_s: float = 1e-3) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes() or 0
            if rss > self.peak:
                self.peak = rss
            time.sleep(self.interval_s)

    def __enter__(self) -> "_RssSampler":
        self.peak = _rss_bytes() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes() or 0)


def measure(step: Callable[[], object], device: torch.device, repeats: int, warmup: int,
            time_budget_s: float | None = None) -> Measurement:
    """Run ``step`` ``warmup`` times, then ``repeats`` timed times (fewer if ``time_budget_s`` would be exceeded).

    At least one timed call always runs. When the warm-up calls show that
    ``repeats`` calls would not fit in ``time_budget_s``, the number of timed
    calls is reduced (noted in ``Measurement.notes``). ``warmup=0`` times the
    first calls too (lazy initialisation and compilation included): for dry runs.
    """
    notes = []
    start = time.perf_counter()
    for _ in range(warmup):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        last = time.perf_counter() - t0
    if time_budget_s is not None and warmup > 0:
        left = time_budget_s - (time.perf_counter() - start)
        fit = max(1, int(left // max(last, 1e-9)))
        if fit < repeats:
            notes.append(f"{fit} of {repeats} repeats (row time budget {time_budget_s:g} s)")
            repeats = fit
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _malloc_trim()
        base = _rss_bytes()
    times = []
    sampler = _RssSampler() if not cuda and base is not None else None
    if sampler is not None:
        sampler.__enter__()
    try:
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        if sampler is not None:
            sampler.__exit__(None, None, None)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        return Measurement(times, warmup, peak, peak - base, notes)
    step_mem = None if sampler is None else max(0, sampler.peak - base)
    return Measurement(times, warmup, None, step_mem, notes)
