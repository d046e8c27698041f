"""Every setting of a run as typed dataclasses, the named presets, and ``key=value`` overrides.

Settings are grouped in sections (``render``, ``views``, ``field``, ``guidance``, ``localize``,
``optim``, ``run``); a setting's full key is ``section.name`` (``optim.iterations``). Defaults are the
Text2Mesh (T2M) numbers of METHOD.md; presets change some of them. docs/settings.md documents
each key and each preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any, get_args, get_type_hints

from .errors import SettingsError

#: The most iterations a run may ask for: ~66x the papers' 1500, far beyond any useful run; more is
#: a typo that would otherwise run for days.
MAX_ITERATIONS = 100_000


@dataclass(frozen=True)
class RenderSettings:
    """Rasterization and shading.

    resolution: square image side in pixels for the guidance renders.
    background: sRGB color behind the object (T2M and 3DStyleGLIP use white).
    ambient, diffuse: shade = ambient + diffuse * |n . l| with face normals n and a light l at
        the camera, so displacement changes shading and receives gradients.
    fov_degrees: vertical field of view (T2M: 60).
    camera_radius: camera distance from the origin in unit-frame units (T2M: ~2).
    """

    resolution: int = 224
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.45
    diffuse: float = 0.55
    fov_degrees: float = 60.0
    camera_radius: float = 2.0


@dataclass(frozen=True)
class ViewSettings:
    """Which views each iteration renders: one fixed front view plus jittered views around it.

    Elevation ~ N(front, elevation_std^2), azimuth ~ N(front, azimuth_std^2) (T2M: pi/4, pi/2).
    up_axis: the object frame's up axis, ``y`` (OBJ/glTF) or ``z`` (Blender, many STL files).
    """

    count: int = 5
    front_elevation_degrees: float = 0.0
    front_azimuth_degrees: float = 0.0
    elevation_std_degrees: float = 45.0
    azimuth_std_degrees: float = 90.0
    up_axis: str = "y"


@dataclass(frozen=True)
class FieldSettings:
    """The neural style field (METHOD section 4).

    sigma: std of the random Fourier feature matrix (5 for most objects, 12 for detailed humans).
    fourier_features: columns of the Fourier matrix (input width is 3 + 2 * this).
    width, trunk_depth, head_depth: MLP shape (T2M: 256, 4, 2).
    max_displacement: bound of |displacement| in unit-sphere radii (T2M: 0.1); within it, the
        request's relief level bounds each vertex by a share of the shape's local thickness
        (docs/relief.md).
    relief_smoothness: weight of the smoothness term, the mean squared slope of the displacement
        over the mesh's edges: higher makes relief broader and calmer, 0 switches it off.
    relief_gain: the relief head's output is scaled by this before its tanh: relief develops in
        fewer iterations (its bound is unchanged).
    progressive_steps: iterations over which the Fourier frequencies open, lowest first (0: off).
    precision: the MLP's arithmetic: ``float32``, ``bfloat16`` (under autocast: about 2x faster on
        CPUs with native bf16, AVX512-BF16 or AMX, and on GPUs; slower on CPUs without it), or
        ``auto``: bfloat16 where the device has it natively, else float32.
    max_vertices: a mesh with more vertices is optimized on a simplified copy of about this many
        (vertex clustering), and the field is then evaluated at every original vertex; 0: never.
        Memory and time per iteration follow the copy's size (docs/performance.md).
    optimize_on: ``mesh``, ``subdivided`` (a copy whose edges are split until none is longer than
        ``subdivide_pixels`` pixels of a guidance render, so the guidance model sees the field's
        detail between the mesh's vertices, which baked maps keep), or ``auto``: subdivided when
        maps are baked (``texture.size``) and the mesh's median edge is longer than twice that.
    subdivide_pixels: the subdivided copy's longest edge, in pixels of a guidance render at the
        camera's distance.
    subdivide_max_vertices: the subdivided copy's vertex budget (the longest edges are split first).
    """

    sigma: float = 5.0
    fourier_features: int = 256
    width: int = 256
    trunk_depth: int = 4
    head_depth: int = 2
    max_displacement: float = 0.1
    relief_smoothness: float = 1.0
    relief_gain: float = 5.0
    progressive_steps: int = 0
    precision: str = "auto"
    max_vertices: int = 100_000
    optimize_on: str = "auto"
    subdivide_pixels: float = 3.0
    subdivide_max_vertices: int = 12_000


@dataclass(frozen=True)
class GuidanceSettings:
    """CLIP losses (METHOD section 6). Counts are per rendered view.

    global_augmentations: perspective-distorted copies of each whole view.
    perspective_p, perspective_distortion: probability and strength of the distortion (T2M 0.8, 0.5).
    local_crops: random crops per view at ``local_crop_area`` of the image area (T2M: 4 at 0.1).
    geometry_crops: crops per view of a gray render (color ignored) that train displacement on its
        own (T2M's geometry loss); 0 switches the geometry loss off.
    geometry_weight: weight of the geometry loss in the total.
    part_crops: with a part prompt, crops of each part per iteration (each from a random view
        that shows it) of the part's box, the part isolated by its rendered mask on white, scored
        against the part's style phrase; they replace the local crops.
    part_min_pixels: a part smaller than this many pixels in a view is not cropped there.
    part_weight: weight of the summed per-part losses in the total.
    grounding_every: with a part prompt, every k-th iteration is a grounding step (the
        grounding-space part loss of METHOD 5.2) instead of a CLIP step; 2 alternates as
        3DStyleGLIP does, 1 makes every step a grounding step, 0 never.
    grounding_views, grounding_resolution: views rendered for a grounding step, and their size.
    grounding_threshold: a proposal shows part k when its part-caption score exceeds this.
    image_weight: a reference image's share of its part's target beside its words (0: the words
        only, 1: the picture only); engine/references.py.
    image_crops: augmented crops of a reference image averaged into its target.
    precision: the guidance models' arithmetic on every step (CLIP, and Grounding DINO on
        grounding steps): ``float32``, ``bfloat16`` (autocast: matrix products in bf16, the losses
        in float32; 1.6-1.9x faster where the hardware has it, the image gradient's direction
        within 0.1% of float32's), or ``auto``: bfloat16 where the device has it natively. Text
        and reference-image targets are always encoded in float32.
    """

    global_augmentations: int = 1
    perspective_p: float = 0.8
    perspective_distortion: float = 0.5
    local_crops: int = 4
    local_crop_area: float = 0.1
    geometry_crops: int = 4
    geometry_weight: float = 1.0
    part_crops: int = 4
    part_min_pixels: int = 64
    part_weight: float = 1.0
    grounding_every: int = 0
    grounding_views: int = 3
    grounding_resolution: int = 512
    grounding_threshold: float = 0.25
    image_weight: float = 0.5
    image_crops: int = 16
    precision: str = "auto"


@dataclass(frozen=True)
class LocalizeSettings:
    """Finding parts on the mesh (METHOD section 5.1): ground part names in views, settle labels.

    views, resolution: untextured views rendered around the object (azimuths evenly spaced,
        elevations alternating between ``elevations_degrees``) and their size in pixels.
    box_threshold: a box counts for a part when its score for that part exceeds this.
    evidence: ``masks`` (each part's best box per view refined to a pixel mask by the segmenter)
        or ``boxes`` (the boxes themselves as filled rectangles: the box-only path, for comparison).
    border_weight, border_falloff: (``boxes`` evidence) a pixel near a box's border gets its score
        times ``border_weight``, rising to full inside ``border_falloff`` x the box's smaller side.
    smoothness: the cost of a boundary between labels, per unit of length (discounted along creases).
    band: edges of soft weights on each side of a boundary between two styled parts (0: hard).
    precision: the grounding model's and the segmenter's arithmetic: ``float32``, ``bfloat16``
        (autocast; about 1.7x faster where the hardware has it), or ``auto``: bfloat16 where the
        device has it natively.
    """

    views: int = 10
    resolution: int = 512
    elevations_degrees: tuple[float, float] = (30.0, -5.0)
    box_threshold: float = 0.25
    evidence: str = "masks"
    border_weight: float = 0.5
    border_falloff: float = 0.15
    smoothness: float = 1.0
    band: int = 2
    precision: str = "auto"


@dataclass(frozen=True)
class OptimSettings:
    """The optimizer and its schedule (METHOD section 8).

    optimizer: ``adam`` (T2M) or ``adamw`` (3DStyleGLIP).
    learning_rate, lr_decay, lr_decay_every: lr * decay every so many iterations (T2M 5e-4, 0.9, 100).
    """

    iterations: int = 1500
    optimizer: str = "adam"
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    lr_decay: float = 0.9
    lr_decay_every: int = 100


@dataclass(frozen=True)
class RunSettings:
    """Reproducibility, reporting and safety.

    seed: seeds every random draw of the run (field init, views, augmentations).
    preview_every: iterations between preview events (live preview in Blender); 0 disables.
    checkpoint_every: iterations between resumable checkpoints when a checkpoint path is given.
    nan_patience: consecutive non-finite steps tolerated (each skipped and the last good state
        restored) before the run stops with an error.
    """

    seed: int = 0
    preview_every: int = 25
    checkpoint_every: int = 50
    nan_patience: int = 5


@dataclass(frozen=True)
class TextureSettings:
    """Maps baked from the style field on the mesh's own UV layout (engine/texture, docs/textures.md).

    size: the maps' side in texels; 0 bakes none (the result stays per vertex).
    padding: texels filled past each UV island's border (so mipmaps do not bleed the background in).
    precision: the field's arithmetic while baking: ``float32``, ``bfloat16`` (about 2x faster where
        the hardware has it; colors within one 8-bit step of float32's), or ``auto``: bfloat16 on
        a CUDA GPU or CPU with native bf16 (AVX512-BF16, AMX) or when ``field.precision`` is
        bfloat16, else float32.
    """

    size: int = 0
    padding: int = 8
    precision: str = "auto"


@dataclass(frozen=True)
class Settings:
    """All settings of a run. Build with :func:`settings_for` to get a preset plus overrides."""

    render: RenderSettings = dataclasses.field(default_factory=RenderSettings)
    views: ViewSettings = dataclasses.field(default_factory=ViewSettings)
    field: FieldSettings = dataclasses.field(default_factory=FieldSettings)
    guidance: GuidanceSettings = dataclasses.field(default_factory=GuidanceSettings)
    localize: LocalizeSettings = dataclasses.field(default_factory=LocalizeSettings)
    optim: OptimSettings = dataclasses.field(default_factory=OptimSettings)
    run: RunSettings = dataclasses.field(default_factory=RunSettings)
    texture: TextureSettings = dataclasses.field(default_factory=TextureSettings)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict, JSON-serializable (tuples stay tuples; json writes them as lists)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"section.name": value}`` for every setting."""
        return {f"{s}.{k}": v for s, d in self.to_dict().items() for k, v in d.items()}


# Presets change only what differs from the T2M defaults above; docs/settings.md explains them.
PRESETS: dict[str, dict[str, Any]] = {
    # 3DStyleGLIP's schedule: AdamW 5e-4, 1500 iterations, 3 views, grounding-space and CLIP steps
    # alternating every iteration (with a part prompt), T2M's augmentations.
    "faithful": {
        "views.count": 3,
        "optim.optimizer": "adamw",
        "guidance.grounding_every": 2,
        "guidance.grounding_views": 3,
    },
    # Text2Mesh's holistic GPU schedule: 1500 iterations, Adam, 5 views, 4 local and 4 geometry
    # crops per view (45 CLIP images an iteration).
    "text2mesh": {},
    # CPU-friendly: 3 views, one crop of each kind per view, 300 iterations at a higher rate; parts
    # are located once, scored by CLIP every step, and by the grounding model every 25th step.
    "fast": {
        "views.count": 3,
        "guidance.local_crops": 1,
        "guidance.geometry_crops": 1,
        "guidance.part_crops": 1,
        "guidance.grounding_every": 25,
        "guidance.grounding_views": 1,
        "optim.iterations": 300,
        "optim.learning_rate": 1e-3,
        "optim.lr_decay_every": 50,
    },
    # A first look (on a 2-core CPU, a 40k-face mesh: 51 s with the tiny models, about 2.5 minutes with the
    # real ones, parts located): 2 views, no geometry or grounding loss.
    "preview": {
        "views.count": 2,
        "guidance.local_crops": 1,
        "guidance.geometry_crops": 0,
        "guidance.part_crops": 1,
        "optim.iterations": 60,
        "optim.learning_rate": 2e-3,
        "optim.lr_decay_every": 20,
        "run.preview_every": 5,
        # A first look stays quick on a large mesh: measured 4.4 s an iteration at 100k vertices.
        "field.max_vertices": 25_000,
    },
}
DEFAULT_PRESET = "fast"
# The choices of every ``*.precision`` setting (engine.devices.use_bfloat16 resolves them).
PRECISIONS = ("auto", "float32", "bfloat16")
# The stages of a run that each run their models in the arithmetic their ``precision`` says
# (``texture.precision`` follows ``field``'s where it is ``auto``), and the overrides that put them all in float32.
PRECISION_STAGES = ("field", "guidance", "localize")
ALL_FLOAT32 = tuple(f"{stage}.precision=float32" for stage in PRECISION_STAGES)


def settings_for(preset: str = DEFAULT_PRESET, overrides: dict[str, Any] | list[str] | None = None) -> Settings:
    """The named preset with ``overrides`` applied.

    ``overrides`` is a dict ``{"optim.iterations": 200}`` or a list of ``"key=value"`` strings
    (values parsed by the setting's type). Unknown presets or keys raise :class:`SettingsError`
    that names them and lists what exists.
    """
    if preset not in PRESETS:
        raise SettingsError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}.")
    settings = apply_overrides(Settings(), PRESETS[preset])
    if overrides:
        if isinstance(overrides, (list, tuple)):
            overrides = parse_assignments(overrides)
        settings = apply_overrides(settings, overrides)
    return settings


def parse_assignments(assignments: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["optim.iterations=200", ...]`` -> ``{"optim.iterations": "200"}``."""
    out: dict[str, str] = {}
    for text in assignments:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"'{text}' is not of the form key=value (e.g. optim.iterations=200).")
        out[key.strip()] = value.strip()
    return out


def apply_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with ``{"section.name": value}`` applied; values may be strings."""
    sections = {f.name: getattr(settings, f.name) for f in fields(settings)}
    for key, raw in overrides.items():
        section_name, _, name = key.partition(".")
        section = sections.get(section_name)
        if section is None or not name:
            raise SettingsError(
                f"unknown setting '{key}'; settings are section.name with section one of: "
                f"{', '.join(sections)} (see `python -m engine settings`)."
            )
        hints = get_type_hints(type(section))
        if name not in hints:
            known = ", ".join(f.name for f in fields(section))
            raise SettingsError(f"unknown setting '{key}'; '{section_name}' has: {known}.")
        sections[section_name] = replace(section, **{name: _coerce(key, raw, hints[name])})
    result = replace(settings, **sections)
    _validate(result)
    return result


def _coerce(key: str, raw: Any, hint: Any) -> Any:
    """Convert ``raw`` (often a string from the command line) to the setting's type."""
    try:
        if hint is bool:
            if isinstance(raw, str):
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return bool(raw)
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return str(raw)
        if getattr(hint, "__origin__", None) is tuple:
            values = json.loads(raw) if isinstance(raw, str) else list(raw)
            item_types = get_args(hint)
            if len(values) != len(item_types):
                raise ValueError(raw)
            return tuple(_coerce(key, v, t) for v, t in zip(values, item_types, strict=True))
    except (TypeError, ValueError, json.JSONDecodeError):
        raise SettingsError(f"setting '{key}' expects {_type_name(hint)}, got {raw!r}.") from None
    raise SettingsError(f"setting '{key}' has an unsupported type {hint!r}.")


def _type_name(hint: Any) -> str:
    if getattr(hint, "__origin__", None) is tuple:
        return f"a JSON list of {len(get_args(hint))} numbers, e.g. [1, 1, 1]"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a text"}.get(hint, str(hint))


def _validate(s: Settings) -> None:
    """Range checks that name the key and the allowed values."""
    for key, value in s.flat().items():
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise SettingsError(f"setting '{key}' must be a finite number, got {value!r}.")
    checks = [
        ("render.resolution", 16 <= s.render.resolution <= 4096, "between 16 and 4096"),
        ("render.fov_degrees", 1.0 <= s.render.fov_degrees < 180.0, "between 1 and 180"),
        ("render.camera_radius", s.render.camera_radius > 1.05, "greater than 1.05 (the mesh fills the unit sphere)"),
        ("render.background", all(0.0 <= c <= 1.0 for c in s.render.background), "three values between 0 and 1"),
        ("render.ambient", s.render.ambient >= 0.0, "0 or more"),
        ("render.diffuse", s.render.diffuse >= 0.0, "0 or more"),
        ("views.count", s.views.count >= 1, "at least 1"),
        ("views.up_axis", s.views.up_axis in ("y", "z"), "'y' or 'z'"),
        ("field.sigma", s.field.sigma > 0.0, "greater than 0"),
        ("field.fourier_features", s.field.fourier_features >= 1, "at least 1"),
        ("field.width", s.field.width >= 1, "at least 1"),
        ("field.trunk_depth", s.field.trunk_depth >= 1, "at least 1"),
        ("field.head_depth", s.field.head_depth >= 0, "0 or more"),
        ("field.max_displacement", s.field.max_displacement >= 0.0, "0 or more"),
        ("field.relief_smoothness", s.field.relief_smoothness >= 0.0, "0 or more"),
        ("field.relief_gain", s.field.relief_gain > 0.0, "greater than 0"),
        ("field.max_vertices", s.field.max_vertices == 0 or s.field.max_vertices >= 1000, "0 (off) or at least 1000"),
        *((f"{name}.precision", getattr(s, name).precision in PRECISIONS, "'auto', 'float32' or 'bfloat16'")
          for name in (*PRECISION_STAGES, "texture")),
        ("field.optimize_on", s.field.optimize_on in ("auto", "mesh", "subdivided"), "'auto', 'mesh' or 'subdivided'"),
        ("field.subdivide_pixels", 0.5 <= s.field.subdivide_pixels <= 64, "0.5 to 64"),
        ("field.subdivide_max_vertices", 1000 <= s.field.subdivide_max_vertices <= 2_000_000, "1000 to 2000000"),
        ("guidance.global_augmentations", s.guidance.global_augmentations >= 0, "0 or more"),
        ("guidance.perspective_p", 0.0 <= s.guidance.perspective_p <= 1.0, "between 0 and 1"),
        ("guidance.perspective_distortion", 0.0 <= s.guidance.perspective_distortion < 1.0, "in [0, 1)"),
        ("guidance.local_crops", s.guidance.local_crops >= 0, "0 or more"),
        ("guidance.local_crop_area", 0.0 < s.guidance.local_crop_area <= 1.0, "in (0, 1]"),
        ("guidance.geometry_crops", s.guidance.geometry_crops >= 0, "0 or more"),
        ("guidance.part_crops", s.guidance.part_crops >= 1, "at least 1"),
        ("guidance.part_min_pixels", s.guidance.part_min_pixels >= 1, "at least 1"),
        ("guidance.grounding_every", s.guidance.grounding_every >= 0, "0 or more"),
        ("guidance.grounding_views", s.guidance.grounding_views >= 1, "at least 1"),
        ("guidance.grounding_resolution", 64 <= s.guidance.grounding_resolution <= 2048, "between 64 and 2048"),
        ("guidance.grounding_threshold", 0.0 <= s.guidance.grounding_threshold < 1.0, "in [0, 1)"),
        ("guidance.image_weight", 0.0 <= s.guidance.image_weight <= 1.0, "between 0 and 1"),
        ("guidance.image_crops", 1 <= s.guidance.image_crops <= 256, "between 1 and 256"),
        ("localize.views", s.localize.views >= 1, "at least 1"),
        ("localize.resolution", 64 <= s.localize.resolution <= 2048, "between 64 and 2048"),
        ("localize.box_threshold", 0.0 <= s.localize.box_threshold < 1.0, "in [0, 1)"),
        ("localize.border_weight", 0.0 <= s.localize.border_weight <= 1.0, "between 0 and 1"),
        ("localize.border_falloff", 0.0 <= s.localize.border_falloff <= 0.5, "between 0 and 0.5"),
        ("localize.evidence", s.localize.evidence in ("masks", "boxes"), "masks or boxes"),
        ("localize.smoothness", s.localize.smoothness >= 0.0, "0 or more"),
        ("localize.band", 0 <= s.localize.band <= 10, "between 0 and 10"),
        ("optim.iterations", 1 <= s.optim.iterations <= MAX_ITERATIONS, f"between 1 and {MAX_ITERATIONS}"),
        ("optim.optimizer", s.optim.optimizer in ("adam", "adamw"), "'adam' or 'adamw'"),
        ("optim.learning_rate", s.optim.learning_rate > 0.0, "greater than 0"),
        ("optim.weight_decay", s.optim.weight_decay >= 0.0, "0 or more"),
        ("optim.lr_decay", 0.0 < s.optim.lr_decay <= 1.0, "in (0, 1]"),
        ("optim.lr_decay_every", s.optim.lr_decay_every >= 1, "at least 1"),
        ("run.preview_every", s.run.preview_every >= 0, "0 or more"),
        ("run.checkpoint_every", s.run.checkpoint_every >= 1, "at least 1"),
        ("run.nan_patience", s.run.nan_patience >= 1, "at least 1"),
        ("texture.size", s.texture.size == 0 or 16 <= s.texture.size <= 8192, "0 (no maps) or between 16 and 8192"),
        ("texture.padding", 0 <= s.texture.padding <= 64, "between 0 and 64"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise SettingsError(f"setting '{key}' must be {allowed}.")
    if s.guidance.global_augmentations + s.guidance.local_crops == 0:
        raise SettingsError(
            "guidance.global_augmentations and guidance.local_crops are both 0: nothing would guide the colors; "
            "set one of them to 1 or more."
        )
