"""Offline (no GPU) compile of every fastik Triton kernel for sm_90a: registers, spills, shared memory.

Triton compiles each kernel configuration to PTX here, ``ptxas -v`` (CUDA toolkit on PATH)
assembles it for the H100/H200 architecture and reports registers per thread and spill
bytes; nothing runs.  This is the GPU evidence a machine without a GPU can give, and it
catches a kernel that no longer compiles under the Triton version of the GPU machines.

    python -m bench.aot                      # the GPU default configuration of each kernel, 3 precisions
    python -m bench.aot --all                # every autotune configuration too
    python -m bench.aot --json out.json      # also write the rows
    python -m bench.aot --fused              # only the fully fused G-MLP kernels, both widths (≈ 3 min for
                                             # all 18 on 2 cores; --width anchor|default for one)
    python -m bench.aot --all --spill-table fastik/triton_kernels/spills_sm90a.json
                                             # record which configurations spill under this Triton version

Specialization: as Triton's JIT specializes a launch on torch tensors — every pointer 16-byte aligned, integer
arguments unspecialized (``SPECIALIZATION``; results before 2026-12-02 compiled without it, see bench/NOTES.md).

Sizes: DIN = DOUT = 64 (the standard workload), so DIN_P = DOUT_P = 64; the fully fused kernels at the
anchors' width (hidden_channels=5: two layers, P = 128, NB = NG = 16, dot inputs on P/2 = 64 columns) and
at the default width (hidden_channels=16: P = 256, NB = 16, NG = 64, dot inputs on all 256 columns).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PRECISIONS = ("ieee", "tf32x3", "tf32")
INDEX_POINTERS = {"src_ptr", "tgt_ptr", "eid_ptr", "rowptr_ptr", "ocol_ptr", "hblk_ptr", "hcnt_ptr", "rblk_ptr",
                  "rcnt_ptr", "cblk_ptr", "ccnt_ptr", "gcol_ptr", "cidx_ptr"}
#: the uint8 masks (PackedGMLP.weight_support / head_support / weight_slabs / structure_slabs / head_row_flags)
MASK_POINTERS = {"wsup_ptr", "hsup_ptr", "wsl_ptr", "ssl_ptr", "hrf_ptr"}
FLAGS_TRUE = {"NEED_DH": True, "NEED_DX": True, "NEED_DW": True, "NEED_PARAMS": True, "NEED_HEAD": True,
              "NEED_Z": True, "NEED_ENV": True, "NEED_X": True, "HAS_EID": False}
#: (module, kernel, autotune-config function, GPU default config name)
KERNELS = (
    ("message_fwd", "_message_fwd_kernel", "_fwd_configs", "GPU_CONFIG"),
    ("message_fwd", "_message_fwd_segmented_kernel", "_seg_configs", "GPU_CONFIG_SEG"),
    ("message_bwd", "_message_bwd_dxdh_kernel", "_dxdh_configs", "GPU_CONFIG_DXDH"),
    ("message_bwd", "_message_bwd_dw_kernel", "_dw_configs", "GPU_CONFIG_DW"),
    ("segmented_fwd", "_segmented_fwd_kernel", "_configs", "GPU_CONFIG"),
    ("segmented_bwd", "_segmented_bwd_kernel", "_configs", "GPU_CONFIG"),
)

#: the fully fused G-MLP kernels (fastik.triton_kernels.gmlp_conv) as launched: row name -> (kernel, launch
#: configuration, whether it saves / reads the rows of the layers' forward state (SV > 0: the backward's rows
#: kernel and the G-MLP's backward kernel after it; SV = 0: the forward's rows kernel)[, flags set otherwise than
#: in FLAGS_TRUE: the backward without z's gradient, a training step's without forces; the head's side without x's
#: gradient, a first layer's, and without env's either, a first layer's without a trained envelope])
FUSED_KERNELS = {"_gmlp_conv_fwd_kernel": ("_gmlp_conv_fwd_kernel", "fwd", False),
                 "_gmlp_conv_bwd_kernel": ("_gmlp_conv_bwd_kernel", "bwd", True),
                 "_gmlp_conv_bwd_kernel[no z]": ("_gmlp_conv_bwd_kernel", "bwd", True, {"NEED_Z": False}),
                 "_gmlp_head_bwd_kernel": ("_gmlp_head_bwd_kernel", "head_bwd", False),
                 "_gmlp_head_bwd_kernel[no x]": ("_gmlp_head_bwd_kernel", "head_bwd", False, {"NEED_X": False}),
                 "_gmlp_head_bwd_kernel[no x, env]": ("_gmlp_head_bwd_kernel", "head_bwd", False,
                                                      {"NEED_X": False, "NEED_ENV": False}),
                 "_gmlp_grad_h_kernel": ("_gmlp_grad_h_kernel", "grad_h", False),
                 "_gmlp_rows_kernel": ("_gmlp_rows_kernel", "fwd", False),
                 "_gmlp_rows_kernel[saved]": ("_gmlp_rows_kernel", "fwd", True),
                 "_gmlp_pool_fwd_kernel": ("_gmlp_pool_fwd_kernel", "pool", False),
                 "_gmlp_pool_bwd_kernel": ("_gmlp_pool_bwd_kernel", "pool_bwd", False),
                 "_gmlp_pool_bwd_kernel[no x]": ("_gmlp_pool_bwd_kernel", "pool_bwd", False, {"NEED_X": False}),
                 "_gmlp_pool_bwd_kernel[no x, env]": ("_gmlp_pool_bwd_kernel", "pool_bwd", False,
                                                      {"NEED_X": False, "NEED_ENV": False})}
#: their size constexprs at the standard workload's two widths (K0 = 9 ≤ K0P, DIN = 64): the anchors'
#: (hidden_channels=5, H + 1 = 61 ≤ IN_K = P/2) and the default (hidden_channels=16, H + 1 = 193: IN_K = P);
#: PU and HU (the layers' non-padding columns and rows) follow from the hidden width (``fused_constexprs``)
FUSED_WIDTHS = {"anchor": {"L": 2, "P": 128, "NB": 16, "NG": 16, "DOUT_P": 64, "NORM": True, "IN_K": 64, "K0P": 16,
                           "DIN_P": 64, "hidden": 60},
                "default": {"L": 2, "P": 256, "NB": 16, "NG": 64, "DOUT_P": 64, "NORM": True, "IN_K": 256,
                            "K0P": 16, "DIN_P": 64, "hidden": 192}}


@dataclass
class Row:
    kernel: str
    config: str
    precision: str
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    shared_bytes: int | None = None
    error: str | None = None


def _jit_function(obj):
    import triton

    while not isinstance(obj, triton.runtime.jit.JITFunction):
        obj = obj.fn
    return obj


def _signature(fn, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i64" if name in INDEX_POINTERS else "*u8" if name in MASK_POINTERS else "*fp32"
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


SPECIALIZATION = "pointers 16-byte aligned (tt.divisibility = 16), integers unspecialized"


def _aligned(fn, signature: dict) -> dict:
    """The specialization a launch gets from Triton's JIT for torch tensors: every pointer argument 16-byte aligned
    (``tt.divisibility``; torch allocates at ≥ 256 B, and the launchers pass whole tensors or row slices at multiples
    of 16 rows).  Without it loads and stores do not vectorise, and every element keeps its own 64-bit address:
    ptxas then reports more registers and spills than a launch has.  Integer arguments stay unspecialized (a
    launch's E is divisible by 16 or not)."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, ty in signature.items()
            if ty.startswith("*")}


def _default_config(value, precision: str) -> dict:
    if "default" in value:
        return dict(value.get(precision, value["default"]))
    return dict(value)


def _ptxas(ptx: str) -> tuple[int, int, int]:
    """:func:`ptxas_resources` of ``ptx`` assembled for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        res = subprocess.run(["ptxas", "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    return ptxas_resources(res.stderr)


def ptxas_resources(report: str) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v``'s report of one kernel: the entry
    function's registers, the spills summed over it and the functions it calls (``noinline`` Triton functions
    are PTX functions, each reported apart)."""
    regs = max(int(r) for r in re.findall(r"Used (\d+) registers", report))
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return regs, sum(int(st) for st, _ in spills), sum(int(ld) for _, ld in spills)


def compile_row(fn, name: str, config: dict, precision: str, sizes: dict | None = None,
                flags: dict | None = None) -> Row:
    """Compile one configuration of ``fn`` for sm_90a and read its resources (``sizes``: the size
    constexprs, default DIN_P = DOUT_P = 64; its flags as in FLAGS_TRUE, but those in ``flags``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastik.triton_kernels._config import config_key

    meta = {k: v for k, v in config.items() if k not in ("num_warps", "num_stages")}
    label = config_key(config, precision).split("|")[0]
    constexprs = {**meta, **(sizes or {"DIN_P": 64, "DOUT_P": 64}), "PRECISION": precision,
                  **{k: v for k, v in FLAGS_TRUE.items() if k in fn.arg_names}, **(flags or {})}
    row = Row(name, label, precision)
    try:
        signature = _signature(fn, constexprs)
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=_aligned(fn, signature))
        options = {"num_warps": config.get("num_warps", 4), "num_stages": config.get("num_stages", 2)}
        compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        row.registers, row.spill_stores, row.spill_loads = _ptxas(compiled.asm["ptx"])
        row.shared_bytes = int(compiled.metadata.shared)
    except Exception as exc:  # one failing configuration is a result, not a crash
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}"
    return row


def rows(all_configs: bool, only: list[str] | None = None) -> list[Row]:
    """Every kernel (or those named in ``only``) × (GPU default [+ autotune] configurations) × precision."""
    out = []
    for module, kernel, configs_fn, default_name in KERNELS:
        if only and kernel not in only:
            continue
        mod = importlib.import_module(f"fastik.triton_kernels.{module}")
        fn = _jit_function(getattr(mod, kernel))
        for precision in PRECISIONS:
            configs = [_default_config(getattr(mod, default_name), precision)]
            if all_configs:
                configs += [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
                            for c in getattr(mod, configs_fn)()]
            seen = []
            for cfg in configs:
                if cfg not in seen:
                    seen.append(cfg)
                    out.append(compile_row(fn, kernel, cfg, precision))
    return out


def fused_constexprs(width: str) -> dict:
    """The size constexprs of the fused kernels at ``width`` (a key of FUSED_WIDTHS), as the op computes them: the
    table's, PU, HU, SW and SV (the saved rows' width, for the kernels that save or read them)."""
    from fastik.triton_kernels import gmlp_conv as g

    s = FUSED_WIDTHS[width]
    pu = g.output_columns(s["P"], s["hidden"], s["NG"])
    return {**s, "PU": pu, "HU": g.input_columns(s["IN_K"], s["hidden"]),
            "SW": g.scratch_width(s["P"], s["IN_K"], s["K0P"], s["L"]),
            "SV": g.saved_width(pu, s["NB"], s["NG"], s["IN_K"], s["L"])}


def fused_rows(widths: list[str], precisions: tuple[str, ...] = PRECISIONS) -> list[Row]:
    """The fully fused kernels at their GPU configuration, at each of ``widths`` (keys of FUSED_WIDTHS); the
    width is the first field of each row's config."""
    from fastik.triton_kernels import gmlp_conv as g

    out = []
    for width in widths:
        sizes = fused_constexprs(width)
        for label, (kernel, name, saved, *flags) in FUSED_KERNELS.items():
            fn = _jit_function(getattr(g, kernel))
            constexprs = {**sizes, "SV": sizes["SV"] if saved else 0}
            constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
            for precision in precisions:
                config = g.launch_config(name, sizes["IN_K"], din=sizes["DIN_P"])
                row = compile_row(fn, label, config, precision, constexprs, *flags)
                row.config = f"P={sizes['P']},IN_K={sizes['IN_K']},{row.config}"
                out.append(row)
    return out


def spill_table(result: list[Row]) -> dict[str, list[str]]:
    """{kernel: sorted ``config|precision`` keys that spill or fail to compile} (the autotune prune's table)."""
    out: dict[str, set[str]] = {}
    for r in result:
        if r.error or r.spill_stores:
            out.setdefault(r.kernel, set()).add(f"{r.config}|{r.precision}")
    return {k: sorted(v) for k, v in sorted(out.items())}


def markdown(result: list[Row], triton_version: str) -> str:
    lines = [f"sm_90a, Triton {triton_version}, DIN = DOUT = 64 (ptxas -v; first row per kernel and precision: "
             "the GPU default configuration)", "",
             "| kernel | config | precision | registers | spill st / ld (B) | shared (B) |",
             "|---|---|---|---|---|---|"]
    for r in result:
        if r.error:
            lines.append(f"| {r.kernel} | {r.config} | {r.precision} | **error** | {r.error} | |")
        else:
            lines.append(f"| {r.kernel} | {r.config} | {r.precision} | {r.registers} | "
                         f"{r.spill_stores} / {r.spill_loads} | {r.shared_bytes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)  # compile for real (before triton is imported), not for the interpreter
    p = argparse.ArgumentParser(prog="python -m bench.aot", description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="every autotune configuration, not only the GPU defaults")
    p.add_argument("--json", help="also write the rows as JSON to this path")
    p.add_argument("--kernels", help="comma-separated kernel names (default: all), e.g. _message_fwd_kernel")
    p.add_argument("--fused", action="store_true",
                   help="only the fully fused kernels, every precision (minutes per compile)")
    p.add_argument("--width", choices=[*FUSED_WIDTHS, "both"], default="both",
                   help="with --fused: the anchors' width (P = 128), the default width (P = 256) or both")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help="with --fused: comma-separated precisions (default: all; ieee at P = 256 takes ≈ 15 min)")
    p.add_argument("--spill-table", help="with --all: merge this Triton version's spilling configurations into "
                   "this JSON file (fastik/triton_kernels/spills_sm90a.json is the one the autotune prune reads)")
    args = p.parse_args(argv)
    if args.spill_table and (not args.all or args.fused or args.kernels):
        p.error("--spill-table needs --all over every kernel")
    import triton

    t0 = time.perf_counter()
    widths = list(FUSED_WIDTHS) if args.width == "both" else [args.width]
    if args.fused:
        result = fused_rows(widths, tuple(args.precisions.split(",")))
    else:
        result = rows(args.all, args.kernels.split(",") if args.kernels else None)
    print(markdown(result, triton.__version__))
    print(f"\n{len(result)} compiles in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.spill_table:
        path = Path(args.spill_table)
        table = json.loads(path.read_text()) if path.exists() else {}
        table[".".join(triton.__version__.split(".")[:2])] = spill_table(result)
        path.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "target": "sm_90a", "specialization": SPECIALIZATION,
                       "rows": [asdict(r) for r in result]}, f, indent=1)
    return 1 if any(r.error for r in result) else 0


if __name__ == "__main__":
    sys.exit(main())
