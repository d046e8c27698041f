"""Partstyle for Blender: restyle the parts of a mesh from one text prompt.

register/unregister, nothing else. The engine (and PyTorch) are imported only when an operator
needs them, so Blender starts fast and the add-on can say what is missing instead of failing to load.
"""

bl_info = {  # for Blender's legacy add-on loader; extensions (4.2+) read blender_manifest.toml
    "name": "Partstyle",
    "author": "Partstyle developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),  # the oldest it loads in: the panel only (docs/blender.md, "A real window")
    "location": "3D Viewport > Sidebar > Partstyle",
    "description": "Restyle parts of a mesh from one text prompt",
    "category": "Mesh",
}

import bpy

from . import cli, jobs, operators, panels, preferences, prompt_ops, properties

_modules = (properties, preferences)
_register_operators, _unregister_operators = bpy.utils.register_classes_factory((
    operators.PARTSTYLE_OT_stylize, operators.PARTSTYLE_OT_locate, operators.PARTSTYLE_OT_cancel,
    operators.PARTSTYLE_OT_clear, operators.PARTSTYLE_OT_apply_as_new, operators.PARTSTYLE_OT_download_models,
    prompt_ops.PARTSTYLE_OT_parse_prompt,
    prompt_ops.PARTSTYLE_OT_part_add, prompt_ops.PARTSTYLE_OT_part_remove, prompt_ops.PARTSTYLE_OT_show_parts,
    prompt_ops.PARTSTYLE_OT_paint_part, prompt_ops.PARTSTYLE_OT_check_engine,
    prompt_ops.PARTSTYLE_OT_copy_install_command,
))


@bpy.app.handlers.persistent
def _on_load_pre(*_args):
    """A file is being loaded: a running job's object is going away; stop it."""
    jobs.abandon()


#: The handle of the ``-c partstyle`` command while the add-on is registered (Blender's API is global).
_command = {}


def register():
    for module in _modules:
        module.register()
    _register_operators()
    panels.register()
    bpy.app.handlers.load_pre.append(_on_load_pre)
    _command["handle"] = cli.register_command()


def unregister():
    cli.unregister_command(_command.pop("handle", None))
    jobs.abandon()
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    panels.unregister()
    _unregister_operators()
    for module in reversed(_modules):
        module.unregister()
