"""Export for serving: SavedModel for TF Serving, TFLite/LiteRT with quantisation, ONNX.

    version_dir = keras_vit.export.saved_model(model, "saved_models/vit")   # saved_models/vit/1
    report = keras_vit.export.tflite(model, "vit.tflite", quantization="float16",
                                     evaluation_data="photos/")
    report = keras_vit.export.onnx(model, "vit.onnx", evaluation_data="photos/")

Every format takes float32 raw pixels `(batch, H, W, 3)` in [0, 255] (models built with
`include_preprocessing=False` are normalised in the exported graph) and returns `embeddings`
(float32 `(batch, D)`) beside a classifier's `logits`: a classifier's pre-head features (the
input of its head; for a distilled DeiT the mean of the class and distillation token features,
timm's `forward_head(pre_logits=True)`), or a feature extractor's (`include_top=False`) pooled
output alone. One forward pass gives both.

The SavedModel needs nothing but TensorFlow to run (no keras_vit, no custom objects), which is
what TF Serving does. It has two signatures:

- `serving_default`: `images` float32 `(batch, H, W, 3)`, raw pixels in [0, 255] ->
  `logits`, `probabilities`, `top_k_indices` (int32), `top_k_labels` (string), `embeddings`.
- `serve_image_bytes`: `image_bytes` string `(batch,)` of encoded files in the formats of
  `IMAGE_EXTENSIONS` (JPEG, PNG, GIF, BMP, WebP), decoded, resized (short side) and centre-cropped
  in the graph like `keras_vit.images.load_image` -> the same outputs. Images whose header
  declares more than `max_pixels` pixels are refused before decoding.

Bad requests (wrong shape, pixels outside [0, 255], empty batch, bytes that are no image, images
too large or corrupt) fail with an `InvalidArgumentError` whose message says what was expected
and, for encoded images, which image of the batch failed; the whole request fails. A
`metadata.json` in the version directory records the architecture, preprocessing, outputs and
labels.

TFLite files are converted from a SavedModel (Keras 3's `from_keras_model` path is broken) and run
with the LiteRT interpreter (`ai_edge_litert`); ONNX files are converted with tf2onnx and run with
ONNX Runtime. Both are checked against the Keras model on real images before anything is
written (the parity gate: top-1 agreement and the cosine similarity of the embeddings): an
export below `min_top1_agreement` or `min_embedding_cosine` raises `ExportAccuracyError` and
writes nothing. Each format is one module with an `Exporter`; `FORMATS` lists them (the command line,
`keras-vit export`, is `keras_vit.cli.export`).
"""

from keras_vit.export import onnx_format, saved_model_format, tflite_format
from keras_vit.export.common import (
    MIN_EMBEDDING_COSINE,
    MIN_TOP1_AGREEMENT,
    ExportAccuracyError,
    Exporter,
    calibration_images,
    format_report,
    load_model,
    naming_load_errors,
    resolve_labels,
)
from keras_vit.export.image_bytes import serving_formats
from keras_vit.export.onnx_format import onnx, onnx_metadata, onnx_runner, run_onnx
from keras_vit.export.saved_model_format import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_TOP_K,
    next_version,
    saved_model,
)
from keras_vit.export.tflite_format import (
    QUANTIZATIONS,
    run_tflite,
    tflite,
    tflite_runner,
)

# --format NAME -> Exporter; the first is the default. A new format is one module and one entry.
FORMATS = {exporter.name: exporter for exporter in (
    saved_model_format.EXPORTER, tflite_format.EXPORTER, onnx_format.EXPORTER)}

__all__ = [
    "DEFAULT_MAX_PIXELS", "DEFAULT_TOP_K", "FORMATS", "MIN_EMBEDDING_COSINE",
    "MIN_TOP1_AGREEMENT", "QUANTIZATIONS", "ExportAccuracyError", "Exporter", "calibration_images",
    "format_report", "load_model", "naming_load_errors", "next_version", "onnx", "onnx_metadata",
    "onnx_runner", "resolve_labels", "run_onnx", "run_tflite",
    "saved_model", "serving_formats", "tflite", "tflite_runner",
]
