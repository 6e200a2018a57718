"""Backends of the implicit message passing operation and message aggregation."""
from . import dispatch
from .reference import implicit_message_passing_reference

__all__ = ["dispatch", "implicit_message_passing_reference"]
