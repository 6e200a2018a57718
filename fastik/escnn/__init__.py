"""escnn interop: fastik's implicit point convolution as a drop-in escnn module.

``fastik.escnn.ImplicitPointConv`` takes escnn ``FieldType`` s, is an
``escnn.nn.EquivariantModule`` and is called like escnn's ``R2PointConv`` /
``R3PointConv`` (and like the paper's ``ImplicitPointConv``); recipe and conventions in
``docs/escnn.md``.  One concept per module:

- :mod:`.groups`: escnn gspaces as fastik groups (:func:`convert_gspace`).
- :mod:`.field_types`: escnn field types as fastik field types (:func:`convert_field_type`).
- :mod:`.arguments`: escnn's point-convolution arguments, mapped or refused.
- :mod:`.layer`: the drop-in layer :class:`ImplicitPointConv`.
- :mod:`.replace`: :func:`replace_point_convs` for whole models.

``radius_graph`` / ``knn_graph`` are :mod:`fastik.graphs`' builders (PyG conventions:
no self-loops unless ``loop=True``), re-exported for escnn users.

escnn is an optional extra (``pip install 'fastik[escnn]'``): ``import fastik`` never
imports it; importing this package without escnn raises ImportError.
"""
from __future__ import annotations

try:
    import escnn  # noqa: F401
except ImportError as _err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fastik.escnn needs the optional escnn extra: pip install 'fastik[escnn]' "
        "(escnn>=1.0.11 with numpy<2; its py3nj dependency needs a Fortran compiler, e.g. "
        "apt-get install gfortran; scripts/setup.sh shows a recipe). "
        f"Original error: {_err}"
    ) from _err

from ..graphs import knn_graph, radius_graph
from .arguments import EscnnArguments
from .field_types import TypeConversion, convert_field_type
from .groups import GroupConversion, convert_gspace
from .layer import ImplicitPointConv
from .replace import replace_point_convs

__all__ = ["ImplicitPointConv", "convert_gspace", "convert_field_type", "replace_point_convs",
           "radius_graph", "knn_graph", "GroupConversion", "TypeConversion", "EscnnArguments"]
