"""Batch augmentation of observations for behaviour cloning (torch, on any device).

Works on batches in the env's observation format: ``rgb`` (B, H, W, 3) uint8 or float in
[0, 255], ``depth`` (B, H, W, 1) float32 metres. Returns ``rgb`` as float32 in [0, 255]
(the network scales it as it does uint8) and ``depth`` as float32.

Colour jitter changes brightness, contrast and saturation only: each is a blend of a
pixel with a grey (or a scaling), which keeps its hue, so a red object stays red and
never turns orange. Instruction paraphrasing happens per item in
:class:`vla_gym.data.DemoDataset` (it is string work).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_gym.agents.bounds import bounded_int, finite_float

#: ITU-R BT.601 luma weights, for the grey that contrast and saturation blend towards.
LUMA = (0.299, 0.587, 0.114)
#: Largest random shift (pixels) and depth noise (m) an :class:`AugmentConfig` takes.
MAX_SHIFT_PIXELS = 32
MAX_DEPTH_NOISE_STD = 0.5


@dataclass
class AugmentConfig:
    """Strength of each augmentation (0 turns one off).

    Args:
        shift_pixels: random translation of up to this many pixels (replicate-padded crop),
            the same for RGB and depth so they stay aligned.
        brightness: RGB is scaled by a factor in [1 - brightness, 1 + brightness].
        contrast: blend factor in [1 - contrast, 1 + contrast] towards the image's mean grey.
        saturation: blend factor in [1 - saturation, 1 + saturation] towards each pixel's grey.
        depth_noise_std: std (m) of per-pixel Gaussian noise added to depth.
    """

    shift_pixels: int = 4
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    depth_noise_std: float = 0.005

    def __post_init__(self) -> None:
        self.shift_pixels = bounded_int("shift_pixels", self.shift_pixels, 0, MAX_SHIFT_PIXELS)
        for name in ("brightness", "contrast", "saturation"):
            value = finite_float(name, getattr(self, name), 0.0, 1.0)
            if value == 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value}")
            setattr(self, name, value)
        self.depth_noise_std = finite_float("depth_noise_std", self.depth_noise_std, 0.0, MAX_DEPTH_NOISE_STD)


def _device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def random_shift(
    images: torch.Tensor, pad: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift each image of (B, C, H, W) by a random integer offset in [-pad, pad] (DrQ).

    Returns the shifted images and the shift of their content, (B, 2) pixels as (x, y):
    what was at pixel p is now at p + shift.
    """
    b, h, w = images.shape[0], *images.shape[-2:]
    if pad == 0:
        return images, torch.zeros(b, 2, device=images.device)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=_device(generator))
    # One slice per image: faster on CPU than one gather with per-pixel indices.
    shifted = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
    return shifted, (pad - offsets.flip(1)).to(images.device, torch.float32)


def _factors(n: int, spread: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` factors uniform in [1 - spread, 1 + spread], shaped (n, 1, 1, 1)."""
    u = torch.rand(n, generator=generator, device=_device(generator)).to(like.device, like.dtype)
    return (1.0 + spread * (2 * u - 1)).view(n, 1, 1, 1)


def colour_jitter(
    rgb: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hue-preserving jitter of RGB (B, 3, H, W) in [0, 1]; returns the same range.

    Brightness ``k`` scales; contrast ``c`` blends with the image's mean grey ``m``;
    saturation ``s`` blends with each pixel's grey ``l``. Composed, the three are one
    affine map per image, ``s c k x + (1 - s) c k l + (1 - c) k m``: adding grey (equal in
    every channel) and scaling both keep a pixel's hue, and so does the return to [0, 1].
    """
    b = rgb.shape[0]
    k = _factors(b, brightness, rgb, generator)
    c = _factors(b, contrast, rgb, generator)
    s = _factors(b, saturation, rgb, generator)
    luma = torch.tensor(LUMA, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    grey = (rgb * luma).sum(dim=1, keepdim=True)
    mean_grey = grey.mean(dim=(2, 3), keepdim=True)
    out = s * c * k * rgb + (1 - s) * c * k * grey + (1 - c) * k * mean_grey
    # Back into [0, 1] without the hue shift a per-channel clamp would cause: lift a pixel
    # with a negative channel by a grey (the same amount in every channel), then scale
    # down a pixel with a channel above 1 (the same factor for every channel).
    out = out - out.amin(dim=1, keepdim=True).clamp(max=0.0)
    return out / out.amax(dim=1, keepdim=True).clamp(min=1.0)


#: Batch keys holding image coordinates (B, 2) in [-1, 1], which move with a shifted image.
IMAGE_LABEL_KEYS = ("target_uv", "destination_uv")


def augment_batch(
    batch: dict[str, torch.Tensor], config: AugmentConfig, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Augment the ``rgb`` and ``depth`` of an observation batch; the image-coordinate labels
    of :data:`IMAGE_LABEL_KEYS` (in [-1, 1]) follow the shift; other keys pass through."""
    rgb = batch["rgb"].permute(0, 3, 1, 2).float() / 255.0
    depth = batch["depth"].permute(0, 3, 1, 2).float()
    out = dict(batch)
    if config.shift_pixels > 0:
        both, shift = random_shift(torch.cat([rgb, depth], dim=1), config.shift_pixels, generator)
        rgb, depth = both[:, :3], both[:, 3:]
        size = torch.tensor([rgb.shape[3] - 1, rgb.shape[2] - 1], device=rgb.device, dtype=torch.float32)
        for key in IMAGE_LABEL_KEYS:
            if key in batch:  # image-coordinate labels move with the image
                out[key] = batch[key] + shift * 2 / size
    rgb = colour_jitter(rgb, config.brightness, config.contrast, config.saturation, generator)
    if config.depth_noise_std > 0:
        noise = torch.randn(depth.shape, generator=generator, device=_device(generator)).to(depth.device)
        depth = depth + config.depth_noise_std * noise
    out["rgb"] = (rgb * 255.0).permute(0, 2, 3, 1)
    out["depth"] = depth.permute(0, 2, 3, 1)
    return out
