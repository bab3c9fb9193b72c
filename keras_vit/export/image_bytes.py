"""Encoded images -> model input inside a TF graph, for the SavedModel's `serve_image_bytes`.

Each image's header is read in TF ops before anything is decoded, and an image that declares
more than `max_pixels` pixels is refused; the formats are exactly those of `IMAGE_EXTENSIONS`
(what `keras_vit.images.load_image` and folder datasets read), resized and centre-cropped like
`load_image`.
"""

from keras_vit.images import IMAGE_EXTENSIONS


def resize_and_crop(image, height, width, crop_pct, interpolation):
    """One decoded uint8 (H, W, 3) image -> float32 (height, width, 3) in [0, 255], as
    `images.load_image` does: the pipelines' one TF crop (`data.center_crop`), then rounded as
    load_image's uint8 pixels are, so both paths see the same pixels."""
    import tensorflow as tf

    from keras_vit.data import center_crop

    # Resized straight from uint8 (the resize computes in float32 either way): a float32 copy of
    # the full image would take 4 bytes a pixel more at the peak.
    image = center_crop(image, (height, width), crop_pct, interpolation)
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
        # write full 255-byte sub-blocks: skip up to 64 of them a step, so a large GIF's header
        # scan stays a small fraction of a request (one step per sub-block did not).
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


def decode_batch(image_bytes, height, width, crop_pct, interpolation, max_pixels):
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
                                lambda: resize_and_crop(decode(payload), height, width, crop_pct,
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

