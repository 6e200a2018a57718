"""Command line of the harness: ``python -m bench [options]`` from the repository root.

Examples::

    python -m bench --quick                               # < 2 min on a laptop CPU: smoke test, all outputs
    python -m bench --device cuda                         # the full comparison on a GPU
    python -m bench --device cuda --groups so3 --edges 1e4,1e5,4e5,1e6
    python -m bench --impls fastik-reference,materialize --passes fwd --repeats 10
    python -m bench --list                                # implementations and whether they can run here

Writes ``<out>/<date>-<device>[-<tag>].{json,md,png}`` (default out: bench/results,
tag "quick" with --quick) and prints a line per row while it runs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import signal
import sys
import threading
from pathlib import Path

import torch

from .envinfo import REPO_ROOT, device_slug
from .impls import DEFAULT_IMPLS, IMPLS, PASSES
from .report import markdown, write_json, write_markdown, write_png
from .runner import BenchConfig, run
from .workload import DEFAULT_EDGES, DEFAULT_GROUPS, PRECISIONS, QUICK_EDGES, STANDARD_GROUP, LayerSpec, parse_edges

__all__ = ["main", "parse_args", "config_from_args", "output_stem"]

DEFAULT_OUT = REPO_ROOT / "bench" / "results"
QUICK = dict(groups=[STANDARD_GROUP], edges=list(QUICK_EDGES), repeats=3, warmup=1, row_budget=15.0, budget=75.0)
FULL = dict(groups=list(DEFAULT_GROUPS), edges=list(DEFAULT_EDGES), repeats=5, warmup=2, row_budget=120.0, budget=None)


def _names(text: str, choices, what: str) -> list[str]:
    if text in ("all",):
        return list(choices)
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in choices]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(choices)}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: group {STANDARD_GROUP}, E = {', '.join(map(str, QUICK_EDGES))}, 3 repeats, "
                        f"1 warm-up, {QUICK['budget']:g} s budget (explicit options still win)")
    p.add_argument("--impls", default=None,
                   help=f"comma-separated, or 'all' (default: {','.join(DEFAULT_IMPLS)}; all: {','.join(IMPLS)})")
    p.add_argument("--groups", default=None,
                   help=f"comma-separated fastik group names (default: {','.join(DEFAULT_GROUPS)})")
    p.add_argument("--edges", default=None,
                   help="comma-separated edge counts, e.g. 1e4,1e5 (default: "
                        f"{','.join(f'{e:g}' for e in DEFAULT_EDGES)}; rounded to 16·N)")
    p.add_argument("--passes", default=",".join(PASSES), help=f"comma-separated from {', '.join(PASSES)}")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per row (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls before them (default 2)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every row this many times, the rows of one size interleaved round by round "
                        "(repeats per round; one more warm-up call per later round): drift and bimodal "
                        "timings hit every implementation alike (default 1)")
    p.add_argument("--row-budget", type=float, default=None,
                   help="seconds per row (warm-up + repeats); rows predicted slower are skipped (default 120)")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default: none)")
    p.add_argument("--mem-limit-gib", type=float, default=None,
                   help="skip rows predicted to need more (default: 92%% of the GPU / 70%% of available RAM)")
    p.add_argument("--channels", type=int, default=16, help="fields of (0e + 1o): D = 4·channels (default 16)")
    p.add_argument("--hidden-channels", type=int, default=16, help="G-MLP hidden channels (fastik, escnn-implicit)")
    p.add_argument("--hidden-layers", type=int, default=2, help="G-MLP hidden layers (fastik, escnn-implicit)")
    p.add_argument("--precision", default="ieee", choices=list(PRECISIONS),
                   help="matmul precision of the implementations that have modes (fastik-triton*); others are "
                        "skipped unless ieee (default ieee: fp32)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: bench/results)")
    p.add_argument("--tag", default=None, help="appended to the file names (default: 'quick' with --quick)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--list", action="store_true", help="list the implementations and whether they can run, then exit")
    return p.parse_args(argv)


def resolve_device(text: str) -> str:
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(text)  # validates the spelling
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {text}: torch.cuda.is_available() is False (torch {torch.__version__})")
    return text


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    preset = QUICK if args.quick else FULL
    return BenchConfig(
        impls=_names(args.impls, IMPLS, "implementation") if args.impls else list(DEFAULT_IMPLS),
        groups=[g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else list(preset["groups"]),
        edges=parse_edges(args.edges) if args.edges else list(preset["edges"]),
        passes=_names(args.passes, PASSES, "pass"),
        device=resolve_device(args.device),
        dtype=args.dtype,
        repeats=args.repeats if args.repeats is not None else preset["repeats"],
        warmup=args.warmup if args.warmup is not None else preset["warmup"],
        rounds=args.rounds,
        row_budget_s=args.row_budget if args.row_budget is not None else preset["row_budget"],
        budget_s=args.budget if args.budget is not None else preset["budget"],
        mem_limit_bytes=None if args.mem_limit_gib is None else int(args.mem_limit_gib * 2 ** 30),
        channels=args.channels,
        hidden_channels=args.hidden_channels,
        hidden_layers=args.hidden_layers,
        precision=args.precision,
        seed=args.seed,
        quick=args.quick,
    )


def output_stem(config: BenchConfig, tag: str | None) -> str:
    """``<date>-<device>[-<tag>]``: the UTC date and the card's name (or "cpu")."""
    date = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    stem = f"{date}-{device_slug(torch.device(config.device))}"
    return f"{stem}-{tag}" if tag else stem


def _sigterm_to_interrupt(signum, frame):  # `timeout` and job control stop with SIGTERM: still write the files
    raise KeyboardInterrupt


def _list(device: str) -> int:
    spec = LayerSpec(device=device)
    for name, impl in IMPLS.items():
        reason = impl.check(spec)
        state = "ready" if reason is None else f"unavailable: {reason}"
        default = "" if impl.default else " (not in the default selection)"
        print(f"{name:<22} {state}{default}\n{'':<22} {impl.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            return _list(resolve_device(args.device))
        config = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tag = args.tag if args.tag is not None else ("quick" if args.quick else None)
    stem = args.out / output_stem(config, tag)
    json_path = stem.with_suffix(".json")
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        result = run(config, progress=not args.quiet, checkpoint=lambda partial: write_json(partial, json_path))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    outputs = {"json": str(json_path), "md": str(stem.with_suffix(".md"))}
    if args.no_plot:
        outputs["png"], outputs["png_skipped"] = None, "--no-plot"
    else:
        png, why = write_png(result, stem.with_suffix(".png"))
        outputs["png"], outputs["png_skipped"] = (str(png) if png else None), why
    result["outputs"] = outputs
    write_markdown(result, stem.with_suffix(".md"))
    write_json(result, json_path)
    if not args.quiet:
        print()
        print(markdown(result))
        print("wrote " + ", ".join(v for k, v in outputs.items() if v and k in ("json", "md", "png")))
        if outputs.get("png_skipped") and outputs["png_skipped"] != "--no-plot":
            print(f"PNG skipped: {outputs['png_skipped']}")
    return 0 if any(r["status"] == "ok" for r in result["rows"]) else 1
