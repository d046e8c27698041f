"""engine.config: presets, the Text2Mesh reference numbers, overrides, coercion and validation."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from engine.config import (
    DEFAULT_PRESET,
    PRESETS,
    OptimSettings,
    Settings,
    _coerce,
    apply_overrides,
    parse_assignments,
    settings_for,
)
from engine.errors import PartstyleError, SettingsError

SECTIONS = ("render", "views", "field", "guidance", "localize", "optim", "run", "texture")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_settings(preset):
    s = settings_for(preset)
    assert isinstance(s, Settings)
    assert tuple(f.name for f in dataclasses.fields(s)) == SECTIONS


def test_faithful_preset_is_3dstyleglip():
    """3DStyleGLIP's schedule (METHOD: AdamW 5e-4, 1501 iterations, 3 views, glip/clip ratio 1)."""
    s = settings_for("faithful")
    assert s.optim.optimizer == "adamw" and s.optim.learning_rate == pytest.approx(5e-4)
    assert s.optim.iterations == 1500 and s.views.count == 3
    assert s.guidance.grounding_every == 2  # every other iteration is a grounding step
    assert s.field == Settings().field and s.render == Settings().render


def test_text2mesh_preset_is_text2mesh():
    """The Text2Mesh reference schedule and field (METHOD: T2M's published numbers)."""
    s = settings_for("text2mesh")
    assert s.optim.iterations == 1500
    assert s.optim.learning_rate == pytest.approx(5e-4)
    assert s.optim.lr_decay == pytest.approx(0.9)
    assert s.optim.lr_decay_every == 100
    assert s.optim.optimizer == "adam"
    assert s.views.count == 5
    assert s.views.elevation_std_degrees == pytest.approx(45.0)  # pi / 4
    assert s.views.azimuth_std_degrees == pytest.approx(90.0)  # pi / 2
    assert s.guidance.local_crops == 4
    assert s.guidance.local_crop_area == pytest.approx(0.1)
    assert s.guidance.perspective_p == pytest.approx(0.8)
    assert s.guidance.perspective_distortion == pytest.approx(0.5)
    assert s.field.sigma == pytest.approx(5.0)
    assert s.field.width == 256
    assert s.field.trunk_depth == 4 and s.field.head_depth == 2
    assert s.field.max_displacement == pytest.approx(0.1)
    assert s.render.fov_degrees == pytest.approx(60.0)
    assert s.render.camera_radius == pytest.approx(2.0)
    assert s.render.background == (1.0, 1.0, 1.0)
    assert s == Settings()  # the defaults are the T2M numbers


def test_fast_and_preview_presets_are_lighter():
    fast, preview, faithful = settings_for("fast"), settings_for("preview"), settings_for("text2mesh")
    # "fast": 3 views, one crop of each kind per view, 300 iterations at a higher rate
    assert fast.views.count == 3
    assert fast.guidance.local_crops == 1 and fast.guidance.geometry_crops == 1
    assert fast.optim.iterations == 300
    assert fast.optim.learning_rate > faithful.optim.learning_rate
    # "preview": 2 views, no geometry loss, 60 iterations
    assert preview.views.count == 2
    assert preview.guidance.geometry_crops == 0
    assert preview.optim.iterations == 60
    # "preview" optimizes large meshes on a smaller copy; its field is otherwise the default one
    assert preview.field.max_vertices == 25_000 < faithful.field.max_vertices
    # presets change only their own keys; the rest stays at the T2M defaults
    for s in (fast, preview):
        assert dataclasses.replace(s.field, max_vertices=faithful.field.max_vertices) == faithful.field
        assert s.render == faithful.render


def test_default_preset():
    assert DEFAULT_PRESET in PRESETS
    assert settings_for() == settings_for(DEFAULT_PRESET)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(SettingsError) as info:
        settings_for("turbo")
    message = str(info.value)
    assert "turbo" in message
    for name in PRESETS:
        assert name in message
    assert issubclass(SettingsError, PartstyleError)


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_as_dict():
    s = settings_for("fast", {"optim.iterations": 200, "field.sigma": 12})
    assert s.optim.iterations == 200 and type(s.optim.iterations) is int
    assert s.field.sigma == 12.0 and type(s.field.sigma) is float
    # the preset's other values are kept
    assert s.views.count == settings_for("fast").views.count


def test_overrides_as_assignments_are_coerced():
    s = settings_for(
        "faithful",
        [
            "optim.iterations=200",
            "optim.learning_rate=1e-3",
            " render.background = [0,0,0] ",
            "views.up_axis=z",
            "optim.optimizer=adamw",
            "render.resolution=128",
        ],
    )
    assert s.optim.iterations == 200 and type(s.optim.iterations) is int
    assert s.optim.learning_rate == pytest.approx(1e-3) and type(s.optim.learning_rate) is float
    assert s.render.background == (0.0, 0.0, 0.0)
    assert all(type(c) is float for c in s.render.background)
    assert s.views.up_axis == "z"
    assert s.optim.optimizer == "adamw"
    assert s.render.resolution == 128


def test_tuple_from_a_sequence_and_from_json():
    a = settings_for("faithful", {"render.background": [0.5, 0.25, 1]})
    b = settings_for("faithful", {"render.background": "[0.5, 0.25, 1]"})
    assert a.render.background == b.render.background == (0.5, 0.25, 1.0)
    assert isinstance(a.render.background, tuple)


def test_integral_float_is_accepted_for_an_int():
    assert settings_for("faithful", {"optim.iterations": 250.0}).optim.iterations == 250


def test_bool_coercion():
    # no current setting is a bool, so the coercion is exercised directly
    for text in ("1", "true", "True", "yes", "on"):
        assert _coerce("x.flag", text, bool) is True
    for text in ("0", "false", "FALSE", "no", "off"):
        assert _coerce("x.flag", text, bool) is False
    assert _coerce("x.flag", 1, bool) is True and _coerce("x.flag", 0, bool) is False
    with pytest.raises(SettingsError) as info:
        _coerce("x.flag", "maybe", bool)
    assert "x.flag" in str(info.value) and "true or false" in str(info.value)


def test_later_assignment_wins():
    s = settings_for("faithful", ["optim.iterations=10", "optim.iterations=20"])
    assert s.optim.iterations == 20


def test_parse_assignments():
    assert parse_assignments(["a.b=1", " c.d = x=y "]) == {"a.b": "1", "c.d": "x=y"}
    assert parse_assignments(["a.b="]) == {"a.b": ""}


@pytest.mark.parametrize("text", ["optim.iterations", "=5", "  =5", ""])
def test_malformed_assignment(text):
    with pytest.raises(SettingsError, match="key=value"):
        parse_assignments([text])
    with pytest.raises(SettingsError, match="key=value"):
        settings_for("fast", [text])


def test_apply_overrides_returns_a_copy():
    base = settings_for("text2mesh")
    changed = apply_overrides(base, {"optim.iterations": 7})
    assert changed.optim.iterations == 7
    assert base.optim.iterations == 1500 and base == Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.optim.iterations = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("key", ["solver.iterations", "iterations", "optim"])
def test_unknown_section(key):
    with pytest.raises(SettingsError) as info:
        settings_for("fast", {key: 1})
    message = str(info.value)
    assert f"'{key}'" in message
    for section in SECTIONS:
        assert section in message


def test_unknown_key_lists_the_known_keys():
    with pytest.raises(SettingsError) as info:
        settings_for("fast", ["optim.iters=10"])
    message = str(info.value)
    assert "optim.iters" in message
    for f in dataclasses.fields(OptimSettings):
        assert f.name in message


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("optim.iterations", "ten", "integer"),
        ("optim.iterations", "2.5", "integer"),
        ("optim.iterations", 2.5, "integer"),
        ("optim.learning_rate", "fast", "number"),
        ("render.background", "[1, 1]", "JSON list of 3"),
        ("render.background", "white", "JSON list of 3"),
    ],
)
def test_wrong_type_names_key_and_type(key, value, expected):
    with pytest.raises(SettingsError) as info:
        settings_for("fast", {key: value})
    message = str(info.value)
    assert f"'{key}'" in message
    assert expected in message
    assert repr(value) in message


def test_wrong_item_type_in_a_tuple():
    with pytest.raises(SettingsError) as info:
        settings_for("fast", ["render.background=[1, 1, \"x\"]"])
    message = str(info.value)
    assert "'render.background'" in message and "number" in message and "'x'" in message


@pytest.mark.parametrize(
    "key, value",
    [
        ("render.resolution", 8),
        ("render.resolution", 5000),
        ("render.fov_degrees", 180),
        ("render.fov_degrees", 0.5),
        ("render.camera_radius", 1.0),
        ("views.count", 0),
        ("views.up_axis", "x"),
        ("field.width", 0),
        ("field.trunk_depth", 0),
        ("field.head_depth", -1),
        ("field.max_displacement", -0.1),
        ("field.optimize_on", "pixels"),
        ("field.subdivide_pixels", 0.1),
        ("field.subdivide_max_vertices", 10),
        ("guidance.perspective_p", 1.5),
        ("guidance.perspective_distortion", 1.0),
        ("guidance.local_crops", -1),
        ("guidance.local_crop_area", 0.0),
        ("guidance.local_crop_area", 1.1),
        ("optim.iterations", 0),
        ("optim.optimizer", "sgd"),
        ("optim.learning_rate", 0.0),
        ("optim.learning_rate", "nan"),
        ("optim.lr_decay_every", 0),
        ("run.checkpoint_every", 0),
        ("run.nan_patience", 0),
        ("texture.size", 8),
        ("texture.size", 10_000),
        ("texture.padding", -1),
        ("texture.padding", 65),
        ("texture.precision", "half"),
    ],
)
def test_out_of_range_names_the_key(key, value):
    with pytest.raises(SettingsError) as info:
        settings_for("faithful", {key: value})
    assert f"'{key}'" in str(info.value)


def test_boundary_values_are_accepted():
    s = settings_for(
        "faithful",
        {
            "render.resolution": 16,
            "render.fov_degrees": 1.0,
            "views.count": 1,
            "field.head_depth": 0,
            "field.max_displacement": 0.0,
            "guidance.perspective_p": 1.0,
            "guidance.local_crop_area": 1.0,
            "run.preview_every": 0,
        },
    )
    assert s.render.resolution == 16 and s.views.count == 1 and s.field.head_depth == 0


def test_no_color_guidance_is_rejected():
    with pytest.raises(SettingsError) as info:
        settings_for("faithful", {"guidance.global_augmentations": 0, "guidance.local_crops": 0})
    message = str(info.value)
    assert "guidance.global_augmentations" in message and "guidance.local_crops" in message
    # either one alone is enough
    assert settings_for("faithful", {"guidance.local_crops": 0}).guidance.global_augmentations >= 1


# ---------------------------------------------------------------------------------------------
# Serialization


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_flat_round_trip(preset):
    s = settings_for(preset)
    flat = s.flat()
    assert set(flat) == {
        f"{section}.{f.name}" for section in SECTIONS for f in dataclasses.fields(getattr(s, section))
    }
    assert apply_overrides(Settings(), flat) == s


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_json_round_trip(preset):
    s = settings_for(preset, {"render.background": (0.2, 0.4, 0.6), "views.up_axis": "z"})
    nested = json.loads(json.dumps(s.to_dict()))
    assert set(nested) == set(SECTIONS)
    assert nested["optim"]["iterations"] == s.optim.iterations
    flat = {f"{sec}.{k}": v for sec, d in nested.items() for k, v in d.items()}
    assert apply_overrides(Settings(), flat) == s
    # and through the command-line form, every value printed as text
    texts = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in flat.items()]
    back = settings_for("faithful", texts)
    assert back.render.background == s.render.background
    assert back.optim.learning_rate == s.optim.learning_rate
    assert back == s


def test_flat_values_match_the_sections():
    s = settings_for("preview")
    flat = s.flat()
    assert flat["optim.iterations"] == s.optim.iterations
    assert flat["views.count"] == s.views.count
    assert math.isclose(flat["optim.learning_rate"], s.optim.learning_rate)
    assert tuple(flat["render.background"]) == s.render.background


@pytest.mark.parametrize(
    "assignment, key",
    [
        ("optim.learning_rate=inf", "optim.learning_rate"),
        ("field.sigma=nan", "field.sigma"),
        ("render.camera_radius=inf", "render.camera_radius"),
        ("optim.lr_decay=0", "optim.lr_decay"),
        ("optim.lr_decay=1.5", "optim.lr_decay"),
        ("render.background=[5,-1,0]", "render.background"),
        ("render.ambient=-0.1", "render.ambient"),
        ("optim.weight_decay=-1", "optim.weight_decay"),
    ],
)
def test_non_finite_and_out_of_range_values_are_refused(assignment, key):
    with pytest.raises(SettingsError, match=key.replace(".", r"\.")):
        settings_for("fast", [assignment])


def test_a_bool_is_not_an_integer():
    with pytest.raises(SettingsError, match=r"optim\.iterations"):
        settings_for("fast", {"optim.iterations": True})
