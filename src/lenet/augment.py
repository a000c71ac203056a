"""Batched data augmentation: one random affine (+ optional elastic) warp for a whole batch.

Every image in the batch gets its own rotation, scale, shear and shift, but the work is two
tensor ops (`affine_grid`, `grid_sample`) on the (B, 1, 28, 28) batch instead of a PIL call
per image. Elastic distortion follows Simard et al. 2003: a random displacement field per
image, smoothed by a Gaussian of width `elastic_sigma` pixels, scaled so its largest
displacement is `elastic_alpha` pixels. `flip` mirrors half the images (Fashion-MNIST). `thickness` dilates or erodes a share of the images by
about half a pixel per side (mean with a 3x3 max or min): pens differ, preprocessing can't fix it.

    lenet train --augment --rotate 12 --elastic-alpha 2 --thickness 0.3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate: float = 10.0  # max rotation, degrees
    scale: float = 0.1  # max relative zoom in or out
    shear: float = 10.0  # max shear, degrees
    shift: float = 0.1  # max shift, fraction of the side (0.1 = 2.8 px)
    elastic_alpha: float = 0.0  # peak elastic displacement in pixels; 0 = off
    elastic_sigma: float = 4.0  # smoothness of the elastic field, pixels
    thickness: float = 0.0  # share of images whose strokes get 1 px thicker or thinner (pens differ)
    flip: bool = False  # mirror half the images left to right (clothes; never digits)


def _uniform(n: int, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * bound


def affine_matrices(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1] (affine_grid's form)."""
    angle = _uniform(n, math.radians(cfg.rotate), gen)
    shear = _uniform(n, math.radians(cfg.shear), gen)
    zoom = 1.0 + _uniform(n, cfg.scale, gen)
    shift = _uniform(2 * n, 2 * cfg.shift, gen).view(n, 2)  # [-1, 1] spans the side: 2x the fraction
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # rotation @ shear, divided by the zoom: sampling the input at A·x makes the digit zoom times larger
    a = torch.stack([cos, cos * tan - sin, sin, sin * tan + cos], dim=1).view(n, 2, 2) / zoom.view(n, 1, 1)
    if cfg.flip:  # drawn last, so the other draws are the same with or without it
        mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)  # (n,)
        a = a * torch.stack([mirror, torch.ones(n)], dim=1).view(n, 1, 2)  # x -> -x for the mirrored
    return torch.cat([a, shift.unsqueeze(2)], dim=2)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def elastic_field(n: int, size: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, size, size, 2) smoothed random displacements in grid units ([-1, 1] spans the side)."""
    field = torch.rand(n * 2, 1, size, size, generator=gen) * 2 - 1  # (2n, 1, H, W) in pixels/alpha
    k = _gaussian_kernel(cfg.elastic_sigma)
    pad = len(k) // 2
    field = F.conv2d(F.pad(field, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))  # smooth along x
    field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1))  # smooth along y
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)  # unit peak per field
    return field.view(n, 2, size, size).permute(0, 2, 3, 1) * (cfg.elastic_alpha * 2.0 / size)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) float images in [0, 1], background 0 -> warped batch of the same shape."""
    n, _, h, w = images.shape
    theta = affine_matrices(n, cfg, gen)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)  # (B, H, W, 2)
    if cfg.elastic_alpha > 0:
        grid = grid + elastic_field(n, h, cfg, gen)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.thickness > 0:
        out = change_thickness(out, cfg.thickness, gen)
    return out


def change_thickness(images: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """Dilate (half of `share`) or erode (the other half) each chosen image by about half a
    pixel per side: the mean of the image and its 3x3 max (or min). A full 3x3 erosion would
    wipe out MNIST's 2-3 px strokes."""
    u = torch.rand(len(images), 1, 1, 1, generator=gen)  # (B, 1, 1, 1): one draw per image
    thicker = (images + F.max_pool2d(images, 3, stride=1, padding=1)) / 2
    thinner = (images - F.max_pool2d(-images, 3, stride=1, padding=1)) / 2
    return torch.where(u < share / 2, thicker, torch.where(u < share, thinner, images))
