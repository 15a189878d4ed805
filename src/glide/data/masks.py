"""Random inpainting masks for training the inpainting models.

Convention (as GLIDE's ``inpaint_mask``): ``1`` = known pixel, kept from the source image;
``0`` = unknown, to be filled in. A mask is a ``FloatTensor [1, H, W]`` of exactly 0.0 / 1.0, and a
pure function of the ``torch.Generator`` state it is given.

Each mask is, with probability ``full_prob``, all zeros (the whole image is generated, so the
model keeps its plain text-to-image ability); otherwise a union of rectangles (with probability
``rect_prob``) and free-form brush strokes (thick random-walk polylines, ``brush_prob``); when
neither is drawn one of the two is picked, so a mask always has a hole.
"""

from __future__ import annotations

import math

import torch


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, low: int, high: int) -> int:
    """Uniform integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _rectangles(holes: torch.Tensor, generator: torch.Generator | None, max_rects: int,
                size_range: tuple[float, float]) -> None:
    h, w = holes.shape
    for _ in range(_randint(generator, 1, max_rects)):
        rh = max(1, round(_uniform(generator, *size_range) * h))
        rw = max(1, round(_uniform(generator, *size_range) * w))
        top = _randint(generator, 0, h - rh)
        left = _randint(generator, 0, w - rw)
        holes[top:top + rh, left:left + rw] = True


def _brush_strokes(holes: torch.Tensor, generator: torch.Generator | None, max_strokes: int,
                   width_range: tuple[float, float]) -> None:
    h, w = holes.shape
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    side = max(h, w)
    for _ in range(_randint(generator, 1, max_strokes)):
        radius = max(0.75, 0.5 * _uniform(generator, *width_range) * min(h, w))
        x, y = _uniform(generator, 0, w), _uniform(generator, 0, h)
        angle = _uniform(generator, 0, 2 * math.pi)
        for _ in range(_randint(generator, 3, 10)):
            angle += _uniform(generator, -1.2, 1.2)  # a wandering stroke, not a zig-zag
            length = _uniform(generator, 0.05, 0.25) * side
            nx = min(max(x + length * math.cos(angle), 0.0), float(w))
            ny = min(max(y + length * math.sin(angle), 0.0), float(h))
            dx, dy = nx - x, ny - y
            t = (((xs - x) * dx + (ys - y) * dy) / max(dx * dx + dy * dy, 1e-8)).clamp(0, 1)
            holes |= (xs - (x + t * dx)) ** 2 + (ys - (y + t * dy)) ** 2 <= radius**2
            x, y = nx, ny


def random_mask(
    h: int,
    w: int,
    generator: torch.Generator | None = None,
    *,
    full_prob: float = 0.1,
    rect_prob: float = 0.5,
    brush_prob: float = 0.5,
    max_rects: int = 3,
    rect_size: tuple[float, float] = (0.15, 0.6),
    max_strokes: int = 4,
    brush_width: tuple[float, float] = (0.04, 0.15),
) -> torch.Tensor:
    """A random inpainting mask ``[1, h, w]``: 1 = known pixel, 0 = to fill.

    ``rect_size`` is the range of rectangle sides and ``brush_width`` of stroke widths, as
    fractions of the image side.
    """
    for name, p in (("full_prob", full_prob), ("rect_prob", rect_prob), ("brush_prob", brush_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    holes = torch.zeros(h, w, dtype=torch.bool)
    if float(torch.rand((), generator=generator)) < full_prob:
        holes[:] = True
    else:
        use_rect = float(torch.rand((), generator=generator)) < rect_prob
        use_brush = float(torch.rand((), generator=generator)) < brush_prob
        if not (use_rect or use_brush):
            use_rect = float(torch.rand((), generator=generator)) < 0.5
            use_brush = not use_rect
        if use_rect:
            _rectangles(holes, generator, max_rects, rect_size)
        if use_brush:
            _brush_strokes(holes, generator, max_strokes, brush_width)
    return (~holes).float()[None]


def random_masks(batch: int, h: int, w: int, generator: torch.Generator | None = None,
                 **kwargs) -> torch.Tensor:
    """``batch`` independent ``random_mask``s stacked to ``[batch, 1, h, w]``."""
    return torch.stack([random_mask(h, w, generator, **kwargs) for _ in range(batch)])
