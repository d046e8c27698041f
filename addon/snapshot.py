"""Undoing a run that did not finish: what a live preview changes on a mesh, kept to put back. Main thread only."""

import bpy
import numpy as np

from . import bridge


class ColorSnapshot:
    """What a live preview changes on a mesh (the colors attribute ``name`` the run writes, the
    active and the render color attribute), kept so that a cancelled or failed run can put it back
    exactly."""

    def __init__(self, mesh: bpy.types.Mesh, name: str = bridge.COLOR_ATTRIBUTE):
        self.mesh_name = mesh.name
        self.name = name
        self.active = mesh.color_attributes.active_color_name
        self.render = mesh.color_attributes.default_color_name
        self.previous_key = mesh.get(bridge.PREVIOUS_ACTIVE_KEY)
        attribute = mesh.attributes.get(name)
        self.kind = None if attribute is None else (attribute.domain, attribute.data_type)
        self.raw = None
        if attribute is not None and attribute.data_type in ('FLOAT_COLOR', 'BYTE_COLOR'):
            self.raw = np.empty(len(attribute.data) * 4, np.float32)
            attribute.data.foreach_get("color", self.raw)

    def restore(self) -> None:
        """Put the mesh back as it was when the snapshot was taken (if the mesh still exists)."""
        mesh = bpy.data.meshes.get(self.mesh_name)
        if mesh is None:
            return
        attribute = mesh.attributes.get(self.name)
        if self.kind is None:
            bridge.remove_attribute(mesh, self.name)
        elif self.raw is not None:
            if attribute is None or (attribute.domain, attribute.data_type) != self.kind:
                bridge.remove_attribute(mesh, self.name)
                attribute = mesh.attributes.new(self.name, self.kind[1], self.kind[0])
            if len(attribute.data) * 4 == len(self.raw):
                attribute.data.foreach_set("color", self.raw)
        # Exactly the choices noted, none included: removing an attribute makes Blender pick another.
        # The active one by reference (``active_color_name``'s setter wrote the render choice in
        # Blender 3.5), then the render one by name (its setter is right in every version).
        colors = mesh.color_attributes
        if self.active in colors:
            colors.active_color = colors[self.active]
        elif not self.active:
            try:
                colors.active_color = None
            except (TypeError, ValueError, AttributeError):
                colors.active_color_name = ""
        if self.render == "" or self.render in colors:
            colors.default_color_name = self.render
        if self.previous_key is None:
            mesh.pop(bridge.PREVIOUS_ACTIVE_KEY, None)
        else:
            mesh[bridge.PREVIOUS_ACTIVE_KEY] = self.previous_key
        mesh.update()
