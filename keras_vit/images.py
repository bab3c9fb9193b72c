"""Image files -> pixel arrays, with NumPy and Pillow only (no TensorFlow), for predict and explain.

tf.data pipelines for training live in `keras_vit.data`; this module serves one-off images.
"""

import os

import numpy as np

RESAMPLING = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # Pillow's Image.Resampling values


def load_image(path, image_size=224, crop_pct=0.875, interpolation="bicubic"):
    """Reads an image file as a `(height, width, 3)` uint8 array, the way ViT checkpoints expect it.

    The shorter side is resized to `image_size / crop_pct` and the centre `image_size` is cropped
    (DeiT/timm evaluation: `crop_pct=0.875`); `crop_pct=1.0` resizes straight to `image_size`
    without keeping the aspect ratio, as the Google ViT evaluation does. `image_size=None` returns
    the image as it is. Grayscale and RGBA images are converted to RGB.

    >>> load_image("cat.jpg", 224).shape  # (224, 224, 3)
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No image file at {path!r}.")
    if interpolation not in RESAMPLING:
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected one of {list(RESAMPLING)}.")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path!r} is not a readable image (JPEG, PNG, ...): {error}") from None
    if image_size is None:
        return np.asarray(image, dtype="uint8")
    height, width = (image_size, image_size) if np.isscalar(image_size) else tuple(image_size)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    resample = RESAMPLING[interpolation]
    if crop_pct == 1.0:
        return np.asarray(image.resize((width, height), resample), dtype="uint8")
    scale = max(height, width) / crop_pct / min(image.size)
    new_size = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
    image = image.resize(new_size, resample)
    left, top = (new_size[0] - width) // 2, (new_size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), dtype="uint8")


def load_images(paths, image_size=224, crop_pct=0.875, interpolation="bicubic"):
    """Several files -> one `(n, height, width, 3)` uint8 batch."""
    return np.stack([load_image(p, image_size, crop_pct, interpolation) for p in paths])
