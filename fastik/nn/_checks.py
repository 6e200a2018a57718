"""Constructor argument checks shared by the layers: each error names the argument and the fix."""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Literal, overload

from ..groups import require_field_type

__all__ = ["check_field_type", "check_int", "check_sigma"]


def check_field_type(value: object, name: str, optional: bool = False) -> None:
    """TypeError / ValueError unless ``value`` is a FieldType with at least one field (or None when ``optional``)."""
    if value is None and optional:
        return
    ft = require_field_type(value, name)
    if ft.dim == 0:
        alternative = f" (or pass {name}=None)" if optional else ""
        raise ValueError(f"{name} has no fields (dimension 0): give it at least one field, e.g. "
                         f"'1x0e' (3D) or '1x0' (2D){alternative}")


@overload
def check_int(value: object, name: str, minimum: int, optional: Literal[False] = False) -> int: ...
@overload
def check_int(value: object, name: str, minimum: int, optional: bool) -> int | None: ...


def check_int(value: object, name: str, minimum: int, optional: bool = False) -> int | None:
    """``value`` as a Python int if it is an integer >= ``minimum`` (None if None and ``optional``),
    else TypeError / ValueError."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral):
        what = f"an int >= {minimum}" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_sigma(sigma: object) -> float | None:
    """The envelope width ``sigma`` as a float if it is a finite number > 0 (None: no envelope),
    else TypeError / ValueError."""
    if sigma is None:
        return None
    if isinstance(sigma, bool) or not isinstance(sigma, Real):
        raise TypeError(f"sigma must be a number > 0 (the envelope width, in the units of the positions) or None "
                        f"(no envelope), got {type(sigma).__name__} {sigma!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 (the envelope width, in the units of the positions) "
                         f"or None (no envelope), got {sigma}")
    return float(sigma)
