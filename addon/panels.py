"""The 3D Viewport sidebar tab "Partstyle". Draws only: every action is an operator."""

from __future__ import annotations

import bpy

from . import bridge, engine_link, jobs, nodes, preferences, runs


class PARTSTYLE_UL_parts(bpy.types.UIList):
    """A part row: swatch, part (an image icon when the row has a reference image), style, relief,
    lock, and a button to see its weights. The selected row's image is picked under the list."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        swatch = row.row(align=True)
        swatch.ui_units_x = 1.2
        swatch.prop(item, "color", text="")
        row.prop(item, "part", text="", emboss=False, icon='IMAGE_DATA' if item.image is not None else 'NONE')
        row.prop(item, "style", text="")
        relief = row.row(align=True)
        relief.ui_units_x = 5.0 if item.relief == 'custom' else 3.0
        relief.prop(item, "relief", text="")
        if item.relief == 'custom':
            relief.prop(item, "relief_custom", text="")
        row.prop(item, "lock", text="", icon='LOCKED' if item.lock else 'UNLOCKED', emboss=False)
        paint = row.operator("partstyle.paint_part", text="", icon='GROUP_VERTEX', emboss=False)
        paint.index = index


class _Panel:
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Partstyle"


class PARTSTYLE_PT_main(_Panel, bpy.types.Panel):
    """The prompt and its part rows."""

    bl_label = "Partstyle"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.partstyle
        state = engine_link.status()
        if not state.ok:
            box = layout.box()
            box.label(text="Engine not ready", icon='ERROR')
            for problem in state.problems() or [state.summary()]:
                box.label(text=problem[:120])
            if state.bundled:
                box.label(text="Reinstall the Partstyle zip for this platform (see Preferences).")
            elif state.package:
                box.operator("partstyle.copy_install_command", icon='COPYDOWN')
        obj = context.active_object
        layout.label(text=f"Object: {obj.name}" if obj is not None and obj.type == 'MESH' else "Select a mesh object",
                     icon='MESH_DATA' if obj is not None and obj.type == 'MESH' else 'INFO')
        row = layout.row(align=True)
        row.prop(settings, "prompt", text="")
        row.operator("partstyle.parse_prompt", text="", icon='SORTALPHA')
        row = layout.row()
        row.template_list("PARTSTYLE_UL_parts", "", settings, "parts", settings, "active_part", rows=3)
        col = row.column(align=True)
        col.operator("partstyle.part_add", text="", icon='ADD')
        col.operator("partstyle.part_remove", text="", icon='REMOVE')
        if not settings.parts and settings.prompt.strip():
            layout.label(text="No rows: the prompt is used as written.", icon='INFO')
        draw_row_image(layout, settings)
        draw_unknown_words(layout, context, settings)


def draw_row_image(layout, settings) -> None:
    """The selected row's reference image (pick an open image, or open a file with the folder
    button), and the Image weight when any row has an image."""
    if not 0 <= settings.active_part < len(settings.parts):
        return
    row = settings.parts[settings.active_part]
    col = layout.column(align=True)
    col.label(text=f"Image for {' '.join(row.part.split()) or 'this row'}:", icon='IMAGE_DATA')
    col.template_ID(row, "image", open="image.open")
    if row.image is not None and row.lock:
        col.label(text="Locked: the part keeps its look; its image is not used.", icon='INFO')
    if any(r.image is not None for r in settings.parts):
        col.prop(settings, "image_weight", slider=True)


def draw_unknown_words(layout, context, settings) -> None:
    """With the tiny models, the prompt's words they were not trained on, and how to get any words."""
    words = unknown_words(context, settings)
    if words:
        col = layout.column(align=True)
        col.label(text=f"The tiny models do not know: {', '.join(words)}", icon='ERROR')
        col.label(text="Choose Hub default models (Preferences: Download models) for any words.")


def unknown_words(context, settings) -> tuple[str, ...]:
    """The words of the prompt (or the rows) that the run's models were not trained on; () when the
    models are not the tiny ones or the engine cannot tell."""
    text = runs.prompt_text([(row.part, row.style) for row in settings.parts], settings.prompt)
    try:
        return runs.unknown_words(text, preferences.effective(settings, context)["models"])
    except engine_link.user_errors():
        return ()


class PARTSTYLE_PT_parts(_Panel, bpy.types.Panel):
    """Where the parts are: located, or the user's own vertex groups."""

    bl_label = "Parts"
    bl_parent_id = "PARTSTYLE_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.partstyle
        layout.prop(settings, "use_vertex_groups")
        row = layout.row(align=True)
        row.operator("partstyle.locate", icon='VIEWZOOM')
        row.operator("partstyle.show_parts", icon='COLOR')
        obj = context.active_object
        confidence = bridge.read_confidence(obj) if obj is not None and obj.type == 'MESH' else {}
        if confidence:
            col = layout.column(align=True)
            col.label(text="Located with confidence:")
            for name, value in confidence.items():
                col.label(text=f"{name}: {value:.0%}", icon='CHECKMARK' if value >= 0.5 else 'ERROR')


class PARTSTYLE_PT_stylize(_Panel, bpy.types.Panel):
    """Settings of a run, the run itself, its progress."""

    bl_label = "Stylize"
    bl_parent_id = "PARTSTYLE_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.partstyle
        col = layout.column()
        col.use_property_split = True
        col.prop(settings, "preset")
        col.prop(settings, "iterations")
        col.prop(settings, "seed")
        col.prop(settings, "relief")
        if settings.relief == 'custom':
            col.prop(settings, "relief_custom", text="Amount")
        col.prop(settings, "maps")
        col.prop(settings, "device")
        col.prop(settings, "models")
        if settings.models == 'folder':
            col.prop(settings, "model_folder")
        col.prop(settings, "overrides")
        job = jobs.current()
        if job is None:
            estimate = runs.memory_estimate(context.active_object, settings)
            if estimate:
                layout.label(text=estimate, icon='INFO')
            layout.operator("partstyle.stylize", icon='BRUSH_DATA')
            return
        box = layout.box()
        box.label(text=f"{job.kind}: {job.object_name}", icon='TIME')
        label = "Cancelling..." if job.cancelling else job.progress.text()
        if job.progress.total and hasattr(box, "progress"):  # layout.progress: Blender 4.0+
            box.progress(factor=job.progress.fraction, type='BAR', text=label)
        else:
            box.label(text=label)
        box.operator("partstyle.cancel", icon='CANCEL')


class PARTSTYLE_PT_results(_Panel, bpy.types.Panel):
    """The displacement strength, Apply as new object and Clear results."""

    bl_label = "Results"
    bl_parent_id = "PARTSTYLE_PT_main"

    def draw(self, context):
        layout = self.layout
        obj = context.active_object
        modifier = nodes.displace_modifier(obj) if obj is not None and obj.type == 'MESH' else None
        key = nodes.strength_key(modifier) if modifier is not None else None
        if key is not None:
            layout.prop(modifier, f'["{key}"]', text="Displacement strength")
        else:
            layout.label(text="No result on this object yet.")
        layout.operator("partstyle.apply_as_new", icon='DUPLICATE')
        layout.operator("partstyle.clear", icon='TRASH')


classes = (PARTSTYLE_UL_parts, PARTSTYLE_PT_main, PARTSTYLE_PT_parts, PARTSTYLE_PT_stylize, PARTSTYLE_PT_results)


register, unregister = bpy.utils.register_classes_factory(classes)
