"""ONNX files for ONNX Runtime: converted with tf2onnx from the function every format exports.

Keras's own `model.export(format="onnx")` goes through tf2onnx too, but leaves TensorFlow's exact
GELU, `0.5 * x * erfc(-x / sqrt(2))`, as an `Erfc` node: ONNX has no such operator, and ONNX
Runtime refuses the file. Here the conversion rewrites it as `1 - Erf(y)`, which ONNX has (the
model's own graph is unchanged; the difference to erfc is below float32 rounding where the GELU
output is not already 0).
"""

import json
import logging
import os

import numpy as np

from keras_vit.export import common

DEFAULT_OPSET = 17  # LayerNormalization-era opset that ONNX Runtime 1.14 and later run
MAX_PROTOBUF_BYTES = 2 ** 31  # one ONNX file is one protobuf message: at most 2 GB


def _erfc_as_erf(ctx, node, name, args):
    """tf2onnx handler for TF's Erfc: erfc(y) = 1 - erf(y)."""
    from tf2onnx import utils

    node.type = "Erf"
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.output[0]))
    one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1, dtype))
    ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]])


def convert(model, opset=DEFAULT_OPSET):
    """The model as an `onnx.ModelProto`: float32 raw pixels `images (batch, H, W, 3)` ->
    `logits` and/or `embeddings`, the batch dimension named `batch`."""
    import tensorflow as tf

    tf2onnx, _ = common.require_onnx("tf2onnx", "onnx")
    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
    if size >= MAX_PROTOBUF_BYTES:
        raise ValueError(f"{model.name} has {size / 1e9:.2f} GB of weights, over the 2 GB an ONNX "
                         f"file can hold in one piece; export a smaller variant, or SavedModel/TFLite.")
    height, width, _ = common.model_geometry(model)
    spec = [tf.TensorSpec([None, height, width, 3], tf.float32, name="images")]
    function = tf.function(common.outputs_fn(model), input_signature=spec)
    # tf2onnx reports every step at INFO level; errors and warnings still show.
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.WARNING)
    try:
        proto, _ = tf2onnx.convert.from_function(
            function, input_signature=spec, opset=opset,
            custom_op_handlers={"Erfc": (_erfc_as_erf, [])})
    finally:
        tf2onnx_logger.setLevel(level)
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def onnx_runner(path_or_content, num_threads=None):
    """Loads an `.onnx` file (a path, or its bytes) once into an ONNX Runtime CPU session;
    returns `run(images) -> {output name: float32 array}` for float32 `(n, H, W, 3)` images,
    with `run.input_shape`, `run.output_shapes` (`{name: shape}`; `"batch"` for the batch) and
    `run.metadata` (`onnx_metadata`'s, read by the session: the file is parsed once)."""
    (ort,) = common.require_onnx("onnxruntime")
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = num_threads
    session = ort.InferenceSession(path_or_content, options, providers=["CPUExecutionProvider"])
    (input_,) = session.get_inputs()
    names = [output.name for output in session.get_outputs()]

    def run(images):
        values = session.run(names, {input_.name: np.asarray(images, "float32")})
        return {name: value.astype("float32") for name, value in zip(names, values)}
    run.input_shape = tuple(input_.shape)
    run.output_shapes = {output.name: tuple(output.shape) for output in session.get_outputs()}
    run.metadata = _keras_vit_metadata(session.get_modelmeta().custom_metadata_map)
    return run


def _runner_of(content):
    """`onnx_runner(content)`; ValueError when ONNX Runtime refuses the converted model."""
    try:
        return onnx_runner(content)
    except ImportError:
        raise
    except Exception as error:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise ValueError(f"ONNX Runtime cannot run the converted model: {error}") from error


def onnx_metadata(path):
    """The `keras_vit` metadata an exported `.onnx` file holds (architecture, preprocessing,
    outputs, labels), or `{}` for a file from elsewhere."""
    (onnx_lib,) = common.require_onnx("onnx")
    proto = onnx_lib.load(path, load_external_data=False)
    return _keras_vit_metadata({p.key: p.value for p in proto.metadata_props})


def _keras_vit_metadata(props):
    return json.loads(props["keras_vit"]) if "keras_vit" in props else {}


def run_onnx(path_or_content, images, num_threads=None, output=None):
    """Runs an `.onnx` file with ONNX Runtime (CPU): float32 `(n, H, W, 3)` -> the output named
    `output` (default `logits`, or `embeddings` for a feature extractor)."""
    return common.pick_output(onnx_runner(path_or_content, num_threads)(images), output, "ONNX file")


def onnx(model, path, evaluation_data=None, min_top1_agreement=None, min_embedding_cosine=None,
         num_evaluation_images=32, labels=None, crop_pct=None, source=None, opset=DEFAULT_OPSET,
         verbose=True):
    """Converts `model` to an `.onnx` file, checks it with ONNX Runtime against Keras, returns
    a report dict.

    The file takes float32 raw pixels `images (batch, H, W, 3)` in [0, 255], any batch size, and
    returns `logits` and `embeddings` (a classifier's pre-head features), or `embeddings` alone
    for a feature extractor (`include_top=False`). Its metadata (`metadata_props["keras_vit"]`,
    JSON) records the architecture, preprocessing, outputs and labels; `keras-vit predict` reads
    it. Needs `pip install "keras-vision-transformer[onnx]"` (onnx, onnxruntime, tf2onnx).

    Args:
        evaluation_data: images to compare ONNX Runtime and Keras on: a folder of images, a NumPy
            array or a tf.data.Dataset of raw [0, 255] images.
        min_top1_agreement, min_embedding_cosine: the parity gate, as in `tflite` (defaults
            those of float32: `MIN_TOP1_AGREEMENT[None]`, `MIN_EMBEDDING_COSINE[None]`). Below
            either on real images, `ExportAccuracyError` is raised and nothing is written (a
            file already at `path` stays as it was); without `evaluation_data` the comparison
            runs on random noise and is reported and warned about, never enforced.
        labels: class names stored in the metadata (a list, a label file or `"imagenet"`);
            default `model.class_names`, else indices. Classifiers only.
        crop_pct: recorded in the metadata, and used to read `evaluation_data` from a folder.
        source: the checkpoint the model came from, recorded in the metadata.
        opset: the ONNX opset to write (default 17).

    Returns: the keys of `tflite`'s report, with `"format": "onnx"` and `"opset"`.

    Example:
        >>> keras_vit.export.onnx(model, "vit.onnx", evaluation_data="photos/")
        >>> keras_vit.export.run_onnx("vit.onnx", images)          # logits, with ONNX Runtime
    """
    model = common.exportable(model)  # a Distiller exports its student
    common.require_tensorflow_backend()
    common.require_onnx("onnx", "onnxruntime", "tf2onnx")
    min_top1, min_cosine = common.thresholds(model, None, min_top1_agreement, min_embedding_cosine)
    num_evaluation_images = common.positive_int(num_evaluation_images, "num_evaluation_images")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not 13 <= opset <= 18:
        raise ValueError(f"opset must be an integer from 13 to 18 (what tf2onnx writes), got {opset!r}.")
    path = common.output_path(path, ".onnx")
    crop_pct = common.crop_pct_of(model, crop_pct)
    model = common.float32_model(model)  # after reading what the original says (crop_pct)
    names, labels_source = (common.resolve_labels(model, labels)
                            if common.is_classifier(model) or labels is not None else (None, None))
    evaluation, on_noise = common.evaluation_images(model, evaluation_data, None,
                                                    num_evaluation_images, crop_pct)

    proto = convert(model, int(opset))
    metadata = common.model_metadata(model, names, labels_source, crop_pct,
                                     common.interpolation_of(model), source)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "keras_vit", json.dumps(metadata)
    proto.doc_string = (f"{model.name} exported by keras_vit: images float32 (batch, H, W, 3) raw "
                        f"pixels in [0, 255] -> {', '.join(metadata['outputs'])}.")
    content = proto.SerializeToString()
    return common.check_and_write(model, path, content, _runner_of, evaluation, on_noise,
                                  (min_top1, min_cosine), "ONNX export", verbose, format="onnx",
                                  opset=int(opset))


# --------------------------------------------------------------------------------------------------
# keras-vit export --format onnx


def add_arguments(group):
    group.add_argument("--opset", type=int, help=f"ONNX opset (default {DEFAULT_OPSET})")


def run(model, args):
    output = args.output or os.path.join("saved_models", f"{model.name}.onnx")
    onnx(model, output, evaluation_data=args.evaluation_data, labels=args.labels,
         min_top1_agreement=args.min_top1_agreement, min_embedding_cosine=args.min_embedding_cosine,
         crop_pct=args.crop_pct, source=args.model,
         **({} if args.opset is None else {"opset": args.opset}))
    print(f"ONNX model written to {output}")
    return output


EXPORTER = common.Exporter(
    name="onnx", help="ONNX for ONNX Runtime (needs the [onnx] extra)", add_arguments=add_arguments,
    options=("opset", "labels", "evaluation_data", "min_top1_agreement", "min_embedding_cosine"),
    run=run)
