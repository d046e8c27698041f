"""The add-on's settings on the Scene (``scene.partstyle``): the prompt, its part rows, the run.

Everything here is saved with the .blend file. Device and models may say "As in Preferences" to
follow the add-on's preferences.
"""


import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    FloatVectorProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from .runs import PALETTE, PRESETS, RELIEF_DEFAULT, RELIEF_LEVELS, RELIEF_MAX

# The times: a 40k-face mesh with located parts on a 2-core laptop CPU (docs/performance.md, docs/settings.md)
PRESET_HELP = {
    "fast": "CPU-friendly: 300 iterations, 3 views, few crops. On a 2-core laptop CPU about 4 minutes with the "
            "tiny models; with the real ones 3-6 where the CPU has native bf16, 10 without",
    "faithful": "3DStyleGLIP's schedule: 1500 iterations, grounding-space part loss (GPU)",
    "text2mesh": "Text2Mesh's schedule: 1500 iterations, 5 views, many crops (GPU)",
    "preview": "A first look: 60 iterations, 2 views. On a 2-core laptop CPU under a minute with the tiny models, "
               "1-2.5 with the real ones",
}
DEVICE_ITEMS = [
    ('auto', "Auto", "The GPU when PyTorch sees one, else the CPU"),
    ('cpu', "CPU", "Always the CPU"),
    ('cuda', "CUDA", "An NVIDIA GPU (needs a CUDA build of PyTorch)"),
    ('mps', "Apple GPU", "The GPU of a Mac with Apple silicon (Metal); operations it lacks run on the CPU"),
]
MODEL_ITEMS = [
    ('tiny', "Tiny (offline)", "The small models shipped with Partstyle: a small vocabulary, no download"),
    ('default', "Hub default", "The real CLIP, Grounding DINO and SAM 2 from the Hugging Face cache (Download models "
                               "in the preferences fetches them once)"),
    ('folder', "Local folder", "Models in a folder on this computer"),
]
_FOLLOW = ('PREFERENCES', "As in Preferences", "Use the add-on's preferences")
#: Relief levels (engine.relief): identifiers are the engine's names; 'custom' takes the amount.
RELIEF_ITEMS = [
    ('none', "None", "No relief: the surface keeps its exact shape, only the colors change"),
    ('subtle', "Subtle", f"Color first: the surface may move by {RELIEF_LEVELS['subtle']:g} of the local thickness; "
     "silhouettes stay as they were to the eye"),
    ('strong', "Strong", f"Relief the style can carve: up to {RELIEF_LEVELS['strong']:g} of the local thickness, "
     "short of opposite walls meeting"),
    ('custom', "Custom", f"Your own share of the local thickness, from 0 to {RELIEF_MAX:g} (the amount next to it)"),
]
#: Baked maps (engine texture.size): identifiers are the size in texels, '0' is off.
MAP_SIZES = (512, 1024, 2048, 4096)
MAPS_ITEMS = [('0', "Off", "No maps: the result is per vertex (colors and displacement), as always"),
              *((str(n), f"{n} px", f"Bake base color, normal and displacement maps of {n} x {n} texels on the "
                 "object's UV map, and a material that uses them (needs a UV map)") for n in MAP_SIZES)]
_SAME_AS_RUN = ('run', "Same as the run", "Not set for this part: it gets the run's Relief (Stylize settings)")
_AMOUNT_HELP = ("The share of the local thickness the surface may move (Custom relief): "
                + ", ".join(f"{value:g} {name}" for name, value in RELIEF_LEVELS.items()))


def _relief_value(level: str, amount: float) -> str | float:
    return round(float(amount), 6) if level == 'custom' else level  # the float32 amount, as typed


def _is_picture(self, image) -> bool:
    """Images with pixels of their own: not the Render Result or the compositor's Viewer Node."""
    return image.type not in {'RENDER_RESULT', 'COMPOSITING'}


def _palette_color(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]


class PARTSTYLE_PG_part(bpy.types.PropertyGroup):
    """One row: a part of the object and the style it should get."""

    part: StringProperty(name="Part", description="The part's name, e.g. 'shade' (its vertex group is part:<name>)")
    style: StringProperty(name="Style", description="The look of this part, e.g. 'woven linen'")
    lock: BoolProperty(name="Lock", description="Keep this part's current result while restyling the others")
    color: FloatVectorProperty(name="Swatch", subtype='COLOR', size=3, min=0.0, max=1.0, default=(0.8, 0.1, 0.1),
                               description="The color this part's weights are shown in (Show parts)")
    relief: EnumProperty(name="Relief", items=[_SAME_AS_RUN, *RELIEF_ITEMS], default='run',
                         description="How far this part's surface may move; 'Same as the run' leaves it to the "
                         "run's Relief")
    relief_custom: FloatProperty(name="Relief amount", min=0.0, max=RELIEF_MAX, default=RELIEF_LEVELS["subtle"],
                                 step=1, precision=2, description=_AMOUNT_HELP)
    image: PointerProperty(type=bpy.types.Image, name="Image", poll=_is_picture,
                           description="A reference picture for this part's look, beside its words (an open image, "
                           "or a file opened with the folder button); the run's Image weight sets its share")

    def relief_value(self) -> str | float | None:
        """This row's relief for the engine (a level's name or the custom amount), None when not set."""
        return None if self.relief == 'run' else _relief_value(self.relief, self.relief_custom)


class PARTSTYLE_PG_settings(bpy.types.PropertyGroup):
    """The panel's state, saved with the scene."""

    prompt: StringProperty(
        name="Prompt", description="Styles per part, e.g. 'pottery base, gold tube, linen shade', "
        "or one style for the whole object, e.g. 'a lamp made of gold'")
    parts: CollectionProperty(type=PARTSTYLE_PG_part)
    active_part: IntProperty(name="Active part", default=0)
    use_vertex_groups: BoolProperty(
        name="Use my vertex groups", description="Take the parts from the part:<name> vertex groups "
        "(painted or located earlier) instead of finding them with the grounding model")
    preset: EnumProperty(name="Preset", items=[(p, p.capitalize(), PRESET_HELP.get(p, p)) for p in PRESETS],
                         default="fast")
    iterations: IntProperty(name="Iterations", min=0, max=100000, default=0,
                            description="Optimization steps; 0 keeps the preset's")
    seed: IntProperty(name="Seed", min=0, default=0, description="Same seed, same result on the same machine")
    relief: EnumProperty(name="Relief", items=RELIEF_ITEMS, default=RELIEF_DEFAULT,
                         description="How far the styled surface may move, as a share of the shape's own local "
                         "thickness (a part row may set its own)")
    relief_custom: FloatProperty(name="Relief amount", min=0.0, max=RELIEF_MAX, default=RELIEF_LEVELS["subtle"],
                                 step=1, precision=2, description=_AMOUNT_HELP)
    maps: EnumProperty(name="Maps", items=MAPS_ITEMS, default='0',
                       description="Bake the style into image maps on the object's UV map (render-active UV map) "
                       "and give it a material using them; the engine's texture.size")
    device: EnumProperty(name="Device", items=[_FOLLOW, *DEVICE_ITEMS], default='PREFERENCES')
    models: EnumProperty(name="Models", items=[_FOLLOW, *MODEL_ITEMS], default='PREFERENCES')
    model_folder: StringProperty(name="Model folder", subtype='DIR_PATH',
                                 description="Folder with clip/ and grounding/ model folders (Models: Local folder)")
    image_weight: FloatProperty(
        name="Image weight", min=0.0, max=1.0, default=0.5, subtype='FACTOR',
        description="Share of the picture beside the words in the target of a part with an image (0: the words "
        "only, 1: the picture only); the engine's guidance.image_weight, used only when a row has an image")
    overrides: StringProperty(
        name="Settings", description="Extra engine settings as key=value separated by spaces, e.g. "
        "'views.count=2 optim.learning_rate=0.002' (see the engine's settings list)")

    def relief_value(self) -> str | float:
        """The run's relief for the engine: a level's name, or the custom amount."""
        return _relief_value(self.relief, self.relief_custom)

    def maps_size(self) -> int:
        """The maps' size in texels for the engine's ``texture.size`` (0: off)."""
        return int(self.maps)

    def add_row(self, part: str = "", style: str = "") -> PARTSTYLE_PG_part:
        row = self.parts.add()
        row.part, row.style = part, style
        row.color = _palette_color(len(self.parts) - 1)
        self.active_part = len(self.parts) - 1
        return row


classes = (PARTSTYLE_PG_part, PARTSTYLE_PG_settings)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    bpy.types.Scene.partstyle = PointerProperty(type=PARTSTYLE_PG_settings)


def unregister() -> None:
    del bpy.types.Scene.partstyle
    _unregister_classes()
