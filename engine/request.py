"""What a caller asks the door for: :class:`StyleRequest`, one value instead of a keyword list.

The command line, the Blender add-on, batch runs and the tests build a request; ``engine.api``
checks it against the mesh and runs it. Everything that can be checked without the mesh is
checked when the request is made, so a bad request fails before any model loads. Needs only numpy.

    StyleRequest("pottery base, gold tube, linen shade")
    StyleRequest("red base, blue shade", parts=weights, lock=("shade",), previous=earlier.surface)
    StyleRequest("red base, linen shade", images={"shade": "linen.jpg"})   # a picture beside the words
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .errors import InputError, PromptError
from .parts import PartWeights
from .prompt import PartStyle, StylePrompt, check_prompt, normalize_part_name
from .references import WHOLE, ReferenceImage, load_reference
from .relief import DEFAULT_RELIEF, relief_fraction
from .result import StyleResult, SurfaceStyle


@dataclass(frozen=True)
class StyleRequest:
    """A stylization request. Construction checks it; its fields are then normalized.

    Attributes:
        prompt: a part-style prompt (``"pottery base, linen shade"``), one style for the whole object
            (``"a lamp made of gold"``), or a parsed :class:`StylePrompt` (e.g. the add-on's part rows).
            Stored parsed: after construction this is always a :class:`StylePrompt`.
        holistic: read a text prompt as one style for the whole object, without looking for parts.
        parts: per-vertex part weights given by the user (labels, vertex groups, ``parts.npz``): no
            grounding runs. Without them, a part prompt locates its parts with the grounding model.
        lock: parts that keep ``previous``'s look instead of being restyled; normalized names.
        previous: an earlier look of the same mesh (needed with ``lock``). A :class:`StyleResult` is
            accepted and reduced to its :attr:`StyleResult.surface`.
        base_colors: [V, 3] sRGB in 0..1 that vertices outside every styled part keep (default: the
            field's neutral gray).
        relief: how far styled surfaces may move, for the whole run: ``none``, ``subtle`` (default),
            ``strong`` or a share of the local thickness (``engine/relief.py``). Stored as a number.
        part_relief: per-part exceptions, ``{"tube": "none"}``; stored as ``((part, number), ...)``.
        images: reference pictures, ``{"shade": "linen.jpg"}`` (a path, a PIL image or an [H, W, 3]
            array); ``"whole"`` gives the whole object's (the prompt as a whole) a picture. Each is
            mixed with its words by ``guidance.image_weight`` (engine/references.py); stored as
            ``((part, ReferenceImage), ...)`` in prompt order, ``whole`` first.

    Raises :class:`PromptError` for a bad prompt or a lock that cannot be honoured, and
    :class:`InputError` for arrays of the wrong kind.
    """

    prompt: str | StylePrompt
    holistic: bool = False
    parts: PartWeights | None = None
    lock: tuple[str, ...] = ()
    previous: SurfaceStyle | None = None
    base_colors: np.ndarray | None = None
    relief: str | float = DEFAULT_RELIEF
    part_relief: Mapping[str, str | float] | tuple[tuple[str, float], ...] = ()
    images: Mapping[str, object] | tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        parsed = check_prompt(self.prompt, holistic=self.holistic)
        if isinstance(self.lock, str):
            raise PromptError(f"lock takes a list of part names, not the text {self.lock!r}")
        lock = tuple(dict.fromkeys(normalize_part_name(p) for p in self.lock))
        previous = self.previous.surface if isinstance(self.previous, StyleResult) else self.previous
        if previous is not None and not isinstance(previous, SurfaceStyle):
            raise InputError(f"previous must be a SurfaceStyle or a StyleResult, not {type(previous).__name__}")
        if self.parts is not None and not isinstance(self.parts, PartWeights):
            raise InputError(f"parts must be PartWeights, not {type(self.parts).__name__}")
        object.__setattr__(self, "prompt", parsed)
        object.__setattr__(self, "lock", lock)
        object.__setattr__(self, "previous", previous)
        if self.base_colors is not None:
            object.__setattr__(self, "base_colors", _colors(self.base_colors, "base_colors"))
        object.__setattr__(self, "relief", relief_fraction(self.relief))
        items = self.part_relief.items() if isinstance(self.part_relief, Mapping) else self.part_relief
        object.__setattr__(self, "part_relief", tuple(
            (normalize_part_name(part), relief_fraction(value)) for part, value in items))
        self._check_parts()
        object.__setattr__(self, "images", self._references())

    def _references(self) -> tuple[tuple[str, ReferenceImage], ...]:
        """The reference images by part, checked against the prompt and read (see ``images``)."""
        items = self.images.items() if isinstance(self.images, Mapping) else self.images
        found: dict[str, ReferenceImage] = {}
        for key, value in items:
            part = normalize_part_name(str(key))
            if part != WHOLE and part not in self.prompt.parts:
                named = ", ".join(self.prompt.parts) or "none: it styles the whole object"
                raise PromptError(f"an image is given for '{part}', which the prompt does not name (its parts: "
                                  f"{named}); name the part in the prompt, or use '{WHOLE}' for the whole object.")
            if part in self.lock:
                raise PromptError(f"an image is given for '{part}', which is locked (it keeps its earlier look); "
                                  "unlock it or leave its image out.")
            if part in found:
                raise PromptError(f"two images are given for '{part}'; give one per part.")
            found[part] = load_reference(value, what=f"the image for '{part}'")
        order = [WHOLE, *self.prompt.parts]
        return tuple(sorted(found.items(), key=lambda item: order.index(item[0])))

    def _check_parts(self) -> None:
        parsed = self.prompt
        if parsed.is_holistic:
            if self.part_relief:
                raise PromptError("relief per part needs a part prompt; give one relief for the whole object instead.")
            if self.lock:
                raise PromptError("lock needs a part prompt; a holistic prompt has no parts to keep.")
            if self.parts is not None:
                raise PromptError(
                    f"parts were given but the prompt {parsed.full_text()!r} names none; write the styles per part "
                    "(e.g. 'red base, blue shade') or leave the parts out."
                )
            return
        strangers = [p for p, _ in self.part_relief if p not in parsed.parts]
        if strangers:
            raise PromptError(
                f"relief is set for {', '.join(map(repr, strangers))}, which the prompt does not name "
                f"({', '.join(parsed.parts) or 'no parts'})."
            )
        unknown = [p for p in self.lock if p not in parsed.parts]
        if unknown:
            raise PromptError(
                f"cannot lock {', '.join(map(repr, unknown))}: not a part of the prompt ({', '.join(parsed.parts)})."
            )
        if self.lock and self.previous is None:
            raise PromptError("locked parts keep an earlier result: give the previous result (--previous DIR).")
        if self.previous is not None and not self.lock:
            raise PromptError(
                "a previous result is used only for locked parts, and none is locked: name the parts to keep "
                "(--lock PART) or leave the previous result out."
            )

    @property
    def styled_pairs(self) -> tuple[PartStyle, ...]:
        """The (part, style) pairs that this run restyles: the prompt's, less the locked parts."""
        return tuple(pair for pair in self.prompt.pairs if pair.part not in self.lock)

    @property
    def relief_fractions(self) -> tuple[float, ...]:
        """The relief fraction of each styled part, in :attr:`styled_pairs` order (holistic: one)."""
        if self.prompt.is_holistic:
            return (self.relief,)
        own = dict(self.part_relief)
        return tuple(own.get(pair.part, self.relief) for pair in self.styled_pairs)

    def check_mesh(self, num_vertices: int) -> None:
        """Raise :class:`InputError` unless every per-vertex input has ``num_vertices`` rows."""
        for what, rows in (
            ("the given parts", None if self.parts is None else self.parts.weights.shape[0]),
            ("the previous result", None if self.previous is None else self.previous.num_vertices),
            ("base_colors", None if self.base_colors is None else self.base_colors.shape[0]),
        ):
            if rows is not None and rows != num_vertices:
                raise InputError(
                    f"{what} belong(s) to a mesh of {rows} vertices; this mesh has {num_vertices}. "
                    "Use data made for this mesh."
                )


def _colors(values, what: str) -> np.ndarray:
    """[V, 3] float32 sRGB in 0..1, or :class:`InputError` naming ``what``."""
    colors = np.asarray(values, dtype=np.float32)
    if colors.ndim != 2 or colors.shape[1] != 3:
        raise InputError(f"{what} must be [V, 3] sRGB colors, got shape {list(colors.shape)}")
    if not np.isfinite(colors).all() or (colors.size and (colors.min() < 0.0 or colors.max() > 1.0)):
        raise InputError(f"{what} must be finite sRGB colors in 0..1")
    return colors
