"""``fastik`` command line: list groups, check a layer's equivariance, train the paper's studies."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import __version__
from .groups import GROUP_NAMES_2D, GROUP_NAMES_3D, FieldType, group
from .nn import ImplicitPointConv
from .train.cli import add_commands as add_experiment_commands

DEFAULT_FIELDS = {3: "4x0e + 2x1o + 1x2e", 2: "2x0 + 1x0- + 2x1 + 1x2"}
CHECK_GROUPS = [(g, 3) for g in ("so3", "o3", "Cinf", "Cinfv", "Dinfh", "C4", "D6h", "Td", "Th", "Oh", "Ih")] + \
               [(g, 2) for g in ("so2", "o2", "C8", "D4")]


def check(name: str, dim: int, fields: str | None, backend: str, trials: int = 4) -> float:
    """Largest relative equivariance error of a random float64 ImplicitPointConv on a random graph."""
    G = group(name, dim=dim)
    ft = FieldType(G, fields or DEFAULT_FIELDS[dim])
    torch.manual_seed(0)
    conv = ImplicitPointConv(ft, ft, hidden_channels=4, backend=backend).double()
    pos = torch.randn(50, dim, dtype=torch.float64)
    ei = torch.randint(0, 50, (2, 400))
    x = torch.randn(50, ft.dim, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x, pos, ei)
        errs = []
        for g in G.sample(trials, seed=1):
            rho = ft.representation(g)
            errs.append(((conv(x @ rho.T, pos @ g.T, ei) - y @ rho.T).norm() / y.norm()).item())
    return max(errs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastik", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastik {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("groups", help="list the supported point groups")
    c = sub.add_parser("check", help="equivariance check of ImplicitPointConv (float64)")
    c.add_argument("group", nargs="?", help="group name (default: the standard list)")
    c.add_argument("--dim", type=int, default=3)
    c.add_argument("--fields", default=None, help='field type, e.g. "4x0e + 2x1o"')
    c.add_argument("--backend", default="reference")
    add_experiment_commands(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "func"):  # train / sweep / data (fastik.train.cli)
        return args.func(args)
    if args.cmd == "groups":
        print("3D:", ", ".join(GROUP_NAMES_3D))
        print("2D:", ", ".join(GROUP_NAMES_2D))
        return 0
    todo = [(args.group, args.dim)] if args.group else CHECK_GROUPS
    worst = 0.0
    print(f"{'group':>8} {'dim':>3} {'rel. error':>11} {'time':>7}")
    for name, dim in todo:
        t0 = time.perf_counter()
        err = check(name, dim, args.fields, args.backend)
        worst = max(worst, err)
        print(f"{name:>8} {dim:>3} {err:11.2e} {time.perf_counter() - t0:6.2f}s", flush=True)
    ok = worst < 1e-8
    print("equivariant" if ok else "NOT equivariant", f"(worst {worst:.2e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
