"""Pictures of observations: RGB and depth side by side, with the instruction written on."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from vla_gym.fileio import atomic_write_bytes

DEPTH_COLORMAP = cv2.COLORMAP_VIRIDIS
TEXT_BAND_HEIGHT = 22  # px
TEXT_SCALE = 0.45
TEXT_COLOUR = (255, 255, 255)  # RGB
TEXT_FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_MARGIN = 4  # px left of the text


def depth_to_rgb(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """Colour-map depth float32 (H, W[, 1]) in metres to uint8 (H, W, 3); near is bright."""
    d = np.asarray(depth, dtype=np.float32).squeeze(-1) if np.ndim(depth) == 3 else np.asarray(depth, np.float32)
    near = float(d.min()) if near is None else near
    far = float(d.max()) if far is None else far
    scaled = 1.0 - np.clip((d - near) / max(far - near, 1e-6), 0.0, 1.0)
    bgr = cv2.applyColorMap((scaled * 255).astype(np.uint8), DEPTH_COLORMAP)
    return bgr[..., ::-1].copy()


def put_text_band(image: np.ndarray, text: str, lines: int = 1) -> np.ndarray:
    """Return ``image`` uint8 (H, W, 3) with ``lines`` black bands above it holding ``text``,
    wrapped at word boundaries to the image's width (what does not fit is cut). A fixed
    number of lines keeps every frame of a video the same size."""
    wrapped = _wrap(text, image.shape[1] - 2 * TEXT_MARGIN, lines)
    bands = []
    for line in wrapped + [""] * (lines - len(wrapped)):
        band = np.zeros((TEXT_BAND_HEIGHT, image.shape[1], 3), dtype=np.uint8)
        cv2.putText(band, line, (TEXT_MARGIN, TEXT_BAND_HEIGHT - 7), TEXT_FONT, TEXT_SCALE, TEXT_COLOUR, 1, cv2.LINE_AA)
        bands.append(band)
    return np.concatenate([*bands, image], axis=0)


def _wrap(text: str, width: int, lines: int) -> list[str]:
    """``text`` split at spaces into at most ``lines`` lines of at most ``width`` px each
    (the last line takes the rest, and may be cut when drawn)."""
    out: list[str] = []
    words = text.split(" ")
    while words and len(out) < lines - 1:
        line = words.pop(0)
        while words and cv2.getTextSize(f"{line} {words[0]}", TEXT_FONT, TEXT_SCALE, 1)[0][0] <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words:
        out.append(" ".join(words))
    return out


def observation_panel(obs: dict[str, np.ndarray], scale: int = 4, text: str | None = None) -> np.ndarray:
    """RGB and colour-mapped depth side by side, upscaled ``scale`` times (nearest), uint8 RGB."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    panel = np.concatenate([obs["rgb"], depth_to_rgb(obs["depth"])], axis=1)
    panel = cv2.resize(panel, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    return put_text_band(panel, text) if text else panel


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """Write uint8 RGB (H, W, 3) as PNG via a temporary name and an atomic rename."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode an image of shape {rgb.shape} as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return path
