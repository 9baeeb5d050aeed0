"""Pictures of results: heatmaps with their points, and labelled mask overlays. Pure numpy/OpenCV; RGB uint8.

Point colours: positive green, negative red (as in the demo).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from anyword.prompts import PointPrompt

POSITIVE_COLOUR = (40, 200, 60)
NEGATIVE_COLOUR = (230, 40, 40)
# Distinct, colour-blind-friendly mask colours (Okabe-Ito, then Tableau).
PALETTE = [
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (148, 103, 189),
    (140, 86, 75),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def _scale(image: np.ndarray) -> float:
    return max(image.shape[:2]) / 512.0


def draw_points(
    image: np.ndarray, points: Iterable[PointPrompt], fill: tuple[int, int, int] | None = None
) -> np.ndarray:
    """Draw points on a copy: positives as filled discs (green, or ``fill``), negatives as red discs with a cross."""
    canvas = image.copy()
    radius = max(3, round(7 * _scale(image)))
    for point in points:
        centre = (round(point.x), round(point.y))
        if point.label == 1:
            cv2.circle(canvas, centre, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, fill or POSITIVE_COLOUR, -1, cv2.LINE_AA)
        else:
            cv2.circle(canvas, centre, radius + 2, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(canvas, centre, radius, NEGATIVE_COLOUR, -1, cv2.LINE_AA)
            d = max(2, radius - 2)
            cv2.line(canvas, (centre[0] - d, centre[1] - d), (centre[0] + d, centre[1] + d), (255, 255, 255), 2)
            cv2.line(canvas, (centre[0] - d, centre[1] + d), (centre[0] + d, centre[1] - d), (255, 255, 255), 2)
    return canvas


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The image with ``heatmap`` ((H, W) in [0, 1]) blended over it in the Turbo colour map."""
    coloured = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 1 - alpha, coloured, alpha, 0)


def mask_overlay(
    image: np.ndarray,
    masks: dict[int, np.ndarray],
    labels: dict[int, str],
    points: dict[int, Sequence[PointPrompt]] | None = None,
    note: str | None = None,
) -> np.ndarray:
    """Masks tinted in distinct colours with outlines, their positive points, and a legend of the phrases."""
    canvas = image.astype(np.float32)
    for index, (_, mask) in enumerate(sorted(masks.items())):
        if mask.any():
            tint = np.array(colour(index), dtype=np.float32)
            canvas[mask] = canvas[mask] * 0.5 + tint * 0.5
    canvas = canvas.round().astype(np.uint8)
    thickness = max(1, round(2 * _scale(image)))
    for index, (concept_id, mask) in enumerate(sorted(masks.items())):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(canvas, contours, -1, colour(index), thickness, cv2.LINE_AA)
        if points:
            positives = [p for p in points.get(concept_id, ()) if p.label == 1]
            negatives = [p for p in points.get(concept_id, ()) if p.label == 0 and not p.source.startswith("negative:")]
            canvas = draw_points(canvas, positives, fill=colour(index))
            canvas = draw_points(canvas, negatives)
    legend = [(labels[cid], colour(i)) for i, cid in enumerate(sorted(masks))]
    return _with_caption(canvas, legend, note)


def panels(
    items: Sequence[tuple[str, np.ndarray]], note: str | None = None, max_side: int = 320, columns: int = 4
) -> np.ndarray:
    """Titled tiles ``(title, rgb image)`` in a grid, each scaled to at most ``max_side`` pixels."""
    tiles = []
    for title, picture in items:
        scale = max_side / max(picture.shape[:2])
        size = (max(1, round(picture.shape[1] * scale)), max(1, round(picture.shape[0] * scale)))
        tile = cv2.resize(picture, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        tiles.append(_titled(tile, title))
    if not tiles:
        raise ValueError("no panels to draw")
    columns = min(columns, len(tiles))
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * cell_h, columns * cell_w, 3), 255, dtype=np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        sheet[r * cell_h : r * cell_h + tile.shape[0], c * cell_w : c * cell_w + tile.shape[1]] = tile
    return _with_caption(sheet, [], note)


def _titled(tile: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((26, tile.shape[1], 3), 255, dtype=np.uint8)
    text = _ascii(title)
    while text and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] > tile.shape[1] - 8:
        text = text[:-2] + "…" if len(text) > 2 else ""
    cv2.putText(bar, _ascii(text), (4, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def _with_caption(canvas: np.ndarray, legend: list[tuple[str, tuple[int, int, int]]], note: str | None) -> np.ndarray:
    lines = [(text, swatch) for text, swatch in legend] + ([(note, None)] if note else [])
    if not lines:
        return canvas
    line_height = 22
    footer = np.full((line_height * len(lines) + 8, canvas.shape[1], 3), 255, dtype=np.uint8)
    for row, (text, swatch) in enumerate(lines):
        y = 4 + row * line_height
        x = 6
        if swatch is not None:
            cv2.rectangle(footer, (x, y + 3), (x + 14, y + 17), swatch, -1)
            x += 20
        cv2.putText(
            footer,
            _ascii(text),
            (x, y + 15),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (180, 30, 30) if swatch is None else (20, 20, 20),
            1,
            cv2.LINE_AA,
        )
    return np.vstack([canvas, footer])


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.replace("…", "...").encode("ascii", "replace").decode("ascii")
