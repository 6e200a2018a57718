"""An ImplicitKernel's G-MLP as the padded dense tensors of the fully fused op (:class:`PackedGMLP`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.fused_gmlp import PackedGMLP
from ._buffers import constant
from .linear import EquivariantLinear
from .nonlinearities import _SILU_SCALE, GatedNonlinearity
from .norm import EquivariantNorm

__all__ = ["PackedGMLP", "pack_gmlp", "fusable"]


def _pow2(n: int, least: int = 16) -> int:
    """Smallest power of two ≥ max(n, least)."""
    return max(least, 1 << max(int(n) - 1, 0).bit_length())


def _layers(mlp: nn.Sequential) -> list[tuple[EquivariantLinear, EquivariantNorm | None, GatedNonlinearity]]:
    mods, out = list(mlp), []
    while mods:
        lin = mods.pop(0)
        norm = mods.pop(0) if isinstance(mods[0], EquivariantNorm) else None
        out.append((lin, norm, mods.pop(0)))
    return out


def fusable(kernel: nn.Module) -> bool:
    """True when every hidden nonlinearity of ``kernel`` (an ImplicitKernel) is a gate (Fourier-ELU is not fused)."""
    return all(isinstance(m, (EquivariantLinear, EquivariantNorm, GatedNonlinearity)) for m in kernel.mlp)


def _structure(kernel: nn.Module, size: int, nb: int, ng: int) -> dict[str, Tensor]:
    """The constant matrices (float64, CPU) of every layer, zero-padded: mean, avg, expand (the norm's own
    block matrices), gate_pick (input column out_dim + k -> gate k), gate_expand (the gate's spread) and
    trivial (the SiLU scale on scalar components)."""
    layers = max(len(_layers(kernel.mlp)), 1)
    shapes = {"mean": (size, nb), "avg": (size, nb), "expand": (nb, size), "gate_pick": (size, ng),
              "gate_expand": (ng, size), "trivial": (size,)}
    t = {k: torch.zeros(layers, *shape, dtype=torch.float64) for k, shape in shapes.items()}
    for l, (_, norm, gate) in enumerate(_layers(kernel.mlp)):
        if norm is not None:
            for key, m in zip(("mean", "avg", "expand"), norm.block_matrices(torch.float64)):
                t[key][l, :m.shape[0], :m.shape[1]] = m.cpu()
        spread = constant(gate, "gate_spread", torch.float64).cpu()  # (gates, out_dim)
        gates, dim = spread.shape
        t["gate_expand"][l, :gates, :dim] = spread
        t["gate_pick"][l, dim + torch.arange(gates), torch.arange(gates)] = 1.0
        t["trivial"][l, :dim] = gate._trivial.cpu().double() * _SILU_SCALE
    return t


def _sizes(kernel: nn.Module) -> tuple[int, int, int]:
    """P (widest activation, h̃ included), NB (most norm blocks), NG (most gates): powers of two, ≥ 16 (tl.dot's
    least size), P ≥ 32 (the kernels split (P × P) dots into halves)."""
    layers = _layers(kernel.mlp)
    widths = [kernel.input_type.dim, kernel.hidden_type.dim + 1] + [lin.out_type.dim for lin, _, _ in layers]
    blocks = [len(lin.out_type.blocks) for lin, _, _ in layers]
    gates = [gate.in_type.dim - gate.out_type.dim for _, _, gate in layers]
    return _pow2(max(widths), 32), _pow2(max(blocks, default=1)), _pow2(max(gates, default=1))


def _constants(kernel: nn.Module, dtype: torch.dtype, device: torch.device) -> dict:
    """What packing needs besides the parameters, built once per dtype and device: the sizes (P, NB, NG), the
    layers and the structure matrices."""
    cache = kernel.__dict__.setdefault("_packed_structure", {})
    key = (dtype, device)
    if key not in cache:
        size, nb, ng = _sizes(kernel)
        layers = _layers(kernel.mlp)
        cache[key] = {"sizes": (size, nb, ng), "layers": layers,
                      **{k: v.to(device, dtype) for k, v in _structure(kernel, size, nb, ng).items()},
                      **{k: v.to(device, dtype) for k, v in _supports(kernel, layers, size).items()}}
    return cache[key]


def _supports(kernel: nn.Module, layers: list, size: int) -> dict[str, Tensor]:
    """Where the packed weight and head can be non-zero (1.0) — the blocks' supports in the packed layouts."""
    weights = [_packed_weight(lin.structured(torch.float64).support().double(), size) for lin, _, _ in layers]
    return {"weight_support": torch.stack(weights) if weights else torch.zeros(1, size, size, dtype=torch.float64),
            "head_support": _packed_head(kernel.head.structured(torch.float64).support().double(), size)}


def _packed_weight(w: Tensor, size: int) -> Tensor:
    """A layer's (out, in) matrix in the packed layout: (P, P), transposed, zero-padded."""
    return F.pad(w.T, (0, size - w.shape[0], 0, size - w.shape[1]))


def _packed_head(head: Tensor, size: int) -> Tensor:
    """W̃ (Dout, H+1, Din) in the packed layout: (Din, P, DOUT_P), zero-padded."""
    dout = head.shape[0]
    return F.pad(head.permute(2, 1, 0), (0, _pow2(dout, 32) - dout, 0, size - head.shape[1]))


def pack_gmlp(kernel: nn.Module, dtype: torch.dtype) -> PackedGMLP:
    """``kernel`` (an :class:`~fastik.nn.ImplicitKernel` with gate nonlinearities) packed for the fused op.

    Differentiable: gradients of the packed weight / bias / scale / shift / head flow back to the
    kernel's parameters.  Everything else is built once per dtype and device (:func:`_constants`).
    """
    if not fusable(kernel):
        raise ValueError("only G-MLPs with gate nonlinearities can be packed for the fused op "
                         f"(this one has nonlinearity={kernel.nonlinearity!r}); use backend='triton' or 'reference'")
    head = kernel.head.weight(dtype)  # (Dout, H+1, Din)
    const = _constants(kernel, dtype, head.device)
    size = const["sizes"][0]
    weights, biases, scales, shifts = [], [], [], []
    for lin, norm, _ in const["layers"]:
        w = lin.weight(dtype)  # (out, in)
        weights.append(_packed_weight(w, size))
        b = lin.bias.bias(dtype) if lin.bias is not None else w.new_zeros(w.shape[0])
        biases.append(F.pad(b, (0, size - b.shape[0])))
        if norm is None:
            scales.append(head.new_ones(size))
            shifts.append(head.new_zeros(size))
        else:
            scale, shift = norm.affine(dtype)
            scales.append(F.pad(scale, (0, size - scale.shape[0]), value=1.0))
            shifts.append(F.pad(shift, (0, size - shift.shape[0])))
    if not weights:
        weights, biases = [head.new_zeros(size, size)], [head.new_zeros(size)]
        scales, shifts = [head.new_ones(size)], [head.new_zeros(size)]
    dout = head.shape[0]
    norms = [norm for _, norm, _ in const["layers"] if norm is not None]
    return PackedGMLP(torch.stack(weights), torch.stack(biases), torch.stack(scales), torch.stack(shifts),
                      const["mean"], const["avg"], const["expand"], const["gate_pick"], const["gate_expand"],
                      const["trivial"], _packed_head(head, size), const["weight_support"], const["head_support"], dout,
                      kernel.hidden_type.dim, len(const["layers"]), bool(norms),
                      norms[0].eps if norms else 0.0)
