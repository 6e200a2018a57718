"""The implementations compared by the harness, by name (``--impls``)."""
from __future__ import annotations

from .base import PASSES, Impl, Unavailable, make_step
from .e3nn_tfn import E3nnTFN
from .escnn_implicit import EscnnImplicit
from .escnn_pointconv import EscnnPointConv
from .fastik_impl import (FastikFused, FastikFusedCSR, FastikFusedH64, FastikReference, FastikReferenceH64,
                          FastikTriton, FastikTritonCSR)
from .materialize import Materialize, MaterializeCompiled

__all__ = ["IMPLS", "DEFAULT_IMPLS", "get_impl", "Impl", "Unavailable", "make_step", "PASSES"]

IMPLS: dict[str, Impl] = {impl.name: impl for impl in (
    FastikReference(), FastikReferenceH64(), FastikTriton(), FastikTritonCSR(), FastikFused(), FastikFusedCSR(),
    FastikFusedH64(),
    EscnnImplicit(), EscnnPointConv(), E3nnTFN(), Materialize(),
    MaterializeCompiled(),
)}
DEFAULT_IMPLS = tuple(name for name, impl in IMPLS.items() if impl.default)


def get_impl(name: str) -> Impl:
    try:
        return IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown implementation {name!r}; choose from {', '.join(IMPLS)}") from None
