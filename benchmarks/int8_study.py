"""Which full-int8 TFLite configuration keeps DeiT-Tiny's answers (issue 15, item 4).

Converts the real DeiT-Tiny (shared/data/deit_tiny_patch16_224) to TFLite in every mode and in
several full-int8 configurations, and measures each one against the float Keras model: file size,
LiteRT latency (batch 1, median of interleaved repeats), top-1 agreement and accuracy.

    python benchmarks/int8_study.py --output benchmarks/results/int8_study.json

Honest split: the 29 real photos (imagenet20 + images/) are cut into two folds; each int8 file is
calibrated on one fold (each photo and its mirror image, about 30 images) and scored on the other,
so every photo is scored once, by a file that never saw it. Scores:
- photos: the 29 photos as the model crops them (20 of them labelled: accuracy);
- views: the same photos mirrored and cropped 3 more ways (116 images; correlated, but photos);
- cifar: CIFAR-10 test images upsampled to 224 (another distribution with small top-1 margins: a
  stress test for agreement, no ImageNet accuracy).
A per-layer analysis (tf.lite.experimental.QuantizationDebugger) says where the error enters.
Configurations named "aeq ..." need ai-edge-quantizer (skipped with a note without it).
Converted files are cached under --cache; a rerun converts nothing. About 9 minutes on 2 cores
from a cold cache, 5 with it. Results: benchmarks/results/int8_study.json.
"""

import argparse
import collections
import csv
import glob
import hashlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # ai-edge-quantizer's progress bars

import numpy as np  # noqa: E402

from keras_vit.fileio import atomic_path  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Op types of DeiT-Tiny's TFLite graph, by role.
LAYER_NORM = ["MEAN", "SQUARED_DIFFERENCE", "RSQRT", "NEG"]
# Ops that only move int8 values: left quantizable, they keep tensors between two float ops in
# int8 (QUANTIZE -> SPLIT/RESHAPE -> DEQUANTIZE), so a denylist of the ops around them does not
# keep q/k/v, the attention output or the patch embeddings in float.
LAYOUT = ["RESHAPE", "TRANSPOSE", "SPLIT", "CONCATENATION", "BROADCAST_TO", "STRIDED_SLICE"]
OLD_DENYLIST = ["MEAN", "SQUARED_DIFFERENCE", "RSQRT", "SOFTMAX", "ADD"]  # export's INT8_FLOAT_OPS before
# LayerNorm whole (its MULs too: they take the residual stream), adds, softmax, layout ops.
FLOAT_GLUE = LAYER_NORM + ["ADD", "MUL", "SOFTMAX"] + LAYOUT
# The best configuration for quantization="int8": it meets the targets of issue 15 (see the JSON).
RECOMMENDED = "keras_vit int8 (the export default)"  # = "aeq 16x8 FC, float head"
ANALYSED = ("int8 naive", "int8 glue+bmm float")  # TF converter files the debugger can take apart


def configurations():
    """name -> how to convert. `deny`: op types kept in float by the TFLite converter (through
    its quantisation debugger, as keras_vit.export does); `aeq`: (op type, activation bits) that
    ai-edge-quantizer quantises (8/16: static int8/int16 activations with int8 weights; "dynamic":
    int8 weights, float activations; None: int8 weights only), everything else stays float."""
    fc16 = [("FULLY_CONNECTED", 16), ("CONV_2D", "dynamic")]
    return {
        "float32": dict(mode="float32"),
        # keras_vit.export.tflite(quantization="int8")'s own code path, on the same float file.
        "keras_vit int8 (the export default)": dict(mode="export"),
        "float16": dict(mode="float16"),
        "dynamic": dict(mode="dynamic"),
        "int8 naive": dict(mode="int8", deny=[]),
        "int8 old": dict(mode="int8", deny=OLD_DENYLIST),
        "int8 glue float": dict(mode="int8", deny=FLOAT_GLUE),
        "int8 glue+bmm float": dict(mode="int8", deny=FLOAT_GLUE + ["BATCH_MATMUL"]),
        "int8 glue+bmm+conv float": dict(mode="int8", deny=FLOAT_GLUE + ["BATCH_MATMUL", "CONV_2D"]),
        "aeq int8 FC": dict(mode="aeq", aeq=[("FULLY_CONNECTED", 8), ("CONV_2D", "dynamic")]),
        "aeq int8 FC+GELU": dict(mode="aeq", aeq=[("FULLY_CONNECTED", 8), ("GELU", 8), ("CONV_2D", "dynamic")]),
        "aeq 16x8 FC": dict(mode="aeq", aeq=fc16),
        "aeq 16x8 FC, per-tensor weights": dict(mode="aeq", aeq=fc16, per_tensor=True),
        "aeq 16x8 FC, 8 calibration images": dict(mode="aeq", aeq=fc16, calibration=8),
        "aeq 16x8 all ops": dict(mode="aeq", aeq=[("*", 16)]),
        "aeq int8 weights only": dict(mode="aeq", aeq=[("*", None)]),
        "aeq GPTQ int8 weights only": dict(mode="aeq", aeq=[("FULLY_CONNECTED", None), ("CONV_2D", None)],
                                           algorithm="GPTQ"),
        "aeq GPTQ 16x8 FC": dict(mode="aeq", aeq=fc16, algorithm="GPTQ"),
        "aeq GPTQ int8 FC": dict(mode="aeq", aeq=[("FULLY_CONNECTED", 8), ("CONV_2D", "dynamic")],
                                 algorithm="GPTQ"),
        "aeq int8 FC, fc2 16x8, float head": dict(mode="aeq", aeq=[("FULLY_CONNECTED", 8), ("CONV_2D", "dynamic")],
                                                  float_head=True, fc16_scopes=["fc2"]),
        "aeq int8 FC, fc1+fc2 16x8, float head": dict(
            mode="aeq", aeq=[("FULLY_CONNECTED", 8), ("CONV_2D", "dynamic")], float_head=True,
            fc16_scopes=["fc1", "fc2"]),
        "aeq int8 weights only, float head": dict(mode="aeq", aeq=[("*", None)], float_head=True),
        "aeq int8 FC, float head": dict(mode="aeq", aeq=[("FULLY_CONNECTED", 8), ("CONV_2D", "dynamic")],
                                        float_head=True),
        "aeq 16x8 FC, float head": dict(mode="aeq", aeq=fc16, float_head=True),
        "aeq 16x8 FC, float head, per-tensor weights": dict(mode="aeq", aeq=fc16, float_head=True,
                                                            per_tensor=True),
    }


# --------------------------------------------------------------------------------------------------
# Data


def load_data(data_dir, num_cifar):
    """Photos (2 folds), their views, labels, CIFAR stress images; all uint8 (n, 224, 224, 3)."""
    from keras_vit import images

    photos = sorted(glob.glob(os.path.join(data_dir, "imagenet20", "*.jpg")))
    photos += sorted(glob.glob(os.path.join(data_dir, "images", "*")))
    if len(photos) < 10:
        raise ValueError(f"expected the shared photos under {data_dir!r}, found {len(photos)}")
    labels = []
    for path in photos:
        parts = os.path.splitext(os.path.basename(path))[0].split("_")
        labels.append(int(parts[2]) if parts[0] == "imagenet" else -1)
    view_specs = [("crop 0.875", 0.875, False), ("mirror", 0.875, True), ("crop 0.7", 0.7, False),
                  ("whole image", 1.0, False)]
    views = {}
    for name, crop_pct, mirror in view_specs:
        x = images.load_images(photos, 224, crop_pct)
        views[name] = x[:, :, ::-1] if mirror else x
    cifar = np.load(os.path.join(data_dir, "cifar10_subset.npz"))["x_test"][:num_cifar]
    import tensorflow as tf

    # CIFAR's 32x32 photos upsampled the way load_image resizes (bicubic).
    cifar = tf.image.resize(cifar, (224, 224), method="bicubic").numpy()
    cifar = np.clip(np.round(cifar), 0, 255).astype("uint8")
    fold = np.arange(len(photos)) % 2
    return dict(photos=photos, labels=np.array(labels), views=views, fold=fold, cifar=cifar)


def calibration_set(data, fold, limit=None):
    """The photos of `fold`, each as the model crops it and mirrored: about 30 images."""
    x = data["views"]["crop 0.875"][data["fold"] == fold]
    x = np.concatenate([x, x[:, :, ::-1]])
    return x if limit is None else x[np.random.default_rng(0).permutation(len(x))[:limit]]


def float_logits(model, x, batch=16):
    return np.concatenate([np.asarray(model(x[i:i + batch].astype("float32"), training=False))
                           for i in range(0, len(x), batch)]).astype("float32")


# --------------------------------------------------------------------------------------------------
# Conversion (what keras_vit.export does: a SavedModel images -> logits, then the TFLite converter)


def logits_saved_model(model, directory):
    import tensorflow as tf

    module = tf.Module()
    module.model_variables = [v.value for v in model.variables]
    serve = tf.function(lambda images: {"logits": tf.cast(model(images, training=False), tf.float32)},
                        input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="images")])
    tf.saved_model.save(module, directory, signatures={"serving_default": serve})


def convert(config, saved_model, float_tflite, calibration):
    import tensorflow as tf

    mode = config["mode"]
    if mode == "export":
        from keras_vit.export import tflite_format

        with open(float_tflite, "rb") as f:
            return tflite_format._int8(f.read(), calibration.astype("float32"))
    if mode == "aeq":
        return _convert_aeq(config, float_tflite, calibration)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serving_default"])
    if mode == "float32":
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in ("float16", "dynamic"):
        return converter.convert()

    def representative_dataset():
        for image in calibration:
            yield {"images": image[None].astype("float32")}

    converter.representative_dataset = representative_dataset
    if config.get("per_tensor"):
        converter._experimental_disable_per_channel = True
    if not config["deny"]:
        return converter.convert()
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=config["deny"])
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative_dataset, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def _convert_aeq(config, float_tflite, calibration):
    from ai_edge_quantizer import qtyping, quantizer

    granularity = qtyping.QuantGranularity.TENSORWISE if config.get("per_tensor") else \
        qtyping.QuantGranularity.CHANNELWISE  # (blockwise int8 weights: not supported for FC in 0.10)
    qt = quantizer.Quantizer(float_tflite)
    for op, bits in config["aeq"]:
        # GPTQ (error-compensating weight rounding from calibration activations) exists for
        # FULLY_CONNECTED only; other ops keep min/max rounding.
        algorithm = config.get("algorithm", "min_max_uniform_quantize") if op == "FULLY_CONNECTED" \
            else "min_max_uniform_quantize"
        op = qtyping.TFLOperationName(op)
        if bits is None:  # int8 weights, float compute: the error of the weights alone
            qt.add_weight_only_config(".*", op, num_bits=8, granularity=granularity,
                                      algorithm_key=algorithm)
        elif bits == "dynamic":
            qt.add_dynamic_config(".*", op, num_bits=8, algorithm_key=algorithm)
        else:
            qt.add_static_config(".*", op, activation_num_bits=bits, weight_num_bits=8,
                                 weight_granularity=granularity, algorithm_key=algorithm)
    for scope in config.get("fc16_scopes", []):  # these dense layers get 16-bit activations
        qt.add_static_config(scope, qtyping.TFLOperationName("FULLY_CONNECTED"), activation_num_bits=16,
                             weight_num_bits=8)
    if config.get("float_head"):
        # The classifier head stays float (found as keras_vit.export finds it): its weights alone
        # move the logits of close calls.
        from keras_vit.export import tflite_format

        with open(float_tflite, "rb") as f:
            heads = tflite_format._head_outputs(f.read())
        for name in heads:
            qt.update_quantization_recipe(f"^{re.escape(name)};", qtyping.TFLOperationName("FULLY_CONNECTED"),
                                          algorithm_key="no_quantize")
    if not qt.need_calibration:
        return bytes(qt.quantize(enable_progress_report=False).quantized_model)
    result = qt.calibrate({"serving_default": [{"images": x[None].astype("float32")} for x in calibration]},
                          num_threads=2)
    return bytes(qt.quantize(result, enable_progress_report=False).quantized_model)


def cached(path, make):
    if not os.path.exists(path):
        content = make()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(content)
    return path


# --------------------------------------------------------------------------------------------------
# Running and timing


def interpreter(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, num_threads=threads)
    it.resize_tensor_input(it.get_input_details()[0]["index"], (1, 224, 224, 3))
    it.allocate_tensors()
    return it


def invoke(it, image):
    """One image through a LiteRT interpreter, (de)quantising the input/output if the file
    does (ai-edge-quantizer's full-integer files take and return integers)."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    x = image[None].astype("float32")
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)
    it.invoke()
    y = it.get_tensor(out["index"])[0].astype("float32")
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y - zero) * scale
    return y


def run(path, images, threads, attempts=3):
    """Logits of `images`, one at a time, checked against fresh interpreters.

    ai-edge-litert 2.3 with XNNPACK sometimes gives wrong logits (about 1.3 rms, most top-1s
    flipped) from an interpreter's second invoke on, float32 files included, once the process
    has created and dropped other interpreters of dynamic-batch files; each first invoke is
    right. So three images are rechecked as the first invoke of a fresh interpreter, and the
    whole pass is redone (counted in `retries`) when they differ."""
    for attempt in range(attempts):
        it = interpreter(path, threads)
        logits = np.stack([invoke(it, x) for x in images])
        del it
        if all(np.array_equal(logits[k], invoke(interpreter(path, threads), images[k]))
               for k in sorted({1 % len(images), len(images) // 2, len(images) - 1})):
            return logits, attempt
    raise RuntimeError(f"LiteRT gave different logits for the same images {attempts} times: {path}")


def latencies(paths, image, threads, repeats):
    """Median ms per file; files are timed in turn, `repeats` rounds, so load hits all alike."""
    its = {name: interpreter(p, threads) for name, p in paths.items()}
    times = collections.defaultdict(list)
    for name, it in its.items():  # warm-up
        invoke(it, image)
    for _ in range(repeats):
        for name, it in its.items():
            start = time.perf_counter()
            invoke(it, image)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def clopper_pearson(k, n, alpha=0.05):
    """Exact 95% interval of a binomial proportion k/n (no scipy: bisection on the binomial CDF)."""
    def cdf(p, k):  # P(X <= k)
        return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k + 1))

    def bisect(rising, target):  # p where a monotone function of p crosses target
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (rising(mid) < target) else (lo, mid)
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else bisect(lambda p: 1 - cdf(p, k - 1), alpha / 2)
    upper = 1.0 if k == n else bisect(lambda p: -cdf(p, k), -alpha / 2)
    return lower, upper


# --------------------------------------------------------------------------------------------------
# Where the error enters: the quantisation debugger's per-layer error, relative to the layer's
# float output (its own `scale`-relative ratio hides layers whose output range is wide).


def layer_errors(saved_model, float_tflite, deny, calibration, images, top=12):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    mean_square = collections.defaultdict(float)
    for x in images:  # a fresh interpreter per image: first invokes are right (see `run`)
        it = Interpreter(model_path=float_tflite, experimental_preserve_all_tensors=True)
        index = it.get_input_details()[0]["index"]
        it.resize_tensor_input(index, (1, 224, 224, 3))
        it.allocate_tensors()
        it.set_tensor(index, x[None].astype("float32"))
        it.invoke()
        for t in it.get_tensor_details():
            if t["dtype"] == np.float32:
                try:
                    value = it.get_tensor(t["index"])
                except ValueError:  # tensors without data (dynamic shapes)
                    continue
                mean_square[t["name"]] += float(np.mean(value.astype("float64") ** 2)) / len(images)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=["serving_default"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({"images": x[None].astype("float32")} for x in calibration)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=deny or None)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([x[None].astype("float32")] for x in images),
        debug_options=options)
    debugger.run()
    text = io.StringIO()
    debugger.layer_statistics_dump(text)
    rows = []
    for r in csv.DictReader(io.StringIO(text.getvalue())):
        name = r["tensor_name"]
        if r["op_name"] in LAYOUT or name not in mean_square or mean_square[name] == 0:
            continue
        rows.append(dict(op=r["op_name"], tensor=name, role=_role(r["op_name"], name),
                         relative_rmse=math.sqrt(float(r["mean_squared_error"]) / mean_square[name]),
                         rmse_over_scale=math.sqrt(float(r["mean_squared_error"])) / float(r["scale"])))
    by_role = collections.defaultdict(list)
    for r in rows:
        by_role[r["role"]].append(r["relative_rmse"])
    summary = sorted(({"role": k, "layers": len(v), "mean_relative_rmse": float(np.mean(v)),
                       "max_relative_rmse": float(np.max(v))} for k, v in by_role.items()),
                     key=lambda r: -r["mean_relative_rmse"])
    worst = sorted(rows, key=lambda r: -r["relative_rmse"])[:top]
    return dict(by_role=summary, worst_layers=worst)


def _role(op, name):
    for key, role in (("patch_embedding", "patch embedding"), ("qkv", "qkv"), ("proj", "attention proj"), ("fc1", "mlp fc1"), ("fc2", "mlp fc2"),
                      ("norm", "layernorm"), ("MatMul_1", "attention probs @ v"),
                      ("MatMul", "attention q @ k"), ("Softmax", "softmax"), ("Gelu", "gelu"),
                      ("position", "position embedding")):
        if key in name:
            return f"{op} {role}"
    return op if not name.endswith(("/add", "/add_1")) else f"{op} residual"


# --------------------------------------------------------------------------------------------------


def evaluate(name, config, data, reference, saved_model, float_tflite, cache, threads):
    """Both folds' files for one configuration; scores on the held-out fold only."""
    import tensorflow as tf

    static = config["mode"] in ("int8", "export") or config.get("algorithm") == "GPTQ" or any(
        bits in (8, 16) for _, bits in config.get("aeq", []))
    folds = [0, 1] if static else [None]
    preds = {"photos": np.zeros_like(reference["photos"]), "views": np.zeros_like(reference["views"]),
             "cifar": np.zeros_like(reference["cifar"])}
    paths, retries = {}, 0
    n_views, n_photos = len(data["views"]), len(data["photos"])
    cifar_fold = np.arange(len(data["cifar"])) % 2
    for fold in folds:
        calibration = None if fold is None else calibration_set(data, fold, config.get("calibration"))
        key = json.dumps([config, tf.__version__, None if calibration is None else
                          hashlib.sha256(calibration.tobytes()).hexdigest()], sort_keys=True)
        path = os.path.join(cache, f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.tflite")
        started = time.time()
        cached(path, lambda: convert(config, saved_model, float_tflite, calibration))
        paths[fold] = path
        photo_mask = np.ones(n_photos, bool) if fold is None else data["fold"] != fold
        view_mask = np.tile(photo_mask, n_views)
        cifar_mask = np.ones(len(data["cifar"]), bool) if fold is None else cifar_fold != fold
        views = np.concatenate(list(data["views"].values()))
        preds["views"][view_mask], retried_views = run(path, views[view_mask], threads)
        preds["photos"][photo_mask] = preds["views"][:n_photos][photo_mask]
        preds["cifar"][cifar_mask], retried_cifar = run(path, data["cifar"][cifar_mask], threads)
        retries += retried_views + retried_cifar
        print(f"  {name} fold {fold}: {time.time() - started:.0f} s", flush=True)
    row = {"configuration": name, "settings": config, "size_mb": os.path.getsize(paths[folds[0]]) / 1e6}
    row["litert_retries"] = retries
    labels = data["labels"]
    labelled = labels >= 0
    view_labels = np.tile(labels, n_views)
    for part in ("photos", "views", "cifar"):
        same = preds[part].argmax(-1) == reference[part].argmax(-1)
        row[f"{part}_agreement"] = float(same.mean())
        row[f"{part}_n"] = int(same.size)
        row[f"{part}_flips"] = int((~same).sum())
        row[f"{part}_max_abs_logit_diff"] = float(np.abs(preds[part] - reference[part]).max())
        row[f"{part}_rms_logit_diff"] = float(np.sqrt(np.mean((preds[part] - reference[part]) ** 2)))
    flipped = preds["photos"].argmax(-1) != reference["photos"].argmax(-1)
    row["photos_flipped"] = [os.path.basename(data["photos"][i]) for i in np.flatnonzero(flipped)]
    k, n = int((~flipped).sum()), n_photos
    row["photos_agreement_95ci"] = clopper_pearson(k, n)
    row["photos_accuracy"] = float((preds["photos"][labelled].argmax(-1) == labels[labelled]).mean())
    view_labelled = view_labels >= 0
    row["views_accuracy"] = float((preds["views"][view_labelled].argmax(-1) == view_labels[view_labelled]).mean())
    return row, paths[folds[0]]


def markdown(rows):
    head = ("| configuration | size MB | latency ms | photos: agreement (flips/n) | accuracy | views: "
            "agreement | accuracy | CIFAR agreement | rms Δlogit (views) |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        lines.append(
            f"| {r['configuration']} | {r['size_mb']:.2f} | {r['latency_ms']:.1f} | "
            f"{r['photos_agreement']:.1%} ({r['photos_flips']}/{r['photos_n']}) | {r['photos_accuracy']:.0%} | "
            f"{r['views_agreement']:.1%} ({r['views_flips']}/{r['views_n']}) | {r['views_accuracy']:.1%} | "
            f"{r['cifar_agreement']:.1%} ({r['cifar_flips']}/{r['cifar_n']}) | {r['views_rms_logit_diff']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--output", help="JSON file to write (atomically)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "keras_vit_int8_study"))
    parser.add_argument("--configs", nargs="+", help="subset of configuration names")
    parser.add_argument("--num-cifar", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads (default 1: steadier on "
                        "a shared machine)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--debug-images", type=int, default=4, help="photos for the per-layer analysis "
                        "(0: skip it)")
    args = parser.parse_args(argv)
    configs = configurations()
    unknown = sorted(set(args.configs or []) - set(configs))
    if unknown:
        parser.error(f"unknown configurations {unknown}; expected some of {list(configs)}")
    if args.num_cifar < 2 or args.repeats < 1 or args.threads < 1 or args.debug_images < 0:
        parser.error("--num-cifar must be >= 2, --repeats and --threads >= 1, --debug-images >= 0")
    names = args.configs or list(configs)
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError:
        skipped = [n for n in names if configs[n]["mode"] in ("aeq", "export")]
        names = [n for n in names if n not in skipped]
        if skipped:
            print(f"ai-edge-quantizer is not installed: skipping {skipped}")
    data_dir = os.path.abspath(args.data)
    if not os.path.isdir(os.path.join(data_dir, "deit_tiny_patch16_224")):
        parser.error(f"no shared data (deit_tiny_patch16_224/, imagenet20/, images/) at {data_dir!r}")
    os.makedirs(args.cache, exist_ok=True)

    import keras_vit
    from keras_vit import benchmark

    started = time.time()
    model = keras_vit.load_pretrained(os.path.join(data_dir, "deit_tiny_patch16_224"))
    data = load_data(data_dir, args.num_cifar)
    views = np.concatenate(list(data["views"].values()))
    reference = {"views": float_logits(model, views), "cifar": float_logits(model, data["cifar"])}
    reference["photos"] = reference["views"][:len(data["photos"])]
    labels = data["labels"]
    saved_model = os.path.join(args.cache, "saved_model")
    if not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
        logits_saved_model(model, saved_model)
    float_tflite = cached(os.path.join(args.cache, "float32.tflite"),
                          lambda: convert({"mode": "float32"}, saved_model, None, None))
    print(f"data and float model: {time.time() - started:.0f} s", flush=True)

    rows, files = [], {}
    for name in names:
        row, files[name] = evaluate(name, configs[name], data, reference, saved_model, float_tflite,
                                    args.cache, args.threads)
        rows.append(row)
    timing = latencies(files, data["views"]["crop 0.875"][0], args.threads, args.repeats)
    for row in rows:
        row["latency_ms"] = timing[row["configuration"]]

    analysis = {}
    if args.debug_images:
        debug_images = data["views"]["crop 0.875"][data["fold"] == 1][:args.debug_images]
        calibration = calibration_set(data, 0)
        for name in ANALYSED:
            started_debug = time.time()
            analysis[name] = layer_errors(saved_model, float_tflite, configs[name]["deny"], calibration,
                                          debug_images)
            print(f"  per-layer analysis of {name}: {time.time() - started_debug:.0f} s", flush=True)

    labelled = labels >= 0
    float_accuracy = float((reference["photos"][labelled].argmax(-1) == labels[labelled]).mean())
    view_labels = np.tile(labels, len(data["views"]))
    float_view_accuracy = float((reference["views"][view_labels >= 0].argmax(-1)
                                 == view_labels[view_labels >= 0]).mean())
    result = {
        "environment": benchmark.environment(args.threads),
        "ai_edge_quantizer": _version("ai_edge_quantizer"),
        "ai_edge_litert": _version("ai_edge_litert"),
        "command": "python benchmarks/int8_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "protocol": {"photos": len(data["photos"]), "labelled_photos": int(labelled.sum()),
                     "views": list(data["views"]), "cifar_images": len(data["cifar"]),
                     "calibration": "2 folds of the photos; each file calibrated on one fold (photo + "
                                    "mirror image) and scored on the other",
                     "latency": f"LiteRT interpreter, batch 1, {args.threads} thread(s), median of "
                                f"{args.repeats} interleaved runs"},
        "float_accuracy": {"photos": float_accuracy, "views": float_view_accuracy},
        # top-1 minus top-2 logit of the float model: photos with small margins flip first
        "photo_float_margins": {os.path.basename(p): float(m) for p, m in zip(
            data["photos"], np.diff(np.sort(reference["photos"], -1)[:, -2:], axis=-1)[:, 0])},
        "recommended": RECOMMENDED,
        "rows": rows,
        "layer_errors": analysis,
        "seconds": time.time() - started,
    }
    print(markdown(rows))
    print(f"float Keras accuracy: photos {float_accuracy:.0%}, views {float_view_accuracy:.1%}; "
          f"{time.time() - started:.0f} s")
    for name, a in analysis.items():
        print(f"per-layer relative error, {name}:")
        for r in a["by_role"][:8]:
            print(f"  {r['role']:<40} {r['layers']:>3} layers  mean {r['mean_relative_rmse']:.3f}  "
                  f"max {r['max_relative_rmse']:.3f}")
    if args.output:
        with atomic_path(args.output) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=float)


def _version(module):
    try:
        from importlib.metadata import version

        return version(module.replace("_", "-"))
    except Exception:
        return None


if __name__ == "__main__":
    main()
