"""The add-on's operators. Thin: they read the panel into a :class:`runs.Request`, start a job, and
report what came back. Every engine or add-on error ends as ``self.report({'ERROR'}, message)``.

Locate parts and Stylize run in two ways:

- ``invoke`` (a click in the UI): the engine runs on a worker thread; the operator stays modal,
  drains the job's queue on a window timer (progress, live preview), and Esc cancels. Blender stays
  responsive. The writeback happens when the job ends, inside this one operator, so one undo step
  removes it.
- ``execute`` (scripts, ``--background``): the same job, synchronously.
"""


import bpy
from bpy.props import BoolProperty

from . import apply, bridge, engine_link, jobs, model_downloads, nodes, preferences, runs

TIMER_SECONDS = 0.2


def _user_errors():
    return engine_link.user_errors()


def _mesh_poll(cls, context) -> bool:
    obj = context.active_object
    if obj is None or obj.type != 'MESH':
        cls.poll_message_set("Select a mesh object (it must be the active object)")
        return False
    if obj.mode == 'EDIT':
        cls.poll_message_set("Leave Edit Mode first (Tab): Partstyle reads and writes the mesh in Object Mode")
        return False
    return True


def _run_poll(cls, context) -> bool:
    if not _mesh_poll(cls, context):
        return False
    job = jobs.current()
    if job is not None:
        cls.poll_message_set(f"{job.kind} is running on '{job.object_name}'; wait for it or cancel it (Esc)")
        return False
    state = engine_link.status()
    if not state.ok:
        cls.poll_message_set(state.summary())
        return False
    settings = context.scene.partstyle
    if not settings.parts and not settings.prompt.strip():
        cls.poll_message_set("Write a prompt (or add part rows) first")
        return False
    return True


def request_from(context, *, styles: bool = True) -> runs.Request:
    """The panel's state as a run request for the active object.

    With part rows, the rows are the prompt (sent as parsed pairs); without, the prompt field is.
    Relief: the run's, and the rows' own where a row does not say "Same as the run". Images: the
    pixels of each unlocked row's image (a locked part keeps its earlier look, so its image is not
    used), with the scene's Image weight as ``guidance.image_weight`` before the typed settings.
    ``styles=False`` (Locate parts) needs only the rows' part names.
    """
    settings = context.scene.partstyle
    rows = list(settings.parts)
    names = tuple(" ".join(row.part.split()) for row in rows)
    for number, (name, row) in enumerate(zip(names, rows, strict=True), 1):
        if not name:
            raise engine_link.AddonError(f"Row {number} has no part name; fill it in or remove the row.")
        if styles and not row.style.strip():
            raise engine_link.AddonError(f"Row {number} ({name}) has no style; write one or remove the row.")
    pairs = tuple((n, row.style) for n, row in zip(names, rows, strict=True)) if styles else ()
    own_relief = tuple((n, level) for n, row in zip(names, rows, strict=True)
                       if (level := row.relief_value()) is not None) if styles else ()
    images = tuple((n, bridge.image_pixels(row.image, what=f"Row {number} ({n})"))
                   for number, (n, row) in enumerate(zip(names, rows, strict=True), 1)
                   if row.image is not None and not row.lock) if styles else ()
    weight = (f"guidance.image_weight={round(float(settings.image_weight), 6)}",) if images else ()
    return runs.Request(
        object_name=context.active_object.name, prompt=settings.prompt, pairs=pairs, part_names=names,
        lock=tuple(n for n, row in zip(names, rows, strict=True) if row.lock), use_groups=settings.use_vertex_groups,
        preset=settings.preset, iterations=settings.iterations, seed=settings.seed, texture_size=settings.maps_size(),
        overrides=weight + tuple(settings.overrides.split()), swatches=tuple(tuple(row.color) for row in rows),
        relief=settings.relief_value(), part_relief=own_relief, images=images,
        **preferences.effective(settings, context))


def show_vertex_colors(context) -> None:
    """Solid-shaded 3D views show the active color attribute (where the results are)."""
    screen = getattr(context, "screen", None)
    for area in screen.areas if screen else ():
        for space in area.spaces:
            if space.type == 'VIEW_3D' and space.shading.type == 'SOLID':
                space.shading.color_type = 'VERTEX'


def redraw(context, kinds=('VIEW_3D',)) -> None:
    """Redraw the areas of the given types (the sidebar's progress, the preferences' download bar)."""
    manager = getattr(context, "window_manager", None)
    for window in manager.windows if manager else ():
        for area in window.screen.areas:
            if area.type in kinds:
                area.tag_redraw()


class _JobOperator:
    """An operator that runs one job: to the end in ``--background`` (and from scripts), else modal
    with a timer that drains the job's messages, Esc cancelling it. Subclasses start the job
    (:meth:`_start`, setting ``self._job``), conclude it (:meth:`_finish`) and put things back when
    Blender ends the modal run (:meth:`_abandon`)."""

    redraw_kinds = ('VIEW_3D',)

    def _start(self, context, threaded: bool) -> bool:
        raise NotImplementedError

    def _finish(self, context):
        raise NotImplementedError

    def _abandon(self) -> None:
        jobs.release(self._job)

    def _drain(self, context) -> str:
        return jobs.drain(self._job)

    def execute(self, context):
        if not self._start(context, threaded=False):
            return {'CANCELLED'}
        jobs.drain(self._job)
        return self._finish(context)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        if not self._start(context, threaded=True):
            return {'CANCELLED'}
        manager = context.window_manager
        self._timer = manager.event_timer_add(TIMER_SECONDS, window=context.window)
        manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        if event.type == 'ESC' and event.value == 'PRESS':
            self._job.cancel()
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        state = self._drain(context)
        redraw(context, self.redraw_kinds)
        if state == jobs.RUNNING:
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(context)

    def cancel(self, context):
        """Blender ends the modal run (a file is loaded, the window closes): stop and put back."""
        context.window_manager.event_timer_remove(self._timer)
        self._job.cancel()
        if jobs.current() is self._job:  # else a new file was loaded and abandoned it already
            self._abandon()


class _RunOperator(_JobOperator):
    """Shared by Locate parts and Stylize: a run on the active object, previewed while it goes."""

    bl_options = {'REGISTER', 'UNDO'}
    run_class = runs.StyleRun
    needs_styles = True

    @classmethod
    def poll(cls, context):
        return _run_poll(cls, context)

    def _start(self, context, threaded: bool):
        try:
            request = request_from(context, styles=self.needs_styles)
            self._run = self.run_class(request)
            self._job = runs.start(self._run, threaded=threaded)
        except _user_errors() as exc:
            self.report({'ERROR'}, str(exc))
            return False
        warning = runs.vocabulary_warning(request)
        if warning:
            self.report({'WARNING'}, warning)
        return True

    def _drain(self, context) -> str:
        def preview(preview_event):
            self._run.preview(preview_event)
            show_vertex_colors(context)

        return jobs.drain(self._job, preview)

    def _abandon(self) -> None:
        jobs.release(self._job)
        self._run.restore()

    def _finish(self, context):
        level, message = runs.conclude(self._job, self._run)
        self.report({level}, message)
        redraw(context)
        if self._job.state == jobs.FINISHED and level != 'ERROR':
            if not bpy.app.background:
                show_vertex_colors(context)
            return {'FINISHED'}
        return {'CANCELLED'}


class PARTSTYLE_OT_stylize(_RunOperator, bpy.types.Operator):
    """Stylize the active object's parts from the prompt (Esc cancels)"""

    bl_idname = "partstyle.stylize"
    bl_label = "Stylize"
    run_class = runs.StyleRun

    @classmethod
    def poll(cls, context):
        if not nodes.has_node_interface():
            cls.poll_message_set("Stylize needs Blender 4.2 or later (this Blender can show the panel only)")
            return False
        return _run_poll(cls, context)


class PARTSTYLE_OT_locate(_RunOperator, bpy.types.Operator):
    """Find the prompt's parts on the active object and store one part:<name> vertex group per part"""

    bl_idname = "partstyle.locate"
    bl_label = "Locate parts"
    run_class = runs.LocateRun
    needs_styles = False

    @classmethod
    def poll(cls, context):
        if not _run_poll(cls, context):
            return False
        if context.scene.partstyle.use_vertex_groups:
            cls.poll_message_set("'Use my vertex groups' is on: the parts come from your part:<name> groups")
            return False
        return True


class PARTSTYLE_OT_download_models(_JobOperator, bpy.types.Operator):
    """Download the real models (CLIP, Grounding DINO, SAM 2) at their pinned revisions (Esc cancels)"""

    bl_idname = "partstyle.download_models"
    bl_label = "Download models"
    redraw_kinds = ('PREFERENCES', 'VIEW_3D')

    @classmethod
    def poll(cls, context):
        job = jobs.current()
        if job is not None:
            cls.poll_message_set(f"{job.kind} is running; wait for it or cancel it")
            return False
        if not preferences.online_access():
            cls.poll_message_set("Blender's Allow Online Access is off (Preferences > System > Network): "
                                 "nothing may be downloaded")
            return False
        return True

    def _start(self, context, threaded: bool) -> bool:
        try:
            self._job = model_downloads.start(threaded=threaded)
        except _user_errors() as exc:
            self.report({'ERROR'}, str(exc))
            return False
        return True

    def _finish(self, context):
        level, message = model_downloads.conclude(self._job)
        self.report({level}, message)
        redraw(context, self.redraw_kinds)
        return {'FINISHED'} if level == 'INFO' else {'CANCELLED'}


class PARTSTYLE_OT_cancel(bpy.types.Operator):
    """Stop the running Partstyle job; the object is left as it was before"""

    bl_idname = "partstyle.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        if jobs.current() is None:
            cls.poll_message_set("Nothing is running")
            return False
        return True

    def execute(self, context):
        job = jobs.current()
        job.cancel()
        self.report({'INFO'}, f"Cancelling {job.kind}" + (f" on '{job.object_name}'..." if job.object_name else "..."))
        return {'FINISHED'}


class PARTSTYLE_OT_clear(bpy.types.Operator):
    """Remove what Partstyle wrote on the active object: colors, displacement, modifier, material, part groups"""

    bl_idname = "partstyle.clear"
    bl_label = "Clear results"
    bl_options = {'REGISTER', 'UNDO'}

    keep_groups: BoolProperty(name="Keep part groups", description="Leave the part:<name> vertex groups")

    @classmethod
    def poll(cls, context):
        if not _mesh_poll(cls, context):
            return False
        job = jobs.current()
        if job is not None and job.object_name == context.active_object.name:
            cls.poll_message_set("A run is in progress on this object; cancel it first")
            return False
        return True

    def execute(self, context):
        removed = runs.clear(context.active_object, keep_groups=self.keep_groups)
        self.report({'INFO'}, f"Removed {', '.join(removed)}." if removed else "Nothing to clear.")
        return {'FINISHED'}


class PARTSTYLE_OT_apply_as_new(bpy.types.Operator):
    """Make a new object with the displacement in its vertex positions and the Partstyle colors for rendering"""

    bl_idname = "partstyle.apply_as_new"
    bl_label = "Apply as new object"
    bl_description = ("Make a new object from the styled one: its mesh with the displacement applied to the "
                      "positions and the Partstyle colors as the render colors, without the modifier, so exporters "
                      "(glTF, FBX, USD) keep both. The original stays as it is")
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if not _mesh_poll(cls, context):
            return False
        obj = context.active_object
        job = jobs.current()
        if job is not None and job.object_name == obj.name:
            cls.poll_message_set("A run is in progress on this object; wait for it or cancel it first")
            return False
        if apply.styled_colors(obj) is None:
            cls.poll_message_set(f"'{obj.name}' has no Partstyle result yet; Stylize it first")
            return False
        return True

    def execute(self, context):
        try:
            copy, notes = apply.apply_as_new(context.active_object, context)
        except _user_errors() as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'WARNING'} if notes else {'INFO'}, " ".join([f"Made '{copy.name}'.", *notes]))
        return {'FINISHED'}
