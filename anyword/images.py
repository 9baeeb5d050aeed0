"""Reading images, and the geometry between an image and the diffusion model's square input.

Conventions: images are ``np.ndarray`` of shape ``(H, W, 3)``, dtype uint8, RGB, upright (EXIF orientation
applied). Points are ``(x, y)`` in original-image pixels: column ``x`` in ``[0, W)``, row ``y`` in ``[0, H)``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anyword.errors import ImageError

# Larger images are refused before decoding: 40 MP is a 7300 x 5500 photo; masks stay at the input's full size,
# so the limit bounds memory (one float map of 40 MP is 160 MB).
MAX_IMAGE_PIXELS = 40_000_000
RESIZE_MODES = ("stretch", "pad")


def load_image(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Read an image as upright RGB uint8 ``(H, W, 3)``.

    Accepts a path, encoded bytes, a PIL image or an array. Applies the EXIF orientation; converts CMYK, palette,
    grey, 16-bit and float images to 8-bit RGB; composites alpha over white. Raises :class:`ImageError` with the
    reason for unreadable, corrupt, empty or oversized (more than ``max_pixels``) images; the size is checked from
    the header, before decoding, so a huge file never fills memory.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, Image.Image):
        image = source
        _check_size(image.size, max_pixels, "the image")
    else:
        image = _open_encoded(source, max_pixels)
    image = ImageOps.exif_transpose(image)
    return _to_rgb8(image)


def _open_encoded(source: str | os.PathLike | bytes, max_pixels: int) -> Image.Image:
    """Open a file or encoded bytes, check the size from the header, then decode; JPEGs are verified strictly."""
    if isinstance(source, bytes):
        name = "the image data"
    else:
        name = f"'{Path(source).name}'"
        check_image_path(source)
    try:
        with warnings.catch_warnings():
            # Our own limit (checked next, from the header) is lower than Pillow's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as error:  # PIL's own guard fires first for giant headers
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f" ({int(found.group(1)) / 1e6:.0f} MP)" if found else ""
        raise ImageError(
            f"{name} is too large{size}; the limit is {max_pixels / 1e6:.0f} MP. Downscale it first "
            "(e.g. to 4000 pixels on the long side)."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageError(f"{name} is not a readable image ({type(error).__name__})") from None
    try:
        _decode(image, name, max_pixels)
        if image.format == "JPEG":
            _verify_jpeg(source if isinstance(source, bytes) else Path(source).read_bytes(), name)
    except BaseException:
        image.close()
        raise
    return image


def _decode(image: Image.Image, name: str, max_pixels: int) -> None:
    """Check the size the header gives, then decode the pixels."""
    _check_size(image.size, max_pixels, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError:
        raise ImageError(f"{name} is too large to decode safely") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{name} is corrupt or truncated ({error})") from None


def check_image_path(path: str | os.PathLike) -> None:
    """:class:`ImageError` unless ``path`` is a regular file: folders, pipes, devices and sockets are refused
    before anything opens them (opening a pipe blocks forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except OSError as error:
        raise ImageError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path} is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path} is not a regular file (a pipe, device or socket); give an image file")


def _verify_jpeg(data: bytes, name: str) -> None:
    """Pillow decodes damaged JPEG data without a word; libjpeg-turbo in strict mode reports it. Decoding at
    1/8 scale still reads every entropy-coded byte, so the check costs a fraction of a full decode."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, strict=True)
    except ValueError as error:
        raise ImageError(f"{name} is corrupt or truncated ({error})") from None


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
            f"{max_pixels / 1e6:.0f} MP. Downscale it first (e.g. to 4000 pixels on the long side)."
        )


def _to_rgb8(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in {"I;16", "I;16B", "I;16L", "I;16N", "I"}:
        array = np.asarray(image, dtype=np.float64)
        array = np.clip(array / (65535.0 if array.max() > 255 else 255.0) * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        return np.repeat(np.clip(array * scale, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _from_array(array: np.ndarray, max_pixels: int) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    _check_size((array.shape[1], array.shape[0]), max_pixels, "the image")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        elif array.dtype == np.uint16:
            array = (array.astype(np.float64) / 257.0).round().astype(np.uint8)
        else:
            array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[..., 3:].astype(np.float64) / 255.0
        array = (array[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(array)


def image_digest(image: np.ndarray) -> str:
    """Content hash of an RGB array (shape included): the cache key for everything computed from the image."""
    digest = hashlib.sha256()
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageFrame:
    """Where an image of ``width`` x ``height`` pixels sits inside the model's ``size`` x ``size`` input.

    ``mode="stretch"`` (default) resizes the whole image to the square: every attention cell covers image content,
    at the cost of a mild aspect distortion the model tolerates. ``mode="pad"`` keeps the aspect ratio and pads with
    grey: shapes stay undistorted, but a 2:1 image uses only half of the 16x16 attention grid.
    Either way :meth:`grid_to_image` maps any model-space grid back onto the original pixels exactly.
    """

    width: int
    height: int
    size: int
    mode: str = "stretch"

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {self.mode!r}")

    @property
    def content_box(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the image content in model-input pixels."""
        if self.mode == "stretch":
            return 0.0, 0.0, float(self.size), float(self.size)
        scale = self.size / max(self.width, self.height)
        content_w, content_h = self.width * scale, self.height * scale
        x0, y0 = (self.size - content_w) / 2, (self.size - content_h) / 2
        return x0, y0, x0 + content_w, y0 + content_h

    def to_model(self, image: np.ndarray) -> np.ndarray:
        """The model input: ``(size, size, 3)`` uint8."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, frame expects {self.width}x{self.height}")
        x0, y0, x1, y1 = self.content_box
        box_w, box_h = round(x1) - round(x0), round(y1) - round(y0)
        shrinking = box_w < self.width or box_h < self.height
        resized = cv2.resize(image, (box_w, box_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
        if self.mode == "stretch":
            return resized
        canvas = np.full((self.size, self.size, 3), 127, dtype=np.uint8)
        canvas[round(y0) : round(y0) + box_h, round(x0) : round(x0) + box_w] = resized
        return canvas

    def grid_to_image(self, grid: np.ndarray) -> np.ndarray:
        """Bilinearly resample a grid ``(h, w)`` covering the model input onto the original ``(H, W)`` pixels.

        Cell ``(i, j)`` covers model pixels ``[j*size/w, (j+1)*size/w) x [i*size/h, (i+1)*size/h)``; pixel centres
        are sampled, edges clamp. The result is float32 ``(self.height, self.width)``.
        """
        grid = np.asarray(grid, dtype=np.float32)
        if grid.ndim != 2:
            raise ValueError(f"grid must be 2-D (h, w), got shape {grid.shape}")
        x0, y0, x1, y1 = self.content_box
        rows = _interpolation_matrix(self.height, grid.shape[0], y0, y1, self.size)
        cols = _interpolation_matrix(self.width, grid.shape[1], x0, x1, self.size)
        return (rows @ grid @ cols.T).astype(np.float32)


def _interpolation_matrix(out_len: int, grid_len: int, start: float, stop: float, size: int) -> np.ndarray:
    """``(out_len, grid_len)`` linear-interpolation weights from grid cells to output pixel centres."""
    centres = start + (np.arange(out_len) + 0.5) * (stop - start) / out_len  # model-input pixels
    position = centres * grid_len / size - 0.5  # in grid-cell units, cell centres at integers
    position = np.clip(position, 0.0, grid_len - 1.0)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, grid_len - 1)
    frac = position - lower
    weights = np.zeros((out_len, grid_len), dtype=np.float64)
    weights[np.arange(out_len), lower] += 1.0 - frac
    weights[np.arange(out_len), upper] += frac
    return weights.astype(np.float32)
