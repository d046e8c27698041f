"""CLIP guidance: preprocessing equals the library's processor, augmentations do what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tolerances import CHANGED, SAME_MATH, assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from engine.config import GuidanceSettings
from engine.guidance import ClipGuidance
from engine.guidance.augment import crop_boxes, grid_base, identity_grid, perspective_grid, resample
from engine.guidance.preprocess import clip_preprocess
from engine.models import CLIP_MEAN, CLIP_STD, ModelStore


@pytest.fixture(scope="module")
def tiny_clip():
    return ModelStore("tiny").clip("cpu")


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: low-frequency content, where resampling filters agree closely."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3))
    big = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
    return big


@pytest.mark.parametrize("shape", [(224, 224), (300, 400), (512, 256)])
def test_preprocessing_matches_the_clip_image_processor(shape):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = smooth_image(*shape)
    expected = CLIPImageProcessorPil()(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
    got = clip_preprocess(tensor, 224, CLIP_MEAN, CLIP_STD)
    assert got.shape == expected.shape
    difference = (got - expected).abs()
    assert float(difference.mean()) < 0.01, float(difference.mean())
    assert float(difference.max()) < 0.1, float(difference.max())


def test_no_distortion_and_a_full_crop_return_the_image():
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grid = perspective_grid(2, 32, p=1.0, distortion=0.0, generator=torch.Generator())
    assert_close(resample(image, torch.tensor([0, 1]), grid), image, rel=SAME_MATH)
    assert_close(grid, identity_grid(2, 32), rel=SAME_MATH)


def test_perspective_moves_corners_inwards_and_fills_white():
    generator = torch.Generator().manual_seed(3)
    grid = perspective_grid(64, 48, p=1.0, distortion=0.5, generator=generator)
    image = torch.zeros(1, 3, 48, 48)
    warped = resample(image, torch.zeros(64, dtype=torch.int64), grid)
    # Output corners sample outside the source (white), the centre stays inside (black).
    assert float(warped[:, :, 0, 0].mean()) > 0.5
    assert float(warped[:, :, 24, 24].max()) < 1e-6


def test_resampling_fills_outside_the_source_and_reads_its_own_image_without_a_source_index():
    """Outside the source a pixel blends to ``fill`` by the share of it that falls outside (zero padding
    itself where the fill is 0); ``source=None`` samples image i for output i, as the identity index does."""
    from engine.guidance.augment import cycling_sources

    generator = torch.Generator().manual_seed(5)
    images = torch.rand(3, 4, 40, 40, generator=generator)
    grid = perspective_grid(3, 40, p=1.0, distortion=0.6, generator=generator)
    zero_padded = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    covered = F.grid_sample(torch.ones(3, 1, 40, 40), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    assert bool((covered < 0.5).any())  # the warp reaches outside the source
    for fill in (0.0, 1.0, 0.25):
        expected = zero_padded + (1.0 - covered) * fill
        assert torch.equal(resample(images, None, grid, fill=fill), resample(images, torch.arange(3), grid, fill=fill))
        assert_close(resample(images, None, grid, fill=fill), expected, rel=SAME_MATH)
    assert cycling_sources(3, 3) is None
    assert cycling_sources(6, 3).tolist() == [0, 1, 2, 0, 1, 2]


def test_homography_maps_the_four_points_exactly():
    from engine.guidance.augment import _homography

    generator = torch.Generator().manual_seed(4)
    src = torch.rand(5, 4, 2, generator=generator, dtype=torch.float64) * 2 - 1
    src = src + torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    dst = src + 0.2 * torch.rand(5, 4, 2, generator=generator, dtype=torch.float64)
    h = _homography(src, dst)
    mapped = torch.cat((src, torch.ones(5, 4, 1, dtype=torch.float64)), -1) @ h.transpose(1, 2)
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], dst, atol=1e-9)


def test_perspective_probability_is_respected():
    generator = torch.Generator().manual_seed(5)
    grid = perspective_grid(400, 8, p=0.25, distortion=0.5, generator=generator)
    # a warp moves the corners by up to 0.5 of the half side: far beyond CHANGED of the [-1, 1] grid
    warped = (grid - identity_grid(400, 8)).abs().flatten(1).amax(1) > CHANGED
    assert 0.18 < float(warped.float().mean()) < 0.32


def test_one_batched_product_warps_some_images_and_leaves_the_others_exactly_alone():
    """The grids are one product of the pixel centres with a homography per image, the identity
    for an image left unwarped: that image's grid is the identity exactly, a warped one's is its
    own homography's map."""
    from engine.guidance.augment import _homography

    size, seed = 24, 11
    grid = perspective_grid(12, size, p=0.5, distortion=0.5, generator=torch.Generator().manual_seed(seed))
    draws = torch.Generator().manual_seed(seed)  # perspective_grid's draws, in its order
    apply = torch.rand(12, generator=draws) < 0.5
    shifts = torch.rand(12, 4, 2, generator=draws, dtype=torch.float64) * 0.5
    assert 0 < int(apply.sum()) < 12
    identity = identity_grid(12, size, dtype=torch.float64).float()  # float64 pixel centres, as the grids'
    assert torch.equal(grid[~apply], identity[~apply])
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    for image in apply.nonzero().squeeze(1).tolist():
        h = _homography((corners - torch.sign(corners) * shifts[image])[None], corners[None])[0]
        pixels = identity_grid(1, size, dtype=torch.float64).reshape(-1, 2)
        mapped = torch.cat((pixels, torch.ones(size * size, 1, dtype=torch.float64)), 1) @ h.T
        expected = (mapped[:, :2] / mapped[:, 2:]).reshape(size, size, 2).float()
        assert_close(grid[image], expected, rel=SAME_MATH, what=f"warped grid {image}")
    kept = perspective_grid(12, size, p=0.5, distortion=0.5, generator=torch.Generator().manual_seed(seed),
                            base=grid_base(size))
    assert torch.equal(kept, grid)


def test_guidance_makes_the_pixel_centres_of_its_grids_once(tiny_clip, monkeypatch):
    import engine.guidance.clip as clip_module

    made = []

    def counted(size, device):
        made.append(size)
        return grid_base(size, device=device)

    monkeypatch.setattr(clip_module, "grid_base", counted)
    guidance = ClipGuidance(tiny_clip, GuidanceSettings(global_augmentations=2, local_crops=3, geometry_crops=1))
    color = torch.rand(2, 3, 96, 96)
    batches = [guidance.augment(color, color, torch.Generator().manual_seed(0)) for _ in range(2)]
    assert made == [tiny_clip.image_size]  # three grid calls a step, two steps
    assert torch.equal(batches[0].images, batches[1].images)


class _LargeOutputs(TorchDispatchMode):
    """Records the device of every operation output with at least ``elements`` elements."""

    def __init__(self, elements: int):
        super().__init__()
        self.elements, self.devices = elements, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
            if torch.is_tensor(tensor) and tensor.numel() >= self.elements:
                self.devices.append((func.overloadpacket.__name__, tensor.device.type))
        return out


def test_grids_are_built_on_the_device_that_samples_them(tiny_clip):
    """On a GPU the host only draws the random numbers: no image-sized grid is computed on the CPU
    and copied over ('meta' stands in for the GPU: it computes nothing, but keeps the device)."""
    guidance = ClipGuidance(tiny_clip, GuidanceSettings(global_augmentations=2, local_crops=3, geometry_crops=1))
    color = torch.rand(2, 3, 96, 96).to("meta")
    size = tiny_clip.image_size
    with _LargeOutputs(size * size) as large:
        batch = guidance.augment(color, color, torch.Generator().manual_seed(0))
        grid = perspective_grid(4, size, p=1.0, distortion=0.5, generator=torch.Generator(), device="meta")
    assert batch.images.device.type == grid.device.type == "meta"
    assert large.devices and all(device == "meta" for _name, device in large.devices), large.devices


def test_an_apple_gpus_grids_are_built_on_the_cpu_which_has_float64():
    from engine.guidance.augment import float64_device

    assert float64_device(torch.device("mps")) == torch.device("cpu")
    assert float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert float64_device(torch.device("meta")) == torch.device("meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none is visible to PyTorch here")
def test_grids_built_on_a_gpu_equal_the_cpus():
    on_cpu = perspective_grid(6, 40, p=0.5, distortion=0.5, generator=torch.Generator().manual_seed(6))
    on_gpu = perspective_grid(6, 40, p=0.5, distortion=0.5, generator=torch.Generator().manual_seed(6), device="cuda")
    assert on_gpu.device.type == "cuda"
    assert_close(on_gpu.cpu(), on_cpu, rel=SAME_MATH)


def test_part_losses_read_each_parts_rows_and_skip_a_part_without_crops(tiny_clip):
    guidance = ClipGuidance(tiny_clip, GuidanceSettings())
    embeddings = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    owner = torch.tensor([0, 0, 0, 2, 2])  # part 1 has no crop
    losses = guidance._per_part_losses(embeddings, owner, texts)
    assert losses[1] is None
    for part, rows in ((0, [0, 1, 2]), (2, [3, 4])):
        mean = torch.nn.functional.normalize(embeddings[rows].mean(0), dim=-1)
        assert_close(losses[part], 1.0 - (mean * texts[part]).sum(), rel=SAME_MATH, what=f"part {part}")
    with pytest.raises(ValueError, match="grouped by part"):
        guidance._per_part_losses(embeddings, torch.tensor([0, 2, 0, 2, 2]), texts)


def test_mask_boxes_cover_each_masks_pixels_exactly():
    """A part crop starts from its mask's box: (centre x, centre y, half width, half height) in
    grid_sample's coordinates, from the first covered column and row to the last, both included."""
    from engine.guidance.clip import _mask_boxes

    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    masks[0, 10:20, 4:36] = True  # rows 10-19, columns 4-35
    masks[1, 39, 0] = True  # one pixel in the bottom-left corner
    boxes = _mask_boxes(masks)
    pixel = 2.0 / 40
    expected = torch.tensor([[(4 + 36) / 2 * pixel - 1.0, (10 + 20) / 2 * pixel - 1.0, 16 * pixel, 5 * pixel],
                             [0.5 * pixel - 1.0, 1.0 - 0.5 * pixel, 0.5 * pixel, 0.5 * pixel]])
    assert boxes.dtype == torch.float32
    assert_close(boxes, expected, rel=SAME_MATH)


def test_crops_have_the_requested_area_and_stay_inside():
    boxes = crop_boxes(1000, area=0.1, generator=torch.Generator().manual_seed(0))
    area = (boxes[:, 2] * boxes[:, 3])  # half sides in [-1, 1] coordinates: fraction = (2w * 2h) / 4
    assert torch.allclose(area, torch.full_like(area, 0.1), atol=1e-5)
    assert torch.all(boxes[:, 0].abs() + boxes[:, 2] <= 1 + 1e-6)
    assert torch.all(boxes[:, 1].abs() + boxes[:, 3] <= 1 + 1e-6)
    ratio = boxes[:, 2] / boxes[:, 3]
    assert ratio.min() >= 0.75 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4


def test_augmented_batch_has_every_group(tiny_clip):
    settings = GuidanceSettings(global_augmentations=2, local_crops=3, geometry_crops=1)
    guidance = ClipGuidance(tiny_clip, settings)
    color, geometry = torch.rand(4, 3, 96, 96), torch.rand(4, 3, 96, 96)
    batch = guidance.augment(color, geometry, torch.Generator().manual_seed(0))
    sizes = {name: s.stop - s.start for name, s in batch.groups.items()}
    assert sizes == {"global": 8, "local": 12, "geometry": 4}
    assert batch.images.shape == (24, 3, 224, 224)
    no_geometry = guidance.augment(color, None, torch.Generator().manual_seed(0))
    assert "geometry" not in no_geometry.groups


def test_losses_send_gradients_to_the_renders(tiny_clip):
    guidance = ClipGuidance(tiny_clip, GuidanceSettings())
    text = guidance.encode_text(["a red lamp"])[0]
    assert math.isclose(float(text.norm()), 1.0, rel_tol=1e-5)
    color = torch.rand(3, 3, 64, 64, requires_grad=True)
    geometry = torch.rand(3, 3, 64, 64, requires_grad=True)
    losses = guidance.losses(color, geometry, text, torch.Generator().manual_seed(0))
    assert set(losses) == {"global", "local", "geometry", "total"}
    for name in ("global", "local", "geometry"):
        assert 0.0 <= float(losses[name].detach()) <= 2.0
    losses["total"].backward()
    assert color.grad.abs().sum() > 0 and geometry.grad.abs().sum() > 0


def test_same_generator_state_gives_the_same_losses(tiny_clip):
    guidance = ClipGuidance(tiny_clip, GuidanceSettings())
    text = guidance.encode_text(["a blue chair"])[0]
    color = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    a = guidance.losses(color, color, text, torch.Generator().manual_seed(9))["total"]
    b = guidance.losses(color, color, text, torch.Generator().manual_seed(9))["total"]
    c = guidance.losses(color, color, text, torch.Generator().manual_seed(10))["total"]
    assert float(a) == float(b) and float(a) != float(c)


def _lamp_renders(views: int = 3, size: int = 96):
    """[N, 3, H, W] shaded renders of the sample lamp with smoothly varying colors, and its [N, P, H, W]
    part masks (base, tube, shade): what the trainer hands the guidance."""
    from engine.cameras import sample_views
    from engine.config import settings_for
    from engine.render import Renderer
    from engine.samples import sample_mesh

    lamp = sample_mesh("lamp", 2000)
    settings = settings_for("fast", [f"render.resolution={size}"])
    vertices = torch.from_numpy(lamp.unit_vertices())
    colors = (vertices * 0.4 + 0.5).clamp(0, 1)
    weights = torch.nn.functional.one_hot(torch.from_numpy(lamp.labels), len(lamp.label_names)).float()
    cameras = sample_views(views, settings.views, settings.render, torch.Generator().manual_seed(3))
    out = Renderer(settings.render).render(vertices, torch.from_numpy(lamp.faces), cameras, colors=colors,
                                           attributes=weights)
    return out.color, out.attributes


def test_a_steps_images_go_through_clip_in_one_forward_with_the_same_losses(tiny_clip):
    guidance = ClipGuidance(tiny_clip, GuidanceSettings(local_crops=1, geometry_crops=1, part_crops=2,
                                                        part_min_pixels=16, precision="float32"))
    color, masks = _lamp_renders()
    text = guidance.encode_text(["a lamp"])[0]
    part_texts = guidance.encode_text(["red base", "gold tube", "linen shade"])
    generator = torch.Generator().manual_seed(4)  # one stream, drawn in the same order as step_losses draws
    separate = guidance.losses(color, color, text, generator, local=False)
    separate_parts = guidance.part_losses(color, masks, part_texts, generator)
    forwards = []  # the batch of each pass through the vision tower
    embeddings = tiny_clip.model.vision_model.embeddings
    hook = embeddings.register_forward_hook(lambda _module, inputs, _output: forwards.append(inputs[0].shape[0]))
    try:
        together, parts = guidance.step_losses(color, color, text, torch.Generator().manual_seed(4), masks=masks,
                                               part_texts=part_texts)
    finally:
        hook.remove()
    assert forwards == [3 + 3 + 3 * 2]  # global + geometry + 2 crops of each of 3 parts, in one batch
    assert together.keys() == separate.keys() == {"global", "geometry", "total"}
    for name in ("global", "geometry"):
        assert_close(together[name].detach(), separate[name].detach(), rel=SAME_MATH, what=name)
    for mine, theirs in zip(parts, separate_parts, strict=True):
        assert_close(mine.detach(), theirs.detach(), rel=SAME_MATH, what="part loss")
    # the step's total also counts the parts, each weighted by part_weight
    weight = guidance.settings.part_weight
    expected = separate["total"] + sum(weight * part for part in separate_parts)
    assert_close(together["total"].detach(), expected.detach(), rel=SAME_MATH, what="total")


def test_a_steps_losses_and_their_gradient_are_those_computed_one_by_one(tiny_clip):
    """The losses of a step come out of one vector (segment_losses) and the total is one weighted sum;
    they and the image gradient equal the same losses computed group by group and part by part."""
    import torch.nn.functional as F

    settings = GuidanceSettings(local_crops=1, geometry_crops=1, part_crops=2, part_min_pixels=16,
                                precision="float32", geometry_weight=0.5, part_weight=2.0)
    guidance = ClipGuidance(tiny_clip, settings)
    color, masks = _lamp_renders()
    masks[:, 1] = 0.0  # the tube shows in no view: it gets no loss and no weight in the total
    text = guidance.encode_text(["a lamp"])[0]
    part_texts = guidance.encode_text(["red base", "gold tube", "linen shade"])
    image = color.clone().requires_grad_(True)
    losses, parts = guidance.step_losses(image, image, text, torch.Generator().manual_seed(4), masks=masks,
                                         part_texts=part_texts)
    losses["total"].backward()
    assert parts[1] is None and parts[0] is not None and parts[2] is not None

    one_by_one = image.detach().clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(4)
    batch = guidance.augment(one_by_one, one_by_one, generator, local=False)
    crops, owner = guidance.part_crops(one_by_one, masks, generator)
    embeddings = guidance.encode_images(torch.cat((batch.images, crops)))

    def loss_of(rows, target):
        return 1.0 - (F.normalize(embeddings[rows].mean(0), dim=-1) * target).sum()

    expected = {name: loss_of(rows, text) for name, rows in batch.groups.items()}
    count = batch.images.shape[0]
    expected_parts = {part: loss_of(count + (owner == part).nonzero().squeeze(1), part_texts[part]) for part in (0, 2)}
    total = expected["global"] + 0.5 * expected["geometry"] + 2.0 * (expected_parts[0] + expected_parts[2])
    total.backward()
    for name, value in expected.items():
        assert_close(losses[name].detach(), value.detach(), rel=SAME_MATH, what=name)
    for part, value in expected_parts.items():
        assert_close(parts[part].detach(), value.detach(), rel=SAME_MATH, what=f"part {part}")
    assert_close(losses["total"].detach(), total.detach(), rel=SAME_MATH, what="total")
    assert_close(image.grad, one_by_one.grad, rel=SAME_MATH, what="image gradient")


def test_bfloat16_guidance_keeps_the_direction_of_the_image_gradient(tiny_clip):
    color, masks = _lamp_renders()
    text_source = ClipGuidance(tiny_clip, GuidanceSettings(precision="float32"))
    text = text_source.encode_text(["a lamp made of gold"])[0]
    part_texts = text_source.encode_text(["red base", "gold tube", "linen shade"])
    gradients, totals = {}, {}
    for precision in ("float32", "bfloat16"):
        guidance = ClipGuidance(tiny_clip, GuidanceSettings(local_crops=1, geometry_crops=1, part_crops=2,
                                                            part_min_pixels=16, precision=precision))
        assert guidance.bfloat16 == (precision == "bfloat16")
        image = color.clone().requires_grad_(True)
        losses, parts = guidance.step_losses(image, image, text, torch.Generator().manual_seed(5), masks=masks,
                                             part_texts=part_texts)
        total = losses["total"]  # the parts' losses are in it
        assert total.dtype == torch.float32 and all(part is not None for part in parts)
        total.backward()
        gradients[precision], totals[precision] = image.grad.flatten(), float(total.detach())
    cosine = torch.nn.functional.cosine_similarity(gradients["float32"], gradients["bfloat16"], dim=0)
    assert cosine > 0.99, f"bf16 turned the image gradient by {math.degrees(math.acos(min(1.0, cosine))):.1f} deg"
    assert abs(totals["bfloat16"] - totals["float32"]) < 0.02 * abs(totals["float32"])
