"""Procedural sample meshes with exact per-vertex part labels: the demo asset and test fixtures.

Frame: Y is up, every object stands on y = 0 and is centred on the Y axis in x and z; sizes are
in metres (lamp ~0.55 m tall, chair ~0.9 m, mug ~0.1 m; the generated shapes with thin features:
figure 1.7 m, vase 0.3 m, rod on a block 0.35 m, thin-walled cup 0.09 m). The chair faces +z, the mug's handle
points to +x. Every part is built from its own closed, outward-oriented surfaces with its own
vertices, so ``Mesh.labels`` is exact (no -1). Everything is numpy, deterministic, no file I/O.

Resolution: all parts share one target edge length ``h`` (so triangle sizes are similar across
parts and faces follow surface area), with a per-primitive minimum so small parts still look
right at low counts; ``h`` is fitted so the total face count lands near the request.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import MeshError
from .mesh import Mesh, mesh_from_arrays

SAMPLE_NAMES: tuple[str, ...] = ("lamp", "chair", "mug")
#: Generated shapes with thin features, for relief checks (``eval-relief``) and users' own trials.
SHAPE_NAMES: tuple[str, ...] = ("figure", "vase", "rod", "cup")
ALL_SAMPLES: tuple[str, ...] = SAMPLE_NAMES + SHAPE_NAMES
DEFAULT_FACES = 20_000
MIN_FACES, MAX_FACES = 500, 2_000_000

Part = tuple[np.ndarray, np.ndarray]  # (vertices [V, 3] float64, faces [F, 3] int64)


def _grid(points: np.ndarray, wrap_u: bool = False, wrap_v: bool = False, caps=(None, None)) -> Part:
    """Triangulate a [U, V, 3] point grid -> (vertices [U*V + caps, 3], faces [F, 3]).

    Each quad (i, j), (i+1, j), (i+1, j+1), (i, j+1) becomes two triangles whose normal points
    along dP/du x dP/dv, so callers lay the grid out with that direction outward. ``wrap_u`` /
    ``wrap_v`` join the last row / column to the first. ``caps`` holds optional [3] centre points
    that close the v = 0 and v = V-1 rows with a triangle fan (poles, tube ends; use with wrap_u).
    """
    U, V = points.shape[:2]
    idx = np.arange(U * V).reshape(U, V)
    if wrap_u:
        idx = np.vstack([idx, idx[:1]])
    if wrap_v:
        idx = np.hstack([idx, idx[:, :1]])
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = [np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)]
    verts = [np.asarray(points, np.float64).reshape(-1, 3)]
    for end, centre in enumerate(caps):
        if centre is None:
            continue
        ring = idx[:, 0 if end == 0 else V - 1]
        k = np.full(len(ring) - 1, U * V + len(verts) - 1)
        faces.append(np.stack((k, ring[1:], ring[:-1]) if end == 0 else (k, ring[:-1], ring[1:]), -1))
        verts.append(np.asarray(centre, np.float64).reshape(1, 3))
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)


def _concat(parts: list[Part]) -> Part:
    """Several (vertices, faces) pieces -> one, with face indices offset (no welding)."""
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    return (np.concatenate([v for v, _ in parts]),
            np.concatenate([f + o for (_, f), o in zip(parts, offsets, strict=True)]))


def _arc(centre, radius: float, a0: float, a1: float, k: int = 65) -> np.ndarray:
    """[k, 2] points on a circular arc in the (r, y) plane from angle a0 to a1 (radians)."""
    t = np.linspace(a0, a1, k)
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], -1)


def _profile(pieces, h: float, loop: bool = False) -> np.ndarray:
    """Resample a polyline to spacing ~h -> [P, 2] (r, y) points.

    ``pieces`` is a list of (dense [K, 2] points, minimum segments); each piece starts where the
    previous one ended, and the joins (corners) are kept exactly. With ``loop`` the polyline is
    closed and its repeated last point is dropped.
    """
    out = []
    for pts, min_n in pieces:
        pts = np.asarray(pts, np.float64)
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        t = np.linspace(0.0, s[-1], max(min_n, round(s[-1] / h)) + 1)[:-1]
        out.append(np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], -1))
    if not loop:
        out.append(np.asarray(pieces[-1][0], np.float64)[-1:])
    return np.concatenate(out)


def _revolve(profile: np.ndarray, h: float, min_around: int, loop: bool = False) -> Part:
    """Surface of revolution about +Y of a [P, 2] (r, y) profile -> (vertices, faces).

    The profile runs with the material on its right (outward = left of travel in the r-y
    plane). ``loop``: a closed ring profile (thick-walled open shells). Otherwise the first and
    last points lie on the axis (r = 0) and become centre-vertex fans, not collapsed rings.
    """
    n = max(min_around, int(np.ceil(2.0 * np.pi * profile[:, 0].max() / h)))
    theta = 2.0 * np.pi * np.arange(n) / n
    body = profile if loop else profile[1:-1]
    r, y = body[:, 0], body[:, 1]
    pts = np.stack([np.cos(theta)[:, None] * r, np.broadcast_to(y, (n, len(y))),
                    np.sin(theta)[:, None] * r], -1)  # [n, P', 3]: u = angle, v = profile
    if loop:
        return _grid(pts, wrap_u=True, wrap_v=True)
    assert profile[0, 0] == 0.0 and profile[-1, 0] == 0.0, "open profiles must start and end on the axis"
    return _grid(pts, wrap_u=True, caps=((0.0, profile[0, 1], 0.0), (0.0, profile[-1, 1], 0.0)))


def _box(lo, hi, h: float) -> Part:
    """Closed box between corners lo and hi ([3] each), faces gridded at ~h -> (vertices, faces).

    The six faces are built on an integer lattice, welded exactly, then scaled into place.
    """
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    res = np.maximum(2, np.round((hi - lo) / h)).astype(np.int64)
    pieces = []
    for a in range(3):
        b, c = (a + 1) % 3, (a + 2) % 3  # e_b x e_c = e_a
        ub, uc = np.meshgrid(np.arange(res[b] + 1), np.arange(res[c] + 1), indexing="ij")
        for side in (0, 1):
            g = np.zeros((*ub.shape, 3), np.int64)
            g[..., a], g[..., b], g[..., c] = side * res[a], ub, uc
            pieces.append(_grid(g if side else g.transpose(1, 0, 2)))  # low face: swap u, v
    verts, faces = _concat(pieces)
    lattice, inverse = np.unique(np.round(verts).astype(np.int64), axis=0, return_inverse=True)
    return lo + lattice * ((hi - lo) / res), inverse.reshape(-1)[faces]


def _lamp(h: float) -> list[Part]:
    """base (superellipse pedestal), tube (closed pole), shade (thick-walled truncated cone)."""
    R, H = 0.11, 0.035
    t = np.linspace(0.0, np.pi / 2, 2049)
    dome = np.stack([R * np.sin(t) ** 0.5, H * np.cos(t) ** 0.5], -1)  # |r/R|^4 + |y/H|^4 = 1
    base = _revolve(_profile([(dome, 8), (((R, 0.0), (0.0, 0.0)), 2)], h), h, 32)
    r, y0, y1 = 0.009, 0.02, 0.40
    tube = _revolve(_profile([(((0.0, y1), (r, y1)), 1), (((r, y1), (r, y0)), 6),
                              (((r, y0), (0.0, y0)), 1)], h), h, 16)
    r1, r2, s0, s1, w = 0.15, 0.08, 0.33, 0.55, 0.003
    shade = _revolve(_profile([(((r2, s1), (r1, s0)), 4), (((r1, s0), (r1 - w, s0)), 1),
                               (((r1 - w, s0), (r2 - w, s1)), 4), (((r2 - w, s1), (r2, s1)), 1)],
                              h, loop=True), h, 32, loop=True)
    return [base, tube, shade]


def _chair(h: float) -> list[Part]:
    """seat (box), back (box reclined 8 degrees on the seat's rear), legs (four boxes)."""
    seat = _box((-0.225, 0.42, -0.225), (0.225, 0.47, 0.225), h)
    bv, bf = _box((-0.225, 0.47, -0.225), (0.225, 0.90, -0.19), h)
    c, s = np.cos(np.radians(8.0)), np.sin(np.radians(8.0))
    dy, dz = bv[:, 1] - 0.47, bv[:, 2] + 0.19  # pivot: the back's front-bottom edge
    bv = np.stack([bv[:, 0], 0.47 + c * dy + s * dz, -0.19 - s * dy + c * dz], -1)
    legs = _concat([_box((x - 0.02, 0.0, z - 0.02), (x + 0.02, 0.43, z + 0.02), h)
                    for x in (-0.195, 0.195) for z in (-0.195, 0.195)])
    return [seat, (bv, bf), legs]


def _mug(h: float) -> list[Part]:
    """body (thick-walled cup, rounded rim and bottom edge), handle (capped half-ring tube)."""
    ro, ri, H, tb, fo, fi = 0.04, 0.036, 0.095, 0.007, 0.005, 0.003
    pieces = [
        (np.vstack([[(0.0, tb)], _arc((ri - fi, tb + fi), fi, -np.pi / 2, 0.0)]), 3),  # inner bottom
        (((ri, tb + fi), (ri, H)), 4),  # inner wall, up
        (_arc(((ri + ro) / 2, H), (ro - ri) / 2, np.pi, 0.0), 2),  # rim
        (np.vstack([[(ro, H)], _arc((ro - fo, fo), fo, 0.0, -np.pi / 2), [(0.0, 0.0)]]), 6),
    ]
    body = _revolve(_profile(pieces, h), h, 32)
    xc, yc, R, r = ro - 0.002, 0.05, 0.028, 0.0055  # ends sit inside the wall
    phi = np.linspace(np.pi / 2, -np.pi / 2, max(16, int(np.ceil(np.pi * R / h))) + 1)  # top -> bottom
    na = max(12, int(np.ceil(2.0 * np.pi * r / h)))
    alpha = 2.0 * np.pi * np.arange(na) / na
    normal = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], -1)  # [S, 3]
    centre = np.array([xc, yc, 0.0]) + R * normal
    ring = np.cos(alpha)[:, None, None] * normal + np.sin(alpha)[:, None, None] * [0.0, 0.0, 1.0]
    pts = centre + r * ring  # [na, S, 3]: u = around the tube, v = along the arc
    handle = _grid(pts, wrap_u=True, caps=(centre[0], centre[-1]))
    return [body, handle]


def _poles_on_axis(profile: np.ndarray) -> np.ndarray:
    """The profile with its first and last points exactly on the axis (arcs end at r ~ 1e-17)."""
    profile = profile.copy()
    profile[[0, -1], 0] = 0.0
    return profile


def _capsule(p0, p1, r: float, h: float) -> Part:
    """Closed capsule of radius r around the segment p0 -> p1 ([3] each), gridded at ~h."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    length = float(np.linalg.norm(p1 - p0))
    pieces = [(_arc((0.0, length), r, np.pi / 2, 0.0), 3), (((r, length), (r, 0.0)), 2),
              (_arc((0.0, 0.0), r, 0.0, -np.pi / 2), 3)]
    verts, faces = _revolve(_poles_on_axis(_profile(pieces, h)), h, 12)  # along +Y from 0 to length
    axis = (p1 - p0) / length
    v = np.cross([0.0, 1.0, 0.0], axis)
    c = float(axis[1])
    skew = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    rotation = np.eye(3) + skew + skew @ skew / (1.0 + c) if c > -1.0 + 1e-9 else np.diag([1.0, -1.0, -1.0])
    return verts @ rotation.T + p0, faces


def _sphere(centre, r: float, h: float) -> Part:
    """Closed sphere of radius r at ``centre``, gridded at ~h."""
    verts, faces = _revolve(_poles_on_axis(_profile([(_arc((0.0, 0.0), r, np.pi / 2, -np.pi / 2), 8)], h)), h, 16)
    return verts + np.asarray(centre, np.float64), faces


def _figure(h: float) -> list[Part]:
    """head (sphere), torso (capsule), arms and legs (thin capsules): limbs ~3-5 cm thick, 1.7 m tall."""
    head = _sphere((0.0, 1.58, 0.0), 0.11, h)
    torso = _capsule((0.0, 0.95, 0.0), (0.0, 1.35, 0.0), 0.13, h)
    arms = _concat([_capsule((s * 0.17, 1.40, 0.0), (s * 0.42, 0.95, 0.0), 0.032, h) for s in (-1.0, 1.0)])
    legs = _concat([_capsule((s * 0.08, 0.95, 0.0), (s * 0.11, 0.045, 0.0), 0.045, h) for s in (-1.0, 1.0)])
    floor = legs[0][:, 1].min()  # the tilted feet's lowest vertex stands on y = 0
    return [(v - [0.0, floor, 0.0], f) for v, f in (head, torso, arms, legs)]


def _vase(h: float) -> list[Part]:
    """body (a closed, solid body of revolution: foot, belly, neck and lip), 0.3 m tall."""
    y = np.linspace(0.0, 0.3, 257)
    radius = 0.06 + 0.05 * np.sin(np.pi * np.clip(y / 0.22, 0, 1)) ** 1.5 - 0.03 * np.clip((y - 0.2) / 0.1, 0, 1)
    radius += 0.012 * np.clip((y - 0.28) / 0.02, 0, 1)  # the lip flares
    side = np.stack([radius[::-1], y[::-1]], -1)
    body = _revolve(_profile([(((0.0, 0.3), side[0]), 2), (side, 16), ((side[-1], (0.0, 0.0)), 2)], h), h, 32)
    return [body]


def _rod(h: float) -> list[Part]:
    """block (a 20 x 8 x 20 cm box) with a thin rod (1.2 cm across, 35 cm tall) standing in its middle."""
    block = _box((-0.1, 0.0, -0.1), (0.1, 0.08, 0.1), h)
    rod = _capsule((0.0, 0.07, 0.0), (0.0, 0.344, 0.0), 0.006, h)
    return [block, rod]


def _cup(h: float) -> list[Part]:
    """wall (a thin-walled cup, 1.5 mm thick, rounded rim), 9 cm tall."""
    ro, ri, H, tb = 0.035, 0.0335, 0.09, 0.003
    pieces = [(((0.0, tb), (ri, tb)), 3), (((ri, tb), (ri, H)), 4),
              (_arc(((ri + ro) / 2, H), (ro - ri) / 2, np.pi, 0.0), 2), (((ro, H), (ro, 0.0)), 4),
              (((ro, 0.0), (0.0, 0.0)), 3)]
    return [_revolve(_profile(pieces, h), h, 32)]


_BUILDERS = {"lamp": _lamp, "chair": _chair, "mug": _mug, "figure": _figure, "vase": _vase, "rod": _rod, "cup": _cup}
_LABELS = {"lamp": ("base", "tube", "shade"), "chair": ("seat", "back", "legs"), "mug": ("body", "handle"),
           "figure": ("head", "torso", "arms", "legs"), "vase": ("body",), "rod": ("block", "rod"),
           "cup": ("wall",)}
_HEIGHT = {"lamp": 0.55, "chair": 0.9, "mug": 0.1, "figure": 1.7, "vase": 0.3, "rod": 0.35, "cup": 0.09}


def _check(name, faces) -> tuple[str, int]:
    if name not in ALL_SAMPLES:
        raise MeshError(f"unknown sample {name!r}; available samples: {', '.join(ALL_SAMPLES)}.")
    if isinstance(faces, bool) or not isinstance(faces, (int, np.integer)):
        raise MeshError(f"sample face count must be an integer, got {faces!r}.")
    if not MIN_FACES <= faces <= MAX_FACES:
        raise MeshError(f"sample face count {faces} is out of range; use {MIN_FACES} to {MAX_FACES}.")
    return name, int(faces)


def sample_mesh(name: str, faces: int = DEFAULT_FACES) -> Mesh:
    """Build the sample ``name`` (one of ALL_SAMPLES) with about ``faces`` triangles.

    Returns a :class:`Mesh` in the frame described in the module docstring, with [V] labels
    indexing ``label_names`` (lamp: base, tube, shade; chair: seat, back, legs; mug: body,
    handle). The face count is within a few percent of ``faces`` from ~5k up; at the very low
    end the per-part minimum resolution wins. Raises MeshError for an unknown name or a face
    count outside [MIN_FACES, MAX_FACES].
    """
    name, faces = _check(name, faces)
    h, best = _HEIGHT[name] / 60.0, None
    for _ in range(10):  # face count ~ 1 / h^2 (plus fixed minimums): rescale h until close
        parts = _BUILDERS[name](h)
        count = sum(len(f) for _, f in parts)
        if best is None or abs(count - faces) < abs(best[0] - faces):
            best = (count, parts)
        if abs(count - faces) <= 0.02 * faces:
            break
        h *= float(np.sqrt(count / faces))
    parts = best[1]
    verts, tris = _concat(parts)
    labels = np.repeat(np.arange(len(parts), dtype=np.int64), [len(v) for v, _ in parts])
    return mesh_from_arrays(verts.astype(np.float32), tris, labels=labels,
                            label_names=_LABELS[name], name=name)


_SPEC = re.compile(r"\s*([A-Za-z_]+)\s*(?:@\s*(\d+(?:\.\d+)?)\s*([kKmM]?))?\s*")


def parse_sample_spec(spec: str) -> tuple[str, int]:
    """``"lamp"`` -> ("lamp", 20000); ``"lamp@80k"`` -> ("lamp", 80000); ``"chair@5000"``.

    Suffixes k / M multiply by 1e3 / 1e6. Raises MeshError for a malformed spec, an unknown
    name or a face count out of range.
    """
    example = "use NAME or NAME@FACES, e.g. 'lamp', 'lamp@80k' or 'chair@5000'"
    m = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if m is None:
        raise MeshError(f"bad sample spec {spec!r}; {example} (samples: {', '.join(ALL_SAMPLES)}).")
    value = DEFAULT_FACES if m.group(2) is None else \
        float(m.group(2)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(3).lower()]
    if abs(value - round(value)) > 1e-6:
        raise MeshError(f"bad sample spec {spec!r}: the face count must be a whole number; {example}.")
    return _check(m.group(1).lower(), round(value))
