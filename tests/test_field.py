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


def _moved(f: StyleField) -> StyleField:
    """``f`` with its zero-initialized last layers drawn at random, so every layer carries a gradient."""
    with torch.no_grad():
        for head in (f.color_head, f.displacement_head):
            head[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    return f


def _library_decode(f: StyleField, features: torch.Tensor):
    """What ``decode`` computed before it cast its parameters together: each layer's own forward, with
    autocast casting every weight and bias where the layer uses it."""
    hidden = f.trunk(features)
    colors = 0.5 + 0.5 * torch.tanh(f.color_head(hidden))
    relief = torch.tanh(f.settings.relief_gain * f.displacement_head(hidden))
    return colors.view(-1, f.parts, 3), relief


def test_under_bf16_autocast_the_parameters_are_cast_together_with_the_same_values_and_gradients():
    from engine.bench_operations import OperationCounter

    f = _moved(field(parts=3))
    features = f.encode(points())
    results = {}
    for name, decode in (("together", f.decode), ("one by one", lambda x: _library_decode(f, x))):
        f.zero_grad(set_to_none=True)
        with OperationCounter() as counter, torch.autocast("cpu", dtype=torch.bfloat16):
            colors, relief = decode(features)
            (colors.float().square().sum() + relief.float().sum()).backward()
        results[name] = (colors, relief, [p.grad.clone() for p in f.parameters()], counter.by_name)
    together, one_by_one = results["together"], results["one by one"]
    assert torch.equal(together[0], one_by_one[0]) and torch.equal(together[1], one_by_one[1])
    for mine, theirs in zip(together[2], one_by_one[2], strict=True):
        assert mine.dtype == torch.float32 and torch.equal(mine, theirs)
    parameters = len(list(f.parameters()))
    assert one_by_one[3]["_to_copy"] >= 2 * parameters  # each parameter cast, and its gradient cast back
    assert together[3]["_foreach_copy_"] == 2  # all parameters forward, all gradients backward
    assert together[3]["_to_copy"] <= one_by_one[3]["_to_copy"] - 2 * parameters + 2


def test_without_autocast_the_field_uses_its_float32_parameters_directly():
    f = _moved(field())
    features = f.encode(points())
    colors, relief = f.decode(features)
    expected_colors, expected_relief = _library_decode(f, features)
    assert colors.dtype == torch.float32
    assert torch.equal(colors, expected_colors) and torch.equal(relief, expected_relief)
