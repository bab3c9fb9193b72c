"""Top-k labels for image files, from a `.keras` file, a SavedModel, a `.tflite` or an `.onnx` file.

    keras-vit predict saved_models/vit photo.jpg            # a TF Serving base dir: highest version
    keras-vit predict vit.tflite photo.jpg --top-k 3 --json
    keras-vit predict vit.onnx photo.jpg                    # ONNX Runtime (the [onnx] extra)

    >>> keras_vit.predict.predict("runs/x/model.keras", ["cat.jpg"])
    [[('Egyptian cat', 0.81), ('tabby', 0.09), ...]]

Images are read with `keras_vit.images.load_image` (short-side resize and centre crop). Label
names come from `--labels`, else the model (`class_names`, the SavedModel's stored labels or its
`metadata.json`, the ONNX file's metadata), else ImageNet's names for 1000-class models, else the
class indices. A feature extractor's export (embeddings only) is refused: it has no classes.
"""

import json
import os
import re
import warnings

import numpy as np

from keras_vit import export as export_lib
from keras_vit.export.common import positive_int
from keras_vit import images as images_lib
from keras_vit import labels as labels_lib
from keras_vit.images import DEFAULT_CROP_PCT

BATCH_SIZE = 32  # images read and run at a time


def find_saved_model(path):
    """A SavedModel directory, or a TF Serving base directory's highest numbered version in it."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(
        (int(name) for name in os.listdir(path)
         if re.fullmatch(r"\d+", name) and os.path.isfile(os.path.join(path, name, "saved_model.pb"))),
        reverse=True,
    )
    if not versions:
        raise ValueError(f"{path!r} is neither a SavedModel (no saved_model.pb) nor a TF Serving base "
                         f"directory with numbered versions holding one.")
    return os.path.join(path, str(versions[0]))


def _default_labels(num_classes, stored=None):
    """Stored names unless they are just indices; ImageNet's for 1000 classes; else indices."""
    if stored is not None and list(stored) != [str(i) for i in range(num_classes)]:
        return list(stored)
    if num_classes == 1000:
        return list(labels_lib.imagenet_class_names())
    return [str(i) for i in range(num_classes)]


def _no_logits(path, outputs):
    """ValueError for a model without `logits`: a feature extractor, or no keras_vit export."""
    if "embeddings" in outputs:
        return ValueError(f"{path!r} is a feature extractor (its outputs: embeddings only): it "
                          f"has no classes to predict. Export a model built with include_top=True.")
    return ValueError(f"{path!r} is not a keras_vit export: expected a `logits` output, got "
                      f"{sorted(outputs)}.")


class _Predictor:
    """Loads a model once; `probabilities(images)` maps uint8 `(n, H, W, 3)` to class probabilities."""

    def __init__(self, model_path):
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"No model at {model_path!r}.")
        self.crop_pct = DEFAULT_CROP_PCT
        self.interpolation = "bicubic"
        if os.path.isdir(model_path):
            load, model_path = self._load_saved_model, find_saved_model(model_path)
        elif model_path.endswith(".tflite"):
            load = self._load_tflite
        elif model_path.endswith(".onnx"):
            load = self._load_onnx
        elif model_path.endswith(".keras"):
            load = self._load_keras
        else:
            raise ValueError(f"Unknown model format {model_path!r}: expected a .keras file, a "
                             f"SavedModel directory, a .tflite or an .onnx file.")
        with export_lib.naming_load_errors(model_path):
            load(model_path)

    def _load_keras(self, path):
        model = export_lib.load_model(path)
        if not getattr(model, "include_top", True):
            raise _no_logits(path, ["embeddings"])
        self.image_size = tuple(model.input_shape[1:3])
        num_classes = model.output_shape[-1]
        self.crop_pct = getattr(model, "crop_pct", DEFAULT_CROP_PCT)
        self.interpolation = getattr(model, "interpolation", "bicubic")
        self.labels = _default_labels(num_classes, getattr(model, "class_names", None))
        self._logits = lambda x: np.asarray(model.predict(x, verbose=0), dtype="float32")

    def _load_saved_model(self, path):
        import tensorflow as tf

        loaded = tf.saved_model.load(path)
        signature = loaded.signatures.get("serving_default")
        inputs = signature.structured_input_signature[1] if signature is not None else {}
        if "images" not in inputs:
            raise ValueError(f"{path!r} is not a keras_vit SavedModel: expected a serving_default "
                             f"signature taking `images` and returning `logits`.")
        if "logits" not in signature.structured_outputs:
            raise _no_logits(path, signature.structured_outputs)
        metadata = {}
        if os.path.isfile(os.path.join(path, "metadata.json")):
            with open(os.path.join(path, "metadata.json"), encoding="utf-8") as f:
                metadata = json.load(f)
        self.image_size = tuple(inputs["images"].shape[1:3])
        self._preprocessing(metadata)
        stored = getattr(loaded, "class_names", None)
        stored = [s.decode() for s in stored.numpy()] if stored is not None else metadata.get("labels")
        num_classes = signature.structured_outputs["logits"].shape[-1]
        self.labels = _default_labels(num_classes, stored)
        self._logits = lambda x: signature(images=tf.constant(x, tf.float32))["logits"].numpy()

    def _preprocessing(self, metadata):
        preprocessing = metadata.get("preprocessing", {})
        self.crop_pct = preprocessing.get("crop_pct", DEFAULT_CROP_PCT)
        self.interpolation = preprocessing.get("interpolation", "bicubic")

    def _load_tflite(self, path):
        self._from_runner(path, export_lib.tflite_runner(path), {})

    def _load_onnx(self, path):
        run = export_lib.onnx_runner(path)
        self._from_runner(path, run, run.metadata)

    def _from_runner(self, path, run, metadata):
        """Image size, labels and logits from a runner `images -> {output name: array}` with
        `input_shape` and `output_shapes` (TFLite, ONNX)."""
        shape = run.input_shape
        if len(shape) != 4 or shape[-1] != 3 or not all(isinstance(d, int) for d in shape[1:3]):
            raise ValueError(f"{path!r} takes input of shape {shape}; expected (batch, H, W, 3) "
                             f"images, as keras_vit exports take.")
        if "logits" not in run.output_shapes:
            raise _no_logits(path, run.output_shapes)
        self.image_size = tuple(shape[1:3])
        self._preprocessing(metadata)
        self.labels = _default_labels(int(run.output_shapes["logits"][-1]),
                                      metadata.get("labels") or None)
        self._logits = lambda x: run(x)["logits"]

    def probabilities(self, images):
        logits = self._logits(np.asarray(images, dtype="float32")).astype("float64")
        logits -= logits.max(axis=-1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=-1, keepdims=True)


def predict_top_k(model_path, image_paths, top_k=5, labels=None):
    """`[[(label, class index, probability), ...] per image]`, best first."""
    top_k = positive_int(top_k, "top_k")
    if isinstance(image_paths, (str, os.PathLike)):
        image_paths = [image_paths]
    image_paths = [os.fspath(p) for p in image_paths]
    if not image_paths:
        raise ValueError("No image paths given.")
    predictor = _Predictor(os.fspath(model_path))
    if labels is not None:
        names = labels_lib.read_class_names(labels) if isinstance(labels, (str, os.PathLike)) else list(labels)
        if len(names) != len(predictor.labels):
            raise ValueError(f"{len(names)} labels given for a model with {len(predictor.labels)} classes.")
        predictor.labels = names
    if top_k > len(predictor.labels):
        warnings.warn(f"top_k={top_k} is more than the model's {len(predictor.labels)} classes: "
                      f"giving all {len(predictor.labels)}.", stacklevel=2)
    results = []
    # In batches: a long list of files is never all in memory, nor one huge model call.
    for start in range(0, len(image_paths), BATCH_SIZE):
        batch = images_lib.load_images(image_paths[start:start + BATCH_SIZE], predictor.image_size,
                                       predictor.crop_pct, predictor.interpolation)
        for row in predictor.probabilities(batch):
            best = np.argsort(-row, kind="stable")[:top_k]
            results.append([(predictor.labels[i], int(i), float(row[i])) for i in best])
    return results


def predict(model_path, image_paths, top_k=5, labels=None):
    """Top-k `(label, probability)` pairs per image, best first.

    Args:
        model_path: a `.keras` file, a SavedModel directory (a TF Serving base directory uses its
            highest version), a `.tflite` file (run with LiteRT) or an `.onnx` file (run with
            ONNX Runtime on the CPU).
        image_paths: image files (one path or a list).
        labels: class names (a list or a label file) overriding the model's.

    Example:
        >>> predict("saved_models/vit", ["chelsea.png"], top_k=2)
        [[('Egyptian cat', 0.62), ('tabby', 0.21)]]
    """
    return [[(label, p) for label, _, p in row]
            for row in predict_top_k(model_path, image_paths, top_k, labels)]

