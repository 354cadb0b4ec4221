"""Where a subject goes and what it looks like: boxes, region masks, layer grids, the reference crop.

Boxes are fractions of the generated image: ``x, y`` the top-left corner, ``width, height`` the size.
A subject's region on a layer's H x W grid is 1 on the cells whose centre lies in its box (or, with a
region mask, the mask area-resized to the grid), 0 elsewhere; where regions overlap they are scaled
so that they sum to at most 1, so two subjects never add more than one subject's worth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import SubjectError

EPS = 1e-6


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    width: float
    height: float

    def xyxy(self) -> torch.Tensor:
        return torch.tensor([self.x, self.y, self.x + self.width, self.y + self.height], dtype=torch.float32)


def as_mask(mask, name: str) -> torch.Tensor | None:
    """A ComfyUI MASK ([B, H, W] or [H, W], 0..1) as one [H, W] float32 mask (the first)."""
    if mask is None:
        return None
    if mask.ndim == 3:
        mask = mask[0]
    if mask.ndim != 2 or mask.shape[0] < 1 or mask.shape[1] < 1:
        raise SubjectError(f"{name}: expected a MASK of shape [H, W] or [B, H, W], got {list(mask.shape)}")
    return mask.detach().float().cpu()


def mask_bbox(mask: torch.Tensor, name: str) -> Box:
    """The bounding box of a mask's non-zero pixels, as fractions; refuses an empty mask."""
    rows = torch.nonzero(mask.amax(dim=1) > 0.5).flatten()
    cols = torch.nonzero(mask.amax(dim=0) > 0.5).flatten()
    if rows.numel() == 0:
        raise SubjectError(f"{name} is empty (no pixel above 0.5); paint the subject white on black")
    h, w = mask.shape
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return Box(left / w, top / h, (right - left) / w, (bottom - top) / h)


def resolve_box(x: float, y: float, width: float, height: float, subject_mask=None, region_mask=None) -> Box:
    """The subject's placement. width = height = 0 means "automatic": the region mask's bounding box,
    else the subject mask's (the subject stays where it is in the photo), else the whole image."""
    if width == 0 and height == 0:
        if region_mask is not None:
            return mask_bbox(region_mask, "region_mask")
        if subject_mask is not None:
            return mask_bbox(subject_mask, "subject_mask")
        return Box(0.0, 0.0, 1.0, 1.0)
    values = {"x": x, "y": y, "width": width, "height": height}
    for key, value in values.items():
        if not isinstance(value, (int, float)) or value != value:
            raise SubjectError(f"box {key}: expected a number between 0 and 1, got {value!r}")
    if width <= 0 or height <= 0:
        raise SubjectError(f"box: width {width} x height {height} has zero size; give both as fractions of the "
                           "image (e.g. 0.4), or set both to 0 to use the mask's bounding box")
    if x < 0 or y < 0 or x + width > 1 + EPS or y + height > 1 + EPS:
        raise SubjectError(f"box x={x}, y={y}, width={width}, height={height} reaches outside the image; "
                           "x + width and y + height must be at most 1 (fractions of the image)")
    return Box(float(x), float(y), float(width), float(height))


def region_grid(box: Box, region_mask: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """[height * width] weights of one subject on a layer's grid (row-major, as the UNet flattens)."""
    if region_mask is not None:
        grid = F.interpolate(region_mask[None, None], size=(height, width), mode="area")[0, 0]
        return grid.clamp(0, 1).flatten()
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    inside_y = (ys >= box.y) & (ys < box.y + box.height)
    inside_x = (xs >= box.x) & (xs < box.x + box.width)
    return (inside_y[:, None] & inside_x[None, :]).float().flatten()


def subject_grids(placements, height: int, width: int) -> torch.Tensor:
    """[S, height * width] region weights for S subjects, overlaps scaled to sum to at most 1."""
    grids = torch.stack([region_grid(box, region, height, width) for box, region in placements])
    return grids / grids.sum(dim=0, keepdim=True).clamp(min=1.0)


def reference_crop(image: torch.Tensor, subject_mask: torch.Tensor | None) -> torch.Tensor:
    """The subject as Subject-Diffusion shows it to CLIP: background replaced by white, cropped to the
    mask's bounding box, padded to a square with white. image [H, W, 3] 0..1 -> [1, S, S, 3]."""
    image = image[..., :3].float().cpu()
    if subject_mask is not None:
        if subject_mask.shape != image.shape[:2]:
            subject_mask = F.interpolate(subject_mask[None, None], size=image.shape[:2], mode="bilinear")[0, 0]
        box = mask_bbox(subject_mask, "subject_mask")
        alpha = subject_mask.clamp(0, 1)[..., None]
        image = image * alpha + (1 - alpha)
        h, w = image.shape[:2]
        top, left = round(box.y * h), round(box.x * w)
        image = image[top: top + max(1, round(box.height * h)), left: left + max(1, round(box.width * w))]
    h, w = image.shape[:2]
    side = max(h, w)
    canvas = torch.ones(side, side, 3)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top: top + h, left: left + w] = image
    return canvas[None]


MS_REFERENCE_SIDE = 512        # MS-Diffusion's training squashes every reference to 512 x 512


def ms_reference_crop(image: torch.Tensor, subject_mask: torch.Tensor | None, side: int = MS_REFERENCE_SIDE) -> torch.Tensor:
    """The subject as MS-Diffusion's training showed it to CLIP: multiplied by its mask (subject on black),
    cropped to the mask's bounding box, squashed (not padded) to a square. image [H, W, 3] 0..1 -> [1, side, side, 3]."""
    image = image[..., :3].float().cpu()
    if subject_mask is not None:
        if subject_mask.shape != image.shape[:2]:
            subject_mask = F.interpolate(subject_mask[None, None], size=image.shape[:2], mode="bilinear")[0, 0]
        box = mask_bbox(subject_mask, "subject_mask")
        image = image * subject_mask.clamp(0, 1)[..., None]
        h, w = image.shape[:2]
        top, left = round(box.y * h), round(box.x * w)
        image = image[top: top + max(1, round(box.height * h)), left: left + max(1, round(box.width * w))]
    square = F.interpolate(image.movedim(-1, 0)[None], size=(side, side), mode="bilinear", antialias=True,
                           align_corners=False)
    return square[0].movedim(0, -1).clamp(0, 1)[None]
