"""What every export format shares: the model's outputs, evaluation images, the parity gate,
atomic writes, model loading, and the `Exporter` record a format module provides."""

import contextlib
import dataclasses
import logging
import os
import warnings
from typing import Callable

import numpy as np

from keras_vit.config import INTERPOLATIONS
from keras_vit.images import DEFAULT_CROP_PCT, IMAGE_EXTENSIONS, check_crop_pct

logger = logging.getLogger(__name__)

# The parity gate's defaults: lowest agreement of an exported file with the Keras model on real
# images, per numeric mode of the file (None: float32, as TFLite's default and ONNX store it),
# set below what each mode measures on DeiT-Tiny and the 29 shared photos (docs/serving.md).
# float32/float16 only round; the int8 modes flip the top-1 of images whose two best classes are
# close, hence their margins. A float32 file below a cosine of 0.9999 computes something else.
MIN_TOP1_AGREEMENT = {None: 0.99, "float16": 0.95, "dynamic": 0.85, "int8": 0.85}
# Mean (over the images) cosine similarity of an image's exported and Keras embeddings.
MIN_EMBEDDING_COSINE = {None: 0.9999, "float16": 0.999, "dynamic": 0.98, "int8": 0.98}
EVALUATION_BATCH = 16  # images per reference forward pass: bounds the memory of large models


class ExportAccuracyError(ValueError):
    """A converted model disagrees with the Keras model more than allowed; `.report` says by how much."""

    def __init__(self, message, report):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class Exporter:
    """One export format as `keras-vit export --format NAME` runs it. A new format is one module
    that defines its export function and an `EXPORTER`, listed in `keras_vit.export.FORMATS`.

    `add_arguments(group)` adds the format's own options; `options` names every `args` attribute
    the format reads beyond the model, `--format`, `--output` and `--crop-pct` (shared ones too),
    so that options of another format are refused instead of ignored; `run(model, args)` exports
    and returns the path written."""

    name: str
    help: str
    add_arguments: Callable
    options: tuple
    run: Callable


def require_tensorflow_backend():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"Exporting traces the model with TensorFlow, but Keras runs on the "
            f"{keras.backend.backend()!r} backend. Set KERAS_BACKEND=tensorflow before Python starts "
            f"(e.g. `KERAS_BACKEND=tensorflow keras-vit export ...`), then load the model again."
        )


def require_onnx(*modules):
    """Imports the optional ONNX packages; ImportError naming the extra to install."""
    import importlib

    try:
        return [importlib.import_module(name) for name in modules]
    except ImportError as error:
        raise ImportError(f"ONNX export and ONNX Runtime need {error.name or error}: "
                          f'pip install "keras-vision-transformer[onnx]"') from error


def is_classifier(model):
    return bool(getattr(model, "include_top", True))


def model_geometry(model):
    """(height, width, num_classes or None) of an image classifier or a feature extractor with
    pooled `(batch, features)` outputs; ValueError for anything else."""
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(f"Expected a model taking (batch, H, W, 3) images, got input shape {shape}.")
    out = tuple(model.output_shape)
    if len(out) != 2 or not out[-1]:
        what = ("a classifier with (batch, num_classes) outputs" if is_classifier(model)
                else "pooled (batch, features) outputs")
        raise ValueError(
            f"Expected {what}, got output shape {out}: export a classifier or a feature extractor "
            f"built with pooling='token', 'gap' or 'map' (pooling=None returns every token).")
    return int(shape[1]), int(shape[2]), int(out[-1]) if is_classifier(model) else None


def resolve_labels(model, labels=None):
    """The class names to store: `labels` (a list, a label file, or `"imagenet"`), else
    `model.class_names`, else `"0" ... "N-1"`. Returns `(names, source)`."""
    from keras_vit import labels as labels_lib

    num_classes = model_geometry(model)[2]
    if num_classes is None:
        raise ValueError("Only classifiers take labels; this model is a feature extractor "
                         "(include_top=False), whose export returns embeddings only.")
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


def _pre_head_features(tensor):
    """The symbolic input of the Dense head that computes `tensor`, through a final activation;
    for DeiT's two heads (their logits averaged), the mean of both heads' inputs, which is
    timm's `forward_head(pre_logits=True)`: (class token + distillation token) / 2. None when
    the output does not come from Dense heads."""
    import keras

    layer = tensor._keras_history.operation
    if isinstance(layer, keras.layers.Dense):
        return layer.input
    if isinstance(layer, keras.layers.Activation):
        return _pre_head_features(layer.input)
    if isinstance(layer, keras.layers.Average):
        features = [_pre_head_features(t) for t in layer.input]
        if all(f is not None for f in features):
            return keras.layers.Average(dtype="float32", name="embeddings")(features)
    return None


def outputs_model(model):
    """A Keras model over the same layers and weights (one forward pass) returning a dict:
    `logits` and `embeddings` (the pre-head features) for a classifier, `embeddings` (the
    model's pooled output) for a feature extractor."""
    import keras

    model_geometry(model)
    if not is_classifier(model):
        return keras.Model(model.inputs[0], {"embeddings": model.outputs[0]})
    features = _pre_head_features(model.outputs[0])
    if features is None:
        warnings.warn(f"{model.name}: the output does not come from a Dense head, so the export "
                      f"has no `embeddings` output, only `logits`.", stacklevel=3)
        return keras.Model(model.inputs[0], {"logits": model.outputs[0]})
    return keras.Model(model.inputs[0], {"logits": model.outputs[0], "embeddings": features})


def float32_model(model):
    """`model`, or a float32 copy of a keras_vit model that computes in 16 bits (mixed precision):
    TFLite and ONNX Runtime's CPU kernels take neither bfloat16 nor TF's mixed graphs, and a
    float16 file is `quantization="float16"`'s job. The variables are float32 either way, so the
    copy computes the same function, rounded less."""
    from keras_vit.models import VisionTransformer, with_dtype

    # The layers hold the policy (a functional model's own may say float32 regardless).
    compute = sorted({layer.compute_dtype for layer in model.layers} - {"float32"})
    if not compute:
        return model
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"{model.name} computes in {', '.join(compute)}; TFLite and ONNX export "
                         f"need a float32 model (build it with dtype='float32').")
    warnings.warn(f"{model.name} computes in {', '.join(compute)} (mixed precision): exporting a "
                  f"float32 copy with the same weights, and checking the file against that copy.",
                  stacklevel=3)
    return with_dtype(model, "float32")


def normalization(model):
    """(mean, std) the model expects, or None when it normalises inside its graph."""
    if getattr(model, "include_preprocessing", True):
        return None
    return (np.broadcast_to(np.asarray(model.normalization_mean, "float32"), (3,)),
            np.broadcast_to(np.asarray(model.normalization_std, "float32"), (3,)))


def outputs_fn(model):
    """Raw [0, 255] float32 pixels -> `{"logits", "embeddings"}` (float32 tensors), normalising
    first when the model does not. Every format exports this function."""
    import tensorflow as tf

    mean_std = normalization(model)
    outputs = outputs_model(model)

    def run(images):
        if mean_std is not None:
            mean, std = mean_std
            images = (images / 255.0 - mean) / std
        return {key: tf.cast(value, tf.float32)
                for key, value in outputs(images, training=False).items()}

    return run


def reference_outputs(model, images):
    """The Keras model's outputs (as `outputs_fn`) on float32 `images`, as NumPy arrays."""
    import tensorflow as tf

    run = tf.function(outputs_fn(model))
    batches = [run(tf.constant(images[i:i + EVALUATION_BATCH]))
               for i in range(0, len(images), EVALUATION_BATCH)]
    return {key: np.concatenate([b[key].numpy() for b in batches]) for key in batches[0]}


def pick_output(outputs, output, what):
    """`outputs[output]`; by default `logits`, else `embeddings` (a feature extractor's)."""
    name = output or ("logits" if "logits" in outputs else "embeddings")
    if name not in outputs:
        raise ValueError(f"The {what} has no output {name!r}; it has {sorted(outputs)}.")
    return outputs[name]


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}.")
    return float(value)


def crop_pct_of(model, crop_pct):
    """`crop_pct`, else the model's, else DEFAULT_CROP_PCT; ValueError outside (0, 1]."""
    crop_pct = crop_pct if crop_pct is not None else getattr(model, "crop_pct", DEFAULT_CROP_PCT)
    return check_crop_pct(crop_pct)


def interpolation_of(model, interpolation=None):
    """`interpolation`, else the model's (set from its checkpoint), else bicubic."""
    interpolation = interpolation or getattr(model, "interpolation", None) or "bicubic"
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected bicubic, bilinear or "
                         f"nearest.")
    return interpolation


def exportable(model):
    """The model an export writes: a `training.Distiller`'s student, else the model itself."""
    return getattr(model, "student", model) if type(model).__name__ == "Distiller" else model


def per_channel(value):
    return [float(v) for v in np.broadcast_to(np.ravel(value), (3,))]


def output_path(path, suffix):
    """`path` as a string; IsADirectoryError when it is a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory; expected the path of the {suffix} file to write.")
    return path


def calibration_images(data, image_size, limit=None, crop_pct=DEFAULT_CROP_PCT,
                       interpolation="bicubic"):
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
        array = images_lib.load_images([os.path.join(data, f) for f in files], (height, width),
                                       crop_pct, interpolation)
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


def evaluation_images(model, evaluation_data, fallback, limit, crop_pct):
    """`(images, on_noise)`: `evaluation_data` read as `calibration_images`, else the first
    `limit` of `fallback` (the calibration images), else `limit` images of uniform noise."""
    height, width, _ = model_geometry(model)
    if evaluation_data is not None:
        return calibration_images(evaluation_data, (height, width), limit, crop_pct,
                                  interpolation_of(model)), False
    if fallback is not None:
        return fallback[:limit], False
    noise = np.random.default_rng(0).uniform(0, 255, (limit, height, width, 3)).astype("float32")
    return noise, True


def thresholds(model, mode, min_top1_agreement, min_embedding_cosine):
    """The gate's `(min_top1_agreement, min_embedding_cosine)`: the arguments, else the defaults
    of `mode`; top-1 is None for a feature extractor (it has no classes)."""
    top1 = MIN_TOP1_AGREEMENT[mode] if min_top1_agreement is None else min_top1_agreement
    cosine = MIN_EMBEDDING_COSINE[mode] if min_embedding_cosine is None else min_embedding_cosine
    if not is_classifier(model) and min_top1_agreement is not None:
        raise ValueError("Only classifiers take min_top1_agreement; this model is a feature "
                         "extractor (include_top=False): its export is checked on embeddings "
                         "(min_embedding_cosine).")
    return (fraction(top1, "min_top1_agreement") if is_classifier(model) else None,
            fraction(cosine, "min_embedding_cosine"))


def compare(reference, exported):
    """Agreement of an exported model's outputs with the Keras model's (dicts of arrays):
    max |logit difference| and top-1 agreement; max |embedding difference| and the mean and
    lowest cosine similarity of an image's two embeddings. None where there is no such output."""
    report = dict.fromkeys(("max_abs_logit_diff", "top1_agreement", "max_abs_embedding_diff",
                            "embedding_cosine", "lowest_embedding_cosine"))
    if "logits" in reference:
        want, got = reference["logits"], exported["logits"]
        report["max_abs_logit_diff"] = float(np.max(np.abs(got - want)))
        report["top1_agreement"] = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    if "embeddings" in reference:
        want, got = reference["embeddings"].astype("float64"), exported["embeddings"].astype("float64")
        norms = np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1)
        cosine = np.sum(want * got, axis=-1) / np.maximum(norms, np.finfo("float64").tiny)
        report["max_abs_embedding_diff"] = float(np.max(np.abs(got - want)))
        report["embedding_cosine"] = float(np.mean(cosine))
        report["lowest_embedding_cosine"] = float(np.min(cosine))
    return report


def check_and_write(model, path, content, run, evaluation, on_noise, minimums, what, verbose,
                    **fields):
    """Runs the exported `content` (`run(content)` -> a runner) and `model` on `evaluation`,
    reports, gates (`minimums`: top-1 agreement, embedding cosine) and only then writes `path`
    atomically: a rejected export leaves `path` alone. `fields` (format, mode) lead the report."""
    report = {
        "path": path, **fields, "size_bytes": len(content),
        **compare(reference_outputs(model, evaluation), run(content)(evaluation)),
        "min_top1_agreement": minimums[0], "min_embedding_cosine": minimums[1],
        "num_images": int(len(evaluation)),
        "evaluated_on": "random noise" if on_noise else "images",
    }
    if verbose:
        print(format_report([report]))
    gate(report, what)
    write_atomically(path, content)
    return report


def gate(report, what):
    """Applies the parity gate to `report` (from `compare`, with `min_top1_agreement`,
    `min_embedding_cosine`, `num_images`, `evaluated_on`, `path`): on real images, raises
    ExportAccuracyError naming what fell short; on noise, warns and passes (agreement on noise
    says little about photos, and a good file must not be thrown away on it)."""
    path, n = report["path"], report["num_images"]
    measured = ", ".join(
        text for text, value in (
            ("top-1 agreement {:.1%}", report["top1_agreement"]),
            ("max |logit diff| {:.4g}", report["max_abs_logit_diff"]),
            ("mean embedding cosine {:.6f}", report["embedding_cosine"]),
            ("lowest {:.6f}", report["lowest_embedding_cosine"]),
            ("max |embedding diff| {:.4g}", report["max_abs_embedding_diff"])) if value is not None
        for text in [text.format(value)])
    if report["evaluated_on"] == "random noise":
        warnings.warn(
            f"No evaluation images: the {what} was compared with the Keras model on {n} "
            f"random-noise images only ({measured}), which says little about photos, so the "
            f"agreement thresholds were not applied. Pass real images to check it.", stacklevel=4)
        return
    failures = []
    if report["top1_agreement"] is not None and report["top1_agreement"] < report["min_top1_agreement"]:
        failures.append(f"top-1 agreement {report['top1_agreement']:.1%} < minimum "
                        f"{report['min_top1_agreement']:.1%}")
    if report["embedding_cosine"] is not None and report["embedding_cosine"] < report["min_embedding_cosine"]:
        failures.append(f"mean embedding cosine similarity {report['embedding_cosine']:.6f} < "
                        f"minimum {report['min_embedding_cosine']}")
    if failures:
        kept = f"the existing {path} was left as it was" if os.path.exists(path) else "nothing was written"
        raise ExportAccuracyError(
            f"The {what} disagrees with the Keras model on {n} images: {'; '.join(failures)} "
            f"({measured}); {kept}. Try a milder quantization, more calibration images, or lower "
            f"the minimum if that is acceptable.", report)


def format_report(reports):
    """A text table of `tflite()` / `onnx()` reports."""
    def number(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [("file", "mode", "size (MB)", "max |logit diff|", "top-1 agreement",
             "max |embedding diff|", "embedding cosine: mean (lowest)")]
    for r in reports:
        noise = " noise images" if r.get("evaluated_on") == "random noise" else ""
        top1 = r.get("top1_agreement")
        rows.append((os.path.basename(r["path"]), r.get("quantization", r.get("format", "")),
                     f"{r['size_bytes'] / 1e6:.2f}", number(r.get("max_abs_logit_diff"), ".4g"),
                     "-" if top1 is None else f"{top1:.1%} of {r['num_images']}{noise}",
                     number(r.get("max_abs_embedding_diff"), ".4g"),
                     "-" if r.get("embedding_cosine") is None else
                     f"{r['embedding_cosine']:.6f} ({r['lowest_embedding_cosine']:.6f})"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def write_atomically(path, content):
    """A temporary file beside `path`, renamed over it when complete: a reader (or a crash) never
    sees half a file, and a failed write leaves the old one."""
    from keras_vit.fileio import atomic_path

    try:
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            f.write(content)
    except OSError as error:
        raise OSError(f"Cannot write {path!r}: {error.strerror or error}") from error


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
        # A missing optional package's message says what to install; others name the file.
        if isinstance(error, ImportError) or (
                isinstance(error, (FileNotFoundError, ValueError)) and path in str(error)):
            raise
        detail = error if isinstance(error, (OSError, ValueError)) else f"{type(error).__name__}: {error}"
        raise ValueError(f"Cannot load a model from {path!r}: {detail}") from error


def embedding_description(model):
    """What a model's `embeddings` output holds, for metadata and docs."""
    if not is_classifier(model):
        return "the pooled features the model returns (include_top=False)"
    if getattr(model, "distilled", False) and getattr(model, "distillation_head", True):
        return ("the mean of the class-token and distillation-token features, the inputs of DeiT's "
                "two heads (timm's forward_head(pre_logits=True))")
    return "the pre-head features: the input of the classifier head"


def model_metadata(model, labels, labels_source, crop_pct, interpolation, source):
    """What a served file records about its model: architecture, preprocessing, outputs, labels."""
    import json

    import keras
    import tensorflow as tf

    import keras_vit

    config = {k: v for k, v in model.get_config().items() if k != "class_names"}
    height, width, num_classes = model_geometry(model)
    symbolic = outputs_model(model).output
    embedding_size = int(symbolic["embeddings"].shape[-1]) if "embeddings" in symbolic else None
    outputs = {}
    if num_classes is not None:
        outputs["logits"] = f"float32 (batch, {num_classes})"
    if embedding_size is not None:
        outputs["embeddings"] = f"float32 (batch, {embedding_size}): {embedding_description(model)}"
    return {
        "task": "classification" if num_classes is not None else "feature_extraction",
        "architecture": json.loads(json.dumps(config, default=str)),
        "image_size": [height, width],
        "preprocessing": {
            "input": "raw RGB pixels in [0, 255], float32, (batch, height, width, 3)",
            "mean": per_channel(getattr(model, "normalization_mean", 0.5)),
            "std": per_channel(getattr(model, "normalization_std", 0.5)),
            "crop_pct": crop_pct,
            "interpolation": interpolation,
        },
        "outputs": outputs,
        "embedding_size": embedding_size,
        "labels": list(labels or []),
        "labels_source": labels_source,
        "source": None if source is None else os.fspath(source),
        "keras_vit_version": keras_vit.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
    }
