"""The fused op's second derivatives (forces in the loss) on the CPU: its two torch statements, timed.

    python -m bench.second_order                  # standard workload, both widths, E ≈ 3 000, float32
    python -m bench.second_order --edges 10000 --json out.json
    python -m bench.second_order --degree 2       # where the double backward keeps the per-edge statement
    python -m bench.second_order --degree 2 --random   # targets drawn at random: mean in-degree 2

The fused op's double backward differentiates a torch statement of the op twice, chunk by chunk of edges:
per edge (:func:`fastik.ops.fused_gmlp.packed_conv_reference`, per-edge kernel matrices) or, where the fused
head pools (mean in-degree ≥ 4), per target on pooled features (:func:`~fastik.ops.fused_gmlp.packed_conv_pooled`).
This times one vector-Jacobian product of every first derivative (z, env, x, the packed parameters; grad_out
differentiable too) through each statement on the whole graph (every target of in-degree ``--degree``, 16 by
default, or with ``--random`` targets drawn uniformly, of that mean in-degree; edges grouped by target as the double
backward groups them, the grouping itself not timed) and reports the best of ``--repeats`` and the two results'
relative difference.
"""
from __future__ import annotations

import json
import sys
import time

import torch

__all__ = ["second_order_times"]


def second_order_times(edges: int, hidden_channels: int, repeats: int = 3, seed: int = 0, degree: int = 16,
                       random: bool = False) -> dict[str, float]:
    """Seconds of one second-order vector-Jacobian product through each statement ("edge-wise", "pooled"),
    so3 ``16x0e + 16x1o``, every target of in-degree ``degree`` (``random``: each edge's target drawn uniformly,
    mean in-degree ``degree``), float32, and their results' largest relative difference ("diff")."""
    import fastik
    from fastik.nn.packing import pack_gmlp
    from fastik.ops.fused_gmlp import TRAINED, packed_conv_pooled, packed_conv_reference
    from fastik.ops.pooled import group_by_degree

    g = torch.Generator().manual_seed(seed)
    ft = fastik.FieldType(fastik.group("so3"), "16x0e + 16x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=hidden_channels, backend="fused")
    p = pack_gmlp(conv.kernel, torch.float32)
    n = max(1, edges // degree)
    tgt = torch.randint(0, n, (n * degree,), generator=g).sort().values if random else \
        torch.arange(n).repeat_interleave(degree)
    src = torch.randint(0, n, (tgt.shape[0],), generator=g)
    r = torch.randn(tgt.shape[0], 3, generator=g)
    z = conv.kernel.embed(r, None, None, None).detach().requires_grad_()
    env = torch.rand(tgt.shape[0], generator=g).requires_grad_()
    x, gy = (torch.randn(n, ft.dim, generator=g).requires_grad_() for _ in range(2))
    params = [getattr(p, k).detach().requires_grad_() for k in TRAINED]
    q = p._replace(**dict(zip(TRAINED, params)))
    wrt = [z, env, x, *params]
    cots = [torch.randn(v.shape, generator=g) for v in wrt]
    plan = group_by_degree(tgt)
    targets, runs = plan.chunk(0, tgt.shape[0])
    o = plan.order
    statements = {"edge-wise": lambda: (packed_conv_reference(z, env, x, q, src, tgt, n), gy),
                  "pooled": lambda: (packed_conv_pooled(z[o], env[o], x, q, src[o], runs), gy[targets])}
    out, results = {}, {}
    for name, statement in statements.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            y, cot = statement()
            firsts = torch.autograd.grad(y, wrt, cot, create_graph=True)
            results[name] = torch.autograd.grad(sum((f * c).sum() for f, c in zip(firsts, cots)), [gy, *wrt])
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    out["diff"] = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                      for a, b in zip(results["pooled"], results["edge-wise"]))
    return out


def main(argv: list[str] | None = None) -> int:
    from .workload import at_least, cpu_model_parser

    p = cpu_model_parser("python -m bench.second_order", __doc__, least_edges=16)
    p.add_argument("--repeats", type=at_least(1), default=3, help="timed runs per statement, the best kept (≥ 1)")
    p.add_argument("--degree", type=at_least(1), default=16, help="every target's in-degree (≥ 1; default 16)")
    p.add_argument("--random", action="store_true", help="targets drawn at random: --degree is the mean in-degree")
    args = p.parse_args(argv)
    rows = [{"hidden_channels": int(w), **second_order_times(args.edges, int(w), args.repeats, degree=args.degree,
                                                             random=args.random)}
            for w in args.widths.split(",")]
    e = max(1, args.edges // args.degree) * args.degree
    print(f"second-order VJP through the fused op's torch statements, so3 standard workload, "
          f"{'mean ' if args.random else ''}in-degree {args.degree}, E = {e}, float32, {torch.get_num_threads()} "
          f"threads\n")
    print("| hidden_channels | edge-wise | pooled | speed-up | relative difference |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hidden_channels']} | {r['edge-wise'] * 1e3:.0f} ms | {r['pooled'] * 1e3:.0f} ms | "
              f"{r['edge-wise'] / r['pooled']:.1f}× | {r['diff']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"edges": e, "degree": args.degree, "random": args.random, "threads": torch.get_num_threads(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
