"""The add-on's preferences: where models come from, whether they may be downloaded, the device,
and a check of the engine's installation."""


import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import engine_link, jobs, model_downloads
from .properties import DEVICE_ITEMS, MODEL_ITEMS

ADDON_ID = __package__


class PARTSTYLE_AP_preferences(bpy.types.AddonPreferences):
    """Model source, download permission, device, engine check."""

    bl_idname = ADDON_ID

    model_source: EnumProperty(name="Models", items=MODEL_ITEMS, default='tiny')
    model_folder: StringProperty(name="Model folder", subtype='DIR_PATH',
                                 description="A folder with clip/ and grounding/ model folders")
    allow_download: BoolProperty(
        name="Allow downloading models", default=False,
        description="Let 'Hub default' download missing models from the Hugging Face hub "
        "(also needs Blender's Allow Online Access, in Preferences > System > Network)")
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default='auto')

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "model_source")
        if self.model_source == 'folder':
            layout.prop(self, "model_folder")
        layout.prop(self, "allow_download")
        if self.allow_download and not online_access():
            layout.label(text="Blender's Allow Online Access is off: nothing will be downloaded.", icon='INFO')
        layout.prop(self, "device")
        state = engine_link.status()
        if state.package and state.ok:
            draw_model_sources(layout.box())
        draw_engine_status(layout.box())


def draw_engine_status(layout) -> None:
    """The engine check: versions when ready, else what is wrong and what to do."""
    state = engine_link.status()
    row = layout.row()
    row.label(text="Engine" + (" ready" if state.ok else " not ready"), icon='CHECKMARK' if state.ok else 'ERROR')
    row.operator("partstyle.check_engine", text="Check again", icon='FILE_REFRESH')
    col = layout.column(align=True)
    if state.shadowed:
        col.label(text=state.shadowed[:160], icon='ERROR')
    if state.ok:
        for name, version in state.versions.items():
            col.label(text=f"{name} {version}")
        return
    if not state.package:
        col.label(text="The engine is not in this add-on: reinstall the Partstyle extension.")
        return
    for problem in state.problems():
        col.label(text=problem, icon='ERROR')
    if state.bundled:
        col.label(text="Fix: " + state.fix())
        return
    col.label(text="This add-on carries no packages (a development build). Run this in a terminal, then restart "
                   "Blender:")
    col.operator("partstyle.copy_install_command", text="Copy the install command", icon='COPYDOWN')
    col.label(text=engine_link.install_command())


def draw_model_sources(layout) -> None:
    """The real models: each with its pinned revision, download size and whether it is here; the
    download button, or the running download's bar and Cancel."""
    layout.label(text="Real models (Hub default)", icon='WORLD')
    try:
        sources = model_downloads.sources()
    except engine_link.user_errors() as exc:
        layout.label(text=str(exc)[:160], icon='ERROR')
        return
    col = layout.column(align=True)
    for role, where, size, here in sources:
        col.label(text=f"{role}: {where}, {size}" + ("" if here else " (not downloaded)"),
                  icon='CHECKMARK' if here else 'IMPORT')
    job = jobs.current()
    if job is not None and job.kind == model_downloads.KIND:
        label = "Cancelling..." if job.cancelling else job.progress.text()
        if hasattr(layout, "progress"):  # Blender 4.0+
            layout.progress(factor=job.progress.fraction, type='BAR', text=label)
        else:
            layout.label(text=label)
        layout.operator("partstyle.cancel", icon='CANCEL')
        return
    if not all(here for *_, here in sources):
        size = model_downloads.missing_size()
        layout.operator("partstyle.download_models", text=f"Download models ({size})" if size else "Download models",
                        icon='IMPORT')
        if not online_access():
            layout.label(text="Turn on Allow Online Access (Preferences > System > Network) to download.",
                         icon='INFO')


def online_access() -> bool:
    """Blender's "Allow Online Access" (always true before 4.2, which had no such switch)."""
    return bool(getattr(bpy.app, "online_access", True))


def get(context=None):
    """The preferences, or None when the add-on runs without being enabled (tests, the CLI)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def effective(settings, context=None) -> dict:
    """Device, models and download permission for a run: the panel's choice or the preferences'.

    Returns ``{"device": str, "models": str, "allow_download": bool}``.
    """
    prefs = get(context)
    device = settings.device if settings.device != 'PREFERENCES' else (prefs.device if prefs else 'auto')
    source = settings.models if settings.models != 'PREFERENCES' else (prefs.model_source if prefs else 'tiny')
    folder = settings.model_folder if settings.models == 'folder' else (prefs.model_folder if prefs else "")
    if source == 'folder':
        if not folder:
            raise engine_link.AddonError("Models is set to Local folder but no folder is chosen; pick one.")
        source = bpy.path.abspath(folder)
    allow = bool(prefs and prefs.allow_download) and online_access()
    return {"device": device, "models": source, "allow_download": allow}


classes = (PARTSTYLE_AP_preferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
