"""Fast inference: a ViT's forward pass as one compiled function over a low-precision weight copy.

    predict = keras_vit.inference.fast_predictor(model)   # bfloat16 where native, else float32
    logits = predict(images)        # raw [0, 255] pixels (batch, H, W, 3) -> float32 NumPy logits

Why it is faster than `model.predict_on_batch` under a `mixed_bfloat16` policy (benchmarks/RESULTS.md
has the measurements):
- the weights are cast to bfloat16 once, here, instead of on every call;
- the input normalisation is folded into the patch projection, the LayerNorm scale/shift into the
  matmul that follows it, LayerScale into the matmul before it, and 1/sqrt(head_dim) into the
  query weights: fewer passes over the activations;
- tokens stay a 2-D `(batch * tokens, width)` matrix, so on TensorFlow every projection is
  MatMul + BiasAdd (+ GELU), which oneDNN runs as one fused kernel (the bfloat16 erf of an unfused
  exact GELU alone costs more than its matmul on CPU);
- LayerNorm statistics run in float32, softmax accumulates in float32; the logits stay within
  bfloat16 rounding of the model's (top-1 unchanged on the real photos of the tests);
- on TensorFlow it is a `tf.function` without XLA on CPU (XLA's CPU bfloat16 dot is several times
  slower than oneDNN's), with XLA on GPU; on JAX a `jax.jit`; on PyTorch eager under `inference_mode`.

The predictor snapshots the weights: rebuild it after changing the model's weights.

The fused forward pass implements the options that `FUSED_FIELDS` lists, read from the model's
`ModelConfig`; a model with any other value (MAP pooling, a hybrid backbone, a distillation token,
...) runs its own layers, re-instantiated under the `precision` dtype policy. A config field the
table does not classify is an error, so a new model option can never silently give another answer.
The fused pass exists beside the model's own layers because it is measurably faster on CPU, most
in bfloat16 (benchmarks/RESULTS.md); every option it implements is tested against the model's
output (tests/test_inference.py).
"""

import dataclasses
import logging
import math
import platform
import warnings

import keras
import numpy as np
from keras import ops

from keras_vit.config import ModelConfig

PRECISIONS = ("float32", "bfloat16")
BACKEND_HINTS = (None, "graph", "xla", "eager")
# CPU flags (Linux /proc/cpuinfo) that mean native bfloat16 matmuls: x86 AVX512-BF16 and AMX, Arm BF16.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")

# Every ModelConfig field, and the values of it the fused forward pass (`_fold_weights` +
# `_make_forward`) implements: ANY, or a tuple of values. Another value runs the model's own layers.
ANY = "any value"
FUSED_FIELDS = {
    # Shapes: read from the config and the weights.
    "image_size": ANY, "patch_size": ANY, "hidden_size": ANY, "num_layers": ANY,
    "num_heads": ANY, "mlp_dim": ANY, "num_classes": ANY, "include_top": ANY,
    "pooling": ("token", "gap"),
    "representation_size": ANY,
    # Training-only: inference runs without dropout or stochastic depth.
    "dropout_rate": ANY, "attention_dropout_rate": ANY, "drop_path_rate": ANY,
    # Folded into the patch projection / the matmul before or after.
    "include_preprocessing": ANY, "normalization_mean": ANY, "normalization_std": ANY,
    "layer_scale_init_value": ANY,
    "classifier_activation": ANY,
    "class_token": ANY, "num_registers": ANY, "layer_norm_epsilon": ANY,
    "backbone": (None,),
    "distilled": (False,),
    # Only changes the graph of a distilled model, which `distilled` already sends to the model.
    "distillation_head": ANY,
    # Metadata and preprocessing outside the model: not part of the forward pass.
    "class_names": ANY, "crop_pct": ANY, "interpolation": ANY,
}

logger = logging.getLogger(__name__)
_warned_emulated_bfloat16 = False


def cpu_info(path="/proc/cpuinfo"):
    """The first processor's fields of /proc/cpuinfo, with `flags` (x86 `flags`, Arm `Features`)
    as a set; {} where there is no such file."""
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip():
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        return {}
    fields["flags"] = set((fields.get("flags") or fields.get("Features") or "").split())
    return fields


def on_accelerator():
    """Whether the current Keras backend computes on a GPU/TPU rather than the CPU."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def native_bfloat16():
    """True when bfloat16 matmuls run natively here: on any GPU/TPU, or on a CPU with AVX512-BF16,
    AMX or Arm BF16. False on CPUs without them (e.g. AMD Zen 2/3, Intel before Cooper Lake), where
    bfloat16 is emulated and slower than float32, and where /proc/cpuinfo cannot be read."""
    if on_accelerator():
        return True
    return bool(cpu_info().get("flags", set()) & set(BFLOAT16_CPU_FLAGS))


def fast_predictor(model, precision="auto", backend_hint=None):
    """Returns `predict(images) -> logits` (float32 NumPy) computing `model`'s forward pass fast.

    Args:
        model: a `keras_vit.VisionTransformer`. The fused forward pass covers the options in
            `FUSED_FIELDS` (any size, token/gap pooling, registers, LayerScale, ...); other models
            (MAP pooling, no pooling, hybrids, DeiT's distillation token) run their own layers
            under the `precision` dtype policy, with a log line naming the option.
        precision: `"bfloat16"` (bfloat16 weights and matmuls; LayerNorm statistics and softmax
            accumulation in float32), `"float32"`, or `"auto"` (default): bfloat16 where it is
            native (`native_bfloat16()`: GPUs, CPUs with AVX512-BF16/AMX/Arm BF16), float32 on
            other CPUs, where emulated bfloat16 is slower than float32 (benchmarks/RESULTS.md).
            The choice is logged. Asking for `"bfloat16"` on such a CPU
            warns once.
        backend_hint: None picks the fastest known way for the current Keras backend and device;
            `"graph"` (tf.function without XLA; jax.jit on JAX), `"xla"` (XLA / jax.jit) or
            `"eager"` (no compilation) force one.

    Example:
        >>> model = keras_vit.ViTS16()
        >>> predict = fast_predictor(model, precision="bfloat16")
        >>> predict(np.zeros((8, 224, 224, 3), "uint8")).shape
        (8, 1000)
    """
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"Unknown precision {precision!r}: expected one of "
                         f"{[*PRECISIONS, 'auto']}.")
    precision = _choose_precision(precision)
    if backend_hint not in BACKEND_HINTS:
        raise ValueError(f"Unknown backend_hint {backend_hint!r}: expected one of {list(BACKEND_HINTS)}.")
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"fast_predictor needs a keras_vit VisionTransformer, got {type(model).__name__}.")
    quantized = {layer.name: layer.quantization_mode
                 for layer in model._flatten_layers(include_self=False)
                 if getattr(layer, "quantization_mode", None)}
    if quantized:
        # Keras-quantised layers (`layer.quantize("int8")`) hold integer kernels and scales that
        # neither the fused pass nor a dtype-policy copy of the model reads.
        names = list(quantized)
        raise ValueError(f"fast_predictor runs float models; these layers are quantised "
                         f"({', '.join(sorted(set(quantized.values())))}): {names[:5]}"
                         f"{' ...' if len(names) > 5 else ''}. Call the model itself.")
    unsupported = unfused_options(config)
    if unsupported:
        logger.info("fast_predictor: %s not in the fused forward pass; running the model's own "
                    "layers under a %s dtype policy", ", ".join(
                        f"{key}={value!r}" for key, value in unsupported.items()), precision)
        forward, params = _policy_forward(model, precision)
    else:
        params = _fold_weights(model, config, precision)
        forward = _make_forward(config, precision)
    return _compile(forward, params, _choose_hint(backend_hint), config.image_size)


def unfused_options(config):
    """`{field: value}` of the `ModelConfig` fields whose value the fused forward pass does not
    implement ({} when it implements them all). NotImplementedError for a field that
    `FUSED_FIELDS` does not classify: whether the fused pass would be right is unknown."""
    unsupported = {}
    for field in dataclasses.fields(config):
        if field.name not in FUSED_FIELDS:
            raise NotImplementedError(
                f"fast_predictor does not know whether its fused forward pass implements the model "
                f"option {field.name!r}: classify it in keras_vit.inference.FUSED_FIELDS.")
        supported, value = FUSED_FIELDS[field.name], getattr(config, field.name)
        if supported is not ANY and value not in supported:
            unsupported[field.name] = value
    return unsupported


def _choose_precision(precision):
    global _warned_emulated_bfloat16
    if precision == "auto":
        native = native_bfloat16()
        chosen = "bfloat16" if native else "float32"
        logger.info("fast_predictor: precision %s (%s)", chosen,
                    "native bfloat16 on this device" if native else
                    f"this CPU ({platform.machine()}) has no native bfloat16 matmul "
                    f"({', '.join(BFLOAT16_CPU_FLAGS)}); emulated bfloat16 is slower than float32")
        return chosen
    if precision == "bfloat16" and not _warned_emulated_bfloat16 and not native_bfloat16():
        _warned_emulated_bfloat16 = True
        warnings.warn("fast_predictor(precision='bfloat16') on a CPU without native bfloat16 "
                      f"matmuls (none of the CPU flags {', '.join(BFLOAT16_CPU_FLAGS)}): bfloat16 "
                      "is emulated here and usually slower than float32; precision='auto' picks "
                      "float32 on such CPUs.", stacklevel=3)
    return precision


def _choose_hint(hint):
    if hint is not None:
        return hint
    backend = keras.backend.backend()
    if backend == "jax":
        return "xla"
    if backend == "tensorflow":
        return "xla" if on_accelerator() else "graph"
    return "eager"


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), dtype="float64")


def _fold_weights(model, config, precision):
    """Float64 folding of normalisation, LayerNorm affine and attention scale, then one cast."""
    params = {}
    patch = model.get_layer("patch_embedding").projection
    kernel = _numpy(patch.kernel)  # (ph, pw, 3, D)
    bias = _numpy(patch.bias)
    if config.include_preprocessing:
        # (x * scale + offset) @ K == x @ (scale * K) + offset @ K, per input channel.
        norm = model.get_layer("preprocessing")
        scale = 1.0 / (255.0 * np.asarray(norm.std))
        offset = -np.asarray(norm.mean) / np.asarray(norm.std)
        bias = bias + np.einsum("c,hwcd->d", offset, kernel)
        kernel = kernel * scale[:, None]
    params["patch_kernel"] = kernel.reshape(-1, kernel.shape[-1])
    params["patch_bias"] = bias
    position = _numpy(model.get_layer("position_embedding").embedding)
    if config.class_token:
        # The class token's entry of the position embedding is a constant: add it once here.
        position = position.copy()
        params["class_token"] = _numpy(model.get_layer("class_token").token) + position[:, :1]
        position = position[:, 1:]
    params["position"] = position
    if config.num_registers:
        params["registers"] = _numpy(model.get_layer("register_tokens").tokens)
    head_dim = config.hidden_size // config.num_heads
    blocks = []
    for block in model.encoder_blocks:
        attention = block.attention
        qkv_kernel, qkv_bias = _fold_norm(block.norm1, attention.qkv)
        # Scale the query columns by 1/sqrt(head_dim) so attention needs no extra multiply.
        q_scale = np.ones(qkv_kernel.shape[-1])
        q_scale[: config.hidden_size] = 1.0 / math.sqrt(head_dim)
        fc1_kernel, fc1_bias = _fold_norm(block.norm2, block.mlp.fc1)
        proj_kernel, proj_bias = _numpy(attention.proj.kernel), _numpy(attention.proj.bias)
        fc2_kernel, fc2_bias = _numpy(block.mlp.fc2.kernel), _numpy(block.mlp.fc2.bias)
        # LayerScale multiplies the branch output: fold it into the branch's last matmul.
        if block.layer_scale1 is not None:
            gamma = _numpy(block.layer_scale1.gamma)
            proj_kernel, proj_bias = proj_kernel * gamma, proj_bias * gamma
            gamma = _numpy(block.layer_scale2.gamma)
            fc2_kernel, fc2_bias = fc2_kernel * gamma, fc2_bias * gamma
        blocks.append({
            "qkv_kernel": qkv_kernel * q_scale, "qkv_bias": qkv_bias * q_scale,
            "proj_kernel": proj_kernel, "proj_bias": proj_bias,
            "fc1_kernel": fc1_kernel, "fc1_bias": fc1_bias,
            "fc2_kernel": fc2_kernel, "fc2_bias": fc2_bias,
        })
    params["blocks"] = blocks
    final_norm = model.get_layer("encoder_norm")
    params["norm_gamma"], params["norm_beta"] = _numpy(final_norm.gamma), _numpy(final_norm.beta)
    if config.representation_size:
        layer = model.get_layer("pre_logits")
        params["pre_logits_kernel"], params["pre_logits_bias"] = _numpy(layer.kernel), _numpy(layer.bias)
    if config.include_top:
        head = model.get_layer("head")
        params["head_kernel"], params["head_bias"] = _numpy(head.kernel), _numpy(head.bias)
    # Matmul operands in `precision`; LayerNorm affine of the final norm stays float32 (it feeds
    # pooling, not a matmul, so it cannot be folded).
    return _cast_tree(params, precision, keep_float32=("norm_gamma", "norm_beta"))


def _fold_norm(norm, dense):
    """LN(x) @ W + b == normalized(x) @ (gamma[:, None] * W) + (beta @ W + b)."""
    gamma, beta = _numpy(norm.gamma), _numpy(norm.beta)
    kernel, bias = _numpy(dense.kernel), _numpy(dense.bias)
    return gamma[:, None] * kernel, beta @ kernel + bias


def _cast_tree(tree, dtype, keep_float32=()):
    if isinstance(tree, list):
        return [_cast_tree(t, dtype) for t in tree]
    if isinstance(tree, dict):
        return {k: _cast_tree(v, "float32" if k in keep_float32 else dtype) for k, v in tree.items()}
    return ops.convert_to_tensor(np.asarray(tree, "float32"), dtype=dtype)


def _make_forward(config, precision):
    ph, pw = config.patch_size
    gh, gw = config.grid_size
    hidden, heads = config.hidden_size, config.num_heads
    head_dim = hidden // heads
    tokens = int(config.class_token) + config.num_registers + gh * gw
    epsilon = config.layer_norm_epsilon
    num_prefix = int(config.class_token)
    activation = keras.activations.get(config.classifier_activation)
    tf = None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

    def normalized(x):
        # LayerNorm without its affine (folded into the next matmul); statistics in float32.
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=-1, keepdims=True)
        centered = x - mean
        variance = ops.mean(ops.square(centered), axis=-1, keepdims=True)
        return ops.cast(centered * ops.rsqrt(variance + epsilon), precision)

    def dense(x, kernel, bias, gelu=False):
        """`(rows, in) @ kernel + bias`, then the exact GELU if asked."""
        if tf is not None:
            # MatMul + BiasAdd (+ Gelu) on 2-D tensors is the pattern TensorFlow's oneDNN remapper
            # fuses into one kernel. With AddV2, or the GELU computed apart, they run as separate
            # passes, and bfloat16 erf alone is slower than the matmul (benchmarks/RESULTS.md,
            # "Numbers behind the code").
            y = tf.nn.bias_add(tf.matmul(x, kernel), bias)
            return tf.nn.gelu(y, approximate=False) if gelu else y
        y = ops.matmul(x, kernel) + bias
        if not gelu:
            return y
        y = ops.cast(y, "float32")  # erf in float32: accurate, and fast on every backend
        return ops.cast(0.5 * y * (1.0 + ops.erf(y * (1.0 / math.sqrt(2.0)))), precision)

    def attention(x, block):
        # x: (batch * tokens, hidden), so that every projection is a plain 2-D matmul.
        qkv = dense(normalized(x), block["qkv_kernel"], block["qkv_bias"])
        qkv = ops.transpose(ops.reshape(qkv, (-1, tokens, 3, heads, head_dim)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]  # (batch, heads, tokens, head_dim)
        logits = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
        if tf is not None:
            # oneDNN's softmax accumulates in float32 whatever the input type: same logits as
            # casting around it (checked bit for bit on ViT-S/16), without two extra passes.
            weights = tf.nn.softmax(logits)
        else:
            weights = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), precision)
        out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (-1, hidden))
        return dense(out, block["proj_kernel"], block["proj_bias"])

    def forward(params, images):
        x = ops.cast(images, precision)  # integers 0..255 are exact in bfloat16
        x = ops.reshape(x, (-1, gh, ph, gw, pw, 3))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, ph * pw * 3))
        x = dense(x, params["patch_kernel"], params["patch_bias"])
        x = ops.reshape(x, (-1, gh * gw, hidden)) + params["position"]
        batch = ops.shape(x)[0]
        if num_prefix:
            x = ops.concatenate([ops.broadcast_to(params["class_token"], (batch, 1, hidden)), x], 1)
        if "registers" in params:
            registers = ops.broadcast_to(params["registers"], (batch, config.num_registers, hidden))
            x = ops.concatenate([x[:, :num_prefix], registers, x[:, num_prefix:]], axis=1)
        x = ops.reshape(x, (-1, hidden))
        for block in params["blocks"]:
            x = x + attention(x, block)
            h = dense(normalized(x), block["fc1_kernel"], block["fc1_bias"], gelu=True)
            x = x + dense(h, block["fc2_kernel"], block["fc2_bias"])
        x = ops.reshape(x, (-1, tokens, hidden))
        # encoder_norm then pooling; for the class token, norm-of-one-token is the same and cheaper.
        x = x[:, :1] if config.pooling == "token" else x[:, config.num_prefix_tokens:]
        x = ops.cast(normalized(x), "float32") * params["norm_gamma"] + params["norm_beta"]
        x = ops.cast(ops.mean(x, axis=1), precision)
        if "pre_logits_kernel" in params:
            x = ops.tanh(dense(x, params["pre_logits_kernel"], params["pre_logits_bias"]))
        if "head_kernel" in params:
            x = activation(ops.cast(dense(x, params["head_kernel"], params["head_bias"]), "float32"))
        return ops.cast(x, "float32")

    return forward


def _policy_forward(model, precision):
    """The model's own layers under the `precision` dtype policy (for the options that the fused
    forward pass does not implement)."""
    from keras_vit.models import with_dtype

    clone = with_dtype(model, precision)

    def forward(params, images):
        return ops.cast(clone(images, training=False), "float32")

    return forward, {}


def _compile(forward, params, hint, image_size):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # No autograph: the forward's only Python control flow is the loop over blocks.
        function = tf.function(lambda images: forward(params, images), jit_compile=hint == "xla",
                               reduce_retracing=True, autograph=False)
        if hint == "eager":
            function = function.python_function
    elif backend == "jax":
        import jax

        compiled = jax.jit(forward) if hint != "eager" else forward

        def function(images):
            return compiled(params, images)
    elif backend == "torch":
        import torch

        def function(images):
            with torch.inference_mode():
                return forward(params, images)
    else:
        raise ValueError(f"fast_predictor supports the tensorflow, jax and torch backends, not {backend!r}.")

    def predict(images):
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != (*image_size, 3):
            raise ValueError(f"Expected images of shape (batch, {image_size[0]}, {image_size[1]}, 3), "
                             f"got {images.shape}.")
        return np.asarray(ops.convert_to_numpy(function(ops.convert_to_tensor(images, "float32"))))

    return predict
