"""Speed, memory and MFU of keras_vit: the Keras model, its fast predictor and its own exports.

    keras-vit benchmark --model ViTS16 --batch-size 32 --precision bfloat16 --output results.json
    KERAS_BACKEND=jax keras-vit benchmark --model ViTB16 --batch-size 256 --precision bfloat16
    keras-vit benchmark --model ViTS16 --peers onnxruntime --tasks latency,throughput,memory

What is measured, for one architecture, batch size, image size, backend and precision:
- `latency`: inference at `--latency-batch-size` (default 1); `throughput`: inference at `--batch-size`;
- `training`: one optimizer step (SGD with momentum or AdamW; `model.compile` + `train_on_batch`
  for Keras models), images/s;
- `memory`: peak process RSS (`/proc/self/status` VmHWM) on CPU, peak device memory on GPU, each
  contender in a fresh subprocess so that the numbers do not mix;
- `tflite`: batch-1 latency of `.tflite` files (one per quantization mode) with the LiteRT interpreter;
- `pipeline`: images/s of keras_vit's tf.data training pipeline alone (read, decode, inception
  crop, resize, flip, batch, prefetch) on photo-sized JPEGs, beside the training step's images/s:
  whether the input pipeline can keep the model fed on this machine.

ONNX Runtime (CPU execution provider, float32, inference only) runs keras_vit's own ONNX export
(`keras_vit.export.onnx`) of the same model: what a user who serves on ONNX Runtime gets.

Contenders run interleaved (A B C A B C ...) after their warm-up, so that load from other processes
hits every contender alike; each cell reports the median and the min/max of `--repeats` timings and
the ratio to `keras_vit`. On GPU the model FLOP utilisation uses `vit_flops`, the analytic count.
A contender whose library is not installed is skipped, and the report says why. TensorFlow,
LiteRT and ONNX Runtime are imported only when a contender needs them.

Other libraries' ViTs (KerasHub, Hugging Face transformers, timm) are not part of the package:
`python benchmarks/peers.py` runs them through this module's machinery (`run_suite(...,
builders=...)`, the same timing, memory subprocesses and report). The command line is
`keras_vit.cli.benchmark`.
"""

import importlib.util
import inspect
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

TASKS = ("latency", "throughput", "training", "memory", "tflite", "pipeline")
DEFAULT_TASKS = ("latency", "throughput", "training", "memory")
PRECISIONS = ("float32", "bfloat16")
# Dense peak TFLOP/s (bfloat16 tensor cores, float32 without TF32) for the MFU column.
PEAK_TFLOPS = {"H100": {"bfloat16": 989.0, "float32": 67.0},
               "H200": {"bfloat16": 989.0, "float32": 67.0},
               "A100": {"bfloat16": 312.0, "float32": 19.5}}


def vit_flops(image_size=224, patch_size=16, hidden_size=768, num_layers=12, mlp_dim=3072,
              num_classes=1000, class_token=True, num_registers=0, backbone=None, **unused):
    """Forward FLOPs of one image through a ViT, counting a multiply-add as 2 FLOPs.

    Counts the matmuls (patch projection, qkv, attention logits and values, output projection,
    MLP, head); LayerNorm, softmax, GELU and additions are a few percent and left out, as usual.
    A hybrid's ResNet convolutions are counted too (`resnet.backbone_flops`), and its patches are
    cut from the feature map. Training costs about 3x (the backward pass is two matmuls per
    forward matmul).

    >>> round(vit_flops() / 1e9, 1)   # ViT-B/16 at 224: 17.6 GMACs
    35.1
    """
    height, width = (image_size, image_size) if np.isscalar(image_size) else image_size
    ph, pw = (patch_size, patch_size) if np.isscalar(patch_size) else patch_size
    channels, features = 3, 0
    if backbone:
        from keras_vit import resnet

        units, factor = backbone["block_units"], backbone.get("width_factor", 1)
        features = resnet.backbone_flops((height, width), units, factor)
        height, width = resnet.feature_map_size((height, width), units)
        channels = resnet.backbone_channels(units, factor)
    patches = (height // ph) * (width // pw)
    tokens = patches + int(class_token) + num_registers
    d = hidden_size
    embed = features + 2 * patches * (ph * pw * channels) * d
    block = (2 * tokens * d * 3 * d        # qkv
             + 2 * 2 * tokens * tokens * d  # q @ k^T and weights @ v, all heads together
             + 2 * tokens * d * d           # output projection
             + 2 * 2 * tokens * d * mlp_dim)  # fc1 and fc2
    head = 2 * d * num_classes if num_classes else 0
    return embed + num_layers * block + head


def training_flops(**config):
    """FLOPs of one training step per image: forward + backward (twice the forward)."""
    return 3 * vit_flops(**config)


# ----------------------------------------------------------------------------- settings


def resolve_config(model="ViTB16", image_size=224, num_classes=1000, overrides=None):
    """The ViT keyword arguments for `--model` (`ViTS16` or `S/16`) plus JSON `overrides`."""
    from keras_vit import models

    builders = {"ViT" + v.replace("/", ""): v for v in models.VARIANTS}  # "ViTS16" -> "S/16"
    builders.update({v.replace("+", "ViT").replace("/", ""): v          # "R50ViTB16" -> "R50+B/16"
                     for v in models.HYBRID_VARIANTS})
    name = builders.get(model, model)
    config = dict(models.variant_config(name), image_size=image_size, num_classes=num_classes)
    config.update(overrides or {})
    return config


def environment(threads):
    """Versions, CPU model, cores and devices: everything a reader needs to compare numbers."""
    import keras

    info = {"python": platform.python_version(), "keras": keras.__version__,
            "backend": keras.backend.backend(), "numpy": np.__version__, "threads": threads,
            "cpu": _cpu_model(), "cpu_cores": len(os.sched_getaffinity(0)),
            "platform": platform.platform()}
    for module in ("tensorflow", "jax", "torch", "transformers", "keras_hub", "timm", "ai_edge_litert",
                   "onnxruntime"):
        if module in sys.modules or module == keras.backend.backend():
            info[module] = getattr(sys.modules.get(module) or __import__(module), "__version__", "?")
    info["gpu"] = _gpu_name()
    return info


def _cpu_model():
    from keras_vit.inference import cpu_info

    fields = cpu_info()
    if not fields:
        return platform.processor() or "unknown"
    flags = fields["flags"]
    extras = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}; {' '.join(extras) or 'no avx512'})")


def _gpu_name():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        devices = [d for d in jax.devices() if d.platform == "gpu"]
        return devices[0].device_kind if devices else None
    if backend == "torch" or "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return None


# Threads of the ONNX Runtime sessions (set_threads sets it; a session takes it when created).
_ONNXRUNTIME_THREADS = {}


def set_threads(threads):
    """Same thread count for every framework (call before any of them runs an op)."""
    import keras

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _ONNXRUNTIME_THREADS["intra_op"] = threads
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # already initialised by an earlier run in this process
            pass
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


# ----------------------------------------------------------------------------- contenders


class Contender:
    """One implementation: `build_predict(images)` returns `predict(batch)`, `build_train(images,
    labels)` returns a zero-argument training step (None: inference only).

    `prepare()`, where given, makes what the contender loads (a converted file) in this process,
    so that a memory subprocess measures loading and running it, not the conversion.
    `device_peak_mib()`, where given, is its peak accelerator memory in MiB (None on CPU), for
    contenders that do not run on the Keras backend's device (a PyTorch model). `peer` is the
    name it was built under (`build_contenders`), None for keras_vit's own Keras contenders.
    """

    def __init__(self, name, library, settings, build_predict, build_train=None, prepare=None,
                 device_peak_mib=None):
        self.name, self.library, self.settings = name, library, settings
        self.build_predict, self.build_train, self.prepare = build_predict, build_train, prepare
        self.device_peak_mib, self.peer = device_peak_mib, None


class Unavailable(Exception):
    """A contender that cannot run in this setting (the message says why); it is skipped."""


def _keras_optimizer(name):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
    return keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.05)


def keras_contender(name, library, build_model, precision, optimizer, fast=False):
    """A Keras model: inference via `predict_on_batch` (or the fast predictor), training via
    `compile` + `train_on_batch` under `mixed_bfloat16` for bfloat16."""
    import keras

    def predict_fn(images):
        model = build_model(precision)
        if fast:
            from keras_vit import inference

            return inference.fast_predictor(model, precision=precision)
        tensor = keras.ops.convert_to_tensor(images)
        return lambda batch: model.predict_on_batch(tensor if batch is images else batch)

    def train_fn(images, labels):
        model = build_model("mixed_bfloat16" if precision == "bfloat16" else precision)
        model.compile(optimizer=_keras_optimizer(optimizer), metrics=[],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return lambda: model.train_on_batch(images, labels)

    if fast:
        settings = {"inference": f"fast_predictor, {precision} weights"}
    else:
        settings = {"inference dtype policy": precision,
                    "training dtype policy": "mixed_bfloat16" if precision == "bfloat16" else precision}
    return Contender(name, library, settings, predict_fn, None if fast else train_fn)


def keras_vit_contenders(config, precision, optimizer, fast=True):
    from keras_vit import models

    def build(dtype):
        return models.VisionTransformer(**config, dtype=dtype)

    contenders = [keras_contender("keras_vit", "keras_vit", build, precision, optimizer)]
    if fast:
        contenders.append(keras_contender("keras_vit fast_predictor", "keras_vit", build, precision,
                                           optimizer, fast=True))
    return contenders


# ONNX files converted in this process, by configuration (JSON): made once, shared with the
# memory subprocesses, removed at exit.
_ONNX_FILES = {}


def onnxruntime_contender(config, precision, optimizer):
    """ONNX Runtime's CPU execution provider on keras_vit's ONNX export of the same model
    (`keras_vit.export.onnx_format.convert`: tf2onnx, raw-pixel input): inference only, float32."""
    import keras
    import onnxruntime

    if precision != "float32":
        raise Unavailable("float32 only (ONNX Runtime's CPU provider runs the float32 export)")
    if keras.backend.backend() != "tensorflow":
        raise Unavailable("needs KERAS_BACKEND=tensorflow (the export goes through TensorFlow)")
    if _gpu_name():
        raise Unavailable("a CPU contender, and this run's Keras models are on a GPU")
    key = json.dumps(config, sort_keys=True)

    def prepare():
        if key not in _ONNX_FILES:
            import atexit
            import shutil
            import tempfile

            from keras_vit import models
            from keras_vit.export import onnx_format

            folder = tempfile.mkdtemp(prefix="keras_vit_bench_onnx_")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            path = os.path.join(folder, "vit.onnx")
            with open(path, "wb") as f:
                f.write(onnx_format.convert(models.VisionTransformer(**config)).SerializeToString())
            _ONNX_FILES[key] = path
        return _ONNX_FILES[key]

    def predict_fn(images):
        from keras_vit.export import onnx_format

        run = onnx_format.onnx_runner(prepare(), num_threads=_ONNXRUNTIME_THREADS.get("intra_op"))
        return lambda batch: run(batch)["logits"]

    settings = {"onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider",
                "model": "keras_vit.export.onnx (tf2onnx), float32"}
    # CPU only: its memory is the process's RSS, and no accelerator peak.
    return Contender("ONNX Runtime (CPU)", "onnxruntime", settings, predict_fn, prepare=prepare,
                     device_peak_mib=lambda: None)


# Contenders beside the Keras model, by `--peers` name: `builder(config, precision, optimizer)`
# returns a Contender or a list of them, and raises ImportError or Unavailable to be skipped.
PEER_BUILDERS = {"onnxruntime": onnxruntime_contender}
PEERS = tuple(PEER_BUILDERS)


def build_contenders(config, precision, optimizer, peers, fast=True, builders=None):
    """keras_vit first, then each requested peer; returns `(contenders, skipped)`, where skipped
    maps a peer to why it is missing. `builders` adds to (or overrides) `PEER_BUILDERS`."""
    builders = {**PEER_BUILDERS, **(builders or {})}
    contenders, skipped = keras_vit_contenders(config, precision, optimizer, fast), {}
    for peer in peers:
        if peer not in builders:
            raise ValueError(f"Unknown peer {peer!r}: expected some of {list(builders)} or 'none'.")
        try:
            built = builders[peer](config, precision, optimizer)
        except ImportError as error:
            skipped[peer] = f"not installed ({error.name or error})"
            continue
        except Unavailable as error:
            skipped[peer] = str(error)
            continue
        for contender in built if isinstance(built, list) else [built]:
            contender.peer = peer
            contenders.append(contender)
    return contenders, skipped


def _builder_source(builder):
    """`[file, name]` where a memory subprocess finds `builder` again: also a script's function,
    whose module is `__main__` and cannot be imported by name."""
    return [os.path.abspath(inspect.getfile(builder)), builder.__qualname__]


def _load_builder(source):
    path, name = source
    spec = importlib.util.spec_from_file_location("_keras_vit_benchmark_builders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


# ----------------------------------------------------------------------------- timing


def time_interleaved(functions, repeats=5, warmup=2):
    """Times each zero-argument function `repeats` times, round-robin after `warmup` calls each.

    Returns `{name: [seconds, ...]}`. Interleaving spreads load from other processes over all
    contenders instead of penalising whichever ran while the machine was busy.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds, batch_size, flops_per_image=None, peak_tflops=None):
    """Median / min / max milliseconds, images per second, and MFU when a peak is known."""
    median = float(np.median(seconds))
    row = {"median_ms": median * 1e3, "min_ms": min(seconds) * 1e3, "max_ms": max(seconds) * 1e3,
           "images_per_s": batch_size / median, "repeats": len(seconds), "batch_size": batch_size}
    if flops_per_image and peak_tflops:
        row["mfu"] = flops_per_image * batch_size / median / (peak_tflops * 1e12)
    return row


def _peak_tflops(gpu, precision, override):
    if override:
        return override
    for name, peaks in PEAK_TFLOPS.items():
        if gpu and name in gpu:
            return peaks[precision]
    return None


def _memory_in_subprocess(spec, contender, images_shape, builders=None):
    """Peak memory of one contender doing one inference and one training step, in a fresh process.
    `builders`: the extra peer builders of `build_contenders`, found again there by file."""
    code = ("import json, sys; from keras_vit.benchmark import _memory_child; "
            "print('KVB_MEMORY=' + json.dumps(_memory_child(json.loads(sys.argv[1]))))")
    # Only the contender's own peer is built there, so RSS is not inflated by the others' imports.
    peers = [contender.peer] if contender.peer else []
    sources = {peer: _builder_source(builders[peer]) for peer in peers
               if builders and peer in builders}
    if contender.prepare is not None:
        contender.prepare()
    payload = json.dumps({**spec, "peers": peers, "builders": sources, "name": contender.name,
                          "images_shape": images_shape, "onnx_files": _ONNX_FILES})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True,
                            env=env, timeout=1800)
    for line in result.stdout.splitlines():
        if line.startswith("KVB_MEMORY="):
            return json.loads(line[len("KVB_MEMORY="):])
    return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1]}


def peak_rss_mib():
    """This process's RSS high-water mark in MiB.

    Linux's `getrusage().ru_maxrss` survives `exec`, so a child started from a big parent reports
    the parent's peak; `VmHWM` in /proc/self/status belongs to the current address space only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _memory_child(spec):
    set_threads(spec["threads"])
    _ONNX_FILES.update(spec.get("onnx_files", {}))
    builders = {peer: _load_builder(source) for peer, source in spec.get("builders", {}).items()}
    contenders, _ = build_contenders(spec["config"], spec["precision"], spec["optimizer"],
                                     spec["peers"], spec["fast"], builders)
    contender = next(c for c in contenders if c.name == spec["name"])
    images = np.random.default_rng(0).uniform(0, 255, spec["images_shape"]).astype("float32")
    labels = np.zeros(len(images), "int32")
    baseline = peak_rss_mib()
    predict = contender.build_predict(images)
    predict(images)
    if contender.build_train is not None:
        step = contender.build_train(images, labels)
        step()
        step()
    peak = peak_rss_mib()
    return {"peak_rss_mib": peak, "rss_after_imports_mib": baseline,
            "device_peak_mib": _device_peak_mib(contender)}


def _device_peak_mib(contender):
    if contender.device_peak_mib is not None:
        return contender.device_peak_mib()
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform == "gpu" else None
        return stats["peak_bytes_in_use"] / 2**20 if stats else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return None


def _tflite_latency(config, modes, threads, repeats, warmup, images):
    """Batch-1 latency of the model converted with keras_vit.export.tflite, per quantization mode."""
    import tempfile

    import keras

    if keras.backend.backend() != "tensorflow":
        return {}, {"tflite": "needs KERAS_BACKEND=tensorflow (conversion goes through TensorFlow)"}
    from ai_edge_litert.interpreter import Interpreter

    from keras_vit import export, models

    model = models.VisionTransformer(**config)
    functions, sizes = {}, {}
    with tempfile.TemporaryDirectory(prefix="keras_vit_bench_") as tmp:
        for mode in modes:
            path = os.path.join(tmp, f"vit_{mode}.tflite")
            calibration = images[:4] if mode == "int8" else None
            # Random weights: agreement with Keras says nothing here, so no threshold.
            export.tflite(model, path, quantization=None if mode == "none" else mode,
                          calibration_data=calibration, evaluation_data=images[:2],
                          min_top1_agreement=0.0, verbose=False)
            sizes[mode] = os.path.getsize(path)
            interpreter = Interpreter(model_path=path, num_threads=threads)
            (detail,) = interpreter.get_input_details()
            interpreter.resize_tensor_input(detail["index"], (1, *images.shape[1:]))
            interpreter.allocate_tensors()
            interpreter.set_tensor(detail["index"], images[:1])
            functions[f"LiteRT {mode}"] = interpreter.invoke
        times = time_interleaved(functions, repeats, warmup)
    rows = {name: dict(summarize(t, 1), size_mb=sizes[name.split()[-1]] / 1e6)
            for name, t in times.items()}
    return rows, {}


def _synthetic_jpegs(folder, count, shape=(375, 500), seed=0):
    """`count` photo-like JPEGs (smooth colour fields with texture, quality 90; about the size and
    decode cost of ImageNet photos, unlike white noise) in two class sub-folders of `folder`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype("float32")
    for index in range(count):
        channels = []
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.005, 0.05, 2).tolist() + [rng.uniform(0, 6.3)]
            channels.append(128 + 90 * np.sin(fx * xx + fy * yy + phase))
        pixels = np.stack(channels, -1) + rng.normal(0, 12, (*shape, 3))
        sub = os.path.join(folder, f"class_{index % 2}")
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(
            os.path.join(sub, f"{index:04d}.jpg"), quality=90)


def _pipeline_throughput(image_size, batch_size, repeats, warmup):
    """Per-batch time of keras_vit.data.from_directory(..., training=True) on synthetic JPEGs."""
    import tempfile

    if importlib.util.find_spec("tensorflow") is None:
        return {}, {"pipeline": "needs TensorFlow (tf.data), which is not installed"}
    from keras_vit import data

    with tempfile.TemporaryDirectory(prefix="keras_vit_bench_") as tmp:
        _synthetic_jpegs(tmp, max(2 * batch_size, 64))
        dataset = data.from_directory(tmp, image_size=image_size, batch_size=batch_size,
                                      training=True, seed=0).repeat()
        iterator = iter(dataset)
        for _ in range(max(warmup, 1)):
            next(iterator)
        batches = 4  # per timing: the prefetch buffer must not hide the pipeline's own speed
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(batches):
                next(iterator)
            seconds.append((time.perf_counter() - start) / batches)
    return {"keras_vit.data pipeline": summarize(seconds, batch_size)}, {}


def run_suite(config, batch_size=32, latency_batch_size=1, precision="float32", peers=PEERS,
              tasks=DEFAULT_TASKS, repeats=5, warmup=2, threads=None, optimizer="sgd", fast=True,
              tflite_modes=("none", "float16", "dynamic"), peak_tflops=None, builders=None):
    """Runs the benchmark; returns a JSON-able dict with `settings`, `environment`, `results`
    (task -> contender -> numbers) and `skipped` (what was not run and why).

    `builders` adds contenders by peer name (see `PEER_BUILDERS`); `peers` picks among them.
    A builder must be a module-level function of an importable file, so that the memory
    subprocesses can build its contender again."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}: expected one of {list(PRECISIONS)}.")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}: expected some of {list(TASKS)}.")
    threads = threads or len(os.sched_getaffinity(0))
    set_threads(threads)
    peers = [p for p in peers if p != "none"]
    contenders, skipped = build_contenders(config, precision, optimizer, peers, fast, builders)
    env = environment(threads)
    peak = _peak_tflops(env["gpu"], precision, peak_tflops)
    forward = vit_flops(**config)
    size = config["image_size"]
    shape = (batch_size, *((size, size) if np.isscalar(size) else size), 3)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, shape).astype("float32")
    labels = rng.integers(0, config["num_classes"], batch_size).astype("int32")
    results = {}

    for task, batch in (("latency", latency_batch_size), ("throughput", batch_size)):
        if task not in tasks:
            continue
        data = images[:batch]
        if batch > batch_size:
            data = rng.uniform(0, 255, (batch, *shape[1:])).astype("float32")
        functions = {}
        for c in contenders:
            predict = c.build_predict(data)
            functions[c.name] = (lambda p=predict: p(data))
        times = time_interleaved(functions, repeats, warmup)
        results[task] = {name: summarize(t, batch, forward, peak) for name, t in times.items()}

    if "training" in tasks:
        functions = {c.name: c.build_train(images, labels) for c in contenders if c.build_train}
        times = time_interleaved(functions, repeats, warmup)
        results["training"] = {name: summarize(t, batch_size, 3 * forward, peak)
                               for name, t in times.items()}

    if "memory" in tasks:
        spec = {"config": config, "precision": precision, "optimizer": optimizer, "fast": fast,
                "threads": threads}
        results["memory"] = {c.name: _memory_in_subprocess(spec, c, list(shape), builders)
                             for c in contenders}

    if "tflite" in tasks:
        rows, why = _tflite_latency(config, tflite_modes, threads, repeats, warmup, images)
        results["tflite"] = rows
        skipped.update(why)

    if "pipeline" in tasks:
        rows, why = _pipeline_throughput(size, batch_size, repeats, warmup)
        results["pipeline"] = rows
        skipped.update(why)

    return {
        "settings": {"config": config, "batch_size": batch_size,
                     "latency_batch_size": latency_batch_size, "precision": precision,
                     "optimizer": optimizer, "repeats": repeats, "warmup": warmup,
                     "forward_gflops_per_image": forward / 1e9, "peak_tflops": peak,
                     "contenders": {c.name: c.settings for c in contenders}},
        "environment": env, "results": results, "skipped": skipped,
    }
