"""Backends of the implicit message passing operation, structured weights and message aggregation."""
from . import aggregate, dispatch, structured
from .aggregate import CSR, aggregate as aggregate_messages, build_csr, csr_rowptr, has_extension, scatter_sum, segment_sum
from .dispatch import implicit_conv
from .fused_gmlp import PackedGMLP, fused_gmlp_conv
from .reference import implicit_message_passing_reference
from .structured import StructuredHead, StructuredLinear

__all__ = ["aggregate", "dispatch", "structured", "CSR", "aggregate_messages", "build_csr", "csr_rowptr",
           "has_extension", "scatter_sum", "segment_sum", "implicit_conv", "fused_gmlp_conv", "PackedGMLP",
           "implicit_message_passing_reference",
           "StructuredHead", "StructuredLinear"]
