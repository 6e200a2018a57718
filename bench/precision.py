"""A model of the fused kernels' precision modes on the CPU: their dots' input roundings, emulated.

    python -m bench.precision                    # standard workload, both widths, E ≈ 3 000
    python -m bench.precision --edges 10000 --json out.json

On the GPU, ``input_precision="tf32"`` rounds both operands of a tensor-core dot to TF32 (10 mantissa bits)
and accumulates in fp32; ``"tf32x3"`` splits each operand into a TF32 head and a TF32 tail and adds three
such products (a·b ≈ a_hi·b_hi + a_hi·b_lo + a_lo·b_hi); ``"ieee"`` is fp32. This script runs the fused
op's torch statement (:func:`fastik.ops.fused_gmlp.packed_conv_reference`) in fp32 with those roundings on
the dots' operands — TF32 for the layers and the head in "tf32" mode, tf32x3 for the norm and gate structure
(as the kernels split them) — and reports each mode's error against float64 on the standard workload. It is
a model (CPU fp32 accumulation order, rounding of h̃ rather than of h̃·x_c), not a GPU measurement: stage b
of ``bench/gpu_check.sh`` measures the kernels themselves.

Both heads of the fused op are modelled: edge-wise (the head's dot on h̃, per edge: ``packed_conv_reference``)
and pooled (mean in-degree ≥ 4, the standard workload's path: per target P = Σ_e (env·x[src]) ⊗ h1 — a dot with
rounded operands x·env and h1 — then P's dot with the head — rounded P and head: :func:`pooled_conv`).
"""
from __future__ import annotations

import json
import sys
from typing import Callable

import torch
from torch import Tensor

__all__ = ["round_tf32", "tf32_mm", "tf32x3_mm", "MODES", "HEADS", "pooled_conv", "mode_errors"]


def round_tf32(a: Tensor) -> Tensor:
    """fp32 → the nearest TF32 value (10 mantissa bits, ties to even), still stored as fp32."""
    bits = a.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & -0x2000
    return bits.view(torch.float32)


def tf32_mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with both operands rounded to TF32, fp32 accumulation."""
    return round_tf32(a) @ round_tf32(b)


def tf32x3_mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b as three TF32 products: heads × heads + (heads × tails + tails × heads)."""
    ah, bh = round_tf32(a), round_tf32(b)
    al, bl = round_tf32(a - ah), round_tf32(b - bh)
    return ah @ bh + (ah @ bl + al @ bh)


#: mode → (product of the layers and the head, product of the norm / gate structure), as in the kernels
MODES: dict[str, tuple[Callable, Callable]] = {"ieee": (torch.matmul, torch.matmul), "tf32x3": (tf32x3_mm, tf32x3_mm),
                                               "tf32": (tf32_mm, tf32x3_mm)}


def pooled_conv(z: Tensor, env: Tensor, x: Tensor, packed, src: Tensor, tgt: Tensor, num_targets: int,
                mm: Callable = torch.matmul, structure_mm: Callable = torch.matmul) -> Tensor:
    """The pooled head's statement of the fused op (num_targets, dout), with its dots' products: the edges grouped
    by target, :func:`fastik.ops.fused_gmlp.packed_conv_pooled` — per target P_i = mm(h1ᵀ, env·x[src]) over its
    edges (P × Din), then mm(P (N, P·Din), HEAD (P·Din, dout)) — the same function as ``packed_conv_reference``,
    summed in the pooled kernels' order."""
    from fastik.ops.fused_gmlp import packed_conv_pooled
    from fastik.ops.pooled import group_by_degree

    plan = group_by_degree(tgt)
    targets, runs = plan.chunk(0, tgt.shape[0])
    o = plan.order
    y = packed_conv_pooled(z[o], env[o], x, packed, src[o], runs, mm, structure_mm)
    return y.new_zeros(num_targets, y.shape[1]).index_copy(0, targets, y)


#: the fused op's two heads: per edge (``packed_conv_reference``) and per target on pooled features (``pooled_conv``)
HEADS = ("edge-wise", "pooled")


def mode_errors(edges: int, hidden_channels: int, seed: int = 0, head: str = "edge-wise") -> dict[str, float]:
    """max |y_mode − y_float64| / max |y_float64| of one so3 standard-workload layer per precision mode, with the
    head of ``HEADS``."""
    import fastik
    from fastik.nn.packing import pack_gmlp
    from fastik.ops.fused_gmlp import packed_conv_reference

    from .workload import make_graph

    torch.manual_seed(seed)
    ft = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=hidden_channels).double()
    g = make_graph(edges, ft.dim, dtype=torch.float64, seed=seed)
    src, tgt = g.edge_index
    with torch.no_grad():
        r = g.pos[src] - g.pos[tgt]
        z, env = conv.kernel.embed(r), conv.kernel.envelope(r) * conv.scale
        packed64 = pack_gmlp(conv.kernel, torch.float64)
        y64 = packed_conv_reference(z, env, g.x, packed64, src, tgt, g.num_nodes)
        packed32 = pack_gmlp(conv.kernel, torch.float32)
        out = {}
        conv32 = {"edge-wise": packed_conv_reference, "pooled": pooled_conv}[head]
        for mode, (mm, structure_mm) in MODES.items():
            y = conv32(z.float(), env.float(), g.x.float(), packed32, src, tgt, g.num_nodes, mm, structure_mm)
            out[mode] = ((y.double() - y64).abs().max() / y64.abs().max()).item()
    return out


def main(argv: list[str] | None = None) -> int:
    from .workload import at_least, cpu_model_parser

    p = cpu_model_parser("python -m bench.precision", __doc__)
    p.add_argument("--seeds", type=at_least(1), default=3, help="seeds 0, …, SEEDS - 1 (≥ 1)")
    args = p.parse_args(argv)
    rows = [{"hidden_channels": int(w), "seed": s, "head": head, **mode_errors(args.edges, int(w), s, head)}
            for w in args.widths.split(",") for s in range(args.seeds) for head in HEADS]
    print(f"relative max error vs float64, so3 standard workload, E ≈ {args.edges} (emulated roundings, CPU)\n")
    print("| hidden_channels | seed | head | " + " | ".join(MODES) + " |\n|---|---|---|" + "---|" * len(MODES))
    for r in rows:
        print(f"| {r['hidden_channels']} | {r['seed']} | {r['head']} | " + " | ".join(f"{r[m]:.2e}" for m in MODES)
              + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"edges": args.edges, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
