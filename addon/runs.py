"""What one click (or one headless object) runs: the request, the engine call, and the writeback.

A run has four steps, and only one of them leaves the main thread:

1. ``prepare()`` (main thread): read the object into arrays, check the prompt and the parts, snapshot
   what a live preview may change. Errors here are reported before anything starts.
2. ``work(on_event, cancel)`` (worker thread or synchronous): the engine's door, nothing else; it
   sees numpy arrays and plain values, never ``bpy``.
3. ``preview(event)`` (main thread, while running): the object's colors from a PreviewEvent.
4. ``apply(result)`` or ``restore()`` (main thread, at the end): the writeback in one go, or the
   object put back as it was. :func:`conclude` picks one and says what happened.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import bpy
import numpy as np

from . import baked, bridge, engine_link, jobs, nodes, preferences, snapshot

UP_AXIS = "views.up_axis=z"  # Blender's frame: Z up, front view looking along +Y
PRESETS = ("fast", "faithful", "text2mesh", "preview")  # engine.config.PRESETS (a test keeps them equal)
#: engine.relief's levels (a test keeps them equal): the share of the local thickness a surface may move.
RELIEF_LEVELS = {"none": 0.0, "subtle": 0.1, "strong": 0.25}
RELIEF_DEFAULT, RELIEF_MAX = "subtle", 0.3
PALETTE = ((0.8, 0.1, 0.1), (0.1, 0.5, 0.9), (0.95, 0.75, 0.05), (0.2, 0.7, 0.2), (0.6, 0.2, 0.8),
           (0.95, 0.45, 0.1), (0.1, 0.8, 0.8), (0.9, 0.3, 0.6))  # linear RGB, one per part row
_stores: dict = {}


@dataclass
class Request:
    """Everything a run needs, in plain values (built from the panel or from the command line).

    Attributes:
        object_name: the mesh object, by name.
        prompt: the prompt text (``pottery base, linen shade`` or one style for the whole object);
            used when there are no ``pairs``.
        pairs: the panel's part rows as ``(part, style)``: the prompt, already parsed, when given.
        part_names: the parts to locate (default: the prompt's).
        lock: parts that keep the object's current Partstyle result.
        use_groups: parts come from the ``part:<name>`` vertex groups instead of grounding.
        iterations: 0 keeps the preset's.
        models: ``tiny``, ``default`` or a folder; ``allow_download`` only matters for ``default``.
        overrides: ``key=value`` settings (``python -m engine settings`` lists them).
        swatches: linear RGB per part, in prompt order, for the parts view.
        relief: how far the styled surface may move, for the whole run: ``none``, ``subtle``,
            ``strong``, or a share of the local thickness from 0 to RELIEF_MAX (a number, or its text).
        part_relief: ``(part, level)`` for the parts whose relief differs from the run's (same values).
        texture_size: baked maps of this many texels a side on the object's UV map (the engine's
            ``texture.size``, before ``overrides``); 0 (off) bakes none unless ``overrides`` ask.
        images: ``(part, picture)`` reference images: from the panel a [H, W, 3] float32 sRGB array in
            0..1, top row first (:func:`.bridge.image_pixels`); from the command line a file path the
            engine reads. ``whole`` gives the whole object's. Mixed with the words by the
            ``guidance.image_weight`` setting.
    """

    object_name: str
    prompt: str = ""
    pairs: tuple[tuple[str, str], ...] = ()
    part_names: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()
    use_groups: bool = False
    preset: str = "fast"
    iterations: int = 0
    texture_size: int = 0
    seed: int = 0
    device: str = "auto"
    models: str = "tiny"
    allow_download: bool = False
    overrides: tuple[str, ...] = ()
    swatches: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)
    relief: str | float = RELIEF_DEFAULT
    part_relief: tuple[tuple[str, str | float], ...] = ()
    images: tuple[tuple[str, np.ndarray | str], ...] = field(default=(), compare=False)

    def settings(self, *, live: bool = True):
        """The engine's Settings: the preset, then seed, iterations, Blender's up axis, the maps' size
        (when not off), overrides.

        ``live``: previews about every 20th of the run (at most the preset's interval); without
        (synchronous runs) none, as nobody would see them.
        """
        config = engine_link.load("config", light=True)
        base = config.settings_for(self.preset)
        total = self.iterations or base.optim.iterations
        preview = max(1, min(base.run.preview_every or 1, total // 20)) if live else 0
        assignments = [f"run.seed={self.seed}", UP_AXIS, f"run.preview_every={preview}"]
        if self.iterations:
            assignments.append(f"optim.iterations={self.iterations}")
        if self.texture_size:
            assignments.append(f"texture.size={self.texture_size}")
        return config.settings_for(self.preset, assignments + list(self.overrides))

    def parsed_prompt(self):
        """The prompt as the engine checks it: the rows as parsed pairs, else the text through the
        engine's grammar (raises its PromptError)."""
        prompt = engine_link.load("prompt", light=True)
        if self.pairs:
            return prompt.check_prompt(prompt.StylePrompt(pairs=tuple(prompt.PartStyle(*p) for p in self.pairs)))
        return prompt.check_prompt(self.prompt)

    def relief_arguments(self, parsed) -> dict:
        """The StyleRequest's ``relief`` and ``part_relief`` for the ``parsed`` prompt (the engine checks
        the levels and the part names); per-part relief of a prompt without parts is refused here."""
        if self.part_relief and parsed.is_holistic:
            parts = ", ".join(part for part, _ in self.part_relief)
            raise engine_link.AddonError(
                f"Relief is set for the part(s) {parts}, but the prompt describes the whole object and names no "
                "parts; give one relief for the whole run, or write the styles per part.")
        return {"relief": self.relief, "part_relief": tuple(self.part_relief)}

    def swatch(self, k: int) -> tuple[float, float, float]:
        return tuple(self.swatches[k]) if k < len(self.swatches) else PALETTE[k % len(PALETTE)]


def vocabulary_warning(request: Request, hint: str | None = None) -> str:
    """With the tiny models, the words of ``request``'s prompt (its rows, or the text) they were not
    trained on and how to get any words, as one sentence; "" otherwise."""
    words = unknown_words(prompt_text(request.pairs, request.prompt), request.models)
    hint = hint or "Choose Hub default models (Preferences: Download models) for any words."
    return engine_link.load("vocabulary", light=True).unknown_words_message(words, hint=hint) if words else ""


def unknown_words(text: str, models: str) -> tuple[str, ...]:
    """The words of ``text`` the ``models`` were not trained on (only the tiny ones have a limit)."""
    return engine_link.load("vocabulary", light=True).unknown_words(text, models)


def prompt_text(pairs, prompt: str) -> str:
    """The words a run reads: its part rows ``(part, style)`` when there are any, else the prompt."""
    return " ".join(f"{part} {style}" for part, style in pairs) or prompt


def memory_estimate(obj, settings) -> str | None:
    """One line for the panel: the expected peak memory of stylizing ``obj`` with the scene's
    ``settings`` (engine.memory's estimate, with the chosen models' weights and, unless the parts come
    from vertex groups, their localization: the same one that refuses a run that would not fit), or
    None when it cannot be told (no mesh, settings that do not parse, no model folder chosen)."""
    if obj is None or obj.type != 'MESH':
        return None
    try:
        config = engine_link.load("config", light=True)
        memory = engine_link.load("memory", light=True)
        chosen = config.settings_for(settings.preset, list(settings.overrides.split()))
        run = preferences.effective(settings)
    except Exception:  # an override being typed, no folder chosen, no engine: the panel says nothing, not fail
        return None
    total = len(obj.data.vertices)
    limit = chosen.field.max_vertices
    optimized = min(total, limit) if limit else total
    parts = len(settings.parts)
    device = "gpu" if run["device"].startswith(("cuda", "mps")) else "cpu"  # auto: the CPU's, the larger figure
    need = memory.estimate_peak_bytes(optimized, chosen, parts, models=run["models"], device_type=device,
                                      locating=parts > 0 and not settings.use_vertex_groups)
    copy = f"a copy of {optimized:,} of its {total:,} vertices" if optimized < total else f"{total:,} vertices"
    return f"Memory: about {memory.gigabytes(need)} (optimizing {copy})"


def model_store(source: str, allow_download: bool):
    """One ModelStore per source for the Blender session, so models load once (worker thread)."""
    key = (source, allow_download)
    if key not in _stores:
        _stores[key] = engine_link.load("models").ModelStore(source, allow_download=allow_download)
    return _stores[key]


def _engine_mesh(obj, notices: list[str], *, uv: bool = False):
    """The object's base mesh as the engine's Mesh; repairs (dropped faces) become notices.
    ``uv``: with its UV map's corner UVs (``corner_uv``), for baked maps; raises AddonError without one."""
    vertices, faces = bridge.mesh_arrays(obj)
    corner_uv = bridge.corner_uvs(obj)[0] if uv else None
    mesh_module = engine_link.load("mesh", light=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = mesh_module.mesh_from_arrays(vertices, faces, name=obj.name, corner_uv=corner_uv)
    notices += [str(w.message) for w in caught]
    return mesh


def _object_gone(name: str) -> str | None:
    """Why a run on the object ``name`` cannot go on (main thread), or None while the object exists."""
    if bpy.data.objects.get(name) is None:
        return f"the object '{name}' was deleted (or renamed) during the run"
    return None


def _unchanged_object(name: str, mesh):
    """The object ``name``, checked to still have the vertices of the engine's ``mesh`` it was read into."""
    obj = bridge.mesh_object(name)
    if len(obj.data.vertices) != mesh.num_vertices:
        raise engine_link.AddonError(
            f"'{obj.name}' now has {len(obj.data.vertices)} vertices instead of {mesh.num_vertices}: "
            "it was edited during the run, so the result no longer fits. Run again.")
    return obj


class StyleRun:
    """Stylize one object: colors, displacement and (when grounding found them) part groups."""

    kind = "Stylize"

    def __init__(self, request: Request):
        self.request = request
        self.notices: list[str] = []

    def prepare(self, *, live: bool = True) -> StyleRun:
        r = self.request
        obj = bridge.mesh_object(r.object_name)
        self.settings = r.settings(live=live)
        self.parsed = r.parsed_prompt()
        self.maps = self.settings.texture.size > 0  # the panel's Maps, or a typed texture.size
        self.mesh = _engine_mesh(obj, self.notices, uv=self.maps)  # maps without a UV map: refused here
        self.uv_name = bridge.uv_map(obj.data).name if self.maps else None
        self.parts = None
        if r.use_groups and not self.parsed.is_holistic:
            groups = bridge.read_groups(obj, list(self.parsed.parts))
            self.parts = engine_link.load("parts", light=True).PartWeights.from_vertex_groups(
                groups, self.mesh.num_vertices)
        elif not self.parsed.is_holistic:  # the located parts' groups are written at the end
            bridge.check_groups_writable(obj, list(self.parsed.parts))
        colors = engine_link.load("colors", light=True)
        result = engine_link.load("result", light=True)
        previous = None
        if r.lock:
            linear = bridge.read_color(obj.data, bridge.owned_attribute(obj.data, bridge.COLOR))
            if linear is None:
                raise engine_link.AddonError(
                    f"Nothing to keep for the locked part(s) {', '.join(r.lock)}: '{obj.name}' has no Partstyle "
                    "result yet. Stylize once without locks first.")
            shift = bridge.read_float(obj.data, bridge.owned_attribute(obj.data, bridge.DISPLACEMENT))
            previous = result.SurfaceStyle(np.clip(colors.linear_to_srgb(linear), 0.0, 1.0),
                                           np.zeros(len(linear), np.float32) if shift is None else shift)
        user = bridge.user_colors(obj.data)
        self.user_linear = user
        self.style_request = engine_link.load("request", light=True).StyleRequest(
            self.parsed, parts=self.parts, lock=r.lock, previous=previous,
            base_colors=None if user is None else np.clip(colors.linear_to_srgb(user), 0.0, 1.0),
            images=r.images, **r.relief_arguments(self.parsed))
        self.style_request.check_mesh(self.mesh.num_vertices)
        self.color_name = bridge.attribute_name(obj, bridge.COLOR)  # previews and the result go there
        self.snapshot = snapshot.ColorSnapshot(obj.data, self.color_name)
        return self

    def work(self, on_event, cancel):
        """The engine's stylize (worker thread: no bpy)."""
        r = self.request
        return engine_link.load("api").stylize(
            self.mesh, self.style_request, settings=self.settings, models=model_store(r.models, r.allow_download),
            device=r.device, on_event=on_event, cancel=cancel)

    def preview(self, event) -> None:
        """Live preview: the object's Partstyle colors from an in-between result."""
        try:
            obj = _unchanged_object(self.request.object_name, self.mesh)
        except engine_link.AddonError:
            return  # the end of the run reports it
        colors = engine_link.load("colors", light=True)
        bridge.write_color(obj.data, self.color_name, colors.srgb_to_linear(event.colors_srgb))

    def apply(self, result) -> str:
        """The writeback: colors, displacement + modifier, material if none (with maps: the maps'
        images and material, :mod:`.baked`), located part groups; each recorded as the add-on's
        (bridge.OWNED_KEY)."""
        obj = _unchanged_object(self.request.object_name, self.mesh)
        mesh = obj.data
        located = result.parts is not None and self.parts is None
        if located:
            bridge.check_groups_writable(obj, list(result.parts.names))
        shift_name = bridge.attribute_name(obj, bridge.DISPLACEMENT)
        colors = result.colors_linear
        if self.user_linear is not None and result.parts is not None:
            # Vertices outside every styled part keep the user's colors exactly as Blender stores them
            # (the engine's sRGB round trip may differ in the last bit).
            keep = result.parts.weights[:, -1] == 1.0
            colors = np.where(keep[:, None], self.user_linear, colors)
        bridge.write_color(mesh, self.color_name, colors)
        bridge.claim(mesh, bridge.COLOR, self.color_name)
        bridge.write_float(mesh, shift_name, result.displacement)
        bridge.claim(mesh, bridge.DISPLACEMENT, shift_name)
        nodes.ensure_modifier(obj, shift_name)
        if self.maps and result.maps is not None:
            baked.write_maps(obj, result.maps, self.uv_name)
        else:  # earlier maps would no longer match the colors
            baked.remove_maps(obj)
            nodes.ensure_material(obj, self.color_name)
        if located:
            names = list(result.parts.names)
            bridge.write_groups(obj, names, result.parts.weights[:, : len(names)])
            bridge.write_confidence(obj, result.record.get("part_confidence", {}))
        obj.data.update()
        obj.update_tag()
        steps = result.record.get("steps", 0)
        maps = f" Maps: {result.maps.size} px on the UV map '{self.uv_name}'." if self.maps and result.maps else ""
        return f"Stylized '{obj.name}': {steps} iterations on {result.record.get('device', '?')}.{maps}"

    def restore(self) -> None:
        self.snapshot.restore()


class LocateRun:
    """Locate the prompt's parts on one object: one ``part:<name>`` vertex group per part."""

    kind = "Locate parts"

    def __init__(self, request: Request):
        self.request = request
        self.notices: list[str] = []

    def prepare(self, *, live: bool = True) -> LocateRun:
        r = self.request
        obj = bridge.mesh_object(r.object_name)
        self.settings = r.settings(live=live)
        if r.part_names:
            self.names = list(dict.fromkeys(bridge.normalize_part(p) for p in r.part_names))
        else:
            parsed = r.parsed_prompt()
            if parsed.is_holistic:
                raise engine_link.AddonError(
                    f"'{r.prompt}' describes the whole object and names no parts; write one row per part "
                    "(or a prompt such as 'pottery base, linen shade') to locate parts.")
            self.names = list(parsed.parts)
        bridge.check_groups_writable(obj, self.names)
        self.mesh = _engine_mesh(obj, self.notices)
        return self

    def work(self, on_event, cancel):
        """The engine's locate_parts (worker thread: no bpy)."""
        r = self.request
        return engine_link.load("api").locate_parts(
            self.mesh, self.names, settings=self.settings, models=model_store(r.models, r.allow_download),
            device=r.device, on_event=on_event, cancel=cancel)

    def preview(self, event) -> None:
        """Localization sends no previews."""

    def apply(self, localization) -> str:
        """Write the groups and their confidence, show the parts, and switch the scene to the groups, so
        the next Stylize uses them with any correction painted into them."""
        obj = _unchanged_object(self.request.object_name, self.mesh)
        weights = localization.weights
        k = len(weights.names)
        bridge.write_groups(obj, list(weights.names), weights.weights[:, :k])
        bridge.write_confidence(obj, localization.part_confidence)
        swatches = np.array([self.request.swatch(i) for i in range(k)], np.float32)
        _write_parts_view(obj, bridge.parts_colors(weights.weights, swatches))
        bpy.context.scene.partstyle.use_vertex_groups = True
        labels = weights.labels()
        counts = ", ".join(f"{name} {int((labels == i).sum())} ({localization.part_confidence.get(name, 0.0):.0%} "
                           "confident)" for i, name in enumerate(weights.names))
        return (f"Located parts on '{obj.name}' (vertices per part: {counts}; unchanged {int((labels < 0).sum())}). "
                "'Use my vertex groups' is on: paint corrections into the part groups, then Stylize.")

    def restore(self) -> None:
        """Nothing was written before the end."""


def conclude(job: jobs.Job, run) -> tuple[str, str]:
    """Apply or restore after the job ended; returns a report ``(level, message)``. Releases the job."""
    jobs.release(job)
    notices = run.notices + job.notices
    if job.stop_reason is not None:  # stopped by its watch: whatever the engine returned is not applied
        run.restore()
        return 'ERROR', f"{run.kind} stopped: {job.stop_reason}; nothing was written."
    if job.state == jobs.FINISHED:
        try:
            message = run.apply(job.result)
        except engine_link.user_errors() as exc:
            run.restore()
            return 'ERROR', str(exc)
        except Exception as exc:  # a bug in the writeback: say so, keep the details for the console
            jobs.log.error("Partstyle %s: writing the result failed", run.kind, exc_info=exc)
            run.restore()
            return 'ERROR', f"{run.kind}: writing the result failed ({type(exc).__name__}: {exc}); see the console."
        return ('WARNING', message + " Notes: " + " ".join(notices)) if notices else ('INFO', message)
    run.restore()
    if job.state == jobs.CANCELLED:
        return 'WARNING', f"{run.kind} cancelled; '{job.object_name}' is as it was before."
    error = job.error
    if isinstance(error, engine_link.user_errors()):
        return 'ERROR', str(error)
    return 'ERROR', (f"{run.kind} failed ({type(error).__name__}: {error}); '{job.object_name}' is unchanged. "
                     "Details are in the system console.")


def start(run, *, threaded: bool, listener=None) -> jobs.Job:
    """Prepare ``run`` and start its job (registered as the running one); previews only when ``threaded``."""
    run.prepare(live=threaded)
    job = jobs.Job(run.kind, run.request.object_name, run.work, listener=listener,
                   watch=lambda: _object_gone(run.request.object_name))
    return jobs.claim(job).start(threaded=threaded)


def _write_parts_view(obj, linear: np.ndarray) -> None:
    """The parts view colors, into the add-on's own parts attribute (or a free name), recorded."""
    name = bridge.attribute_name(obj, bridge.PARTS)
    bridge.write_color(obj.data, name, linear)
    bridge.claim(obj.data, bridge.PARTS, name)


def show_parts(obj, parts: list[str], swatches) -> str:
    """Paint the ``Partstyle_Parts`` colors from the ``part:<name>`` groups, one swatch per part."""
    groups = bridge.read_groups(obj, parts)
    weights = np.stack([groups[bridge.normalize_part(p)] for p in parts], 1)
    total = weights.sum(1, keepdims=True)
    weights = np.where(total > 1.0, weights / np.maximum(total, 1e-12), weights)
    weights = np.concatenate([weights, np.clip(1.0 - weights.sum(1, keepdims=True), 0.0, 1.0)], 1)
    _write_parts_view(obj, bridge.parts_colors(weights, np.asarray(swatches, np.float32)))
    confidence = bridge.read_confidence(obj)
    shown = ", ".join(f"{p} {confidence[bridge.normalize_part(p)]:.0%}" if bridge.normalize_part(p) in confidence
                      else f"{p} given by hand" for p in parts)
    return f"Showing {len(parts)} part(s) of '{obj.name}' in their row colors (confidence: {shown})."


def clear(obj, *, keep_groups: bool = False) -> list[str]:
    """Remove what the add-on made on ``obj`` (recorded as its own, never the user's data of the
    same name); returns what was removed, for the report."""
    mesh = obj.data
    removed = []
    for role in bridge.ATTRIBUTES:
        name = bridge.owned_attribute(mesh, role)
        if name is not None and bridge.remove_attribute(mesh, name):
            removed.append(name)
        bridge.disown(mesh, role)
    bridge.give_back_active_color(mesh)
    modifier = nodes.displace_modifier(obj)
    if modifier is not None:
        removed.append(f"modifier {modifier.name}")
    nodes.remove_modifier(obj)
    removed += baked.remove_maps(obj)  # first: the user's material goes back into its slot
    removed += [f"material {name}" for name in nodes.remove_material(obj)]
    if not keep_groups:
        for name in bridge.owned_groups(obj):
            obj.vertex_groups.remove(obj.vertex_groups[name])
            removed.append(f"group {name}")
        bridge.disown(mesh, bridge.GROUPS)
        if bridge.CONFIDENCE_KEY in mesh:
            del mesh[bridge.CONFIDENCE_KEY]
    mesh.update()
    return removed
