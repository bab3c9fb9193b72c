"""The paper's recipes as `model.compile` keyword arguments, XLA and mixed-precision choices.

    model.compile(**finetune_recipe(steps=10_000, base_lr=0.03))
"""

import logging
import math
import warnings

import keras

from keras_vit.layers import PACKAGE
from keras_vit.training.losses import ClassificationCrossentropy, classification_metrics
from keras_vit.training.schedules import default_warmup_steps, make_schedule

logger = logging.getLogger("keras_vit.training")
register = keras.saving.register_keras_serializable(package=PACKAGE)

RECIPES = ("finetune", "scratch")
WEIGHT_DECAY_MODES = ("keras", "decoupled")
PRECISIONS = {None: "float32", "float32": "float32", "float16": "mixed_float16",
              "bfloat16": "mixed_bfloat16"}
# The warmup caps of the papers: 500 of 10k fine-tuning steps, 10k pre-training steps.
FINETUNE_WARMUP_CAP = 500
SCRATCH_WARMUP_CAP = 10_000
# facebookresearch/deit main.py defaults (the paper's Table 9): lr 5e-4 per 512 images, min-lr.
DEIT_LR, DEIT_REFERENCE_BATCH, DEIT_MIN_LR = 5e-4, 512, 1e-5
DEIT_EMA_MOMENTUM = 0.99996
# Variable names (Keras `variable.name`, the last part of the path) that get no weight decay:
# biases, LayerNorm and LayerScale scales/offsets, position embeddings, class and register tokens,
# the MAP probe. Only kernels are decayed, as big_vision's default `wd_mults` ('.*/kernel$').
NO_WEIGHT_DECAY = ("bias", "gamma", "beta", "embedding", "token", "tokens", "probe")
# Keras matches `var_names` anywhere in the name, and on TensorFlow it sees the full variable path
# ("patch_embedding/projection/kernel:0" contains "embedding"): anchor to the last path component.
NO_WEIGHT_DECAY_PATTERN = rf"(?:^|/)(?:{'|'.join(NO_WEIGHT_DECAY)})(?::\d+)?$"


@register
class AdamW(keras.optimizers.AdamW):
    """Keras AdamW that keeps `exclude_from_weight_decay` names in its config.

    Keras's own drops them from `get_config`, so a model reloaded from `.keras` and trained on
    would start decaying biases, LayerNorm and position embeddings."""

    def __init__(self, *args, exclude_from_weight_decay_names=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.exclude_from_weight_decay_names = list(exclude_from_weight_decay_names or [])
        if self.exclude_from_weight_decay_names:
            self.exclude_from_weight_decay(var_names=self.exclude_from_weight_decay_names)

    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay_names"] = self.exclude_from_weight_decay_names
        return config

    def finalize_variable_values(self, var_list):
        """With `use_ema`, Keras copies the moving average into the model at the end of every
        `fit` call. A run resumed in two calls (`keras_vit.training.fit` finishing an interrupted
        epoch first) would then go on from the average: copy it only once the learning-rate
        schedule has run its course (or when the schedule has no length)."""
        total = getattr(self._learning_rate, "total_steps", None)
        if self.use_ema and total is not None and int(self.iterations) < total:
            return
        super().finalize_variable_values(var_list)


def finetune_recipe(steps, base_lr=0.03, warmup_steps=None, momentum=0.9, clipnorm=1.0,
                    decay="cosine", label_smoothing=0.0, gradient_accumulation_steps=None,
                    jit_compile="auto", num_classes=None, end_lr=0.0):
    """The paper's fine-tuning: SGD with momentum 0.9, linear warmup then cosine decay, gradient
    clipping at global norm 1, no weight decay. Returns the kwargs of `model.compile`.

    `steps` counts optimizer updates; with `gradient_accumulation_steps=k` each update takes k
    batches (the schedule is stretched by k, since Keras evaluates it on every batch).
    `warmup_steps=None` warms up for 10% of the steps, at most the paper's 500 (`keras-vit train`
    uses the same rule). The loss and metrics take integer or one-hot/soft labels.

        model.compile(**finetune_recipe(steps=10_000, base_lr=0.03))
    """
    steps, accumulate, warmup = _check_steps(steps, warmup_steps, gradient_accumulation_steps,
                                             FINETUNE_WARMUP_CAP)
    _check_positive(base_lr=base_lr, clipnorm=clipnorm)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
    schedule = make_schedule(decay, base_lr, steps * accumulate, warmup * accumulate, end_lr)
    optimizer = keras.optimizers.SGD(schedule, momentum=momentum, global_clipnorm=clipnorm,
                                     gradient_accumulation_steps=accumulate if accumulate > 1 else None)
    return _compile_kwargs(optimizer, label_smoothing, jit_compile, num_classes)


def scratch_recipe(steps, base_lr=1e-3, weight_decay=0.1, warmup_steps=None, b1=0.9, b2=0.999,
                   decay="cosine", clipnorm=1.0, weight_decay_mode="keras", label_smoothing=0.0,
                   gradient_accumulation_steps=None, jit_compile="auto", num_classes=None,
                   end_lr=0.0):
    """Pre-training style: AdamW (b1 0.9, b2 0.999), linear warmup then cosine or linear decay,
    global-norm clipping at 1, weight decay on kernels only (no decay of biases, LayerNorm,
    position embeddings, class/register tokens; see `NO_WEIGHT_DECAY`). `warmup_steps=None`
    warms up for 10% of the steps, at most the paper's 10k.

    `weight_decay_mode` says what `weight_decay` means, per step, for a weight `w`:
      - `"keras"` (default): `w -= weight_decay * lr(t) * w`, the convention of Keras and PyTorch
        AdamW, and the one in which the ViT paper's `weight_decay=0.1` (at lr 1e-3) is stated, so
        the paper's and timm's numbers work as they are.
      - `"decoupled"`: `w -= weight_decay * lr(t) / base_lr * w`: decay follows the schedule but not
        the learning rate, as in big_vision, whose configs say `wd=1e-4` for the same run
        (0.1 x 1e-3). Implemented as Keras AdamW with `weight_decay / base_lr`.

        model.compile(**scratch_recipe(steps=20_000, base_lr=1e-3, warmup_steps=2_000))
    """
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"Unknown weight_decay_mode {weight_decay_mode!r}: expected one of "
                         f"{list(WEIGHT_DECAY_MODES)}.")
    steps, accumulate, warmup = _check_steps(steps, warmup_steps, gradient_accumulation_steps,
                                             SCRATCH_WARMUP_CAP)
    _check_positive(base_lr=base_lr, clipnorm=clipnorm)
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    schedule = make_schedule(decay, base_lr, steps * accumulate, warmup * accumulate, end_lr)
    keras_decay = weight_decay if weight_decay_mode == "keras" else weight_decay / base_lr
    optimizer = AdamW(schedule, weight_decay=keras_decay, beta_1=b1, beta_2=b2,
                      global_clipnorm=clipnorm,
                      gradient_accumulation_steps=accumulate if accumulate > 1 else None,
                      exclude_from_weight_decay_names=[NO_WEIGHT_DECAY_PATTERN])
    return _compile_kwargs(optimizer, label_smoothing, jit_compile, num_classes)


def deit_recipe(steps, batch_size, steps_per_epoch=None, base_lr=DEIT_LR, weight_decay=0.05,
                warmup_epochs=5, warmup_steps=None, end_lr=DEIT_MIN_LR, label_smoothing=0.1,
                b1=0.9, b2=0.999, clipnorm=None, ema=False, ema_momentum=DEIT_EMA_MOMENTUM,
                gradient_accumulation_steps=None, jit_compile="auto", num_classes=None):
    """DeiT's training (Touvron et al., 2020, Table 9; facebookresearch/deit `main.py` defaults):
    AdamW with the learning rate `base_lr * batch / 512` (5e-4 per 512 images; `batch` is
    `batch_size` times `gradient_accumulation_steps`, the images per update), betas (0.9, 0.999),
    eps 1e-8, weight decay 0.05 on kernels only (`NO_WEIGHT_DECAY`, as timm's
    `filter_bias_and_bn` and DeiT's `no_weight_decay` tokens), no gradient clipping, linear
    warmup for `warmup_epochs=5` epochs then cosine decay to `end_lr=1e-5` (DeiT's `--min-lr`;
    ValueError when the scaled peak is not above it: pass a smaller `end_lr`), label smoothing
    0.1 in the loss. Returns the kwargs of `model.compile` (or `Distiller.compile`).

    `steps` counts optimizer updates; `steps_per_epoch` (batches per epoch, `model.fit`'s) turns
    `warmup_epochs` into steps; without it (or with `warmup_steps`) the warmup is the library's
    10% rule. Differences from DeiT, all small: the warmup starts at 0 (DeiT: 1e-6), it and the
    cosine advance per step (timm: per epoch), and the cosine starts after the warmup.

    The rest of DeiT's recipe lives outside the optimizer:
      - stochastic depth 0.1: `keras_vit.DeiTS16(..., drop_path_rate=0.1)` (the same linear rule
        over depth as DeiT);
      - the data side: `deit_data_options()` for the `keras_vit.data` pipelines (RandAugment,
        MixUp 0.8, CutMix 1.0, random erasing 0.25, repeated augmentation 3). The label smoothing
        stays in this loss (keep the pipelines' `label_smoothing=0`: smoothing the MixUp labels
        here is the same linear map as timm's smoothing before mixing);
      - distillation: `keras_vit.training.Distiller(student, teacher, "hard")` compiled with
        these kwargs.

    EMA (`ema=True`, momentum 0.99996 per step, DeiT's `--model-ema-decay`): Keras's own
    `use_ema` of the optimizer, not a callback. The average is optimizer state, so it is updated
    inside the compiled step on every backend, mirrored under tf.distribute, and saved in the
    run directory's backups and `.keras` files (a resumed run keeps it); a callback would copy
    every weight from Python after each batch and lose the average on resume. Keras copies the
    average into the model when `fit` ends; keras_vit's `AdamW` does that only once the schedule
    has finished (see `AdamW.finalize_variable_values`), so the in-memory model after the run is
    the average while the epoch-end `model.keras`/`best.keras` and the validation metrics are of
    the raw weights (add `keras.callbacks.SwapEMAWeights()` to validate the average). Off by
    default: DeiT computes the EMA but reports the raw model (its authors, facebookresearch/deit
    issue #67: "we decided to not put any results obtained with the model EMA"), and at 0.99996
    the average spans ~25k steps, longer than most fine-tuning runs.

        model = keras_vit.DeiTS16(num_classes=1000, drop_path_rate=0.1)
        model.compile(**deit_recipe(steps=300 * 2502, batch_size=512, steps_per_epoch=2502))
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    accumulate = _accumulation(gradient_accumulation_steps)
    if steps_per_epoch is not None and warmup_steps is None:
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or (
                steps_per_epoch <= 0):
            raise ValueError(f"steps_per_epoch must be None or a positive int, got "
                             f"{steps_per_epoch!r}.")
        if not (isinstance(warmup_epochs, (int, float)) and math.isfinite(warmup_epochs)
                and warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be a number >= 0, got {warmup_epochs!r}.")
        warmup_steps = int(round(warmup_epochs * steps_per_epoch / accumulate))
        if isinstance(steps, int) and warmup_steps > steps:
            raise ValueError(f"warmup_epochs={warmup_epochs} of {steps_per_epoch} steps is "
                             f"{warmup_steps} updates, longer than the run ({steps}): pass fewer "
                             f"warmup_epochs.")
    steps, accumulate, warmup = _check_steps(steps, warmup_steps, gradient_accumulation_steps,
                                             SCRATCH_WARMUP_CAP)
    _check_positive(base_lr=base_lr)
    if clipnorm is not None:
        _check_positive(clipnorm=clipnorm)
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)
            and weight_decay >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}.")
    peak_lr = base_lr * batch_size * accumulate / DEIT_REFERENCE_BATCH
    if not (isinstance(end_lr, (int, float)) and 0 <= end_lr < peak_lr):
        raise ValueError(f"end_lr={end_lr!r} must be >= 0 and below the peak learning rate "
                         f"{peak_lr:.3g} ({base_lr} x {batch_size * accumulate} / "
                         f"{DEIT_REFERENCE_BATCH}); pass e.g. end_lr=0.")
    if not 0.0 < ema_momentum < 1.0:
        raise ValueError(f"ema_momentum must be in (0, 1), got {ema_momentum!r}.")
    schedule = make_schedule("cosine", peak_lr, steps * accumulate, warmup * accumulate, end_lr)
    optimizer = AdamW(schedule, weight_decay=weight_decay, beta_1=b1, beta_2=b2, epsilon=1e-8,
                      global_clipnorm=clipnorm, use_ema=bool(ema), ema_momentum=ema_momentum,
                      gradient_accumulation_steps=accumulate if accumulate > 1 else None,
                      exclude_from_weight_decay_names=[NO_WEIGHT_DECAY_PATTERN])
    return _compile_kwargs(optimizer, label_smoothing, jit_compile, num_classes)


def deit_data_options(randaugment_factor=0.9, seed=None):
    """The data side of DeiT's recipe as keyword arguments of the `keras_vit.data` pipelines
    (`from_arrays`, `from_directory`, `from_tfds` with `training=True`):

      - RandAugment: `keras.layers.RandAugment(num_ops=2, factor=0.9)` on [0, 255] pixels for
        timm's `rand-m9-mstd0.5-inc1` (magnitude 9 of 10). Keras's layer is an approximation:
        it picks the two operations once per batch (timm: per image) and draws each strength
        uniformly up to `factor` (timm: magnitude ~ N(9, 0.5), the `mstd`, which Keras's layer
        does not support);
      - MixUp 0.8 and CutMix 1.0, one or the other per batch (timm's `switch_prob` 0.5);
      - random erasing 0.25 (timm's pixel mode), repeated augmentation 3 (DeiT's RASampler).
    The Inception crop (area 0.08-1, bicubic) and the flip are the pipelines' defaults. Label
    smoothing is in `deit_recipe`'s loss, not here.

        train = keras_vit.data.from_tfds("imagenet2012", "train", 224, 256, training=True,
                                         **deit_data_options())
    """
    if not (isinstance(randaugment_factor, (int, float)) and 0 <= randaugment_factor <= 1):
        raise ValueError(f"randaugment_factor must be in [0, 1], got {randaugment_factor!r}.")
    augment = (keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                        factor=randaugment_factor, seed=seed)
               if randaugment_factor else None)
    return {"augment": augment, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "random_erasing": 0.25,
            "repeated_augmentations": 3}


def _check_steps(steps, warmup_steps, gradient_accumulation_steps, warmup_cap):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int (optimizer updates), got {steps!r}.")
    if warmup_steps is None:
        warmup_steps = default_warmup_steps(steps, warmup_cap)
    elif isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be None or an int >= 0, got {warmup_steps!r}.")
    return steps, _accumulation(gradient_accumulation_steps), warmup_steps


def _check_positive(**values):
    for key, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive number, got {value!r}.")


def _accumulation(steps):
    if steps is None or steps == 1:
        return 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"gradient_accumulation_steps must be None or an int >= 1, got {steps!r}.")
    return steps


def _compile_kwargs(optimizer, label_smoothing, jit_compile, num_classes):
    return {"optimizer": optimizer,
            "loss": ClassificationCrossentropy(from_logits=True, label_smoothing=label_smoothing),
            "metrics": classification_metrics(num_classes),
            "jit_compile": resolve_jit_compile(jit_compile)}


def resolve_jit_compile(jit_compile="auto"):
    """`"auto"` -> XLA where it pays: TensorFlow on GPU/TPU yes, on CPU no (measured slower on
    CPUs, benchmarks/RESULTS.md); JAX always (it has no other mode worth using); torch no
    (torch.compile's start-up rarely pays for a ViT here). Logs the choice and why."""
    if jit_compile in (True, False):
        return jit_compile
    if isinstance(jit_compile, str) and jit_compile.lower() in ("true", "false"):
        return jit_compile.lower() == "true"
    if jit_compile != "auto":
        raise ValueError(f"jit_compile must be 'auto', True or False, got {jit_compile!r}.")
    backend = keras.backend.backend()
    if backend == "jax":
        choice, why = True, "the JAX backend always compiles with XLA"
    elif backend == "tensorflow":
        import tensorflow as tf

        accelerators = [d.device_type for d in tf.config.list_logical_devices()
                        if d.device_type in ("GPU", "TPU")]
        choice = bool(accelerators)
        why = (f"found {sorted(set(accelerators))}" if choice else
               "CPU only: TF's XLA is slower than without it on CPUs")
    else:
        choice, why = False, f"the {backend} backend: torch.compile start-up rarely pays off here"
    logger.info("jit_compile='auto' -> %s (%s)", choice, why)
    return choice


def set_mixed_precision(precision):
    """`"float16"` / `"bfloat16"` -> Keras's `mixed_float16` / `mixed_bfloat16` global policy;
    `None` / `"float32"` -> float32. Call it before building the model. With float16,
    `model.compile` wraps the optimizer in a `LossScaleOptimizer` itself (`auto_scale_loss=True`).
    The ViT head stays float32, so logits and the loss are computed in float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown mixed precision {precision!r}: expected one of "
                         f"{[p for p in PRECISIONS if p]} or None.")
    if precision in ("float16", "bfloat16"):
        from keras_vit.inference import BFLOAT16_CPU_FLAGS, native_bfloat16, on_accelerator

        if precision == "float16" and not on_accelerator():
            warnings.warn("Mixed precision 'float16' on the CPU: it is meant for GPUs; CPU float16 "
                          "matmuls are emulated and usually slower than float32.", stacklevel=2)
        elif precision == "bfloat16" and not native_bfloat16():
            warnings.warn("Mixed precision 'bfloat16' on a CPU without native bfloat16 matmuls "
                          f"(none of the CPU flags {', '.join(BFLOAT16_CPU_FLAGS)}): it is "
                          "emulated here and slower than float32 (benchmarks/RESULTS.md).",
                          stacklevel=2)
    keras.config.set_dtype_policy(PRECISIONS[precision])
    return PRECISIONS[precision]
