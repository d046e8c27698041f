"""Relief as a choice: how far each part's surface may move, as a share of the shape's own thickness.

A relief *level* is a fraction r of the local thickness (``engine/geometry/thickness.py``): at a
vertex, a part may push the surface inward by r times the thickness behind it and outward by r
times the smaller of that thickness and the free space in front of it, and never more than
``field.max_displacement`` (a share of the object's radius). A 1.8 cm tube under ``subtle`` can
thus move by about a millimetre, while a thick vase body may take centimetres of bark. Levels:

- ``none``: no relief; positions stay bit-identical to the input;
- ``subtle`` (the default): color-first styling; silhouettes stay as they were to the eye;
- ``strong``: relief the style can carve, still short of walls meeting.

A number in 0..MAX_RELIEF is the fraction itself. Needs only numpy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .geometry.thickness import LocalThickness

RELIEF_LEVELS: dict[str, float] = {"none": 0.0, "subtle": 0.1, "strong": 0.25}
DEFAULT_RELIEF = "subtle"
#: Beyond half the thickness, opposite walls of a thin part could pass through each other.
MAX_RELIEF = 0.3


def relief_fraction(value: str | float) -> float:
    """``none`` / ``subtle`` / ``strong`` / a number (or its text) -> the fraction of local thickness.

    Raises :class:`InputError` that lists what is accepted.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in RELIEF_LEVELS:
            return RELIEF_LEVELS[text]
        try:
            number = float(text)
        except ValueError:
            number = math.nan
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        number = math.nan
    if not (math.isfinite(number) and 0.0 <= number <= MAX_RELIEF):
        raise InputError(
            f"relief {value!r} is not understood; use none, subtle, strong or a number from 0 to {MAX_RELIEF} "
            "(the share of the local thickness the surface may move)."
        )
    return number


def relief_options(values: list[str] | tuple[str, ...]) -> dict:
    """Command-line ``--relief`` values (``LEVEL`` once at most, ``PART=LEVEL`` any number of times)
    -> ``{"relief": level, "part_relief": ((part, level), ...)}`` for a request; the levels are
    checked when the request is made. Both command lines (the engine's and Blender's headless one)
    read them with this. Raises :class:`InputError` when the whole object's level is given twice."""
    whole = [value.strip() for value in values if "=" not in value]
    if len(whole) > 1:
        raise InputError(f"--relief for the whole object was given {len(whole)} times ({', '.join(whole)}); "
                         "give it once, and PART=LEVEL for single parts.")
    per_part = {}
    for value in values:
        part, sep, level = value.partition("=")
        if sep:
            per_part[part.strip()] = level.strip()
    return {"relief": whole[0] if whole else DEFAULT_RELIEF, "part_relief": tuple(per_part.items())}


def relief_bounds(
    thickness: LocalThickness, fractions: tuple[float, ...] | list[float], max_displacement: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex, per-part displacement bounds, unit frame.

    Args:
        thickness: the mesh's local thickness (inside, outside and bend radius, [V] each).
        fractions: [P] relief fraction of each styled part.
        max_displacement: the global bound (``field.max_displacement``).

    A part may move a vertex inward by its fraction of the thickness behind it, and outward by its
    fraction of the smaller of that thickness and the free space in front (a thin wall neither
    thins nor swells by more than twice the fraction, and never closes a gap), either way by no
    more than its fraction of the radius over which the surface bends (so offsets never fold a
    crease or a tight curve).

    Returns ([V, P] outward bound, [V, P] inward bound), float32, each >= 0; a part with fraction
    0 gets exact zeros.
    """
    share = np.asarray(fractions, np.float32)[None, :]
    cap = np.float32(max_displacement)
    inward_room = np.minimum(np.asarray(thickness.inside, np.float32), np.asarray(thickness.bend, np.float32))
    outward_room = np.minimum(inward_room, np.asarray(thickness.outside, np.float32))

    def bound(room: np.ndarray) -> np.ndarray:
        return (np.minimum(cap, share * room[:, None]) * (share > 0)).astype(np.float32)

    return bound(outward_room), bound(inward_room)
