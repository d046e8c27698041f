"""The neural style field: starts from an unchanged mesh, is fixed by its seed, respects its bounds."""

from __future__ import annotations

import torch

from engine.config import FieldSettings
from engine.field import StyleField


def field(seed: int = 0, parts: int = 1, **overrides) -> StyleField:
    return StyleField(FieldSettings(**overrides), torch.Generator().manual_seed(seed), parts=parts)


def points(n: int = 500) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(7)) * 2 - 1


def test_a_new_field_leaves_the_mesh_unchanged():
    colors, displacement = field(parts=3)(points())
    assert colors.shape == (500, 3, 3) and displacement.shape == (500, 3)
    assert torch.all(colors == 0.5)
    assert torch.all(displacement == 0)


def test_the_seed_fixes_the_initialization():
    a, b, c = field(3), field(3), field(4)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoding.matrix, c.encoding.matrix)


def test_outputs_are_bounded_after_training_moves_the_heads():
    f = field()
    with torch.no_grad():
        for head in (f.color_head, f.displacement_head):
            head[-1].weight.normal_(0, 50.0, generator=torch.Generator().manual_seed(1))
    colors, relief = f(points())
    assert colors.min() >= 0 and colors.max() <= 1
    assert relief.abs().max() <= 1.0  # a share of each vertex's bound (compose.py applies the bounds)
    assert relief.abs().max() > 0.9  # the bound is reached, not merely respected


def test_gradients_reach_every_layer_after_one_step():
    f = field()
    optimizer = torch.optim.Adam(f.parameters(), lr=1e-2)
    p = points()
    for _ in range(2):  # the zero-initialized last layers block deeper gradients only at step 0
        optimizer.zero_grad()
        colors, displacement = f(p)
        (colors[:, 0].sum() + displacement.sum()).backward()
        optimizer.step()
    for name, parameter in f.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_progressive_mask_opens_the_lowest_frequencies_first():
    f = field(fourier_features=8)
    norms = f.encoding.matrix.norm(dim=0)
    assert torch.all(norms[1:] >= norms[:-1])
    mask = f.encoding.frequency_mask(0.25)
    assert mask.shape == (3 + 16,)
    assert mask[:3].tolist() == [1, 1, 1]
    assert mask[3:11].tolist() == [1, 1, 0, 0, 0, 0, 0, 0] and mask[11:].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert torch.all(f.encoding.frequency_mask(1.0) == 1)
