"""Float64 constants that follow ``.to(device)`` but not ``.to(dtype)``.

Intertwiner bases are exact float64 matrices; a module converted with
``.double()`` after being built in float32 must still see them at full
precision.  They are stored as int64 views of their float64 bits (so ``.to``
moves them between devices without casting) and not saved in ``state_dict``
(they are derived from the group, not learned).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def register_constant(module: nn.Module, name: str, value: Tensor) -> None:
    module.register_buffer(name, value.to(torch.float64).contiguous().view(torch.int64), persistent=False)


def constant(module: nn.Module, name: str, dtype: torch.dtype) -> Tensor:
    return getattr(module, name).view(torch.float64).to(dtype)
