"""Image reading (modes, EXIF, bad files) and the image <-> model-grid geometry on non-square images."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from anyword.errors import ImageError
from anyword.images import ImageFrame, image_digest, load_image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (valid CRC), with almost no pixel data."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_exif_orientation_is_applied(tmp_path):
    wide = Image.new("RGB", (60, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    wide.save(path, exif=exif, quality=95)
    upright = load_image(path)
    assert upright.shape == (60, 20, 3)  # (H, W, 3): the upright image is tall
    assert upright[2, 10, 2] > 200 and upright[-3, 10, 0] > 200  # blue edge now at the top


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("CMYK", lambda: Image.new("CMYK", (30, 20), (0, 255, 255, 0))),  # red in CMYK
        ("L", lambda: Image.new("L", (30, 20), 128)),
        ("P", lambda: Image.new("RGB", (30, 20), (255, 0, 0)).convert("P")),
        ("I;16", lambda: Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16))),
        ("RGBA", lambda: Image.new("RGBA", (30, 20), (255, 0, 0, 0))),  # fully transparent red -> white
        ("LA", lambda: Image.new("LA", (30, 20), (0, 255))),
    ],
)
def test_modes_become_rgb8(tmp_path, mode, make):
    image = make()
    assert image.mode == mode
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    if mode == "CMYK":
        image.save(path, quality=95)
    else:
        image.save(path)
    array = load_image(path)
    assert array.shape == (20, 30, 3) and array.dtype == np.uint8
    expected = {
        "CMYK": (255, 0, 0),
        "L": (128, 128, 128),
        "P": (255, 0, 0),
        "I;16": (255, 255, 255),
        "RGBA": (255, 255, 255),
        "LA": (0, 0, 0),
    }[mode]
    np.testing.assert_allclose(array[10, 15], expected, atol=3)


def test_arrays_and_bytes(tmp_path):
    grey16 = np.full((5, 7), 65535, dtype=np.uint16)
    assert load_image(grey16).shape == (5, 7, 3) and load_image(grey16).max() == 255
    floats = np.full((5, 7, 3), 0.5)
    assert load_image(floats)[0, 0, 0] == 128
    rgba = np.zeros((5, 7, 4), dtype=np.uint8)
    assert (load_image(rgba) == 255).all()  # transparent -> white
    assert load_image(png_bytes(Image.new("RGB", (7, 5), (1, 2, 3))))[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 7, 2)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable image"),
        (b"this is text, not pixels", "not a readable image"),
        (png_bytes(Image.new("RGB", (64, 64), (9, 9, 9)))[:60], "corrupt or truncated"),
    ],
)
def test_bad_files_have_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_huge_images_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png_header(20000, 20000))
    with pytest.raises(ImageError, match=r"too large \(400 MP\); the limit is 40 MP"):
        load_image(path)
    path.write_bytes(huge_png_header(9000, 9000))  # under PIL's own guard, over ours
    with pytest.raises(ImageError, match=r"9000x9000 pixels \(81 MP\); the limit is 40 MP"):
        load_image(path)


def test_missing_paths(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_digest_depends_on_content_and_shape():
    a = np.zeros((4, 6, 3), dtype=np.uint8)
    assert image_digest(a) == image_digest(a.copy())
    assert image_digest(a) != image_digest(a.reshape(6, 4, 3))
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_digest(a) != image_digest(b)


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_grid_to_image_keeps_axes_on_non_square_images(mode):
    frame = ImageFrame(width=120, height=40, size=64, mode=mode)
    grid = np.zeros((16, 16), dtype=np.float32)
    row, col = (2, 13) if mode == "stretch" else (7, 13)  # a cell inside the content in both modes
    grid[row, col] = 1.0
    image = frame.grid_to_image(grid)
    assert image.shape == (40, 120)  # (H, W), never transposed
    y, x = np.unravel_index(np.argmax(image), image.shape)
    # The cell's centre in model pixels, mapped back through the content box to original pixels.
    x0, y0, x1, y1 = frame.content_box
    expected_x = ((col + 0.5) * 64 / 16 - x0) * 120 / (x1 - x0)
    expected_y = ((row + 0.5) * 64 / 16 - y0) * 40 / (y1 - y0)
    assert abs(x - expected_x) <= 2 and abs(y - expected_y) <= 2
    assert x > 80  # right part of the image, as the cell is in the right part of the grid


def test_grid_mapping_is_exact_for_linear_ramps():
    frame = ImageFrame(width=90, height=30, size=48)
    cols = np.tile(np.arange(8, dtype=np.float32), (4, 1))  # (4, 8) grid, value = column index
    image = frame.grid_to_image(cols)
    # A linear ramp survives bilinear resampling: each pixel gets the column coordinate of its centre.
    centres = (np.arange(90) + 0.5) * 8 / 90 - 0.5
    np.testing.assert_allclose(image[15], np.clip(centres, 0, 7), atol=1e-5)
    assert np.allclose(image[0], image[-1])  # rows do not depend on the column ramp


def test_pad_mode_geometry():
    frame = ImageFrame(width=120, height=40, size=60, mode="pad")
    assert frame.content_box == pytest.approx((0.0, 20.0, 60.0, 40.0))
    image = np.zeros((40, 120, 3), dtype=np.uint8)
    image[:, :60] = 255  # left half white
    model = frame.to_model(image)
    assert model.shape == (60, 60, 3)
    assert (model[:19] == 127).all() and (model[41:] == 127).all()  # grey padding above and below
    assert model[30, 5].min() > 200 and model[30, 55].max() < 30
    centre = np.zeros((16, 16), dtype=np.float32)
    centre[7:9, 7:9] = 1.0  # the grid's middle four cells -> centred on the image, padding or not
    mapped = frame.grid_to_image(centre)
    rows, cols = np.mgrid[0:40, 0:120]
    centroid = (float((cols * mapped).sum() / mapped.sum()), float((rows * mapped).sum() / mapped.sum()))
    assert centroid == pytest.approx((59.5, 19.5), abs=0.05)
    stretched = ImageFrame(width=120, height=40, size=60).to_model(image)
    assert stretched.shape == (60, 60, 3) and stretched[30, 5].min() > 200 and stretched[30, 55].max() < 30
    with pytest.raises(ValueError, match="resize mode"):
        ImageFrame(10, 10, 64, mode="crop")
