"""SavedModel in TF Serving's layout: `<base>/<version>/`, two signatures, `metadata.json`."""

import json
import logging
import os
import re
import shutil
import tempfile
import warnings

import numpy as np

from keras_vit.export import common
from keras_vit.export.image_bytes import decode_batch, serving_formats

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
# Largest image `serve_image_bytes` decodes, in pixels (as the file's header declares them). It is
# above every camera photo in common use (48 MP phone sensors: 8000x6000; 45 MP full-frame:
# 8192x5464) and costs about 3 bytes a pixel to decode here (150 MB at the limit), yet refuses
# decompression bombs: a 0.5 MB PNG can declare 23000x23000 pixels, 1.6 GB decoded.
DEFAULT_MAX_PIXELS = 50_000_000


def _serving_module(model, labels, top_k, crop_pct, interpolation, max_pixels):
    """A tf.Module with the two serving signatures; it holds the model's variables, not the model."""
    import tensorflow as tf

    height, width, _ = common.model_geometry(model)
    outputs_fn = common.outputs_fn(model)
    module = tf.Module()
    # Track the variables themselves (as Keras' own ExportArchive does): the Keras objects would
    # need keras to load, the variables need nothing.
    module.model_variables = [v.value for v in model.variables]
    if labels is not None:
        module.class_names = tf.Variable(labels, dtype=tf.string, trainable=False, name="class_names")

    def outputs(images):
        result = outputs_fn(images)
        if "logits" in result:
            top = tf.math.top_k(result["logits"], k=top_k)
            result.update(probabilities=tf.nn.softmax(result["logits"], axis=-1),
                          top_k_indices=top.indices,
                          top_k_labels=tf.gather(module.class_names, top.indices))
        return result

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
        return outputs(decode_batch(image_bytes, height, width, crop_pct, interpolation, max_pixels))

    module.serve_images = serve_images
    module.serve_image_bytes = serve_image_bytes
    return module


def next_version(base_dir):
    """1 + the highest integer version directory under `base_dir` (1 when there is none)."""
    if not os.path.isdir(base_dir):
        return 1
    versions = [int(n) for n in os.listdir(base_dir) if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def saved_model(model, base_dir, labels=None, version=None, top_k=None, crop_pct=None,
                interpolation=None, source=None, max_pixels=DEFAULT_MAX_PIXELS):
    """Writes `model` as a SavedModel for TF Serving to `<base_dir>/<version>/`; returns that path.

    Args:
        model: a Keras image classifier, or a feature extractor (`include_top=False` with a
            pooling), on the TensorFlow backend taking raw [0, 255] pixels (a `keras_vit.ViT`;
            models built with `include_preprocessing=False` are normalised in the exported graph
            with their `normalization_mean/std`).
        base_dir: the model's base directory (what TF Serving's `--model_base_path` points at).
        labels: class names: a list, a label file, or `"imagenet"`; default `model.class_names`,
            else `"0"` ... `"N-1"`. Classifiers only.
        version: integer version; default the next free one. An existing version is an error.
        top_k: how many classes `top_k_indices` / `top_k_labels` hold (default 5). Classifiers only.
        crop_pct, interpolation: preprocessing of `serve_image_bytes`, as `images.load_image`
            (default: the model's `crop_pct` and `interpolation`, set from its checkpoint).
        source: the checkpoint the model came from, recorded in `metadata.json`.
        max_pixels: the most pixels (height * width, as the file's header declares them) an
            image sent to `serve_image_bytes` may have; larger ones are refused before decoding.

    Both signatures return `embeddings` (float32 `(batch, D)`): a classifier's pre-head
    features beside `logits`, `probabilities`, `top_k_indices`, `top_k_labels`; a feature
    extractor's pooled output alone.

    Example:
        >>> path = keras_vit.export.saved_model(model, "saved_models/vit", labels=class_names)
        >>> tf.saved_model.load(path).signatures["serving_default"](images=batch)["top_k_labels"]
    """
    model = common.exportable(model)  # a Distiller exports its student
    common.require_tensorflow_backend()
    import tensorflow as tf

    height, width, num_classes = common.model_geometry(model)
    if num_classes is None:
        given = [name for name, value in (("labels", labels), ("top_k", top_k)) if value is not None]
        if given:
            raise ValueError(f"Only classifiers take {' or '.join(given)}; this model is a feature "
                             f"extractor (include_top=False), whose export returns embeddings only.")
        names = labels_source = None
    else:
        names, labels_source = common.resolve_labels(model, labels)
        top_k = common.positive_int(DEFAULT_TOP_K if top_k is None else top_k, "top_k")
        if top_k > num_classes:
            warnings.warn(f"top_k={top_k} is more than the model's {num_classes} classes: the top-k "
                          f"outputs hold all {num_classes}.", stacklevel=2)
            top_k = num_classes
    crop_pct = common.crop_pct_of(model, crop_pct)
    interpolation = common.interpolation_of(model, interpolation)
    max_pixels = common.positive_int(max_pixels, "max_pixels")
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
    metadata = _metadata(model, names, labels_source, top_k, crop_pct, interpolation, source,
                         max_pixels)
    # Write to a temporary sibling and rename, so TF Serving (which polls base_dir) never sees a
    # half-written version.
    os.makedirs(base_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=base_dir)
    try:
        tf.saved_model.save(module, staging, signatures=signatures)
        with open(os.path.join(staging, "metadata.json"), "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2)
        os.chmod(staging, 0o755)  # mkdtemp's 0o700 would hide the version from a server's user
        os.rename(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("Wrote SavedModel version %d to %s (%s, %dx%d).", version, export_dir,
                metadata["task"], height, width)
    return export_dir


def _metadata(model, labels, labels_source, top_k, crop_pct, interpolation, source, max_pixels):
    metadata = common.model_metadata(model, labels, labels_source, crop_pct, interpolation, source)
    metadata["preprocessing"].update(max_pixels=max_pixels, formats=serving_formats())
    outputs = list(metadata["outputs"])
    if "logits" in outputs:
        outputs[1:1] = ["probabilities", "top_k_indices", "top_k_labels"]
    return {
        "format": "keras_vit.saved_model",
        **metadata,
        "top_k": top_k,
        "signatures": {
            "serving_default": {"inputs": {"images": "float32 (batch, H, W, 3)"}, "outputs": outputs},
            "serve_image_bytes": {"inputs": {"image_bytes": "string (batch,)"}, "outputs": outputs},
        },
    }


# --------------------------------------------------------------------------------------------------
# keras-vit export --format saved_model


def add_arguments(group):
    group.add_argument("--version", type=int, help="SavedModel version (default: the next free one)")
    group.add_argument("--top-k", type=int, help=f"classes in top_k outputs (default {DEFAULT_TOP_K})")
    group.add_argument("--max-pixels", type=int, help=f"largest image serve_image_bytes decodes, in "
                       f"pixels (default {DEFAULT_MAX_PIXELS:,}); larger ones are refused")


def run(model, args):
    output = args.output or os.path.join("saved_models", model.name)
    options = dict(top_k=args.top_k, max_pixels=args.max_pixels)
    path = saved_model(model, output, labels=args.labels, version=args.version,
                       crop_pct=args.crop_pct, source=args.model,
                       **{k: v for k, v in options.items() if v is not None})
    print(f"SavedModel written to {path}")
    return path


EXPORTER = common.Exporter(
    name="saved_model", help="SavedModel for TF Serving (default)", add_arguments=add_arguments,
    options=("version", "labels", "top_k", "max_pixels"), run=run)
