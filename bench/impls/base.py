"""What an implementation provides, and the benchmark step built from it."""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch
from torch import nn

from ..workload import Graph, LayerSpec

__all__ = ["Impl", "Unavailable", "make_step", "missing_modules", "PASSES"]

PASSES = ("fwd+bwd", "fwd")


class Unavailable(Exception):
    """Raised by :meth:`Impl.build` when the implementation cannot run here; the message is the reason."""


def missing_modules(*names: str) -> list[str]:
    """The modules of ``names`` that cannot be found (without importing them)."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


class Impl:
    """One implementation of the benchmark layer.

    Subclasses set ``name`` and ``summary`` and implement :meth:`build`, which
    returns an ``nn.Module`` called as ``layer(x, pos, edge_index) -> (N, D)``
    (everything per edge, the edge vectors included, is computed inside the call).
    :meth:`check` gives the reason the implementation cannot run for ``spec``
    (missing dependency, unsupported group or device) without building anything.
    """

    name: str = ""
    summary: str = ""
    #: the layer does not depend on the group (runs once, for the first group of a run)
    group_agnostic: bool = False
    #: fastik group names the implementation supports (None: every group)
    groups: tuple[str, ...] | None = None
    #: dependencies checked by the default :meth:`check`
    requires: tuple[str, ...] = ()
    #: part of the default ``--impls`` selection
    default: bool = True
    #: matmul precision modes (LayerSpec.precision) the layer honours; () = fp32 as torch is set (TF32 off)
    precisions: tuple[str, ...] = ()
    #: a fixed G-MLP width (hidden_channels) the layer uses whatever LayerSpec says; None: LayerSpec's
    hidden_channels: int | None = None

    def check(self, spec: LayerSpec) -> str | None:
        missing = missing_modules(*self.requires)
        if missing:
            return f"{', '.join(missing)} not installed"
        if spec.precision != "ieee" and spec.precision not in self.precisions:
            return f"no precision={spec.precision!r} mode (runs fp32, TF32 off)"
        if self.groups is not None and spec.group.lower() not in {g.lower() for g in self.groups}:
            return f"group {spec.group} not supported (supports {', '.join(self.groups)})"
        return None

    def build(self, spec: LayerSpec) -> nn.Module:
        raise NotImplementedError

    def estimate_step_bytes(self, spec: LayerSpec, edges: int, training: bool) -> int | None:
        """A rough upper estimate of a step's memory (None: unknown); used to skip rows that cannot fit."""
        return None


def make_step(layer: nn.Module, graph: Graph, training: bool) -> Callable[[], None]:
    """The timed call: inference forward (eval mode, no autograd), or a training step (train mode,
    forward + backward of ``sum(out²)`` to the input features and every parameter; gradients reset
    to None before each call so they are not accumulated)."""
    if not training:
        layer.eval()

        def forward() -> None:
            with torch.no_grad():
                layer(graph.x, graph.pos, graph.edge_index)

        return forward

    layer.train()
    x = graph.x.detach().requires_grad_(True)
    params = [p for p in layer.parameters() if p.requires_grad]

    def forward_backward() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        out = layer(x, graph.pos, graph.edge_index)
        out.square().sum().backward()

    return forward_backward
