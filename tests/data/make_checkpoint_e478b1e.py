"""Writes checkpoint_e478b1e.pt: small ImplicitPointConv layers saved by fastik at commit e478b1e.

Run once from a checkout of that commit (``PYTHONPATH=<checkout> python make_checkpoint_e478b1e.py``);
tests/test_checkpoint_compat.py loads the file with the current code and checks that every layer
reproduces the stored float64 output.  Configs cover hidden fields and harmonics of degree ≥ 2
(their basis conventions are what a later release could change) on 3D and 2D groups.
"""
from __future__ import annotations

import os
import sys

import torch

import fastik

CONFIGS = {
    "so3": dict(group="so3", dim=3, fields="2x0e + 2x1o", edge_attr=None, node_attr=None),
    "o3": dict(group="o3", dim=3, fields="1x0e + 1x1o + 1x2e", edge_attr="1x0e", node_attr=None),
    "O": dict(group="O", dim=3, fields="2x0e + 1x1o", edge_attr=None, node_attr="1x0e + 1x1o"),
    "Cinf": dict(group="Cinf", dim=3, fields="1x0e + 1x1o + 1x2e", edge_attr=None, node_attr=None),
    "D4": dict(group="D4", dim=2, fields="2x0 + 1x1 + 1x2", edge_attr=None, node_attr=None),
}


def build(cfg: dict) -> fastik.ImplicitPointConv:
    G = fastik.group(cfg["group"], dim=cfg["dim"])
    ft = fastik.FieldType(G, cfg["fields"])
    ea = fastik.FieldType(G, cfg["edge_attr"]) if cfg["edge_attr"] else None
    na = fastik.FieldType(G, cfg["node_attr"]) if cfg["node_attr"] else None
    return fastik.ImplicitPointConv(ft, ft, edge_attr_type=ea, node_attr_type=na, hidden_channels=3,
                                    backend="reference").double()


def main(path: str) -> None:
    out = {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        conv = build(cfg)
        for p in conv.parameters():  # move away from the initial values (zero biases, unit scales)
            p.data.add_(0.1 * torch.randn_like(p))
        n, e = 12, 60
        g = torch.Generator().manual_seed(1)
        pos = torch.randn(n, cfg["dim"], generator=g, dtype=torch.float64)
        x = torch.randn(n, conv.in_type.dim, generator=g, dtype=torch.float64)
        ei = torch.randint(0, n, (2, e), generator=g)
        kw = {}
        if conv.edge_attr_type is not None:
            kw["edge_attr"] = torch.randn(e, conv.edge_attr_type.dim, generator=g, dtype=torch.float64)
        if conv.node_attr_type is not None:
            kw["node_attr"] = torch.randn(n, conv.node_attr_type.dim, generator=g, dtype=torch.float64)
        with torch.no_grad():
            y = conv(x, pos, ei, **kw)
        out[name] = {"config": cfg, "state_dict": conv.state_dict(),
                     "inputs": {"x": x, "pos": pos, "edge_index": ei, **kw}, "output": y}
    tmp = path + ".tmp"
    torch.save(out, tmp)
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "checkpoint_e478b1e.pt"))
