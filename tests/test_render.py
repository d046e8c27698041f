"""The rasterizer against independent references: ray casting, analytic silhouettes, finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from tolerances import SAME_MATH, assert_close

from engine.cameras import fixed_views
from engine.config import RenderSettings, ViewSettings
from engine.render import Renderer, rasterize
from engine.render.fragments import fragments_from_face_ids

RENDER = RenderSettings()
VIEWS = ViewSettings()


def cameras(elevations_deg, azimuths_deg, render=RENDER):
    return fixed_views(
        torch.tensor(elevations_deg, dtype=torch.float64).deg2rad(),
        torch.tensor(azimuths_deg, dtype=torch.float64).deg2rad(),
        VIEWS,
        render,
    )


def occluding_scene() -> trimesh.Trimesh:
    """A sphere partly hidden behind a rotated box, plus a torus: occlusion and thin parts."""
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.45)
    sphere.apply_translation([0.1, 0.05, -0.2])
    box = trimesh.creation.box(extents=[0.5, 0.3, 0.2])
    box.apply_transform(trimesh.transformations.rotation_matrix(0.6, [0.3, 1.0, 0.2]))
    box.apply_translation([-0.15, -0.1, 0.35])
    torus = trimesh.creation.torus(major_radius=0.35, minor_radius=0.06)
    torus.apply_translation([0.0, -0.45, 0.0])
    return trimesh.util.concatenate([sphere, box, torus])


def pixel_rays(cams, index: int, size: int):
    """Ray origins and directions through every pixel centre of view ``index`` (row-major)."""
    focal = 1.0 / math.tan(cams.fov_y / 2.0)
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    ndc_y, ndc_x = np.meshgrid(-centres, centres, indexing="ij")
    right, up, forward = (t[index].double().numpy() for t in (cams.right, cams.up, cams.forward))
    directions = forward + (ndc_x[..., None] / focal) * right + (ndc_y[..., None] / focal) * up
    directions = directions.reshape(-1, 3)
    origins = np.broadcast_to(cams.eye[index].double().numpy(), directions.shape)
    return origins, directions / np.linalg.norm(directions, axis=1, keepdims=True)


def test_face_ids_agree_with_a_ray_caster():
    scene = occluding_scene()
    size = 96
    cams = cameras([10.0, 35.0, -20.0], [0.0, 120.0, 250.0])
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    faces = torch.tensor(scene.faces, dtype=torch.int64)
    xy, depth = cams.project(vertices, size)
    face_id = rasterize(xy, depth, faces, size)
    for view in range(len(cams)):
        origins, directions = pixel_rays(cams, view, size)
        expected = scene.ray.intersects_first(origins, directions)
        got = face_id[view].reshape(-1).numpy()
        covered = (expected >= 0) | (got >= 0)
        agreement = float((expected[covered] == got[covered]).mean())
        assert covered.sum() > 0.1 * size * size
        print(f"view {view}: {agreement:.4f} of {covered.sum()} covered pixels agree")
        assert agreement >= 0.99, f"view {view}: only {agreement:.4f} of covered pixels agree"


def test_interpolated_positions_are_the_ray_hit_points():
    """Perspective-correct barycentrics: interpolating positions gives the 3D surface point."""
    scene = occluding_scene()
    size = 64
    cams = cameras([25.0], [40.0])
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    out = Renderer(RENDER).render(vertices, torch.tensor(scene.faces), cams, attributes=vertices, resolution=size)
    origins, directions = pixel_rays(cams, 0, size)
    hit_faces = scene.ray.intersects_first(origins, directions)
    face_id = out.face_id[0].reshape(-1).numpy()
    same = (hit_faces >= 0) & (hit_faces == face_id)
    locations, ray_index, _ = scene.ray.intersects_location(origins[same], directions[same], multiple_hits=False)
    interpolated = out.attributes[0].permute(1, 2, 0).reshape(-1, 3).numpy()[np.flatnonzero(same)[ray_index]]
    error = np.linalg.norm(interpolated - locations, axis=1)
    assert same.sum() > 500
    assert error.max() < 2e-4, f"max error {error.max():.2e}"


def test_barycentrics_are_a_partition_of_unity_on_covered_pixels():
    scene = occluding_scene()
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    out = Renderer(RENDER).render(vertices, torch.tensor(scene.faces), cameras([20.0], [70.0]), resolution=48)
    bary = out.barycentrics()
    covered = out.face_id >= 0
    assert torch.allclose(bary.sum(1)[covered], torch.ones(int(covered.sum())), atol=1e-5)
    assert bary.min() > -1e-3 and torch.all(bary.permute(0, 2, 3, 1)[~covered] == 0)


def component_barycentrics(face_id, xy, depth, faces):
    """The perspective-correct barycentrics [K, 3] of the covered pixels, each quantity a [K] column
    of its own (the formula the renderer's batched version must reproduce)."""
    _views, h, w = face_id.shape
    pixel = (face_id.reshape(-1) >= 0).nonzero().squeeze(1)
    view, rem = pixel // (h * w), pixel % (h * w)
    py, px = rem // w, rem % w
    corners = view.unsqueeze(1) * xy.shape[1] + faces[face_id.reshape(-1)[pixel]]
    tri, z = xy.reshape(-1, 2)[corners], depth.reshape(-1)[corners]
    d1, d2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area2 = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    area2 = torch.where(area2.abs() > 1e-12, area2, 1e-12)
    dx, dy = px.float() + 0.5 - tri[:, 0, 0], py.float() + 0.5 - tri[:, 0, 1]
    b1 = (dx * d2[:, 1] - d2[:, 0] * dy) / area2
    b2 = (d1[:, 0] * dy - dx * d1[:, 1]) / area2
    weighted = torch.stack((1.0 - b1 - b2, b1, b2), dim=-1) / z.clamp(min=1e-6)
    return weighted / weighted.sum(-1, keepdim=True)


def test_batched_barycentrics_equal_the_formula_and_its_gradient():
    """The fragments' barycentrics are the component-by-component formula bit for bit; their gradients
    are its gradients up to the order in which a vertex's contributions are summed."""
    scene = occluding_scene()
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    faces = torch.tensor(scene.faces)
    xy, depth = cameras([20.0, -10.0], [70.0, 160.0]).project(vertices, 64)
    face_id = rasterize(xy, depth, faces, 64)
    weights = torch.rand(int((face_id >= 0).sum()), 3, generator=torch.Generator().manual_seed(0))
    results = []
    for barycentrics in (lambda *a: fragments_from_face_ids(*a).bary, component_barycentrics):
        inputs = xy.detach().requires_grad_(True), depth.detach().requires_grad_(True)
        bary = barycentrics(face_id, *inputs, faces)
        (bary * weights).sum().backward()
        results.append((bary.detach(), *(tensor.grad for tensor in inputs)))
    (batched, xy_grad, depth_grad), (formula, xy_grad_formula, depth_grad_formula) = results
    assert torch.equal(batched, formula)
    assert_close(xy_grad, xy_grad_formula, rel=SAME_MATH)
    assert_close(depth_grad, depth_grad_formula, rel=SAME_MATH)


def test_barycentrics_take_few_operations_forward_and_backward():
    """A GPU launches a kernel for each operation: the batched barycentrics, forward and backward, take
    about a quarter fewer than the formula's columns (94 against 128 when written; the renderer's
    earlier column-by-column code took 130)."""
    from engine.bench_operations import operations_of

    scene = occluding_scene()
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    faces = torch.tensor(scene.faces)
    xy, depth = cameras([20.0], [70.0]).project(vertices, 32)
    face_id = rasterize(xy, depth, faces, 32)

    def forward_and_backward(barycentrics):
        inputs = xy.detach().requires_grad_(True), depth.detach().requires_grad_(True)
        return lambda: barycentrics(face_id, *inputs, faces).sum().backward()

    batched = operations_of(forward_and_backward(lambda *a: fragments_from_face_ids(*a).bary))
    formula = operations_of(forward_and_backward(component_barycentrics))
    assert batched < 0.8 * formula, (batched, formula)


def test_sphere_silhouette_matches_the_analytic_projection():
    radius, size = 0.8, 512
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    cams = cameras([0.0], [0.0])
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    xy, depth = cams.project(vertices, size)
    covered = float((rasterize(xy, depth, torch.tensor(sphere.faces), size) >= 0).sum())
    half_angle = math.asin(radius / RENDER.camera_radius)
    focal = 1.0 / math.tan(cams.fov_y / 2.0)
    expected = math.pi * (math.tan(half_angle) * focal * size / 2.0) ** 2
    assert abs(covered / expected - 1.0) < 0.01, f"area {covered:.0f} vs analytic {expected:.0f}"


def test_background_and_alpha():
    render = RenderSettings(background=(0.2, 0.4, 0.6))
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    colors = torch.tensor([1.0, 0.0, 0.0]).expand_as(vertices)
    out = Renderer(render).render(vertices, torch.tensor(sphere.faces), cameras([0.0], [0.0], render), colors=colors,
                                  resolution=32)
    alpha = out.alpha[0, 0]
    assert alpha[0, 0] == 0 and alpha[16, 16] == 1
    assert torch.allclose(out.color[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    centre = out.color[0, :, 16, 16]
    # Facing the headlight: shade = ambient + diffuse; pure red albedo keeps green/blue at 0.
    assert centre[1] == 0 and centre[2] == 0
    assert abs(float(centre[0]) - (render.ambient + render.diffuse)) < 0.01


def fixed_visibility_image(vertices, colors, faces, cams, face_id, weights):
    out = Renderer(RENDER).render(vertices, faces, cams, colors=colors, geometry=True, face_id=face_id)
    return (out.color * weights).sum() + (out.geometry * weights).sum()


def test_gradients_match_finite_differences():
    """With visibility held fixed, the image is smooth in colors and positions: gradcheck it."""
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.6)
    sphere.vertices *= np.array([1.0, 0.8, 1.1])
    faces = torch.tensor(sphere.faces)
    cams = cameras([15.0, -30.0], [20.0, 200.0])
    vertices = torch.tensor(sphere.vertices, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    colors = torch.rand(vertices.shape, generator=generator, dtype=torch.float64)
    size = 24
    xy, depth = cams.project(vertices.float(), size)
    face_id = rasterize(xy, depth, faces, size)
    weights = torch.rand(2, 3, size, size, generator=generator, dtype=torch.float64)
    frame = (cams.eye, cams.right, cams.up, cams.forward, cams.elevation, cams.azimuth)
    cams64 = type(cams)(*(t.double() for t in frame), fov_y=cams.fov_y)

    def image_loss(v, c):
        return fixed_visibility_image(v, c, faces, cams64, face_id, weights)

    assert torch.autograd.gradcheck(
        image_loss, (vertices.clone().requires_grad_(True), colors.clone().requires_grad_(True)), eps=1e-6, atol=1e-5
    )


def test_displacement_receives_gradient_from_shading():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    normals = torch.tensor(sphere.vertex_normals, dtype=torch.float32)
    displacement = torch.zeros(len(vertices), requires_grad=True)
    positions = vertices + displacement[:, None] * normals
    out = Renderer(RENDER).render(positions, torch.tensor(sphere.faces), cameras([0.0], [0.0]), geometry=True,
                                  resolution=64)
    # Darken the image's left half: only tilting faces there (displacement) can do that.
    out.geometry[..., :32].sum().backward()
    assert displacement.grad is not None
    assert int((displacement.grad.abs() > 0).sum()) > 50


def test_empty_view_renders_background():
    sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.3)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32) + torch.tensor([0.0, 0.0, 5.0])  # behind the camera
    out = Renderer(RENDER).render(vertices, torch.tensor(sphere.faces), cameras([0.0], [0.0]),
                                  colors=torch.zeros_like(vertices), resolution=16)
    assert float(out.alpha.sum()) == 0
    assert torch.all(out.color == 1.0)


def test_chunked_rasterization_gives_the_same_image():
    scene = occluding_scene()
    cams = cameras([10.0, 60.0], [30.0, 300.0])
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    xy, depth = cams.project(vertices, 80)
    faces = torch.tensor(scene.faces)
    whole = rasterize(xy, depth, faces, 80)
    chunked = rasterize(xy, depth, faces, 80, max_pairs=997)
    assert torch.equal(whole, chunked)


def test_rasterization_takes_few_operations():
    """A GPU launches a kernel for each operation: the visibility pass computes x and y as planes,
    one operation for both (91 for two views in one chunk when written; 125 one coordinate at a time)."""
    from engine.bench_operations import operations_of

    scene = occluding_scene()
    xy, depth = cameras([20.0, 50.0], [70.0, 10.0]).project(torch.tensor(scene.vertices, dtype=torch.float32), 32)
    assert operations_of(lambda: rasterize(xy, depth, torch.tensor(scene.faces), 32)) < 100


def test_chunks_cover_the_faces_in_order_and_carry_their_pixel_sums():
    from engine.render.raster import _chunks_by_total

    count = torch.tensor([5, 0, 1200, 3, 7, 998, 2, 0, 40, 1])
    ids = count.nonzero().squeeze(1)
    chunks = _chunks_by_total(ids, count, 1000)
    assert torch.equal(torch.cat([run for run, _ in chunks]), ids) and len(chunks) > 2
    assert [total for _, total in chunks] == [int(count[run].sum()) for run, _ in chunks]
    ((run, total),) = _chunks_by_total(ids, count, 10_000)
    assert torch.equal(run, ids) and total == int(count.sum())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible to PyTorch here")
def test_cuda_renders_the_same_image_as_cpu():
    scene = occluding_scene()
    cams = cameras([10.0, 35.0], [0.0, 120.0])
    vertices = torch.tensor(scene.vertices, dtype=torch.float32)
    colors = torch.rand(vertices.shape, generator=torch.Generator().manual_seed(1))
    faces = torch.tensor(scene.faces)
    cpu = Renderer(RENDER).render(vertices, faces, cams, colors=colors, resolution=128)
    gpu = Renderer(RENDER).render(vertices.cuda(), faces.cuda(), cams.to("cuda"), colors=colors.cuda(), resolution=128)
    same_face = (cpu.face_id == gpu.face_id.cpu()).float().mean()
    assert same_face > 0.999
    agree = (cpu.face_id == gpu.face_id.cpu()).unsqueeze(1).expand_as(cpu.color)
    assert torch.allclose(cpu.color[agree], gpu.color.cpu()[agree], atol=1e-4)
