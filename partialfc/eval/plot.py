"""A ROC plot as a PNG with Pillow (no matplotlib): TAR against FAR on a log axis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

_W, _H = 720, 520
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 60
_CURVE, _GRID, _MARK = (31, 119, 180), (225, 225, 225), (214, 39, 40)


def roc_png(
    path: str | Path,
    far: np.ndarray,
    tar: np.ndarray,
    marks: dict[float, float],
    title: str,
    far_range: tuple[float, float] = (1e-6, 1.0),
    x_label: str = "FAR (false accept rate)",
    y_label: str = "TAR",
) -> None:
    """Writes the ROC ``(far, tar)`` (points in increasing FAR) with the ``marks`` {far: tar}.

    The curve is drawn as a staircase: at each FAR the best TAR reached at or below it. 1:N
    draws TPIR against FPIR with the same function (other axis labels).
    """
    from PIL import Image, ImageDraw

    lo, hi = math.log10(far_range[0]), math.log10(far_range[1])
    width, height = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def xy(f: float, t: float) -> tuple[float, float]:
        u = (math.log10(min(max(f, far_range[0]), far_range[1])) - lo) / (hi - lo)
        return _LEFT + u * width, _TOP + (1 - t) * height

    image = Image.new("RGB", (_W, _H), "white")
    draw = ImageDraw.Draw(image)
    for decade in range(math.ceil(lo), math.floor(hi) + 1):
        x, _ = xy(10.0**decade, 0)
        draw.line([(x, _TOP), (x, _TOP + height)], fill=_GRID)
        draw.text((x - 14, _TOP + height + 6), f"1e{decade}", fill="black")
    for tenth in range(11):
        _, y = xy(far_range[0], tenth / 10)
        draw.line([(_LEFT, y), (_LEFT + width, y)], fill=_GRID)
        draw.text((_LEFT - 30, y - 6), f"{tenth / 10:.1f}", fill="black")
    draw.rectangle([_LEFT, _TOP, _LEFT + width, _TOP + height], outline="black")
    # One vertex per horizontal pixel: IJB-C's curve has millions of points.
    grid = np.logspace(lo, hi, width + 1)
    index = np.searchsorted(np.asarray(far), grid, side="right") - 1
    best = np.asarray(tar)[np.clip(index, 0, None)]
    draw.line([xy(f, t) for f, t in zip(grid, best, strict=True)], fill=_CURVE, width=2)
    for f, t in marks.items():
        x, y = xy(f, t)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=_MARK, width=2)
        draw.text((x + 6, y + 4), f"{100 * t:.2f}", fill=_MARK)
    draw.text((_LEFT, 12), title, fill="black")
    draw.text((_LEFT + width // 2 - 60, _H - 24), x_label, fill="black")
    draw.text((6, _TOP - 20), y_label, fill="black")
    image.save(path, format="PNG")
