"""Operators for the prompt and its part rows, the parts view, and the engine check.

None of them runs the engine's models; parsing uses the engine's prompt grammar, which needs only
numpy, so rows can be edited even before PyTorch is installed.
"""


import bpy
from bpy.props import IntProperty

from . import bridge, engine_link, runs
from .operators import _mesh_poll


def _engine_poll(cls) -> bool:
    if not engine_link.status().package:
        cls.poll_message_set(engine_link.status().summary())
        return False
    return True


class PARTSTYLE_OT_parse_prompt(bpy.types.Operator):
    """Split the prompt into editable part rows (part, style, relief, lock, swatch, image)"""

    bl_idname = "partstyle.parse_prompt"
    bl_label = "Parse prompt"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if not context.scene.partstyle.prompt.strip():
            cls.poll_message_set("Write a prompt first, e.g. 'pottery base, gold tube, linen shade'")
            return False
        return _engine_poll(cls)

    def execute(self, context):
        settings = context.scene.partstyle
        try:
            parsed = engine_link.load("prompt", light=True).parse_prompt(settings.prompt)
        except engine_link.user_errors() as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        kept = {bridge.normalize_part(row.part): (row.lock, tuple(row.color), row.relief, row.relief_custom,
                                                  row.image) for row in settings.parts}
        settings.parts.clear()
        if parsed.is_holistic:
            self.report({'INFO'}, "The prompt describes the whole object: it will be stylized as one part.")
            return {'FINISHED'}
        for pair in parsed.pairs:
            row = settings.add_row(pair.part, pair.style)
            if pair.part in kept:
                row.lock, row.color, row.relief, row.relief_custom, row.image = kept[pair.part]
        settings.active_part = 0
        self.report({'INFO'}, f"{len(parsed.pairs)} part(s): {', '.join(parsed.parts)}.")
        return {'FINISHED'}


class PARTSTYLE_OT_part_add(bpy.types.Operator):
    """Add a part row"""

    bl_idname = "partstyle.part_add"
    bl_label = "Add part"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        context.scene.partstyle.add_row()
        return {'FINISHED'}


class PARTSTYLE_OT_part_remove(bpy.types.Operator):
    """Remove the selected part row"""

    bl_idname = "partstyle.part_remove"
    bl_label = "Remove part"
    bl_options = {'REGISTER', 'UNDO'}

    index: IntProperty(name="Row", default=-1, description="The row to remove (-1: the selected one)")

    @classmethod
    def poll(cls, context):
        if not context.scene.partstyle.parts:
            cls.poll_message_set("There are no part rows")
            return False
        return True

    def execute(self, context):
        settings = context.scene.partstyle
        index = settings.active_part if self.index < 0 else self.index
        if not 0 <= index < len(settings.parts):
            self.report({'ERROR'}, f"There is no row {index + 1}.")
            return {'CANCELLED'}
        settings.parts.remove(index)
        settings.active_part = min(index, len(settings.parts) - 1)
        return {'FINISHED'}


class PARTSTYLE_OT_show_parts(bpy.types.Operator):
    """Color the active object by its part:<name> groups, each part in its row's swatch color"""

    bl_idname = "partstyle.show_parts"
    bl_label = "Show parts"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if not _mesh_poll(cls, context):
            return False
        if not context.scene.partstyle.parts:
            cls.poll_message_set("Add part rows first (Parse prompt)")
            return False
        return True

    def execute(self, context):
        rows = list(context.scene.partstyle.parts)
        try:
            message = runs.show_parts(context.active_object, [r.part for r in rows], [tuple(r.color) for r in rows])
        except engine_link.user_errors() as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        if not bpy.app.background:
            from .operators import show_vertex_colors
            show_vertex_colors(context)
        self.report({'INFO'}, message)
        return {'FINISHED'}


class PARTSTYLE_OT_paint_part(bpy.types.Operator):
    """Make this part's vertex group active and switch to Weight Paint to see or edit it"""

    bl_idname = "partstyle.paint_part"
    bl_label = "Paint part"
    bl_options = {'REGISTER', 'UNDO'}

    index: IntProperty(name="Row", default=0)

    @classmethod
    def poll(cls, context):
        return _mesh_poll(cls, context)

    def execute(self, context):
        obj = context.active_object
        rows = context.scene.partstyle.parts
        if not 0 <= self.index < len(rows):
            self.report({'ERROR'}, f"There is no row {self.index + 1}.")
            return {'CANCELLED'}
        name = bridge.group_name(rows[self.index].part)
        group = obj.vertex_groups.get(name)
        if group is None:
            self.report({'ERROR'}, f"'{obj.name}' has no vertex group '{name}'; run Locate parts or add it.")
            return {'CANCELLED'}
        obj.vertex_groups.active_index = group.index
        if obj.mode != 'WEIGHT_PAINT':
            bpy.ops.object.mode_set(mode='WEIGHT_PAINT')
        return {'FINISHED'}


class PARTSTYLE_OT_check_engine(bpy.types.Operator):
    """Check again whether the engine and its dependencies (PyTorch, transformers) are installed"""

    bl_idname = "partstyle.check_engine"
    bl_label = "Check engine"

    def execute(self, context):
        state = engine_link.refresh()
        self.report({'INFO'} if state.ok else {'WARNING'}, state.summary())
        return {'FINISHED'}


class PARTSTYLE_OT_copy_install_command(bpy.types.Operator):
    """Copy the command that installs the engine's dependencies into Blender's Python"""

    bl_idname = "partstyle.copy_install_command"
    bl_label = "Copy install command"

    def execute(self, context):
        context.window_manager.clipboard = engine_link.install_command()
        self.report({'INFO'}, "Copied; run it in a terminal, then restart Blender.")
        return {'FINISHED'}
