"""TFLite / LiteRT files, converted through a SavedModel, quantised, checked against Keras."""

import importlib.util
import os
import re
import tempfile

import numpy as np

from keras_vit.export import common

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
QUANTIZE_EXTRA = "pip install 'keras-vision-transformer[quantize]'"


def _outputs_saved_model(model, directory):
    """The plain SavedModel the TFLite converter reads: images -> logits and/or embeddings, no
    asserts, no strings (TFLite has no Assert kernel and strings make the converter pull in TF ops)."""
    import tensorflow as tf

    height, width, _ = common.model_geometry(model)
    outputs_fn = common.outputs_fn(model)
    module = tf.Module()
    module.model_variables = [v.value for v in model.variables]
    serve = tf.function(outputs_fn, input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.float32, name="images")])
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def _convert(converter, quantization, calibration):
    """Runs the TFLite converter with the options of `quantization`; returns the flatbuffer."""
    import tensorflow as tf

    if quantization == "int8":
        return _int8(converter.convert(), calibration)
    if quantization is not None:
        # "dynamic": Optimize.DEFAULT alone stores int8 weights; activations stay float.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _int8(float_content, calibration):
    """Quantises a float32 `.tflite` flatbuffer with ai-edge-quantizer, calibrated on
    `calibration` (float32 `(n, H, W, 3)` raw pixels); returns the int8 flatbuffer.

    The recipe, chosen in benchmarks/int8_study.py on the real DeiT-Tiny (docs/serving.md):
    every dense layer (qkv, attention output, MLP) gets int8 per-channel weights and int16
    activations ("16x8"); the patch-embedding (and a hybrid's ResNet) convolutions int8 weights
    with dynamically quantised inputs; the classifier head and LayerNorm, softmax, the attention
    matmuls and the residual adds stay float. A ViT's activations have outliers (the residual
    stream, GELU and softmax outputs) that one 8-bit scale cannot hold: int8 activations in the
    dense layers flip several times more predictions; the head's int8 weights alone move the
    logits of close calls.
    """
    import contextlib
    import io

    try:
        from ai_edge_quantizer import qtyping, quantizer
    except ImportError:
        raise ImportError(f"quantization='int8' needs ai-edge-quantizer: {QUANTIZE_EXTRA}") from None

    dense = qtyping.TFLOperationName.FULLY_CONNECTED
    qt = quantizer.Quantizer(bytearray(float_content))
    qt.add_static_config(".*", dense, activation_num_bits=16, weight_num_bits=8)
    qt.add_dynamic_config(".*", qtyping.TFLOperationName.CONV_2D, num_bits=8)
    for name in _head_outputs(float_content):
        # An op's scope is its output tensor names, each followed by ";".
        qt.update_quantization_recipe(f"^{re.escape(name)};", dense, algorithm_key="no_quantize")
    samples = [{"images": image[None].astype("float32")} for image in calibration]
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        result = qt.calibrate({"serving_default": samples}, num_threads=max(1, os.cpu_count() or 1))
        return bytes(qt.quantize(result, enable_progress_report=False).quantized_model)


# Ops a classifier head's output may pass through on its way to `logits`: DeiT's mean of two
# heads (ADD, MUL), a final activation, reshapes. LayerNorm's ops are not among them, so no
# encoder layer reaches an output this way.
_HEAD_TAIL_OPS = ("ADD", "MUL", "DIV", "SOFTMAX", "LOGISTIC", "TANH", "RESHAPE", "SQUEEZE")


def _head_outputs(content):
    """Output tensor names of the classifier's dense layers, kept float by `_int8`: those whose
    output reaches a model output through `_HEAD_TAIL_OPS` only (the head, DeiT's two heads,
    `pre_logits`), and those that read a model output (`embeddings`, which quantising their input
    would replace by an int16 tensor). None for a feature extractor."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(content))
    outputs = {d["index"] for d in interpreter.get_output_details()}
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    consumers = {}
    for op in ops:
        for tensor in op["inputs"]:
            consumers.setdefault(int(tensor), []).append(op)

    def reaches_output(tensor):
        return tensor in outputs or any(
            op["op_name"] in _HEAD_TAIL_OPS and any(reaches_output(int(t)) for t in op["outputs"])
            for op in consumers.get(tensor, ()))

    return [names[op["outputs"][0]] for op in ops if op["op_name"] == "FULLY_CONNECTED" and (
        reaches_output(int(op["outputs"][0])) or int(op["inputs"][0]) in outputs)]


def tflite_runner(path_or_content, num_threads=None):
    """Loads a `.tflite` file (a path, or its bytes) once into the LiteRT interpreter; returns
    `run(images) -> {output name: float32 array}` for float32 `(n, H, W, 3)` images, with
    `run.input_shape` and `run.output_shapes` (`{name: shape}`, batch 1).

    keras_vit's files have a `serving_default` signature whose outputs are named (`logits`,
    `embeddings`); a file without one gives its first output as `logits`."""
    from ai_edge_litert.interpreter import Interpreter

    key = "model_content" if isinstance(path_or_content, bytes) else "model_path"
    interpreter = Interpreter(**{key: path_or_content}, num_threads=num_threads)
    if "serving_default" in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner("serving_default")
        ((name, input_detail),) = runner.get_input_details().items()
        output_shapes = {k: tuple(int(d) for d in v["shape"])
                         for k, v in runner.get_output_details().items()}

        def run(images):  # the runner resizes the input to the batch
            return {k: v.astype("float32")
                    for k, v in runner(**{name: np.asarray(images, "float32")}).items()}
    else:
        (input_detail,) = interpreter.get_input_details()
        output_detail = interpreter.get_output_details()[0]
        output_shapes = {"logits": tuple(int(d) for d in output_detail["shape"])}

        def run(images):
            images = np.asarray(images, dtype="float32")
            interpreter.resize_tensor_input(input_detail["index"], images.shape)
            interpreter.allocate_tensors()
            interpreter.set_tensor(input_detail["index"], images)
            interpreter.invoke()
            return {"logits": interpreter.get_tensor(output_detail["index"]).astype("float32")}
    run.input_shape = tuple(int(d) for d in input_detail["shape"])
    run.output_shapes = output_shapes
    return run


def run_tflite(path_or_content, images, num_threads=None, output=None):
    """Runs a `.tflite` file with the LiteRT interpreter: float32 `(n, H, W, 3)` -> the output
    named `output` (default `logits`, or `embeddings` for a feature extractor)."""
    return common.pick_output(tflite_runner(path_or_content, num_threads)(images), output,
                              "TFLite file")


def tflite(model, path, quantization=None, calibration_data=None, evaluation_data=None,
           min_top1_agreement=None, min_embedding_cosine=None, num_calibration_images=100,
           num_evaluation_images=32, crop_pct=None, verbose=True):
    """Converts `model` to a `.tflite` file, checks it against Keras, returns a report dict.

    The file takes float32 raw pixels `(batch, H, W, 3)` in [0, 255] and returns, in its
    `serving_default` signature, `logits` and `embeddings` (a classifier's pre-head features),
    or `embeddings` alone for a feature extractor (`include_top=False`).

    Args:
        quantization: None (float32), `"float16"` (float16 weights), `"dynamic"` (int8 weights,
            float activations) or `"int8"` (int8 weights with int16 activations in the dense
            layers, calibrated on `calibration_data`; the head, LayerNorm, softmax and the
            attention matmuls stay float; needs ai-edge-quantizer, see `_int8`).
        calibration_data: a folder of images, a NumPy array or a tf.data.Dataset of raw [0, 255]
            images; required for `"int8"`.
        evaluation_data: images to compare the TFLite and Keras outputs on (same forms); default
            the calibration data.
        min_top1_agreement: lowest allowed fraction of evaluation images with the same top-1
            class as Keras (classifiers); default `MIN_TOP1_AGREEMENT[quantization]`.
        min_embedding_cosine: lowest allowed mean (over the images) cosine similarity between
            an image's TFLite and Keras embeddings; default `MIN_EMBEDDING_COSINE[quantization]`.
            Below either, `ExportAccuracyError` is raised and nothing is written (a file
            already at `path` stays as it was). Without evaluation or calibration images the
            comparison runs on random noise, where agreement says little about photos: it is
            reported and warned about, never enforced.

    Returns: `{"path", "format", "quantization", "size_bytes", "max_abs_logit_diff",
    "top1_agreement", "min_top1_agreement", "max_abs_embedding_diff", "embedding_cosine" (the
    mean over the images), "lowest_embedding_cosine", "min_embedding_cosine", "num_images",
    "evaluated_on"}` (`"images"` or `"random noise"`); the logit entries are None for a feature
    extractor.

    Example:
        >>> keras_vit.export.tflite(model, "vit_fp16.tflite", quantization="float16",
        ...                         evaluation_data="photos/")["top1_agreement"]
    """
    model = common.exportable(model)  # a Distiller exports its student
    common.require_tensorflow_backend()
    import tensorflow as tf

    if quantization == "none":
        quantization = None
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}: expected one of {list(QUANTIZATIONS)}.")
    if quantization == "int8" and importlib.util.find_spec("ai_edge_quantizer") is None:
        raise ImportError(f"quantization='int8' needs ai-edge-quantizer: {QUANTIZE_EXTRA}")
    if quantization == "int8" and calibration_data is None:
        raise ValueError("quantization='int8' needs calibration_data: a folder of images, a NumPy "
                         "array or a tf.data.Dataset of representative images.")
    min_top1, min_cosine = common.thresholds(model, quantization, min_top1_agreement,
                                             min_embedding_cosine)
    num_calibration_images = common.positive_int(num_calibration_images, "num_calibration_images")
    num_evaluation_images = common.positive_int(num_evaluation_images, "num_evaluation_images")
    path = common.output_path(path, ".tflite")
    height, width, _ = common.model_geometry(model)
    crop_pct = common.crop_pct_of(model, crop_pct)
    model = common.float32_model(model)  # after reading what the original says (crop_pct)
    calibration = None
    if calibration_data is not None:
        calibration = common.calibration_images(calibration_data, (height, width),
                                                num_calibration_images, crop_pct,
                                                common.interpolation_of(model))
    evaluation, on_noise = common.evaluation_images(model, evaluation_data, calibration,
                                                    num_evaluation_images, crop_pct)

    with tempfile.TemporaryDirectory(prefix="keras_vit_tflite_") as tmp:
        _outputs_saved_model(model, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        content = _convert(converter, quantization, calibration)
    mode = quantization or "none"
    # tflite_runner is looked up here, at call time, so that tests can stand in for LiteRT.
    return common.check_and_write(model, path, content, tflite_runner, evaluation, on_noise,
                                  (min_top1, min_cosine), f"TFLite export ({mode})", verbose,
                                  format="tflite", quantization=mode)


# --------------------------------------------------------------------------------------------------
# keras-vit export --format tflite


def add_arguments(group):
    group.add_argument("--quantize", choices=["none", "float16", "dynamic", "int8"],
                       help="TFLite quantization (default none; int8 needs --calibration-data)")
    group.add_argument("--calibration-data", help="folder of images for int8 calibration, and for "
                       "checking the file against the Keras model when --evaluation-data is not given")


def run(model, args):
    quantization = None if args.quantize in (None, "none") else args.quantize
    if quantization == "int8" and not args.calibration_data:
        raise ValueError("--quantize int8 needs --calibration-data: a folder of a few tens of "
                         "representative images.")
    suffix = "" if quantization is None else f"_{quantization}"
    output = args.output or os.path.join("saved_models", f"{model.name}{suffix}.tflite")
    tflite(model, output, quantization=quantization, calibration_data=args.calibration_data,
           evaluation_data=args.evaluation_data, min_top1_agreement=args.min_top1_agreement,
           min_embedding_cosine=args.min_embedding_cosine, crop_pct=args.crop_pct)
    print(f"TFLite model written to {output}")
    return output


EXPORTER = common.Exporter(
    name="tflite", help="TFLite / LiteRT, optionally quantised", add_arguments=add_arguments,
    options=("quantize", "calibration_data", "evaluation_data", "min_top1_agreement",
             "min_embedding_cosine"),
    run=run)
