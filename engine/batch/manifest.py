"""A batch manifest: which assets to stylize, one row each, read and checked before anything runs.

A manifest is JSON Lines (``.jsonl``: one object per line) or CSV (``.csv``: a header row, then
one row per asset). The fields of a row (docs/batch.md):

- ``mesh`` (required): a mesh file (relative paths are read from the manifest's folder) or a
  built-in sample, ``sample:NAME[@FACES]``.
- ``prompt`` (required): the prompt, as for ``python -m engine stylize --prompt``.
- ``id``: the asset's name and the name of its output folder (default: the mesh file's name without
  its suffix, or the sample's spec); letters, digits, ``.``, ``-`` and ``_``.
- ``parts``: a ``parts.npz`` written by ``locate``, or ``labels`` (a sample's own labels).
- ``seed``, ``preset``, ``iterations``: as the single command's options.
- ``set``: setting overrides, ``KEY=VALUE`` (JSON: a list or one string; CSV: separated by ``;``).
- ``relief``: ``LEVEL`` and ``PART=LEVEL`` values (list, or ``;``-separated).
- ``image``: ``PART=FILE`` values (list, or ``;``-separated).
- ``lock`` (parts, list or ``;``-separated) with ``previous`` (an earlier output folder).
- ``whole``: true to read the prompt as one style for the whole object.
- ``up_axis`` (``y`` or ``z``), ``merge_vertices`` (true / false).

Reading a manifest checks every row (fields, types, files present, prompt, settings, relief and
images as the engine will read them) and raises one :class:`ManifestError` that lists every bad
row with its line number, so a typo in row 300 is found before row 1 runs. Meshes are only
opened when their asset runs: a file that exists but cannot be read fails that asset alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import PRESETS, Settings, settings_for
from ..errors import InputError, PartstyleError
from ..mesh import MESH_SUFFIXES
from ..prompt import normalize_part_name
from ..references import image_options
from ..relief import relief_options
from ..request import StyleRequest
from ..samples import parse_sample_spec

SAMPLE_PREFIX = "sample:"
MANIFEST_SUFFIXES = (".jsonl", ".csv")
FIELDS = ("id", "mesh", "prompt", "parts", "seed", "preset", "iterations", "set", "relief", "image", "lock",
          "previous", "whole", "up_axis", "merge_vertices")
_LIST_FIELDS = ("set", "relief", "image", "lock")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ManifestError(InputError):
    """A manifest (or a folder given as one) that cannot run; the message lists every bad row."""


@dataclass(frozen=True)
class Defaults:
    """What a row does not say, from the batch command's own options."""

    preset: str = "fast"
    seed: int | None = None
    iterations: int | None = None
    overrides: tuple[str, ...] = ()
    relief: tuple[str, ...] = ()
    up_axis: str | None = None


@dataclass(frozen=True)
class BatchAsset:
    """One checked row: everything one ``stylize`` of the batch needs, with absolute paths.

    Attributes:
        id: the asset's name and output folder name (unique in the batch).
        line: the row's line number in the manifest (1-based; CSV counts the header), 0 for a folder's.
        mesh: an absolute mesh path or ``sample:NAME[@FACES]``.
        prompt, whole: the prompt, and whether it styles the whole object as one.
        parts: an absolute ``parts.npz`` path, ``labels``, or None (locate the parts).
        preset, overrides: the settings (the batch's overrides first, then the row's).
        relief, images, lock: the single command's ``--relief``, ``--image`` (``PART=FILE``, absolute)
            and ``--lock`` values.
        previous: an absolute earlier output folder (for ``lock``), or None.
        merge_vertices: weld vertices at equal positions on load.
    """

    id: str
    line: int
    mesh: str
    prompt: str
    whole: bool = False
    parts: str | None = None
    preset: str = "fast"
    overrides: tuple[str, ...] = ()
    relief: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()
    previous: str | None = None
    merge_vertices: bool = False

    @property
    def is_sample(self) -> bool:
        return self.mesh.startswith(SAMPLE_PREFIX)

    def settings(self) -> Settings:
        """The asset's settings: its preset with its overrides."""
        return settings_for(self.preset, list(self.overrides))

    def request(self, *, parts=None, previous=None) -> StyleRequest:
        """The engine request for this asset; ``parts`` and ``previous`` are read by the caller
        (they need the mesh). Raises what :class:`StyleRequest` raises."""
        return StyleRequest(self.prompt, holistic=self.whole, parts=parts, lock=self.lock, previous=previous,
                            images=image_options(self.images), **relief_options(self.relief))

    def input_files(self) -> tuple[str, ...]:
        """Every file the asset reads (mesh, parts, reference images, previous result), for its fingerprint."""
        files = [] if self.is_sample else [self.mesh]
        if self.parts not in (None, "labels"):
            files.append(self.parts)
        files += [path for _, path in image_options(self.images)]
        if self.previous:
            files.append(os.path.join(self.previous, "result.npz"))
        return tuple(files)


def read_manifest(path: str, defaults: Defaults = Defaults()) -> list[BatchAsset]:
    """The checked assets of the manifest at ``path`` (``.jsonl`` or ``.csv``).

    Raises :class:`ManifestError` listing every bad row (``line N: ...``), or naming the file when it
    cannot be read at all.
    """
    rows = read_rows(path)
    return check_rows(rows, os.path.dirname(os.path.abspath(path)), defaults, where=path)


def read_rows(path: str) -> list[tuple[int, object]]:
    """The rows of a ``.jsonl`` or ``.csv`` file as ``(line number, row)``: a row is a dict of its
    non-empty fields (CSV values are text), or a text saying why the line is not a row. Blank lines
    and JSONL lines starting with ``#`` are left out. Raises :class:`ManifestError` for a file that
    cannot be read. The Blender add-on's manifest of objects is read with it too."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ManifestError(f"{path}: a manifest is a .jsonl or .csv file (or give a folder of meshes with --prompt).")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(_jsonl_rows(fh) if suffix == ".jsonl" else _csv_rows(fh))
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: is not UTF-8 text.") from None
    return rows


def folder_manifest(folder: str, prompt: str, defaults: Defaults = Defaults(), *,
                    whole: bool = False) -> list[BatchAsset]:
    """One asset per mesh file directly in ``folder`` (sorted by name), all with ``prompt``."""
    try:
        names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in MESH_SUFFIXES
                       and os.path.isfile(os.path.join(folder, n)))
    except OSError as exc:
        raise ManifestError(f"{folder}: cannot be listed ({exc.strerror or exc}).") from None
    if not names:
        raise ManifestError(f"{folder} holds no mesh file ({', '.join(MESH_SUFFIXES)}); give a folder of meshes "
                            "or a manifest.")
    rows = [(0, {"mesh": name, "prompt": prompt, "whole": whole}) for name in names]
    return check_rows(rows, os.path.abspath(folder), defaults, where=folder)


def check_rows(rows: Iterable[tuple[int, object]], base: str, defaults: Defaults, *, where: str) -> list[BatchAsset]:
    """``(line, row)`` pairs -> checked assets; one :class:`ManifestError` for all bad rows."""
    assets, problems, seen = [], [], {}
    for line, row in rows:
        label = f"line {line}" if line else "mesh"
        try:
            asset = _asset(row, line, base, defaults)
        except PartstyleError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if asset.id in seen:
            problems.append(f"{label}: the id '{asset.id}' is already used on line {seen[asset.id]}; give each "
                            "asset its own id (it names its output folder).")
            continue
        seen[asset.id] = line
        assets.append(asset)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ManifestError(f"{where}: {len(problems)} bad row(s); nothing was run.\n  " + "\n  ".join(shown))
    if not assets:
        raise ManifestError(f"{where}: no assets; write one row per asset (docs/batch.md).")
    return assets


def _jsonl_rows(fh):
    for number, text in enumerate(fh, start=1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            yield number, json.loads(text)
        except ValueError as exc:
            yield number, f"not a JSON object ({exc.msg} at column {exc.colno})"


def _csv_rows(fh):
    reader = csv.DictReader(fh)
    for row in reader:
        if not any((value or "").strip() for key, value in row.items() if key is not None):
            continue
        if None in row:
            yield reader.line_num, "more values than the header names"
            continue
        yield reader.line_num, {key.strip(): value.strip() for key, value in row.items()
                                if key is not None and value is not None and value.strip()}


def _asset(row, line: int, base: str, defaults: Defaults) -> BatchAsset:
    """One row checked and completed (see the module docstring); raises :class:`InputError` and kin."""
    if isinstance(row, str):
        raise ManifestError(row)
    if not isinstance(row, dict):
        raise ManifestError(f"a row is an object with fields ({', '.join(FIELDS)}), not {type(row).__name__}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise ManifestError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}")
    for key in ("mesh", "prompt"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ManifestError(f"'{key}' is missing; every row needs a mesh and a prompt")
    mesh = _mesh(row["mesh"].strip(), base)
    preset = text_field(row, "preset", defaults.preset)
    if preset not in PRESETS:
        raise ManifestError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    overrides = list(defaults.overrides) + list_field(row, "set")
    seed = integer_field(row, "seed", defaults.seed)
    iterations = integer_field(row, "iterations", defaults.iterations)
    if seed is not None:
        overrides.append(f"run.seed={seed}")
    if iterations is not None:
        overrides.append(f"optim.iterations={iterations}")
    up_axis = text_field(row, "up_axis", defaults.up_axis)
    if up_axis is not None:
        if up_axis not in ("y", "z"):
            raise ManifestError(f"up_axis '{up_axis}': use y or z")
        overrides.append(f"views.up_axis={up_axis}")
    parts = text_field(row, "parts", None)
    if parts is not None and parts != "labels":
        parts = _file(parts, base, "parts")
    previous = text_field(row, "previous", None)
    if previous is not None:
        previous = os.path.join(base, previous)
        if not os.path.isfile(os.path.join(previous, "result.npz")):
            raise ManifestError(f"previous '{row['previous']}' holds no result.npz; name an earlier output folder")
    images = tuple(f"{part}={_file(path, base, 'image')}" for part, path in image_options(list_field(row, "image")))
    asset = BatchAsset(
        id=_asset_id(row, mesh), line=line, mesh=mesh, prompt=row["prompt"], whole=flag_field(row, "whole"),
        parts=parts, preset=preset, overrides=tuple(overrides),
        relief=tuple(defaults.relief) + tuple(list_field(row, "relief")), images=images,
        lock=tuple(list_field(row, "lock")), previous=previous, merge_vertices=flag_field(row, "merge_vertices"),
    )
    if asset.lock and asset.previous is None:
        raise ManifestError("'lock' keeps parts of an earlier result: give that output folder as 'previous'")
    if asset.parts == "labels" and not asset.is_sample:
        raise ManifestError("parts 'labels' are a built-in sample's own; for a file give a parts.npz from `locate`")
    asset.settings()  # the settings as the run will build them: SettingsError names a bad key or value
    request = dataclasses.replace(asset, lock=()).request()  # prompt, relief and images as the engine reads them
    if asset.parts and request.prompt.is_holistic:
        raise ManifestError(f"'parts' are given, but the prompt {asset.prompt!r} names no part; write its styles per "
                            "part (e.g. 'body: blue'), or leave 'parts' out")
    missing = sorted({normalize_part_name(p) for p in asset.lock} - set(request.prompt.parts))
    if missing:
        raise ManifestError(f"lock {', '.join(missing)}: not a part of the prompt ({', '.join(request.prompt.parts)})")
    return asset


def _mesh(spec: str, base: str) -> str:
    if spec.startswith(SAMPLE_PREFIX):
        name, faces = parse_sample_spec(spec[len(SAMPLE_PREFIX):])
        return f"{SAMPLE_PREFIX}{name}@{faces}"
    path = _file(spec, base, "mesh")
    if os.path.splitext(path)[1].lower() not in MESH_SUFFIXES:
        raise ManifestError(f"mesh '{spec}': unsupported format; use one of {', '.join(MESH_SUFFIXES)}")
    return path


def _file(value: str, base: str, what: str) -> str:
    path = os.path.join(base, os.path.expanduser(value))
    if not os.path.isfile(path):
        raise ManifestError(f"{what} '{value}': no such file (relative paths start at the manifest's folder)")
    return os.path.abspath(path)


def _asset_id(row: dict, mesh: str) -> str:
    given = row.get("id")
    if given is not None and not isinstance(given, (str, int)):
        raise ManifestError(f"'id' must be text, not {type(given).__name__}")
    value = str(given).strip() if given is not None else (
        mesh[len(SAMPLE_PREFIX):].replace("@", "-") if mesh.startswith(SAMPLE_PREFIX)
        else os.path.splitext(os.path.basename(mesh))[0])
    if not _ID.fullmatch(value):
        raise ManifestError(f"id '{value}' cannot name a folder; use letters, digits, '.', '-' and '_' "
                            "(give the row an 'id')")
    return value


def text_field(row: dict, key: str, default):
    """The row's text ``key`` (stripped), or ``default`` when absent; ManifestError for another type."""
    value = row.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ManifestError(f"'{key}' must be text, not {type(value).__name__}")
    return value.strip()


def integer_field(row: dict, key: str, default):
    """The row's whole number ``key`` (a JSON number or CSV text), or ``default`` when absent."""
    value = row.get(key)
    if value is None:
        return default
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ManifestError(f"'{key}' must be a whole number, not {value!r}")


def flag_field(row: dict, key: str) -> bool:
    """The row's true/false ``key`` (JSON boolean, or true/false/yes/no/1/0 as text); false when absent."""
    value = row.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise ManifestError(f"'{key}' must be true or false, not {value!r}")


def list_field(row: dict, key: str) -> list[str]:
    """A list field: a JSON list of text, or one text with ``;`` between values (CSV)."""
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(";") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ManifestError(f"'{key}' must be text or a list of text, not {value!r}")
