"""Image files -> pixel arrays, with NumPy and Pillow only (no TensorFlow), for predict, explain
and int8 calibration.

`read_image` is the one decoder of this module (`load_image`, predict, explain and int8
calibration all go through it): it gives the pixels that TensorFlow's decoders give for the same
file in the tf.data pipelines and the serving signature (`tf.io.decode_image(channels=3,
expand_animations=False)`; JPEG with `dct_method="INTEGER_ACCURATE"`), so that `keras-vit
predict` sees what training and serving see. tf.data pipelines live in `keras_vit.data`; this
module serves one-off images.
"""

import os

import numpy as np

# The file types that every path reads: Pillow here, TensorFlow's decoders in keras_vit.data and in
# the serving signature. Animated WebP is the exception: read_image takes its first frame, tf.data
# and serving refuse it (TF 2.21's decoder corrupts memory on it), folders skip it by name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# timm/DeiT evaluation: resize the short side to size / 0.875, crop the centre.
DEFAULT_CROP_PCT = 0.875


def check_crop_pct(crop_pct):
    """`crop_pct` as a float; ValueError unless it is a number in (0, 1]."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float, np.integer, np.floating)) \
            or not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}.")
    return float(crop_pct)
RESAMPLING = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # Pillow's Image.Resampling values


def read_image(path):
    """Decodes an image file to a `(height, width, 3)` uint8 RGB array, pixel for pixel as
    TensorFlow's decoders do where TensorFlow reads the file right:

    - 16-bit PNG/TIFF (Pillow modes `I;16*`, and `I` holding 0..65535, e.g. 16-bit PGM): the
      high byte (`value >> 8`), as libpng's 16-to-8-bit strip does in TensorFlow. Mode `I` values
      outside 0..65535 and 32-bit float images (mode `F`) raise ValueError: their scale is
      unknown, and guessing one would be a silent wrong answer.
    - Alpha (RGBA, LA, palette transparency, WebP with alpha) is dropped, not composited. GIFs are
      the exception, matching TensorFlow's GIF decoder: transparent pixels of the first frame
      come out black.
    - Grey, 1-bit, palette, CMYK and YCbCr images become RGB; GIF and other animations give their
      first frame.
    - EXIF orientation is not applied (TensorFlow does not apply it either).

    Formats beyond `IMAGE_EXTENSIONS` that Pillow opens (TIFF, PGM, ...) are read too; serving and
    tf.data do not take them. Where TensorFlow 2.21 decodes wrongly without an error (8-bit
    palette BMPs: the indices come out as grey levels; a GIF whose first frame does not fill the
    canvas: misplaced), this gives the right picture and `keras_vit.data.from_directory` skips
    the file by name.

    >>> read_image("cat.png").shape  # (300, 451, 3)
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path!r}.")
    try:
        with Image.open(path) as image:
            return _to_rgb(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path!r} is not a readable image (JPEG, PNG, ...): {error}") from None
    except ValueError as error:
        raise ValueError(f"{path!r}: {error}") from None


def _to_rgb(image):
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"32-bit integer image (Pillow mode I) with values in [{values.min()}, "
                f"{values.max()}]: only 0..65535 (16-bit) has a known scale. Save it as 8- or "
                f"16-bit PNG.")
        return np.repeat((values >> 8).astype("uint8")[..., None], 3, axis=-1)
    if mode == "F":
        raise ValueError("32-bit float image (Pillow mode F): its value scale (0..1 or 0..255) is "
                         "unknown. Save it as 8- or 16-bit PNG.")
    if image.format == "GIF":
        pixels = np.array(image.convert("RGB"))
        transparent = image.info.get("transparency")
        if transparent is not None and mode in ("P", "L"):
            pixels[np.asarray(image) == transparent] = 0
        return pixels
    if mode in ("P", "PA"):  # via RGBA: Pillow warns when converting palette transparency to RGB
        return np.array(image.convert("RGBA"))[..., :3]
    return np.asarray(image.convert("RGB"), dtype="uint8")


def load_image(path, image_size=224, crop_pct=DEFAULT_CROP_PCT, interpolation="bicubic"):
    """Reads an image file (`read_image`) as a `(height, width, 3)` uint8 array, the way ViT
    checkpoints expect it.

    The shorter side is resized to `image_size / crop_pct` and the centre `image_size` is cropped
    (DeiT/timm evaluation: `crop_pct=0.875`); `crop_pct=1.0` resizes straight to `image_size`
    without keeping the aspect ratio, as the Google ViT evaluation does. `image_size=None` returns
    the image as it is.

    >>> load_image("cat.jpg", 224).shape  # (224, 224, 3)
    """
    from PIL import Image

    if interpolation not in RESAMPLING:
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected one of {list(RESAMPLING)}.")
    crop_pct = check_crop_pct(crop_pct)
    if image_size is not None:
        size = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
        if len(size) != 2 or not all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
            raise ValueError(f"image_size must be a positive int, (height, width) or None, got "
                             f"{image_size!r}.")
        height, width = int(size[0]), int(size[1])
    pixels = read_image(path)
    if image_size is None:
        return pixels
    image = Image.fromarray(pixels)
    resample = RESAMPLING[interpolation]
    if crop_pct == 1.0:
        return np.asarray(image.resize((width, height), resample), dtype="uint8")
    scale = max(height, width) / crop_pct / min(image.size)
    new_size = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
    image = image.resize(new_size, resample)
    left, top = (new_size[0] - width) // 2, (new_size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype="uint8")


def load_images(paths, image_size=224, crop_pct=DEFAULT_CROP_PCT, interpolation="bicubic"):
    """Several files -> one `(n, height, width, 3)` uint8 batch."""
    return np.stack([load_image(p, image_size, crop_pct, interpolation) for p in paths])
