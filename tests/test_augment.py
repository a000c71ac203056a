"""lenet.augment on its own: the batched warp is the identity at zero strength, stays within its
bounds, is seeded, and the elastic field and stroke-width change do what their docstrings say."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from lenet.augment import AugmentConfig, affine_matrices, augment_batch, change_thickness, elastic_field

NONE = AugmentConfig(rotate=0.0, scale=0.0, shear=0.0, shift=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def strokes(n: int = 8) -> torch.Tensor:
    """(n, 1, 28, 28) in [0, 1], background 0: a 3 px bar per image at a varying place."""
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        k = i % 8
        x[i, 0, 6 + k:22 - k // 2, 12 + k % 3:15 + k % 3] = 1.0
    return x


def centre(x: torch.Tensor) -> torch.Tensor:
    """(n, 2) centre of mass (row, col) of each (1, H, W) image."""
    ys, xs = torch.meshgrid(torch.arange(x.shape[-2]).float(), torch.arange(x.shape[-1]).float(), indexing="ij")
    mass = x.sum(dim=(1, 2, 3))
    return torch.stack([(x[:, 0] * ys).sum(dim=(1, 2)) / mass, (x[:, 0] * xs).sum(dim=(1, 2)) / mass], dim=1)


def test_zero_strength_is_the_identity():
    x = strokes()
    assert torch.equal(affine_matrices(4, NONE, gen()), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(4, 2, 3))
    torch.testing.assert_close(augment_batch(x, NONE, gen()), x, atol=1e-5, rtol=0)


def test_shape_range_and_background_are_kept():
    x = strokes()
    cfg = AugmentConfig(rotate=15, scale=0.15, shear=15, shift=0.1, elastic_alpha=2.0, thickness=0.5)
    out = augment_batch(x, cfg, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert out[:, :, :2].abs().max() < 1e-6  # a bar far from the border leaves the border black
    assert not torch.allclose(out, x)


def test_same_seed_same_batch_other_seed_another():
    x, cfg = strokes(), AugmentConfig(elastic_alpha=1.5, thickness=0.3)
    assert torch.equal(augment_batch(x, cfg, gen(1)), augment_batch(x, cfg, gen(1)))
    assert not torch.equal(augment_batch(x, cfg, gen(1)), augment_batch(x, cfg, gen(2)))


def test_each_image_gets_its_own_transform():
    theta = affine_matrices(64, AugmentConfig(), gen())
    assert theta.shape == (64, 2, 3)
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 64


def test_affine_parameters_stay_within_their_bounds():
    """A pure rotation is orthogonal with its angle within bounds; a pure zoom is a scaled identity;
    a pure shift moves by at most 2 x shift in grid units."""
    n = 500
    rot = affine_matrices(n, AugmentConfig(rotate=10, scale=0, shear=0, shift=0), gen())
    a = rot[:, :, :2]
    torch.testing.assert_close(a @ a.transpose(1, 2), torch.eye(2).expand(n, 2, 2), atol=1e-6, rtol=0)
    angles = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs()
    assert angles.max() <= math.radians(10) + 1e-6 and angles.max() > math.radians(9)  # reaches its bound
    zoom = affine_matrices(n, AugmentConfig(rotate=0, scale=0.2, shear=0, shift=0), gen())
    factor = zoom[:, 0, 0]
    assert torch.allclose(zoom[:, 1, 1], factor) and zoom[:, 0, 1].abs().max() < 1e-7
    assert (1 / factor).min() >= 0.8 - 1e-6 and (1 / factor).max() <= 1.2 + 1e-6  # sampled at A x: zoom = 1/a
    shift = affine_matrices(n, AugmentConfig(rotate=0, scale=0, shear=0, shift=0.1), gen())[:, :, 2]
    assert shift.abs().max() <= 0.2 + 1e-6 and shift.abs().max() > 0.18


def test_shift_moves_the_digit_by_at_most_its_bound_in_pixels():
    x = strokes()
    out = augment_batch(x, AugmentConfig(rotate=0, scale=0, shear=0, shift=0.1), gen())
    moved = (centre(out) - centre(x)).abs()
    assert moved.max() <= 0.1 * 28 + 0.5 and moved.max() > 0.5


def test_elastic_field_peak_is_alpha_pixels():
    cfg = AugmentConfig(elastic_alpha=2.0, elastic_sigma=4.0)
    field = elastic_field(3, 28, cfg, gen())
    assert field.shape == (3, 28, 28, 2)
    peak_pixels = field.abs().amax(dim=(1, 2)) * 28 / 2  # grid units -> pixels, per image and axis
    torch.testing.assert_close(peak_pixels, torch.full((3, 2), 2.0))
    rough = (field[:, 1:] - field[:, :-1]).abs().max() * 28 / 2  # smooth: neighbours move alike
    assert rough < 0.5


def test_thickness_dilates_or_erodes_only_the_chosen_share():
    x = strokes(64)
    assert torch.equal(change_thickness(x, 0.0, gen()), x)
    out = change_thickness(x, 1.0, gen())
    ink_before, ink_after = x.sum(dim=(1, 2, 3)), out.sum(dim=(1, 2, 3))
    thicker, thinner = ink_after > ink_before, ink_after < ink_before
    assert bool((thicker | thinner).all()) and thicker.any() and thinner.any()
    assert torch.equal(out[thicker], ((x + F.max_pool2d(x, 3, 1, 1)) / 2)[thicker])
    assert out.min() >= 0 and out.max() <= 1
    some = change_thickness(x, 0.5, gen())
    changed = (some != x).flatten(1).any(1).float().mean().item()
    assert 0.25 < changed < 0.75


@pytest.mark.parametrize("field", ["rotate", "shear"])
def test_rotation_and_shear_keep_most_of_the_ink(field):
    """Warps move ink, they do not make or lose much of it (bilinear sampling blurs a little)."""
    x = strokes()
    out = augment_batch(x, dataclasses.replace(NONE, **{field: 15.0}), gen())
    ratio = out.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ((ratio > 0.85) & (ratio < 1.15)).all()


def test_flip_mirrors_about_half_the_images_exactly_and_leaves_the_other_draws_alone():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    flipped = augment_batch(x, dataclasses.replace(NONE, flip=True), gen(3))
    mirrored = [torch.allclose(f, i.flip(-1), atol=1e-5) for f, i in zip(flipped, x)]
    kept = [torch.allclose(f, i, atol=1e-5) for f, i in zip(flipped, x)]
    assert all(m != k for m, k in zip(mirrored, kept))  # each image is one or the other
    assert 16 <= sum(mirrored) <= 48
    cfg = AugmentConfig(rotate=12, scale=0.1, shear=8, shift=0.1)
    plain, with_flip = affine_matrices(64, cfg, gen(5)), affine_matrices(64, dataclasses.replace(cfg, flip=True), gen(5))
    assert torch.equal(plain[:, :, 1:], with_flip[:, :, 1:])  # same rotation/shear/zoom/shift draws
    assert torch.equal(plain[:, :, 0].abs(), with_flip[:, :, 0].abs())
