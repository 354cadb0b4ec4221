"""Sample grids as PNG (PIL): rows of images, a caption above each row."""

from __future__ import annotations

import numpy
from PIL import Image, ImageDraw


def grid(rows: list, captions: list[str], path: str, scale=2, per_row=8):
    """rows: list of image batches [N, 64, 64, 3] in [0, 1] (torch or numpy); the first ``per_row`` of each."""
    size = 64 * scale
    label = 14
    width = per_row * size
    canvas = Image.new("RGB", (width, len(rows) * (size + label)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (images, text) in enumerate(zip(rows, captions)):
        images = numpy.asarray(images[:per_row], dtype=numpy.float32)
        y = r * (size + label)
        draw.text((2, y + 1), text, fill="black")
        for k, image in enumerate(images):
            tile = Image.fromarray((image.clip(0, 1) * 255).astype(numpy.uint8)).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (k * size, y + label))
    canvas.save(path)
    return path
