"""Export for serving: SavedModel in TF Serving's layout, and TFLite/LiteRT with quantisation.

    version_dir = keras_vit.export.saved_model(model, "saved_models/vit")   # saved_models/vit/1
    report = keras_vit.export.tflite(model, "vit.tflite", quantization="float16",
                                     evaluation_data="photos/")

The SavedModel needs nothing but TensorFlow to run (no keras_vit, no custom objects), which is what
TF Serving does. It has two signatures:

- `serving_default`: `images` float32 `(batch, H, W, 3)`, raw pixels in [0, 255] ->
  `logits`, `probabilities`, `top_k_indices` (int32), `top_k_labels` (string).
- `serve_image_bytes`: `image_bytes` string `(batch,)` of encoded JPEG/PNG/GIF/BMP files, decoded,
  resized (short side) and centre-cropped in the graph like `keras_vit.images.load_image` -> the
  same outputs.

Bad requests (wrong shape, pixels outside [0, 255], empty batch, bytes that are no image) fail
with an `InvalidArgumentError` whose message says what was expected. A `metadata.json` in the
version directory records the architecture, preprocessing and labels.

TFLite files are converted from a SavedModel (Keras 3's `from_keras_model` path is broken), run
with the LiteRT interpreter (`ai_edge_litert`) and checked against the Keras model: an export whose
top-1 agreement falls below `min_top1_agreement` raises `ExportAccuracyError`.
"""

import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_CROP_PCT = 0.875
DEFAULT_TOP_K = 5
QUANTIZATIONS = (None, "float16", "dynamic", "int8")
# Lowest top-1 agreement with the Keras model that an export may have, per quantisation. Measured
# on DeiT-Tiny and 29 real photos (docs/serving.md): float32 100%, float16 100%, dynamic 96.6%,
# int8 93.1% (naive full int8: 86.2%). float32/float16 only round; the int8 modes flip the top-1
# of images whose two best classes are close, hence the margins.
MIN_TOP1_AGREEMENT = {None: 0.99, "float16": 0.95, "dynamic": 0.85, "int8": 0.8}
# TFLite ops kept in float by quantization="int8": LayerNorm (MEAN, SQUARED_DIFFERENCE, RSQRT),
# softmax and the residual/position-embedding adds.
INT8_FLOAT_OPS = ("MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "ADD")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")  # JPEG, PNG, GIF, BMP: what decode_image reads


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


def _decode_and_crop(data, height, width, crop_pct, interpolation):
    """One encoded image -> float32 (height, width, 3) in [0, 255], as `images.load_image` does:
    short side resized to size / crop_pct, centre crop (crop_pct=1: plain resize), rounded."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.cast(image, tf.float32)
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
    return tf.ensure_shape(tf.clip_by_value(tf.round(image), 0.0, 255.0), (height, width, 3))


def _serving_module(model, labels, top_k, crop_pct, interpolation):
    """A tf.Module with the two serving signatures; it holds the model's variables, not the model."""
    import tensorflow as tf

    height, width, num_classes = _model_geometry(model)
    top_k = min(int(top_k), num_classes)
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

    def checked(tensor, checks):
        # The checks run before the model: a bad request fails on its message, not on a reshape.
        with tf.control_dependencies(checks):
            return tf.identity(tensor)

    def non_empty(batch_size, input_name):
        return tf.debugging.assert_positive(
            batch_size, message=f"`{input_name}` is an empty batch: send at least one image")

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
                non_empty(shape[0], "images"),
                tf.debugging.assert_all_finite(images, "`images` contains NaN or infinite values"),
                tf.debugging.Assert(
                    tf.logical_and(tf.reduce_min(images) >= 0.0, tf.reduce_max(images) <= 255.0),
                    ["`images` must hold raw pixel values in [0, 255] (the model normalises them "
                     "itself); got min and max", tf.reduce_min(images), tf.reduce_max(images)],
                ),
            ]
        return outputs(checked(images, checks))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes):
        head = tf.strings.substr(image_bytes, 0, 4)
        known = tf.reduce_any(
            tf.stack([tf.equal(tf.strings.substr(head, 0, len(m)), m) for m in _MAGIC]), axis=0)
        checks = [
            non_empty(tf.size(image_bytes), "image_bytes"),
            tf.debugging.Assert(
                tf.reduce_all(known),
                ["`image_bytes` must hold encoded JPEG, PNG, GIF or BMP files; not an image at "
                 "batch index", tf.where(tf.logical_not(known))[:, 0]],
            ),
        ]
        images = tf.map_fn(
            lambda data: _decode_and_crop(data, height, width, crop_pct, interpolation),
            checked(image_bytes, checks),
            fn_output_signature=tf.TensorSpec((height, width, 3), tf.float32))
        return outputs(images)

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
                interpolation="bicubic", source=None):
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

    Example:
        >>> path = keras_vit.export.saved_model(model, "saved_models/vit", labels=class_names)
        >>> tf.saved_model.load(path).signatures["serving_default"](images=batch)["top_k_labels"]
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    height, width, num_classes = _model_geometry(model)
    names, labels_source = resolve_labels(model, labels)
    crop_pct = float(crop_pct if crop_pct is not None else getattr(model, "crop_pct", DEFAULT_CROP_PCT))
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected bicubic, bilinear or nearest.")
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
    version = next_version(base_dir) if version is None else int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version}.")
    export_dir = os.path.join(base_dir, str(version))
    if os.path.exists(export_dir):
        raise FileExistsError(
            f"{export_dir} already exists: TF Serving versions are immutable. Pick another "
            f"--version, or leave it out to use the next free one ({next_version(base_dir)})."
        )
    module = _serving_module(model, names, top_k, crop_pct, interpolation)
    signatures = {"serving_default": module.serve_images,
                  "serve_image_bytes": module.serve_image_bytes}
    # Write to a temporary sibling and rename, so TF Serving (which polls base_dir) never sees a
    # half-written version.
    os.makedirs(base_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=base_dir)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        with open(os.path.join(staging, "metadata.json"), "w", encoding="utf-8") as f:
            json.dump(_metadata(model, names, labels_source, top_k, crop_pct, interpolation, source),
                      f, indent=2)
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Wrote SavedModel version %d to %s (%d classes, %dx%d).", version, export_dir,
                num_classes, height, width)
    return export_dir


def _per_channel(value):
    return [float(v) for v in np.broadcast_to(np.ravel(value), (3,))]


def _metadata(model, labels, labels_source, top_k, crop_pct, interpolation, source):
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
            raise FileNotFoundError(f"Calibration/evaluation data folder {data!r} does not exist.")
        files = sorted(f for f in os.listdir(data) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {data!r}.")
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
            the calibration data, else random noise (with a warning: agreement on noise means little).
        min_top1_agreement: lowest allowed fraction of images with the same top-1 class as Keras;
            default `MIN_TOP1_AGREEMENT[quantization]` (0.99 / 0.95 / 0.85 / 0.8). Below it the
            file is deleted and `ExportAccuracyError` is raised.

    Returns: `{"path", "quantization", "size_bytes", "max_abs_logit_diff", "top1_agreement",
    "min_top1_agreement", "num_images"}`.

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
    height, width, _ = _model_geometry(model)
    crop_pct = float(crop_pct if crop_pct is not None else getattr(model, "crop_pct", DEFAULT_CROP_PCT))
    calibration = None
    if calibration_data is not None:
        calibration = calibration_images(calibration_data, (height, width), num_calibration_images, crop_pct)
    if evaluation_data is not None:
        evaluation = calibration_images(evaluation_data, (height, width), num_evaluation_images, crop_pct)
    elif calibration is not None:
        evaluation = calibration[:num_evaluation_images]
    else:
        logger.warning("No evaluation_data: comparing TFLite and Keras on %d random-noise images; "
                       "pass real images for a meaningful top-1 agreement.", num_evaluation_images)
        evaluation = np.random.default_rng(0).uniform(0, 255, (num_evaluation_images, height, width, 3))
        evaluation = evaluation.astype("float32")

    with tempfile.TemporaryDirectory(prefix="keras_vit_tflite_") as tmp:
        _logits_saved_model(model, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        content = _convert(converter, quantization, calibration)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)

    reference = np.asarray(_logits_fn(model)(tf.constant(evaluation)))
    logits = run_tflite(os.fspath(path), evaluation)
    threshold = MIN_TOP1_AGREEMENT[quantization] if min_top1_agreement is None else min_top1_agreement
    report = {
        "path": os.fspath(path),
        "quantization": quantization or "none",
        "size_bytes": len(content),
        "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
        "top1_agreement": float(np.mean(logits.argmax(-1) == reference.argmax(-1))),
        "min_top1_agreement": float(threshold),
        "num_images": int(len(evaluation)),
    }
    if verbose:
        print(format_report([report]))
    if report["top1_agreement"] < threshold:
        os.remove(path)
        raise ExportAccuracyError(
            f"TFLite export ({report['quantization']}) agrees with the Keras model on the top-1 "
            f"class of only {report['top1_agreement']:.1%} of {report['num_images']} images "
            f"(minimum {threshold:.1%}; max |logit diff| {report['max_abs_logit_diff']:.4g}); "
            f"{path} was removed. Try a milder quantization, more calibration images, or lower "
            f"min_top1_agreement if that is acceptable.", report)
    return report


def format_report(reports):
    """A text table of `tflite()` reports."""
    rows = [("file", "quantization", "size (MB)", "max |logit diff|", "top-1 agreement")]
    for r in reports:
        rows.append((os.path.basename(r["path"]), r["quantization"], f"{r['size_bytes'] / 1e6:.2f}",
                     f"{r['max_abs_logit_diff']:.4g}",
                     f"{r['top1_agreement']:.1%} of {r['num_images']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


# --------------------------------------------------------------------------------------------------
# Command line: keras-vit export


def load_model(path):
    """A `.keras` file, or any checkpoint `keras_vit.weights.load_model_or_checkpoint` reads."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model at {path!r}.")
    if os.fspath(path).endswith(".keras"):
        import keras

        import keras_vit  # noqa: F401  (registers the layers for deserialisation)

        return keras.saving.load_model(path, compile=False)
    from keras_vit import weights

    return weights.load_model_or_checkpoint(path)


def add_export_arguments(parser):
    parser.add_argument("model", help="a .keras file or a checkpoint (.safetensors, .npz, HF directory)")
    parser.add_argument("--format", choices=["saved_model", "tflite"], default="saved_model")
    parser.add_argument("--output", help="SavedModel base directory (versions go in <output>/<N>/) or "
                        ".tflite path; default saved_models/<model name>[.tflite]")
    parser.add_argument("--version", type=int, help="SavedModel version (default: the next free one)")
    parser.add_argument("--quantize", choices=["none", "float16", "dynamic", "int8"], default="none",
                        help="TFLite quantization (int8 needs --calibration-data)")
    parser.add_argument("--calibration-data", help="folder of images for int8 calibration and for "
                        "checking the TFLite file against the Keras model")
    parser.add_argument("--labels", help="class-name file (one per line), or 'imagenet'")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="classes in top_k outputs")
    parser.add_argument("--crop-pct", type=float, help=f"centre-crop fraction of serve_image_bytes "
                        f"(default {DEFAULT_CROP_PCT})")
    parser.add_argument("--min-top1-agreement", type=float,
                        help=f"TFLite check threshold (defaults per mode: {MIN_TOP1_AGREEMENT})")


def run_export(args):
    import sys

    try:
        model = load_model(args.model)
        if args.format == "saved_model":
            output = args.output or os.path.join("saved_models", model.name)
            path = saved_model(model, output, labels=args.labels, version=args.version,
                               top_k=args.top_k, crop_pct=args.crop_pct, source=args.model)
            print(f"SavedModel written to {path}")
            return 0
        quantization = None if args.quantize == "none" else args.quantize
        suffix = "" if quantization is None else f"_{quantization}"
        output = args.output or os.path.join("saved_models", f"{model.name}{suffix}.tflite")
        tflite(model, output, quantization=quantization, calibration_data=args.calibration_data,
               min_top1_agreement=args.min_top1_agreement, crop_pct=args.crop_pct)
        print(f"TFLite model written to {output}")
        return 0
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, TypeError) as error:
        print(f"keras-vit export: error: {error}", file=sys.stderr)
        return 1
