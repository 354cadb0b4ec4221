"""A labelled image grid (torch + Pillow): the Gate Sweep's picture of the fidelity / alignment trade-off."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND, INK = (20, 20, 24), (235, 235, 235)


def labelled_grid(cells: list, row_labels: list, column_labels: list, title: str = "") -> torch.Tensor:
    """``cells[r][c]``: IMAGE tensors [H, W, 3] in 0..1, all the same size. Returns [1, H', W', 3]."""
    rows, cols = len(cells), len(cells[0])
    h, w = cells[0][0].shape[0], cells[0][0].shape[1]
    font = ImageFont.load_default()
    size = max(12, min(28, w // 10))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:            # Pillow < 10.1 has one bitmap size
        pass
    left = max(60, int(size * 6)) if any(row_labels) else 0
    top = int(size * 2.2) + (int(size * 1.8) if title else 0)
    canvas = Image.new("RGB", (left + cols * w, top + rows * h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((left + 4, 4), title, fill=INK, font=font)
    for c, label in enumerate(column_labels):
        draw.text((left + c * w + 6, top - int(size * 1.6)), label, fill=INK, font=font)
    for r, label in enumerate(row_labels):
        if label:
            draw.text((6, top + r * h + h // 2 - size // 2), label, fill=INK, font=font)
        for c in range(cols):
            pixels = (cells[r][c].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            canvas.paste(Image.fromarray(pixels), (left + c * w, top + r * h))
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)[None]


def parse_values(text: str, name: str, lo: float, hi: float, limit: int = 12) -> list:
    """"0.4, 0.5 0.6" -> [0.4, 0.5, 0.6]; refuses non-numbers, out-of-range values, empty and long lists."""
    from .errors import ConceptError
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ConceptError(f"{name}: expected a list of numbers such as '0.4, 0.5, 0.6'")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ConceptError(f"{name}: {p!r} is not a number; expected a list such as '0.4, 0.5, 0.6'") from None
        if not lo <= v <= hi:
            raise ConceptError(f"{name}: {v} is out of range; expected numbers from {lo} to {hi}")
        values.append(v)
    if len(values) > limit:
        raise ConceptError(f"{name}: {len(values)} values; at most {limit} (each one is a full sampling run)")
    return values
