"""engine.cameras: orbit frames, axis conventions, pinhole projection, view sampling."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from tolerances import CHANGED, SAME_MATH, assert_close, relative_difference

from engine.cameras import (
    MAX_ELEVATION_DEGREES,
    Cameras,
    fixed_views,
    orbit_cameras,
    ring_views,
    sample_views,
    up_axis_basis,
)
from engine.config import RenderSettings, ViewSettings

UP = {"y": np.array([0.0, 1.0, 0.0]), "z": np.array([0.0, 0.0, 1.0])}
FRONT = {"y": np.array([0.0, 0.0, 1.0]), "z": np.array([0.0, -1.0, 0.0])}  # eye direction at azimuth 0


def _random_orbit(n=64, seed=0, up_axis="y", radius=2.5, fov_deg=50.0):
    g = torch.Generator().manual_seed(seed)
    elevation = (torch.rand(n, generator=g) * 2 - 1) * math.radians(79)
    azimuth = (torch.rand(n, generator=g) * 2 - 1) * math.pi * 2
    return orbit_cameras(elevation, azimuth, radius=radius, fov_y=math.radians(fov_deg), up_axis=up_axis)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Frames


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_frame_is_orthonormal_and_right_handed(up_axis):
    cams = _random_orbit(up_axis=up_axis)
    r, u, f = _np(cams.right), _np(cams.up), _np(cams.forward)
    for a in (r, u, f):
        assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    for a, b in ((r, u), (u, f), (r, f)):
        assert np.abs((a * b).sum(1)).max() < 1e-5
    # camera frame (right, up, back): looks along its own -Z
    assert np.allclose(np.cross(r, u), -f, atol=1e-5)
    dets = np.linalg.det(np.stack([r, u, -f], axis=-1))
    assert np.allclose(dets, 1.0, atol=1e-5)


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_eye_on_the_sphere_and_looking_at_the_origin(up_axis):
    radius = 2.5
    cams = _random_orbit(up_axis=up_axis, radius=radius)
    eye, f = _np(cams.eye), _np(cams.forward)
    assert np.allclose(np.linalg.norm(eye, axis=1), radius, atol=1e-5)
    assert np.allclose(f, -eye / radius, atol=1e-5)  # forward points from the camera to the origin
    # the camera's up leans toward the world up: the image is never upside down
    assert (_np(cams.up) @ UP[up_axis] > 0).all()


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_eye_follows_the_angles(up_axis):
    e = torch.tensor([0.0, 0.3, -0.5, 1.2])
    a = torch.tensor([0.0, 1.0, -2.0, 3.0])
    radius = 3.0
    eye = _np(orbit_cameras(e, a, radius=radius, fov_y=1.0, up_axis=up_axis).eye)
    en, an = e.double().numpy(), a.double().numpy()
    up, front = UP[up_axis], FRONT[up_axis]
    side = np.cross(up, front)
    # float32 positions on a sphere of the radius, against the closed form (components cross zero)
    assert_close(eye @ up, radius * np.sin(en), rel=SAME_MATH, scale=radius)  # elevation above the horizontal
    assert_close(eye @ front, radius * np.cos(en) * np.cos(an), rel=SAME_MATH, scale=radius)
    assert_close(np.abs(eye @ side), radius * np.cos(en) * np.abs(np.sin(an)), rel=SAME_MATH, scale=radius)


def test_elevation_is_clamped():
    limit = math.radians(MAX_ELEVATION_DEGREES)
    cams = orbit_cameras(torch.tensor([math.radians(89.0), -math.pi / 2, 0.2]), torch.zeros(3), radius=2.0, fov_y=1.0)
    assert_close(cams.elevation, [limit, -limit, 0.2], rel=SAME_MATH)
    assert_close(_np(cams.eye)[:, 1], 2.0 * np.sin([limit, -limit, 0.2]), rel=SAME_MATH, scale=2.0)


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_origin_projects_to_the_image_centre(up_axis):
    radius, res = 2.5, 224
    cams = _random_orbit(up_axis=up_axis, radius=radius)
    xy, depth = cams.project(torch.zeros(1, 3), res)
    assert xy.shape == (len(cams), 1, 2) and depth.shape == (len(cams), 1)
    assert torch.allclose(xy, torch.full_like(xy, res / 2), atol=1e-3)
    assert torch.allclose(depth, torch.full_like(depth, radius), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Axis conventions


def _front(up_axis):
    return orbit_cameras(torch.zeros(1), torch.zeros(1), radius=2.0, fov_y=math.radians(60), up_axis=up_axis)


def test_y_up_front_view():
    cams = _front("y")
    assert_close(cams.eye[0], [0, 0, 2], rel=SAME_MATH)  # on +Z
    assert_close(cams.right[0], [1, 0, 0], rel=SAME_MATH)
    assert_close(cams.up[0], [0, 1, 0], rel=SAME_MATH)
    pts = torch.tensor([[0.0, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.5]])
    xy, depth = cams.project(pts, 100)
    above, right, near = xy[0]
    # pixel coordinates: their scale is the image size
    assert above[1] < 50  # +Y: up in the image
    assert_close(above[0], 50, rel=SAME_MATH, scale=100)
    assert right[0] > 50  # +X: to the right
    assert_close(right[1], 50, rel=SAME_MATH, scale=100)
    assert_close(near, [50, 50], rel=SAME_MATH, scale=100)
    assert_close(depth[0], [2.0, 2.0, 1.5], rel=SAME_MATH)  # +Z is nearer


def test_z_up_front_view():
    cams = _front("z")
    assert_close(cams.eye[0], [0, -2, 0], rel=SAME_MATH)  # on -Y, like Blender's front view
    assert_close(cams.up[0], [0, 0, 1], rel=SAME_MATH)
    pts = torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0], [0.0, -0.5, 0.0]])
    xy, depth = cams.project(pts, 100)
    above, right, _ = xy[0]
    assert above[1] < 50  # +Z: up in the image
    assert_close(above[0], 50, rel=SAME_MATH, scale=100)
    assert right[0] > 50  # +X: to the right
    assert depth[0, 2] < depth[0, 0]  # -Y is nearer


def test_z_up_is_the_y_up_orbit_rotated():
    g = torch.Generator().manual_seed(3)
    e, a = torch.rand(20, generator=g) - 0.5, torch.rand(20, generator=g) * 6
    y = orbit_cameras(e, a, radius=2.0, fov_y=1.0, up_axis="y")
    z = orbit_cameras(e, a, radius=2.0, fov_y=1.0, up_axis="z")
    basis = _np(up_axis_basis("z"))
    assert np.allclose(basis @ basis.T, np.eye(3)) and np.isclose(np.linalg.det(basis), 1.0)
    for name in ("eye", "right", "up", "forward"):
        assert_close(_np(getattr(y, name)) @ basis.T, getattr(z, name), rel=SAME_MATH, what=name)
    with pytest.raises(ValueError, match="up_axis"):
        up_axis_basis("x")


# ---------------------------------------------------------------------------------------------
# Projection


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_projection_matches_a_pinhole(up_axis):
    res, fov = 256, math.radians(50.0)
    cams = _random_orbit(n=16, seed=1, up_axis=up_axis, fov_deg=50.0)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(200, 3))
    xy, depth = cams.project(torch.from_numpy(pts).float(), res)
    eye, r, u, f = (_np(getattr(cams, k)) for k in ("eye", "right", "up", "forward"))
    for i in range(len(cams)):
        # world -> camera with a rotation matrix whose rows are the camera axes
        rot = np.stack([r[i], u[i], -f[i]])  # camera looks along -Z
        cam = (pts - eye[i]) @ rot.T
        z = -cam[:, 2]
        # normalized image plane in [-1, 1] across the vertical field of view, y up
        ndc_x = cam[:, 0] / (z * math.tan(fov / 2))
        ndc_y = cam[:, 1] / (z * math.tan(fov / 2))
        want = np.stack([(ndc_x + 1) / 2 * res, (1 - ndc_y) / 2 * res], -1)
        assert np.allclose(_np(depth[i]), z, atol=1e-4)
        assert np.allclose(_np(xy[i]), want, atol=5e-3)


def test_field_of_view_edges_reach_the_image_border():
    res, fov = 200, math.radians(60.0)
    cams = _front("y")  # eye (0, 0, 2), looking at -Z
    d = 1.5  # a plane 1.5 in front of the camera
    h = d * math.tan(fov / 2)
    pts = torch.tensor([[0.0, h, 0.5], [0.0, -h, 0.5], [h, 0.0, 0.5], [-h, 0.0, 0.5]])
    xy, _ = cams.project(pts, res)
    assert np.allclose(_np(xy[0]), [[100, 0], [100, 200], [200, 100], [0, 100]], atol=1e-3)


def test_per_view_points_match_shared_points():
    cams = _random_orbit(n=5, seed=2)
    pts = torch.randn(30, 3, generator=torch.Generator().manual_seed(4)) * 0.5
    xy_shared, d_shared = cams.project(pts, 64)
    xy_each, d_each = cams.project(pts.expand(5, 30, 3).clone(), 64)
    assert_close(xy_each, xy_shared, rel=SAME_MATH)
    assert_close(d_each, d_shared, rel=SAME_MATH)


def test_projection_gives_coordinate_planes_in_few_operations():
    """x and y come laid out as planes (what the rasterizer and the fragments gather from without a
    copy), all three coordinates from one product and one sum: the projection and its backward take
    33 operations when written (48 one axis at a time), each a kernel launch on a GPU."""
    from engine.bench_operations import operations_of

    cams = _random_orbit(n=3, seed=1)
    points = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    xy, _ = cams.project(points, 64)
    assert xy.shape == (3, 50, 2) and xy.permute(2, 0, 1).is_contiguous()

    def project_and_back():
        xy, depth = cams.project(points, 64)
        (xy.sum() + depth.sum()).backward()

    assert operations_of(project_and_back) < 40


def test_points_behind_the_camera_have_negative_depth():
    cams = _front("y")
    xy, depth = cams.project(torch.tensor([[0.0, 0.0, 3.0]]), 64)
    assert_close(depth.item(), -1.0, rel=SAME_MATH)
    assert torch.isfinite(xy).all()


# ---------------------------------------------------------------------------------------------
# View sampling


VIEWS = ViewSettings(front_elevation_degrees=15.0, front_azimuth_degrees=30.0)
RENDER = RenderSettings(camera_radius=2.2, fov_degrees=45.0)


def _same(a: Cameras, b: Cameras) -> bool:
    return a.fov_y == b.fov_y and all(
        torch.equal(getattr(a, k), getattr(b, k)) for k in ("eye", "right", "up", "forward", "elevation", "azimuth")
    )


@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_view_zero_is_the_front_view(up_axis):
    views = replace(VIEWS, up_axis=up_axis)
    cams = sample_views(6, views, RENDER, torch.Generator().manual_seed(0))
    assert len(cams) == 6
    front = fixed_views(torch.tensor([math.radians(15.0)]), torch.tensor([math.radians(30.0)]), views, RENDER)
    for k in ("eye", "right", "up", "forward", "elevation", "azimuth"):
        assert torch.equal(getattr(cams, k)[:1], getattr(front, k))
    assert cams.fov_y == pytest.approx(math.radians(45.0))
    assert np.allclose(np.linalg.norm(_np(cams.eye), axis=1), 2.2, atol=1e-5)
    # the other views are jittered away from the front
    assert relative_difference(cams.azimuth[1:], cams.azimuth[:1].expand(5)) > CHANGED


def test_single_view_is_the_front():
    cams = sample_views(1, VIEWS, RENDER, torch.Generator().manual_seed(0))
    assert len(cams) == 1
    assert_close(cams.elevation.item(), math.radians(15.0), rel=SAME_MATH)
    assert_close(cams.azimuth.item(), math.radians(30.0), rel=SAME_MATH)


def test_same_seed_same_views_and_different_seed_different_views():
    a = sample_views(8, VIEWS, RENDER, torch.Generator().manual_seed(7))
    b = sample_views(8, VIEWS, RENDER, torch.Generator().manual_seed(7))
    c = sample_views(8, VIEWS, RENDER, torch.Generator().manual_seed(8))
    assert _same(a, b)
    assert relative_difference(c.azimuth[1:], a.azimuth[1:]) > CHANGED
    assert relative_difference(c.elevation[1:], a.elevation[1:]) > CHANGED


def test_the_generator_advances():
    g = torch.Generator().manual_seed(7)
    first = sample_views(4, VIEWS, RENDER, g)
    second = sample_views(4, VIEWS, RENDER, g)
    assert relative_difference(second.azimuth[1:], first.azimuth[1:]) > CHANGED


def test_sampled_elevations_are_clamped():
    views = replace(VIEWS, elevation_std_degrees=60.0)
    cams = sample_views(2000, views, RENDER, torch.Generator().manual_seed(1))
    limit = math.radians(MAX_ELEVATION_DEGREES)
    e = cams.elevation.double()
    assert (e.abs() <= limit + 1e-6).all()
    # with a 60 degree spread many draws go past 80 degrees: they sit exactly at the limit
    assert int((e >= limit - 1e-6).sum()) > 50 and int((e <= -limit + 1e-6).sum()) > 50
    heights = _np(cams.eye)[:, 1] / 2.2
    assert heights.max() <= math.sin(limit) + 1e-5


def test_sampled_spread_matches_the_settings():
    n = 4000
    views = replace(VIEWS, elevation_std_degrees=10.0, azimuth_std_degrees=90.0)
    cams = sample_views(n + 1, views, RENDER, torch.Generator().manual_seed(2))
    az = np.degrees(_np(cams.azimuth[1:]))
    el = np.degrees(_np(cams.elevation[1:]))
    # the std of a sample std is ~ std / sqrt(2 n) (1.1 % here); allow 5 %
    assert az.std() == pytest.approx(90.0, rel=0.05)
    assert el.std() == pytest.approx(10.0, rel=0.05)
    assert az.mean() == pytest.approx(30.0, abs=4 * 90.0 / math.sqrt(n))
    assert el.mean() == pytest.approx(15.0, abs=4 * 10.0 / math.sqrt(n))
    # the two angles are drawn independently
    assert abs(np.corrcoef(az, el)[0, 1]) < 0.1


# ---------------------------------------------------------------------------------------------
# Ring views


@pytest.mark.parametrize("count", [1, 4, 7])
@pytest.mark.parametrize("up_axis", ["y", "z"])
def test_ring_views_are_evenly_spaced(count, up_axis):
    views = replace(VIEWS, up_axis=up_axis)
    cams = ring_views(count, views, RENDER, elevation_degrees=25.0)
    assert len(cams) == count
    az = _np(cams.azimuth)
    assert_close(az[0], math.radians(30.0), rel=SAME_MATH)  # starts at the front
    # differences of float32 angles up to ~2 pi: their rounding is relative to 2 pi
    assert_close(np.diff(az), 2 * math.pi / count, rel=SAME_MATH, scale=2 * math.pi)
    assert_close(cams.elevation, math.radians(25.0), rel=SAME_MATH)
    eye = _np(cams.eye)
    up = UP[up_axis]
    assert np.allclose(eye @ up, 2.2 * math.sin(math.radians(25.0)), atol=1e-5)  # one height
    flat = eye - np.outer(eye @ up, up)
    # consecutive eyes are the same angle apart around the up axis, all the way round
    nxt = np.roll(flat, -1, axis=0)
    cos = (flat * nxt).sum(1) / (np.linalg.norm(flat, axis=1) * np.linalg.norm(nxt, axis=1))
    assert np.allclose(cos, math.cos(2 * math.pi / count), atol=1e-5)


def test_fixed_views_use_the_run_settings_and_device():
    views = replace(VIEWS, up_axis="z")
    zero = torch.tensor([0.0], dtype=torch.float64)
    cams = fixed_views(zero, zero, views, RENDER)
    assert cams.eye.dtype == torch.float32 and cams.eye.device.type == "cpu"
    assert_close(cams.eye[0], [0, -2.2, 0], rel=SAME_MATH)
    assert cams.fov_y == pytest.approx(math.radians(45.0))
    moved = cams.to("cpu")
    assert _same(moved, cams)
