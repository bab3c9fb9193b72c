"""keras_vit.images: every Pillow mode decodes to the pixels TensorFlow's decoders give (the ones
tf.data and the serving signature use), 16-bit photos stay photos, bad input is refused."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from keras_vit import images

tf = pytest.importorskip("tensorflow")  # the reference decoders

RNG = np.random.default_rng(0)
HEIGHT, WIDTH = 20, 30
RGB = RNG.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
# A 16-bit gradient over the whole range, with values whose low byte is not zero.
GREY16 = (np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH) * 109 + 7).astype(np.uint16)
RGB16 = RNG.integers(0, 65536, (HEIGHT, WIDTH, 3)).astype(np.uint16)


def tf_decode(path):
    """The reference: TensorFlow's own decoders, as keras_vit.data and serving call them."""
    contents = tf.io.read_file(str(path))
    if tf.io.is_jpeg(contents):
        return tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    return tf.io.decode_image(contents, channels=3, expand_animations=False).numpy()


def png16(path, pixels, color_type):
    """A 16-bit PNG written by hand (Pillow writes 16-bit grey only): 2 = RGB, 4 = grey+alpha,
    6 = RGBA."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def palette():
    return Image.fromarray(RGB).quantize(16)


WRITERS = {  # file name -> writer; each is a mode Pillow opens, written the way Pillow writes it
    "grey16.png": lambda p: Image.fromarray(GREY16).save(p),  # opens as I;16
    "rgb16.png": lambda p: png16(p, RGB16, 2),
    "rgba16.png": lambda p: png16(p, np.dstack([RGB16, GREY16]), 6),
    "grey_alpha16.png": lambda p: png16(p, np.dstack([GREY16, GREY16[::-1]]), 4),
    "grey.png": lambda p: Image.fromarray(GREY).save(p),
    "grey_alpha.png": lambda p: Image.fromarray(np.dstack([GREY, ALPHA]), "LA").save(p),
    "rgba.png": lambda p: Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA").save(p),
    "palette.png": lambda p: palette().save(p),
    "palette_transparent_index.png": lambda p: palette().save(p, transparency=3),
    "palette_alpha_table.png": lambda p: Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA")
    .quantize(16).save(p),
    "grey_colour_key.png": lambda p: Image.fromarray(GREY).save(p, transparency=int(GREY[0, 0])),
    "rgb_colour_key.png": lambda p: Image.fromarray(RGB).save(
        p, transparency=tuple(int(v) for v in RGB[0, 0])),
    "bilevel.png": lambda p: Image.fromarray(GREY > 128).save(p),
    "interlaced.png": lambda p: Image.fromarray(RGB).save(p, interlace=1),
    "rgb.jpg": lambda p: Image.fromarray(RGB).save(p, quality=90),
    "grey.jpg": lambda p: Image.fromarray(GREY).save(p, quality=90),
    "cmyk.jpg": lambda p: Image.fromarray(RGB).convert("CMYK").save(p, quality=90),
    "progressive.jpeg": lambda p: Image.fromarray(RGB).save(p, quality=90, progressive=True),
    "palette.gif": lambda p: palette().save(p),
    "grey.gif": lambda p: Image.fromarray(GREY).save(p),
    "transparent.gif": lambda p: palette().save(p, transparency=3),
    "animated.gif": lambda p: palette().save(p, save_all=True,
                                             append_images=[Image.fromarray(RGB[::-1]).quantize(16)]),
    "rgb.bmp": lambda p: Image.fromarray(RGB).save(p),
    "grey.bmp": lambda p: Image.fromarray(GREY).save(p),
    "rgba.bmp": lambda p: Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA").save(p),
    "lossless.webp": lambda p: Image.fromarray(RGB).save(p, lossless=True),
    "lossy.webp": lambda p: Image.fromarray(RGB).save(p, quality=80),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_read_image_matches_tensorflow_decode(tmp_path, name):
    path = tmp_path / name
    WRITERS[name](path)
    pixels = images.read_image(str(path))
    reference = tf_decode(path)
    assert pixels.dtype == np.uint8 and pixels.shape == reference.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(pixels, reference)
    assert pixels.std() > 0  # a real picture, not a constant


def test_sixteen_bit_grey_takes_the_high_byte(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"
    pixels = images.read_image(str(tmp_path / "grey16.png"))
    np.testing.assert_array_equal(pixels, np.repeat((GREY16 >> 8)[..., None], 3, -1))


def test_every_listed_extension_is_decoded_by_tensorflow(tmp_path):
    for extension in images.IMAGE_EXTENSIONS:
        path = tmp_path / f"photo{extension}"
        Image.fromarray(RGB).save(path, **({"lossless": True} if extension == ".webp" else {}))
        np.testing.assert_array_equal(images.read_image(str(path)), tf_decode(path))


def test_webp_with_alpha_drops_it_like_tensorflow_raw_decode(tmp_path):
    # TF's decode_image(channels=3) refuses WebP with alpha; its raw RGBA decode is the reference.
    path = tmp_path / "rgba.webp"
    Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA").save(path, lossless=True, exact=True)
    reference = tf.io.decode_webp(tf.io.read_file(str(path)), channels=4).numpy()[0, ..., :3]
    np.testing.assert_array_equal(images.read_image(str(path)), reference)


def test_exif_orientation_is_not_applied_as_tensorflow_does_not(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(RGB).save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    pixels = images.read_image(str(tmp_path / "rotated.jpg"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(pixels, tf_decode(tmp_path / "rotated.jpg"))


def test_sixteen_bit_pgm_mode_i_and_unknown_scales(tmp_path):
    Image.fromarray(GREY16).save(tmp_path / "grey16.pgm")  # Pillow opens 16-bit PGM as mode I
    with Image.open(tmp_path / "grey16.pgm") as image:
        assert image.mode == "I"
    np.testing.assert_array_equal(images.read_image(str(tmp_path / "grey16.pgm"))[..., 0],
                                  GREY16 >> 8)
    Image.fromarray(GREY16.astype(np.int32) * 1000).save(tmp_path / "int32.tif")
    with pytest.raises(ValueError, match=r"int32.tif.*mode I.*0\.\.65535"):
        images.read_image(str(tmp_path / "int32.tif"))
    Image.fromarray(GREY16.astype(np.float32) / 65535).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif.*mode F"):
        images.read_image(str(tmp_path / "float.tif"))


@pytest.mark.real_data
def test_sixteen_bit_grey_photo_is_not_white(shared_data, tmp_path):
    with Image.open(os.path.join(shared_data, "images", "chelsea.png")) as photo:
        grey = np.asarray(photo.convert("L"))
    # 8-bit v -> 16-bit v * 257 is how image tools widen; the high byte gives v back exactly.
    Image.fromarray((grey.astype(np.uint16) * 257)).save(tmp_path / "chelsea16.png")
    pixels = images.read_image(str(tmp_path / "chelsea16.png"))
    np.testing.assert_array_equal(pixels, np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(pixels, tf_decode(tmp_path / "chelsea16.png"))
    cropped = images.load_image(str(tmp_path / "chelsea16.png"), 224)
    assert cropped.shape == (224, 224, 3) and 40 < cropped.mean() < 200 and cropped.std() > 20


def test_load_image_refuses_bad_input(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "ok.png")
    ok = str(tmp_path / "ok.png")
    for size in (0, -3, (10,), (10, 0), 2.5, True, "224"):
        with pytest.raises(ValueError, match="image_size"):
            images.load_image(ok, size)
    with pytest.raises(ValueError, match="crop_pct"):
        images.load_image(ok, 8, crop_pct=0)
    with pytest.raises(ValueError, match="interpolation"):
        images.load_image(ok, 8, interpolation="lanczos7")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        images.load_image(str(tmp_path / "nothing.png"))
    (tmp_path / "notes.jpg").write_text("not a JPEG")
    with pytest.raises(ValueError, match="notes.jpg.*not a readable image"):
        images.read_image(str(tmp_path / "notes.jpg"))
    truncated = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        images.read_image(str(tmp_path / "truncated.png"))
    assert images.load_image(ok, (8, 12)).shape == (8, 12, 3)
