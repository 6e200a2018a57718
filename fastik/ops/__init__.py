"""Backends of the implicit message passing operation and message aggregation."""
from . import aggregate, dispatch
from .aggregate import CSR, aggregate as aggregate_messages, build_csr, has_extension, scatter_sum, segment_sum
from .reference import implicit_message_passing_reference

__all__ = ["aggregate", "dispatch", "CSR", "aggregate_messages", "build_csr", "has_extension", "scatter_sum",
           "segment_sum", "implicit_message_passing_reference"]
