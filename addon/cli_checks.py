"""The headless command's checks, made before any object runs: where the result will be saved, the
objects named, and the relief and images as the engine reads them. Each returns why something
cannot run (one message), or None. Used by :mod:`.cli` and :mod:`.cli_manifest` (a manifest row's
values are checked with the same functions)."""

from __future__ import annotations

import os


def check_destination(out: str, engine_link) -> str | None:
    """Why the result could not be saved at ``out`` (checked before any object runs), or None: a
    folder in its place, or a folder that cannot be created or written (the engine's own check)."""
    path = os.path.abspath(out)
    if os.path.isdir(path):
        return f"--out {out} is a folder; give the path of the .blend file to write"
    try:
        engine_link.load("files", light=True).check_output_folder(os.path.dirname(path), option="--out's folder")
    except engine_link.user_errors() as exc:
        return str(exc)
    return None


def object_problem(name: str, objects) -> str | None:
    """Why ``name`` is not a mesh object among ``objects`` (none there, another kind), or None."""
    obj = objects.get(name)
    if obj is None:
        return f"there is no object named '{name}'"
    if obj.type != 'MESH':
        kind = obj.type.lower()
        return f"'{name}' is {'an' if kind[0] in 'aeiou' else 'a'} {kind} object, not a mesh"
    return None


def mesh_names(objects) -> str:
    """The mesh objects among ``objects``, sorted, for a message that lists what there is."""
    return ", ".join(sorted(o.name for o in objects if o.type == 'MESH')) or "none"


def check_objects(names: list[str], objects, where: str) -> str | None:
    """Why some ``--object`` names cannot run (no such object, not a mesh), all in one message, with
    the mesh objects there; None when every name is a mesh object."""
    problems = [p for p in (object_problem(name, objects) for name in dict.fromkeys(names)) if p]
    if not problems:
        return None
    return (f"--object: {'; '.join(problems)} in {where}. Mesh objects there: {mesh_names(objects)}. "
            "Nothing was run; check the names (they are case-sensitive).")


def check_relief(relief: list[str], prompt: str, engine_link, runs, *, option: str = "--relief") -> str | None:
    """Why the ``relief`` values (``--relief`` or a manifest row's) cannot run with ``prompt`` (a level or
    a part the engine refuses), or None. The prompt's own errors are left to the caller (each object's
    run reports them)."""
    try:
        options = engine_link.load("relief", light=True).relief_options(relief)
    except engine_link.user_errors() as exc:
        return str(exc)
    request = runs.Request(object_name="", prompt=prompt, **options)
    try:
        for level in (request.relief, *(level for _, level in request.part_relief)):
            engine_link.load("relief", light=True).relief_fraction(level)
        try:
            parsed = request.parsed_prompt()
        except engine_link.user_errors():
            return None
        engine_link.load("request", light=True).StyleRequest(parsed, **request.relief_arguments(parsed))
    except engine_link.user_errors() as exc:
        return f"{option}: {exc}"
    return None


def check_images(images: list[str], prompt: str, lock: list[str], engine_link, runs, *,
                 option: str = "--image", lock_option: str = "--lock") -> str | None:
    """Why the ``PART=FILE`` ``images`` (``--image`` or a manifest row's) cannot run with ``prompt`` and
    ``lock`` (a part the prompt does not name, a part given twice or also locked, a file the engine
    cannot read), or None. As with the relief, a prompt that does not parse is left to the caller."""
    if not images:
        return None
    pairs = engine_link.load("references", light=True).image_options(images)
    request = runs.Request(object_name="", prompt=prompt, images=pairs)
    try:
        parsed = request.parsed_prompt()
    except engine_link.user_errors():
        return None
    normalize = engine_link.load("prompt", light=True).normalize_part_name
    locked = sorted({normalize(part) for part, _ in pairs} & {normalize(part) for part in lock})
    if locked:
        return (f"{option}: an image is given for {', '.join(map(repr, locked))}, which {lock_option} keeps as it "
                "was; unlock it or leave its image out.")
    try:
        engine_link.load("request", light=True).StyleRequest(parsed, images=request.images)
    except engine_link.user_errors() as exc:
        return f"{option}: {exc}"
    return None
