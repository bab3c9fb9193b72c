"""Export for serving: SavedModel in TF Serving's layout, and TFLite/LiteRT with quantisation.

    version_dir = keras_vit.export.saved_model(model, "saved_models/vit")   # saved_models/vit/1
    report = keras_vit.export.tflite(model, "vit.tflite", quantization="float16",
                                     evaluation_data="photos/")

The SavedModel needs nothing but TensorFlow to run (no keras_vit, no custom objects), which is what
TF Serving does. It has two signatures:

- `serving_default`: `images` float32 `(batch, H, W, 3)`, raw pixels in [0, 255] ->
  `logits`, `probabilities`, `top_k_indices` (int32), `top_k_labels` (string).
- `serve_image_bytes`: `image_bytes` string `(batch,)` of encoded files in the formats of
  `IMAGE_EXTENSIONS` (JPEG, PNG, GIF, BMP, WebP), decoded, resized (short side) and centre-cropped
  in the graph like `keras_vit.images.load_image` -> the same outputs. Images whose header
  declares more than `max_pixels` pixels are refused before decoding.

Bad requests (wrong shape, pixels outside [0, 255], empty batch, bytes that are no image, images
too large or corrupt) fail with an `InvalidArgumentError` whose message says what was expected
and, for encoded images, which image of the batch failed; the whole request fails. A
`metadata.json` in the version directory records the architecture, preprocessing and labels.

TFLite files are converted from a SavedModel (Keras 3's `from_keras_model` path is broken), run
with the LiteRT interpreter (`ai_edge_litert`) and checked against the Keras model on real
images: an export whose top-1 agreement falls below `min_top1_agreement` raises
`ExportAccuracyError` and writes nothing.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile

import numpy as np

from keras_vit.images import DEFAULT_CROP_PCT, IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
# Largest image `serve_image_bytes` decodes, in pixels (as the file's header declares them). It is
# above every camera photo in common use (48 MP phone sensors: 8000x6000; 45 MP full-frame:
# 8192x5464) and costs about 3 bytes a pixel to decode here (150 MB at the limit), yet refuses
# decompression bombs: a 0.5 MB PNG can declare 23000x23000 pixels, 1.6 GB decoded.
DEFAULT_MAX_PIXELS = 50_000_000
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
# Lowest top-1 agreement with the Keras model that an export may have, per quantisation. Measured
# on DeiT-Tiny and 29 real photos (docs/serving.md): float32 100%, float16 100%, dynamic 96.6%,
# int8 93.1% (naive full int8: 86.2%). float32/float16 only round; the int8 modes flip the top-1
# of images whose two best classes are close, hence the margins.
MIN_TOP1_AGREEMENT = {None: 0.99, "float16": 0.95, "dynamic": 0.85, "int8": 0.8}
# TFLite ops kept in float by quantization="int8": LayerNorm (MEAN, SQUARED_DIFFERENCE, RSQRT),
# softmax and the residual/position-embedding adds.
INT8_FLOAT_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "ADD")


class ExportAccuracyError(ValueError):
    """A converted model disagrees with the Keras model more than allowed; `.report` says by how much."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


def _require_tensorflow_backend():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Exporting to SavedModel/TFLite traces the model with TensorFlow, but Keras runs on the "
            f"{keras.backend.backend()!r} backend. Set KERAS_BACKEND=tensorflow before Python starts "
            f"(e.g. `KERAS_BACKEND=tensorflow keras-vit export ...`), then load the model again."
        )


def _model_geometry(model):
    """(height, width, num_classes) of an image classifier; ValueError for anything else."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(f"Expected a model taking (batch, H, W, 3) images, got input shape {shape}.")
    out = tuple(model.output_shape)
    if len(out) != 2 or not out[-1] or not getattr(model, "include_top", True):
        raise ValueError(
            f"Expected a classifier with (batch, num_classes) outputs, got output shape {out}: "
            f"export a model built with include_top=True."
        )
    return int(shape[1]), int(shape[2]), int(out[-1])


def resolve_labels(model, labels=None):
    """The class names to store: `labels` (a list, a label file, or `"imagenet"`), else
    `model.class_names`, else `"0" ... "N-1"`. Returns `(names, source)`."""
    from keras_vit import labels as labels_lib

    num_classes = _model_geometry(model)[2]
    if isinstance(labels, str) and labels == "imagenet":
        names, source = list(labels_lib.imagenet_class_names()), "imagenet"
    elif isinstance(labels, (str, os.PathLike)):
        names, source = labels_lib.read_class_names(labels), os.fspath(labels)
    elif labels is not None:
        names, source = [str(name) for name in labels], "argument"
    elif getattr(model, "class_names", None):
        names, source = [str(name) for name in model.class_names], "model"
    else:
        names, source = [str(i) for i in range(num_classes)], "index"
    if len(names) != num_classes:
        raise ValueError(f"Got {len(names)} labels (from {source}) for a model with {num_classes} classes.")
    return names, source


def _normalization(model):
    """(mean, std) the model expects, or None when it normalises inside its graph."""
    if getattr(model, "include_preprocessing", True):
        return None
    return (np.broadcast_to(np.asarray(model.normalization_mean, "float32"), (3,)),
            np.broadcast_to(np.asarray(model.normalization_std, "float32"), (3,)))


def _logits_fn(model):
    """Raw [0, 255] float32 pixels -> logits, normalising first when the model does not."""
    import tensorflow as tf

    normalization = _normalization(model)

    def logits(images):
        if normalization is not None:
            mean, std = normalization
            images = (images / 255.0 - mean) / std
        return tf.cast(model(images, training=False), tf.float32)

    return logits


def _resize_and_crop(image, height, width, crop_pct, interpolation):
    """One decoded uint8 (H, W, 3) image -> float32 (height, width, 3) in [0, 255], as
    `images.load_image` does: short side resized to size / crop_pct, centre crop (crop_pct=1:
    plain resize), rounded."""
    import tensorflow as tf

    # Resized straight from uint8 (the resize computes in float32 either way): a float32 copy of
    # the full image would take 4 bytes a pixel more at the peak.
    size = tf.cast(tf.shape(image)[:2], tf.float64)
    # Pillow's bicubic/bilinear filters widen when shrinking; TF's antialias=True does the same.
    resize = dict(method=interpolation, antialias=interpolation != "nearest")
    if crop_pct == 1.0:
        image = tf.image.resize(image, (height, width), **resize)
    else:
        scale = max(height, width) / crop_pct / tf.reduce_min(size)
        # tf.round rounds half to even, like Python's round() in load_image.
        new_h = tf.maximum(height, tf.cast(tf.round(size[0] * scale), tf.int32))
        new_w = tf.maximum(width, tf.cast(tf.round(size[1] * scale), tf.int32))
        image = tf.image.resize(image, tf.stack([new_h, new_w]), **resize)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        image = image[top:top + height, left:left + width]
    # load_image returns uint8: round and clip the same way so both paths see the same pixels.
    image = tf.cast(image, tf.float32)
    return tf.ensure_shape(tf.clip_by_value(tf.round(image), 0.0, 255.0), (height, width, 3))


# --------------------------------------------------------------------------------------------------
# Image headers, read in TF ops inside the serving graph: the size an image declares is checked
# against max_pixels before anything is decoded (a 0.5 MB PNG can declare 23000x23000 blank
# pixels, 1.6 GB once decoded). Each reader returns (height, width, bytes to decode) from the same header
# fields the TF decoder sizes its output by; a header it cannot read fails the element.


def _header_reader(data):
    """(byte(i), uint(offset, size, big_endian), n) over `data`; reads past the end give 0."""
    import tensorflow as tf

    raw = tf.io.decode_raw(data, tf.uint8)
    n = tf.size(raw, out_type=tf.int64)
    padded = tf.concat([raw, tf.zeros([16], tf.uint8)], axis=0)

    def byte(i):
        i = tf.clip_by_value(tf.cast(i, tf.int64), 0, n + 15)
        return tf.cast(tf.gather(padded, i), tf.int64)

    def uint(offset, size, big_endian=False):
        value = tf.constant(0, tf.int64)
        for k in range(size):
            shift = 8 * (size - 1 - k if big_endian else k)
            value += tf.bitwise.left_shift(byte(offset + k), tf.constant(shift, tf.int64))
        return value

    return byte, uint, n


def _require(condition, message):
    import tensorflow as tf

    return tf.debugging.Assert(condition, [message])


def _text(*parts):
    """One string tensor from strings and numeric tensors (tf.strings.format would quote strings)."""
    import tensorflow as tf

    return tf.strings.join([part if isinstance(part, str) or part.dtype == tf.string
                            else tf.strings.as_string(part) for part in parts])


def _require_lazily(condition, message_fn):
    """An Assert whose message is built only when it fails (it may index what is then there)."""
    import tensorflow as tf

    return _require(condition, tf.cond(condition, lambda: tf.constant(""), message_fn))


def _jpeg_header(data):
    import tensorflow as tf

    # libjpeg's own header parser (jpeg_read_header): it reads no pixel data.
    shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
    return shape[0], shape[1], data


def _png_header(data):
    import tensorflow as tf

    byte, uint, n = _header_reader(data)
    ok = _require(tf.logical_and(n >= 24, tf.equal(tf.strings.substr(data, 12, 4), b"IHDR")),
                  "no PNG IHDR header")
    with tf.control_dependencies([ok]):
        return tf.identity(uint(20, 4, True)), uint(16, 4, True), data


def _bmp_header(data):
    import tensorflow as tf

    byte, uint, n = _header_reader(data)
    bits, compression = uint(28, 2), uint(30, 4)
    # TF copies pixel bytes as they are: right for uncompressed 24/32-bit BMPs (or 32-bit ones
    # whose bit fields are the plain BGRA masks), wrong for compressed ones and for 8-bit ones
    # with a colour palette (it gives the palette indices as grey levels).
    plain_masks = tf.reduce_all(tf.stack([tf.equal(uint(54, 4), 0xFF0000),
                                          tf.equal(uint(58, 4), 0xFF00), tf.equal(uint(62, 4), 0xFF)]))
    uncompressed = tf.logical_or(tf.equal(compression, 0),
                                 tf.logical_and(tf.equal(compression, 3), plain_masks))
    colors = uint(46, 4)
    colors = tf.where(tf.equal(colors, 0), tf.constant(256, tf.int64), colors)
    index = tf.range(256, dtype=tf.int64)[:, None]
    palette = byte(14 + uint(14, 4) + 4 * index + tf.range(3, dtype=tf.int64))  # (256, B G R)
    grey = tf.reduce_all(tf.logical_or(tf.equal(palette, index), index >= colors))
    checks = [_require(tf.logical_and(n >= 54, uint(14, 4) >= 40), "truncated or OS/2 BMP header"),
              _require(uncompressed, "compressed BMP"),
              _require(tf.logical_or(tf.not_equal(bits, 8), grey), "8-bit BMP with a colour palette")]

    def signed(value):  # int32 fields; a negative height means top-down rows
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    with tf.control_dependencies(checks):
        return signed(uint(22, 4)), signed(uint(18, 4)), data


def _webp_header(data):
    import tensorflow as tf

    byte, uint, n = _header_reader(data)
    chunk = tf.strings.substr(data, 12, 4)
    lossless = uint(21, 4)  # VP8L: 14 bits width - 1, 14 bits height - 1
    # (width, height) of each still-image chunk kind: lossy VP8, lossless VP8L, extended VP8X.
    kinds = {b"VP8 ": (uint(26, 2) % 16384, uint(28, 2) % 16384),
             b"VP8L": (lossless % 16384 + 1, lossless // 16384 % 16384 + 1),
             b"VP8X": (uint(24, 3) + 1, uint(27, 3) + 1)}
    width = height = tf.constant(-1, tf.int64)
    for name, (w, h) in kinds.items():
        width = tf.where(tf.equal(chunk, name), w, width)
        height = tf.where(tf.equal(chunk, name), h, height)
    # TF crashes the process (heap corruption) on animated WebP read with the file's channels:
    # refuse it here, before the decoder sees it.
    animated = tf.logical_and(tf.equal(chunk, b"VP8X"), tf.bitwise.bitwise_and(byte(20), 2) > 0)
    checks = [_require(tf.logical_and(n >= 30, width > 0), "no WebP VP8/VP8L/VP8X header"),
              _require(tf.logical_not(animated), "animated WebP is not supported")]
    with tf.control_dependencies(checks):
        return tf.identity(height), width, data


_GIF_MAX_STEPS = 20_000  # a 50 MP GIF of noise takes about 4000


def _gif_header(data):
    """The larger of the GIF's canvas and its first frame, and the file cut after the first frame.

    TF's GIF decoder reads every frame into memory even when it returns only the first (giflib's
    DGifSlurp), so a small file of many frames could still take gigabytes: it gets the bytes up
    to the end of the first frame plus the trailer. The walk follows the GIF89a block structure:
    extensions and the image are chains of length-prefixed sub-blocks ended by a 0 byte."""
    import tensorflow as tf

    byte, uint, n = _header_reader(data)

    def color_table(packed):  # 3 * 2^(size + 1) bytes when the table flag (bit 7) is set
        return (packed // 128) * 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed % 8)

    expect_block, in_extension, in_image, done, malformed = (
        tf.constant(k, tf.int64) for k in (0, 1, 2, 3, -1))
    start = 13 + color_table(byte(10))

    def step(pos, stage, frame_h, frame_w):
        code = byte(pos)
        is_extension, is_image = tf.equal(code, 0x21), tf.equal(code, 0x2C)
        block_pos = tf.where(is_extension, pos + 2, pos + 11 + color_table(byte(pos + 9)))
        block_stage = tf.where(is_extension, in_extension, tf.where(is_image, in_image, malformed))
        # Inside sub-blocks `code` is the next sub-block's length, and 0 ends the chain. Encoders
        # write full 255-byte sub-blocks: skip up to 64 of them a step (one step per sub-block
        # took 1 s for an 8 MB GIF).
        full = tf.cast(tf.not_equal(byte(pos + 256 * tf.range(64, dtype=tf.int64)), 255), tf.int64)
        full = tf.argmax(tf.concat([full, [1]], axis=0))  # leading full sub-blocks, 0 to 64
        sub_pos = tf.where(full > 0, pos + 256 * full, pos + code + 1)
        sub_stage = tf.where(tf.logical_and(tf.equal(full, 0), tf.equal(code, 0)),
                             tf.where(tf.equal(stage, in_image), done, expect_block), stage)
        at_block = tf.equal(stage, expect_block)
        return (tf.where(at_block, block_pos, sub_pos),
                tf.where(at_block, block_stage, sub_stage),
                tf.where(tf.logical_and(at_block, is_image), uint(pos + 7, 2), frame_h),
                tf.where(tf.logical_and(at_block, is_image), uint(pos + 5, 2), frame_w))

    zero = tf.constant(0, tf.int64)
    # Sub-blocks shorter than 255 bytes are legal but no encoder writes many: the cap keeps a
    # crafted file of 1-byte sub-blocks from holding the server for seconds.
    end, stage, frame_h, frame_w = tf.while_loop(
        lambda pos, stage, *_: tf.logical_and(tf.logical_and(stage >= 0, stage < done), pos < n),
        step, (start, expect_block, zero, zero), maximum_iterations=_GIF_MAX_STEPS)
    ok = _require(tf.logical_and(tf.equal(stage, done), end <= n), "no complete first GIF frame")
    canvas_h, canvas_w = uint(8, 2), uint(6, 2)
    frame_larger = frame_h * frame_w > canvas_h * canvas_w
    with tf.control_dependencies([ok]):
        return (tf.where(frame_larger, frame_h, canvas_h), tf.where(frame_larger, frame_w, canvas_w),
                tf.strings.join([tf.strings.substr(data, tf.constant(0, tf.int64), end), b"\x3b"]))


def _decode(data):
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _decode_jpeg(data):
    import tensorflow as tf

    # The accurate IDCT, as keras_vit.data and Pillow (images.read_image) decode: TF's default
    # fast one differs from them by up to 4 levels.
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")


def _decode_webp(data):
    import tensorflow as tf

    # TF reads a WebP with alpha only as 4 channels and one without only as 3: take the file's
    # own, then drop the alpha as images.read_image does.
    return tf.io.decode_image(data, channels=0, expand_animations=False)[..., :3]


# Formats `serve_image_bytes` decodes: (magic bytes at offsets, header reader, decoder). TF's
# DecodeImage also reads JPEG XL, which Pillow (predict) and folders do not: the signature takes
# exactly the formats of IMAGE_EXTENSIONS.
_SERVING_FORMATS = {
    "JPEG": (((0, b"\xff\xd8\xff"),), _jpeg_header, _decode_jpeg),
    "PNG": (((0, b"\x89PNG\r\n\x1a\n"),), _png_header, _decode),
    "GIF": (((0, b"GIF8"),), _gif_header, _decode),
    "BMP": (((0, b"BM"),), _bmp_header, _decode),
    "WebP": (((0, b"RIFF"), (8, b"WEBP")), _webp_header, _decode_webp),
}
_EXTENSION_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP",
                      ".webp": "WebP"}


def serving_formats(extensions=None):
    """Names of the formats `serve_image_bytes` accepts: those of `extensions` (default
    `IMAGE_EXTENSIONS`, the formats folders and predict read); ValueError for one it cannot."""
    extensions = IMAGE_EXTENSIONS if extensions is None else extensions
    unknown = [e for e in extensions if e.lower() not in _EXTENSION_FORMATS]
    if unknown:
        raise ValueError(f"The serving signature cannot decode {unknown}: it reads "
                         f"{sorted(_EXTENSION_FORMATS)}.")
    return list(dict.fromkeys(_EXTENSION_FORMATS[e.lower()] for e in extensions))


def _decode_batch(image_bytes, height, width, crop_pct, interpolation, max_pixels):
    """`(batch,)` encoded images -> float32 `(batch, height, width, 3)`, refusing, with an
    `InvalidArgumentError` that names the image's index, any image that is no known format,
    declares more than `max_pixels` pixels (not decoded) or fails to decode.

    The images are decoded one at a time (a sequential tf.data map), so a request's peak memory
    is one image's, whatever the batch size; `ignore_errors` turns a decoder error into a
    missing index, which is then reported with the index (a graph cannot catch an op's error
    any other way)."""
    import tensorflow as tf

    formats = serving_formats()
    non_empty = tf.debugging.assert_positive(
        tf.size(image_bytes), message="`image_bytes` is an empty batch: send at least one image")
    with tf.control_dependencies([non_empty]):  # every op below waits for it
        image_bytes = tf.identity(image_bytes)
    batch_size = tf.size(image_bytes)
    indices = tf.range(batch_size)
    head = tf.strings.substr(tf.strings.join([image_bytes, b"\0" * 12]), 0, 12)
    code = tf.fill([batch_size], -1)
    for k, name in enumerate(formats):
        match = tf.reduce_all(tf.stack([tf.equal(tf.strings.substr(head, offset, len(magic)), magic)
                                        for offset, magic in _SERVING_FORMATS[name][0]]), axis=0)
        code = tf.where(match, k, code)

    def first(bad):  # index of the first True
        return tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)

    known = _require_lazily(tf.reduce_all(code >= 0), lambda: _text(
        "image ", first(code < 0), f" of the batch is not an encoded {' / '.join(formats)} file"))

    def decode_one(index, data, format_code):
        def branch(name):
            _, header, decode = _SERVING_FORMATS[name]

            def read():
                height_, width_, payload = header(data)
                too_large = height_ * width_ > max_pixels
                image = tf.cond(too_large, lambda: tf.zeros((height, width, 3)),
                                lambda: _resize_and_crop(decode(payload), height, width, crop_pct,
                                                         interpolation))
                return tf.stack([height_, width_]), image
            return read

        size, image = tf.switch_case(format_code, [branch(name) for name in formats])
        return index, size, image

    with tf.control_dependencies([known]):
        elements = tf.data.Dataset.from_tensor_slices((indices, image_bytes, code))
    decoded = elements.map(decode_one).ignore_errors()
    # A sentinel keeps the batch non-empty when every image fails; it stays last.
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(-1), tf.zeros([2], tf.int64), tf.zeros((height, width, 3))))
    done, sizes, images = decoded.concatenate(sentinel).batch(
        tf.cast(batch_size, tf.int64) + 1).get_single_element()
    pixels = tf.reduce_prod(sizes, axis=1)

    def failed_message():
        failed = first(tf.reduce_all(tf.not_equal(indices[:, None], done[None, :]), axis=1))
        return _text("image ", failed, " of the batch could not be decoded as ",
                     tf.gather(formats, code[failed]), ": corrupt or truncated data, or a variant "
                     "TensorFlow does not read")

    def large_message():
        row = first(pixels > max_pixels)
        return _text("image ", done[row], " of the batch declares ", sizes[row, 1], "x",
                     sizes[row, 0], " = ", pixels[row], f" pixels, over the serving limit of "
                     f"{max_pixels} pixels (max_pixels, set at export); it was not decoded")

    checks = [_require_lazily(tf.equal(tf.size(done), batch_size + 1), failed_message),
              _require_lazily(tf.reduce_all(pixels <= max_pixels), large_message)]
    with tf.control_dependencies(checks):
        return tf.identity(images[:-1])


def _serving_module(model, labels, top_k, crop_pct, interpolation, max_pixels):
    """A tf.Module with the two serving signatures; it holds the model's variables, not the model."""
    import tensorflow as tf

    height, width, _ = _model_geometry(model)
    logits_fn = _logits_fn(model)
    module = tf.Module()
    # Track the variables themselves (as Keras' own ExportArchive does): the Keras objects would
    # need keras to load, the variables need nothing.
    module.model_variables = [v.value for v in model.variables]
    module.class_names = tf.Variable(labels, dtype=tf.string, trainable=False, name="class_names")

    def outputs(images):
        logits = logits_fn(images)
        top = tf.math.top_k(logits, k=top_k)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "top_k_indices": top.indices,
            "top_k_labels": tf.gather(module.class_names, top.indices),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")])
    def serve_images(images):
        # TF Serving feeds tensors without checking them against the signature: check here, so a
        # wrong request gets a message instead of a reshape error or a silently wrong answer.
        shape = tf.shape(images)
        good_shape = tf.debugging.Assert(
            tf.logical_and(tf.equal(tf.size(shape), 4),
                           tf.reduce_all(tf.equal(shape[1:], [height, width, 3]))),
            [f"`images` must have shape (batch, {height}, {width}, 3) (raw RGB pixels), got", shape],
        )
        with tf.control_dependencies([good_shape]):
            checks = [
                tf.debugging.assert_positive(
                    shape[0], message="`images` is an empty batch: send at least one image"),
                tf.debugging.assert_all_finite(images, "`images` contains NaN or infinite values"),
                tf.debugging.Assert(
                    tf.logical_and(tf.reduce_min(images) >= 0.0, tf.reduce_max(images) <= 255.0),
                    ["`images` must hold raw pixel values in [0, 255] (the model normalises them "
                     "itself); got min and max", tf.reduce_min(images), tf.reduce_max(images)],
                ),
            ]
        # The checks run before the model: a bad request fails on its message, not on a reshape.
        with tf.control_dependencies(checks):
            return outputs(tf.identity(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes):
        return outputs(_decode_batch(image_bytes, height, width, crop_pct, interpolation, max_pixels))

    module.serve_images = serve_images
    module.serve_image_bytes = serve_image_bytes
    return module


def next_version(base_dir):
    """1 + the highest integer version directory under `base_dir` (1 when there is none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(n) for n in os.listdir(base_dir) if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def saved_model(model, base_dir, labels=None, version=None, top_k=DEFAULT_TOP_K, crop_pct=None,
                interpolation="bicubic", source=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Writes `model` as a SavedModel for TF Serving to `<base_dir>/<version>/`; returns that path.

    Args:
        model: a Keras image classifier on the TensorFlow backend taking raw [0, 255] pixels
            (a `keras_vit.ViT`; models built with `include_preprocessing=False` are normalised
            in the exported graph with their `normalization_mean/std`).
        base_dir: the model's base directory (what TF Serving's `--model_base_path` points at).
        labels: class names: a list, a label file, or `"imagenet"`; default `model.class_names`,
            else `"0"` ... `"N-1"`.
        version: integer version; default the next free one. An existing version is an error.
        top_k: how many classes `top_k_indices` / `top_k_labels` hold.
        crop_pct, interpolation: preprocessing of `serve_image_bytes`, as `images.load_image`
            (default `model.crop_pct` if the model has one, else 0.875; bicubic).
        source: the checkpoint the model came from, recorded in `metadata.json`.
        max_pixels: the most pixels (height * width, as the file's header declares them) an
            image sent to `serve_image_bytes` may have; larger ones are refused before decoding.

    Example:
        >>> path = keras_vit.export.saved_model(model, "saved_models/vit", labels=class_names)
        >>> tf.saved_model.load(path).signatures["serving_default"](images=batch)["top_k_labels"]
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    height, width, num_classes = _model_geometry(model)
    names, labels_source = resolve_labels(model, labels)
    crop_pct = _crop_pct(model, crop_pct)
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected bicubic, bilinear or nearest.")
    top_k = _positive_int(top_k, "top_k")
    if top_k > num_classes:
        warnings.warn(f"top_k={top_k} is more than the model's {num_classes} classes: the top-k "
                      f"outputs hold all {num_classes}.", stacklevel=2)
        top_k = num_classes
    max_pixels = _positive_int(max_pixels, "max_pixels")
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise NotADirectoryError(f"{os.fspath(base_dir)!r} is a file; a SavedModel goes in a base "
                                 f"directory (versions in <base>/<N>/).")
    version = next_version(base_dir) if version is None else version
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}.")
    export_dir = os.path.join(base_dir, str(version))
    if os.path.exists(export_dir):
        raise FileExistsError(
            f"{export_dir} already exists: TF Serving versions are immutable. Pick another "
            f"--version, or leave it out to use the next free one ({next_version(base_dir)})."
        )
    module = _serving_module(model, names, top_k, crop_pct, interpolation, max_pixels)
    signatures = {"serving_default": module.serve_images,
                  "serve_image_bytes": module.serve_image_bytes}
    # Write to a temporary sibling and rename, so TF Serving (which polls base_dir) never sees a
    # half-written version.
    os.makedirs(base_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=base_dir)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        with open(os.path.join(staging, "metadata.json"), "w", encoding="utf-8") as f:
            json.dump(_metadata(model, names, labels_source, top_k, crop_pct, interpolation, source,
                                max_pixels), f, indent=2)
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the version from a server's user
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Wrote SavedModel version %d to %s (%d classes, %dx%d).", version, export_dir,
                num_classes, height, width)
    return export_dir


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _crop_pct(model, crop_pct):
    """`crop_pct`, else the model's, else DEFAULT_CROP_PCT; ValueError outside (0, 1]."""
    crop_pct = crop_pct if crop_pct is not None else getattr(model, "crop_pct", DEFAULT_CROP_PCT)
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float, np.number)) \
            or not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}.")
    return float(crop_pct)


def _per_channel(value):
    return [float(v) for v in np.broadcast_to(np.ravel(value), (3,))]


def _metadata(model, labels, labels_source, top_k, crop_pct, interpolation, source, max_pixels):
    import keras
    import tensorflow as tf

    import keras_vit

    config = {k: v for k, v in model.get_config().items() if k != "class_names"}
    height, width, _ = _model_geometry(model)
    return {
        "format": "keras_vit.saved_model",
        "architecture": json.loads(json.dumps(config, default=str)),
        "image_size": [height, width],
        "preprocessing": {
            "input": "raw RGB pixels in [0, 255], float32, (batch, height, width, 3)",
            "mean": _per_channel(getattr(model, "normalization_mean", 0.5)),
            "std": _per_channel(getattr(model, "normalization_std", 0.5)),
            "crop_pct": crop_pct,
            "interpolation": interpolation,
            "max_pixels": max_pixels,
            "formats": serving_formats(),
        },
        "labels": list(labels),
        "labels_source": labels_source,
        "top_k": top_k,
        "signatures": {
            "serving_default": {"inputs": {"images": "float32 (batch, H, W, 3)"},
                                "outputs": ["logits", "probabilities", "top_k_indices", "top_k_labels"]},
            "serve_image_bytes": {"inputs": {"image_bytes": "string (batch,)"},
                                  "outputs": ["logits", "probabilities", "top_k_indices", "top_k_labels"]},
        },
        "source": None if source is None else os.fspath(source),
        "keras_vit_version": keras_vit.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }


# --------------------------------------------------------------------------------------------------
# TFLite / LiteRT


def _logits_saved_model(model, directory):
    """The plain SavedModel the TFLite converter reads: images -> logits, no asserts, no strings
    (TFLite has no Assert kernel and strings make the converter pull in TF ops)."""
    import tensorflow as tf

    height, width, _ = _model_geometry(model)
    logits_fn = _logits_fn(model)
    module = tf.Module()
    module.model_variables = [v.value for v in model.variables]
    serve = tf.function(lambda images: {"logits": logits_fn(images)},
                        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32, name="images")])
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def calibration_images(data, image_size, limit=None, crop_pct=DEFAULT_CROP_PCT):
    """Images for calibration or evaluation as one float32 `(n, H, W, 3)` array in [0, 255].

    `data`: a folder of image files (read with `images.load_image`), a NumPy array
    `(n, H, W, 3)` of raw pixels, or a `tf.data.Dataset` of images or `(images, labels)`, batched
    or not. At most `limit` images are taken.
    """
    height, width = image_size
    if isinstance(data, (str, os.PathLike)):
        from keras_vit import images as images_lib

        if not os.path.isdir(data):
            raise FileNotFoundError(f"Calibration/evaluation data {os.fspath(data)!r} is not a folder "
                                    f"of images.")
        names = sorted(os.listdir(data))
        files = [f for f in names if f.lower().endswith(IMAGE_EXTENSIONS)
                 and os.path.isfile(os.path.join(data, f))]
        if not files:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {data!r}.")
        if len(files) < len(names):
            others = sorted(set(names) - set(files))
            warnings.warn(f"{data}: skipped {len(others)} entries that are not image files "
                          f"({', '.join(IMAGE_EXTENSIONS)}), e.g. {others[:3]}.", stacklevel=2)
        files = files[:limit]
        array = images_lib.load_images([os.path.join(data, f) for f in files], (height, width), crop_pct)
    elif isinstance(data, np.ndarray):
        array = data[:limit]
    elif hasattr(data, "as_numpy_iterator"):  # a tf.data.Dataset
        batches, count = [], 0
        for element in data.as_numpy_iterator():
            element = element[0] if isinstance(element, tuple) else element
            element = element[None] if element.ndim == 3 else element
            batches.append(element)
            count += len(element)
            if limit is not None and count >= limit:
                break
        if not batches:
            raise ValueError("The calibration/evaluation dataset is empty.")
        array = np.concatenate(batches)[:limit]
    else:
        raise TypeError(
            f"Calibration/evaluation data must be a folder of images, a NumPy array or a "
            f"tf.data.Dataset, got {type(data).__name__}."
        )
    array = np.asarray(array, dtype="float32")
    if array.ndim != 4 or array.shape[1:] != (height, width, 3):
        raise ValueError(
            f"Calibration/evaluation images must have shape (n, {height}, {width}, 3), got {array.shape}."
        )
    if len(array) == 0:
        raise ValueError("No calibration/evaluation images.")
    if array.max() <= 1.0:
        logger.warning("Calibration/evaluation images are all in [0, 1]; the model expects raw "
                       "pixels in [0, 255]. Multiply by 255 if they were normalised.")
    return array


def _convert(converter, quantization, calibration):
    """Runs the TFLite converter with the options of `quantization`; returns the flatbuffer."""
    import tensorflow as tf

    if quantization is None:
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization != "int8":
        # "dynamic": Optimize.DEFAULT alone stores int8 weights; activations stay float.
        return converter.convert()

    def representative_dataset():
        for image in calibration:
            yield {"images": image[None]}

    converter.representative_dataset = representative_dataset
    # Naive full int8 flips many of a ViT's predictions (LayerNorm inputs and the residual stream
    # have outliers that one int8 scale cannot hold). Keeping LayerNorm, softmax and the residual
    # adds in float measured best on DeiT-Tiny (docs/serving.md); the matmuls, i.e. nearly all
    # the compute and weights, stay int8. int16 activations ("16x8") fail at run time: LiteRT has
    # no int16 SQUARED_DIFFERENCE kernel.
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=INT8_FLOAT_OPS)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def run_tflite(path_or_content, images, num_threads=None):
    """Runs a `.tflite` classifier with the LiteRT interpreter: float32 `(n, H, W, 3)` -> logits."""
    from ai_edge_litert.interpreter import Interpreter

    key = "model_content" if isinstance(path_or_content, bytes) else "model_path"
    interpreter = Interpreter(**{key: path_or_content}, num_threads=num_threads)
    (input_detail,) = interpreter.get_input_details()
    images = np.asarray(images, dtype="float32")
    interpreter.resize_tensor_input(input_detail["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], images)
    interpreter.invoke()
    output = interpreter.get_output_details()[0]
    return interpreter.get_tensor(output["index"]).astype("float32")


def tflite(model, path, quantization=None, calibration_data=None, evaluation_data=None,
           min_top1_agreement=None, num_calibration_images=100, num_evaluation_images=32,
           crop_pct=None, verbose=True):
    """Converts `model` to a `.tflite` file, checks it against Keras, returns a report dict.

    Args:
        quantization: None (float32), `"float16"` (float16 weights), `"dynamic"` (int8 weights,
            float activations) or `"int8"` (int8 weights and activations calibrated on
            `calibration_data`, with LayerNorm, softmax and residual adds kept in float).
        calibration_data: a folder of images, a NumPy array or a tf.data.Dataset of raw [0, 255]
            images; required for `"int8"`.
        evaluation_data: images to compare the TFLite and Keras outputs on (same forms); default
            the calibration data.
        min_top1_agreement: lowest allowed fraction of evaluation images with the same top-1
            class as Keras; default `MIN_TOP1_AGREEMENT[quantization]` (0.99 / 0.95 / 0.85 / 0.8).
            Below it `ExportAccuracyError` is raised and nothing is written (a file already at
            `path` stays as it was). Without evaluation or calibration images the comparison
            runs on random noise, where agreement says little about photos: it is reported and
            warned about, never enforced.

    Returns: `{"path", "quantization", "size_bytes", "max_abs_logit_diff", "top1_agreement",
    "min_top1_agreement", "num_images", "evaluated_on"}` (`"evaluated_on"`: `"images"` or
    `"random noise"`).

    Example:
        >>> keras_vit.export.tflite(model, "vit_fp16.tflite", quantization="float16",
        ...                         evaluation_data="photos/")["top1_agreement"]
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    if quantization == "none":
        quantization = None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}: expected one of {list(QUANTIZATIONS)}.")
    if quantization == "int8" and calibration_data is None:
        raise ValueError("quantization='int8' needs calibration_data: a folder of images, a NumPy "
                         "array or a tf.data.Dataset of representative images.")
    threshold = MIN_TOP1_AGREEMENT[quantization] if min_top1_agreement is None else min_top1_agreement
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
            or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"min_top1_agreement must be a fraction in [0, 1], got {threshold!r}.")
    num_calibration_images = _positive_int(num_calibration_images, "num_calibration_images")
    num_evaluation_images = _positive_int(num_evaluation_images, "num_evaluation_images")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected the path of the .tflite file to write.")
    height, width, _ = _model_geometry(model)
    crop_pct = _crop_pct(model, crop_pct)
    calibration = None
    if calibration_data is not None:
        calibration = calibration_images(calibration_data, (height, width), num_calibration_images, crop_pct)
    if evaluation_data is not None:
        evaluation = calibration_images(evaluation_data, (height, width), num_evaluation_images, crop_pct)
    elif calibration is not None:
        evaluation = calibration[:num_evaluation_images]
    else:
        evaluation = np.random.default_rng(0).uniform(0, 255, (num_evaluation_images, height, width, 3))
        evaluation = evaluation.astype("float32")
    on_noise = evaluation_data is None and calibration is None

    with tempfile.TemporaryDirectory(prefix="keras_vit_tflite_") as tmp:
        _logits_saved_model(model, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        content = _convert(converter, quantization, calibration)
    # Checked from memory before anything is written: a rejected export leaves `path` alone.
    reference = np.asarray(_logits_fn(model)(tf.constant(evaluation)))
    logits = run_tflite(content, evaluation)
    report = {
        "path": path,
        "quantization": quantization or "none",
        "size_bytes": len(content),
        "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
        "top1_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        "min_top1_agreement": float(threshold),
        "num_images": int(len(evaluation)),
        "evaluated_on": "random noise" if on_noise else "images",
    }
    if verbose:
        print(format_report([report]))
    if on_noise:
        warnings.warn(
            f"No evaluation_data or calibration_data: the TFLite file was compared with the Keras "
            f"model on {len(evaluation)} random-noise images only (top-1 agreement "
            f"{report['top1_agreement']:.1%}, max |logit diff| {report['max_abs_logit_diff']:.4g}), "
            f"which says little about photos, so the min_top1_agreement check was not applied. "
            f"Pass real images to check it.", stacklevel=2)
    elif report["top1_agreement"] < threshold:
        kept = f"the existing {path} was left as it was" if os.path.exists(path) else "nothing was written"
        raise ExportAccuracyError(
            f"TFLite export ({report['quantization']}) agrees with the Keras model on the top-1 "
            f"class of only {report['top1_agreement']:.1%} of {report['num_images']} images "
            f"(minimum {threshold:.1%}; max |logit diff| {report['max_abs_logit_diff']:.4g}); "
            f"{kept}. Try a milder quantization, more calibration images, or lower "
            f"min_top1_agreement if that is acceptable.", report)
    _write_atomically(path, content)
    return report


def _write_atomically(path, content):
    """A temporary file beside `path`, renamed over it when complete: a reader (or a crash) never
    sees half a file, and a failed write leaves the old one."""
    from keras_vit.fileio import atomic_path

    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            f.write(content)
    except OSError as error:
        raise OSError(f"Cannot write {path!r}: {error.strerror or error}") from error


def format_report(reports):
    """A text table of `tflite()` reports."""
    rows = [("file", "quantization", "size (MB)", "max |logit diff|", "top-1 agreement")]
    for r in reports:
        rows.append((os.path.basename(r["path"]), r["quantization"], f"{r['size_bytes'] / 1e6:.2f}",
                     f"{r['max_abs_logit_diff']:.4g}",
                     f"{r['top1_agreement']:.1%} of {r['num_images']}"
                     + (" noise images" if r.get("evaluated_on") == "random noise" else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


# --------------------------------------------------------------------------------------------------
# Command line: keras-vit export


def load_model(path):
    """A `.keras` file or any checkpoint, through the one loader
    (`keras_vit.weights.load_model_or_checkpoint`: safe mode, not compiled); FileNotFoundError
    or ValueError (naming the file) for anything else."""
    path = os.fspath(path)
    if not os.path.exists(path) and not path.startswith("hf://"):
        raise FileNotFoundError(f"No model at {path!r}.")
    from keras_vit import weights

    with naming_load_errors(path):
        return weights.load_model_or_checkpoint(path)


@contextlib.contextmanager
def naming_load_errors(path):
    """Re-raises an error from loading the model at `path` as a ValueError that names the file
    (a damaged file surfaces as KeyError, zipfile or TF errors that do not)."""
    try:
        yield
    except Exception as error:
        if isinstance(error, (FileNotFoundError, ValueError)) and path in str(error):
            raise
        detail = error if isinstance(error, (OSError, ValueError)) else f"{type(error).__name__}: {error}"
        raise ValueError(f"Cannot load a model from {path!r}: {detail}") from error


def add_export_arguments(parser):
    parser.add_argument("model", help="a .keras file or a checkpoint (.safetensors, .npz, HF directory)")
    parser.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model")
    parser.add_argument("--output", help="SavedModel base directory (versions go in <output>/<N>/) or "
                        ".tflite path; default saved_models/<model name>[.tflite]")
    saved = parser.add_argument_group("--format saved_model")
    saved.add_argument("--version", type=int, help="SavedModel version (default: the next free one)")
    saved.add_argument("--labels", help="class-name file (one per line), or 'imagenet'")
    saved.add_argument("--top-k", type=int, help=f"classes in top_k outputs (default {DEFAULT_TOP_K})")
    saved.add_argument("--max-pixels", type=int, help=f"largest image serve_image_bytes decodes, in "
                       f"pixels (default {DEFAULT_MAX_PIXELS:,}); larger ones are refused")
    lite = parser.add_argument_group("--format tflite")
    lite.add_argument("--quantize", choices=["none", "float16", "dynamic", "int8"],
                      help="TFLite quantization (default none; int8 needs --calibration-data)")
    lite.add_argument("--calibration-data", help="folder of images for int8 calibration and for "
                      "checking the TFLite file against the Keras model (without it the check "
                      "runs on random noise and is only reported)")
    lite.add_argument("--min-top1-agreement", type=float,
                      help=f"TFLite check threshold (defaults per mode: {MIN_TOP1_AGREEMENT})")
    parser.add_argument("--crop-pct", type=float, help=f"centre-crop fraction of serve_image_bytes "
                        f"and of the calibration images (default {DEFAULT_CROP_PCT})")


_FORMAT_OPTIONS = {"saved_model": ("version", "labels", "top_k", "max_pixels"),
                   "tflite": ("quantize", "calibration_data", "min_top1_agreement")}


def run_export(args):
    # Options of the other format would be ignored without a word: refuse them.
    other = "tflite" if args.format == "saved_model" else "saved_model"
    misplaced = [f"--{name.replace('_', '-')}" for name in _FORMAT_OPTIONS[other]
                 if getattr(args, name) is not None]
    if misplaced:
        raise ValueError(f"{', '.join(misplaced)} only apply to --format {other}.")
    model = load_model(args.model)
    if args.format == "saved_model":
        output = args.output or os.path.join("saved_models", model.name)
        options = dict(top_k=args.top_k, max_pixels=args.max_pixels)
        path = saved_model(model, output, labels=args.labels, version=args.version,
                           crop_pct=args.crop_pct, source=args.model,
                           **{k: v for k, v in options.items() if v is not None})
        print(f"SavedModel written to {path}")
        return 0
    quantization = None if args.quantize in (None, "none") else args.quantize
    suffix = "" if quantization is None else f"_{quantization}"
    output = args.output or os.path.join("saved_models", f"{model.name}{suffix}.tflite")
    tflite(model, output, quantization=quantization, calibration_data=args.calibration_data,
           min_top1_agreement=args.min_top1_agreement, crop_pct=args.crop_pct)
    print(f"TFLite model written to {output}")
    return 0
