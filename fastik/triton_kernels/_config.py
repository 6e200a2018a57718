"""Launch-mode switches and small helpers shared by the kernels.

Three launch modes, fixed when the kernel modules are imported:

* ``TRITON_INTERPRET=1``: the CPU interpreter, one small fixed configuration
  (tests without a GPU);
* GPU with ``FASTIK_TRITON_AUTOTUNE=0``: one fixed default configuration per
  kernel (fast start; GPU tests use this);
* GPU otherwise: ``triton.autotune`` over the configurations listed next to each
  kernel, keyed on the padded dimensions and K.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
AUTOTUNE = (not INTERPRET) and os.environ.get("FASTIK_TRITON_AUTOTUNE", "1") != "0"


def padded_dim(d: int) -> int:
    """Smallest power of two ≥ max(d, 16) (tl.dot needs every dim ≥ 16)."""
    return max(16, triton.next_power_of_2(max(int(d), 1)))


def device_ctx(t: torch.Tensor):
    """Make ``t``'s GPU current while launching (multi-GPU safety)."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


#: ptxas -v (sm_90a) at DIN = DOUT = 64 per Triton version: the configurations that spill
#: (written by ``python -m bench.aot --all --spill-table``; bench/NOTES.md)
SPILL_TABLE = Path(__file__).with_name("spills_sm90a.json")


def config_key(config: dict, precision: str) -> str:
    """``"BLOCK_E=64,BLOCK_K=2,num_stages=2,num_warps=8|ieee"``: meta-parameters, warps and stages, sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(config.items())) + f"|{precision}"


@functools.cache
def measured_spills(version: str | None = None) -> dict[str, frozenset[str]]:
    """{kernel name: keys (:func:`config_key`) of configurations that spill} for Triton ``version``
    ("major.minor"; default the running one); empty when that version was not measured."""
    version = version or ".".join(triton.__version__.split(".")[:2])
    table = json.loads(SPILL_TABLE.read_text()).get(version, {}) if SPILL_TABLE.exists() else {}
    return {kernel: frozenset(keys) for kernel, keys in table.items()}


def fits_registers(configs, din_p: int, dout_p: int, precision: str, kind: str, kernel: str | None = None):
    """Drop configurations that spill registers.

    At DIN_P = DOUT_P = 64 (the standard workload) the measured table of the running Triton
    version decides, when there is one (:func:`measured_spills`: spills are not monotonic in
    the block sizes and differ between Triton versions). Otherwise rules read off ``ptxas -v``
    for sm_90a (bench/NOTES.md): register tiles up to 8192 fp32 per program are spill-free at
    8 warps; IEEE (FMA) dots hold their operands in registers, so for the backward kernels only
    BLOCK_K = 1 (and, for grad-weight, BLOCK_E ≤ 64) stays clean. One configuration is always kept.
    """
    spills = measured_spills().get(kernel) if (din_p, dout_p) == (64, 64) else None
    kept = []
    for cfg in configs:
        if spills is not None:
            full = {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            ok = config_key(full, precision) not in spills
        else:
            be, bk = cfg.kwargs["BLOCK_E"], cfg.kwargs["BLOCK_K"]
            ok = be * bk * din_p <= 8192 and be * dout_p <= 16384
            if kind == "dw":
                ok = ok and bk * din_p * dout_p <= 16384
            if precision == "ieee" and kind in ("dxdh", "dw"):
                ok = ok and bk == 1 and (kind != "dw" or be <= 64)
        if ok:
            kept.append(cfg)
    return kept or list(configs[:1])


def register_prune(kind: str, kernel: str):
    """``early_config_prune`` hook of ``kernel`` (its name): :func:`fits_registers` of ``kind`` at the
    launch's DIN_P / DOUT_P / PRECISION."""
    def prune(configs, named_args, **kwargs):
        return fits_registers(configs, kwargs["DIN_P"], kwargs["DOUT_P"], kwargs["PRECISION"], kind, kernel)
    return prune


class SizeBuckets:
    """One ``triton.autotune`` instance per power-of-two bucket of the launch's edge count, so
    that a configuration tuned at E = 1e4 does not decide E = 1e6 (Triton's autotune keys
    are kernel arguments; keying on E itself would retune for every graph)."""

    def __init__(self, make) -> None:
        self._make, self._tuners = make, {}

    @property
    def tuners(self) -> dict:
        """{bucket (power of two): its triton Autotuner}, for the buckets launched so far."""
        return dict(self._tuners)

    def for_size(self, size: int):
        bucket = triton.next_power_of_2(max(int(size), 1))
        if bucket not in self._tuners:
            self._tuners[bucket] = self._make()
        return self._tuners[bucket]


def autotuned(kernel, configs, key, prune, **autotune_kwargs):
    """The kernel to launch: ``kernel`` itself, or, when AUTOTUNE, :class:`SizeBuckets` of
    ``triton.autotune`` over ``configs()`` (a callable, so the list is built only when autotuning;
    the configurations stay listed next to each kernel) keyed on ``key`` within each bucket, with
    ``prune`` as ``early_config_prune`` and ``autotune_kwargs`` (e.g. ``reset_to_zero``) passed on."""
    if not AUTOTUNE:
        return kernel
    return SizeBuckets(lambda: triton.autotune(  # pragma: no cover - GPU only
        configs=configs(), key=key, prune_configs_by={"early_config_prune": prune},
        **autotune_kwargs,
    )(kernel))


def launch(kernel, grid, args, meta, *, fixed: dict, fixed_gpu: dict, size: int):
    """Launch ``kernel`` (a JITFunction, or :class:`SizeBuckets` of autotuners when AUTOTUNE).

    ``size`` is the launch's edge count (it picks the autotuning bucket).
    ``grid`` is a callable of the meta-parameters. ``fixed`` is the interpreter
    configuration, ``fixed_gpu`` the non-autotuned GPU one (may hold num_warps /
    num_stages), or a dict of such keyed by precision (key "default" as fallback).
    """
    if AUTOTUNE:
        kernel.for_size(size)[grid](*args, **meta)
        return
    if INTERPRET:
        cfg = dict(fixed)
    elif "default" in fixed_gpu:
        cfg = dict(fixed_gpu.get(meta.get("PRECISION"), fixed_gpu["default"]))
    else:
        cfg = dict(fixed_gpu)
    full = {**meta, **cfg}
    kernel[grid(full)](*args, **full)
