"""Knowledge distillation: train a student with a frozen teacher (DeiT, Touvron et al., 2020).

    teacher = keras.applications.ConvNeXtTiny(weights="imagenet", classifier_activation=None)
    student = keras_vit.DeiTTi16(num_classes=1000, distilled=True)
    distiller = keras_vit.training.Distiller(student, teacher, mode="hard")
    distiller.compile(**keras_vit.training.deit_recipe(steps, batch_size=256, steps_per_epoch=n))
    distiller.fit(train_ds, validation_data=val_ds, epochs=300)
    distiller.save("deit_tiny_distilled.keras")   # writes the student

The losses are those of facebookresearch/deit `losses.py` (`DistillationLoss`), with the
compiled loss as DeiT's `base_criterion` and `alpha`, `temperature` as its `alpha`, `tau`.
"""

import math
import numbers
import os

import keras
from keras import ops

from keras_vit.config import check_keywords
from keras_vit.layers import PACKAGE
from keras_vit.training.losses import ClassificationCrossentropy

register = keras.saving.register_keras_serializable(package=PACKAGE)
MODES = ("hard", "soft")


@register
class SoftDistillationLoss(keras.losses.Loss):
    """DeiT's soft distillation term: `KL(softmax(t / T) || softmax(s / T)) * T^2`, summed over
    the classes and divided by the number of classes, then averaged over the batch.

    That is DeiT's `F.kl_div(..., reduction='sum', log_target=True) * T * T / outputs_kd.numel()`
    (batch x classes, "the legacy PyTorch behavior", deit issue #61), so it is 1/num_classes of
    the `batchmean` KL of Hinton et al. `y_true` are the teacher's logits, `y_pred` the student's.
    """

    def __init__(self, temperature=3.0, reduction="sum_over_batch_size",
                 name="soft_distillation", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = _check_temperature(temperature)

    def call(self, y_true, y_pred):
        temperature = self.temperature
        teacher = ops.log_softmax(ops.cast(y_true, "float32") / temperature, axis=-1)
        student = ops.log_softmax(ops.cast(y_pred, "float32") / temperature, axis=-1)
        kl = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1)
        return kl * (temperature * temperature / y_pred.shape[-1])

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register
class Distiller(keras.Model):
    """A student trained with a frozen teacher, as DeiT does. `compile` and `fit` it like a model
    on the usual `(images, labels)` data (integer, one-hot or MixUp/CutMix soft labels).

    Training loss, per batch (facebookresearch/deit `losses.py`, `DistillationLoss.forward`):
      - `mode="hard"`: `(1 - alpha) * loss(labels, class_logits)
        + alpha * CE(argmax(teacher_logits), distillation_logits)`; DeiT's hard distillation
        (`alpha=0.5` is its default and the paper's 1/2 + 1/2).
      - `mode="soft"`: `(1 - alpha) * loss(labels, class_logits)
        + alpha * SoftDistillationLoss(temperature)(teacher_logits, distillation_logits)`.
        The DeiT paper's soft setting is `temperature=3.0, alpha=0.1` (its `main.py` default `tau`
        is 1.0).
    `loss` is the compiled loss (e.g. `ClassificationCrossentropy(label_smoothing=0.1)`); it sees
    the labels, never the teacher. A distilled student (`keras_vit.DeiT*(distilled=True)`, or any
    ViT with `distilled=True`) gives `class_logits` from its `head` and `distillation_logits`
    from its `head_dist`; a student with one head gives the same logits to both terms.
    Regularisation losses of the student are added unweighted.

    Evaluation and prediction use the student's inference output (the mean of its two heads, as
    DeiT): `distiller.predict(x) == student.predict(x)`; the compiled metrics are computed on it
    in training and validation alike, and the validation loss is the compiled loss on it (no
    teacher), comparable with a run without one.

    The teacher: any Keras model that maps images to logits of the student's classes (a CNN from
    `keras.applications` or KerasHub built with `classifier_activation=None`, a keras_vit model).
    It is frozen here (`teacher.trainable = False`) and always called with `training=False`,
    under `stop_gradient`; its logits are cast to float32 (mixed precision). Both models get
    the batch's raw pixels in [0, 255] (keras_vit models and e.g. ConvNeXt/EfficientNet
    normalise inside); `teacher_preprocessing` (a callable on float32 `(batch, H, W, 3)` pixels,
    e.g. `keras.applications.resnet.preprocess_input`) adapts them for a teacher that does not.
    When the teacher has a fixed input size other than the batch's, the images are resized to it
    first (bilinear, antialiased), so a 224-px CNN can teach a 32-px student.

    Saving: `distiller.save(path)` (and so `keras_vit.training.callbacks()`' `model.keras` and
    `best.keras`) writes the student alone, compiled with the distiller's optimizer, so
    `keras.models.load_model(path)` returns the trained student; `distiller.export(...)` exports
    the student. `save_weights` / `load_weights` (the run directory's backups, hence resume) hold
    the student and the optimizer state but not the frozen teacher, which the caller builds
    again. Build the student, the teacher and the Distiller inside `strategy.scope()` under
    tf.distribute.
    """

    def __init__(self, student, teacher, mode="hard", alpha=0.5, temperature=3.0,
                 teacher_preprocessing=None, **kwargs):
        check_keywords(kwargs, ("student", "teacher", "mode", "alpha", "temperature",
                                "teacher_preprocessing", "name", "dtype", "trainable"), "Distiller")
        _check_models(student, teacher)
        if mode not in MODES:
            raise ValueError(f"Unknown distillation mode {mode!r}: expected one of {list(MODES)}.")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}.")
        temperature = _check_temperature(temperature)
        if teacher_preprocessing is not None and not callable(teacher_preprocessing):
            raise ValueError(f"teacher_preprocessing must be None or a callable on image batches, "
                             f"got {teacher_preprocessing!r}.")
        if _outputs_probabilities(student):
            raise ValueError(f"The student {student.name!r} ends in a softmax/sigmoid: the "
                             f"distillation losses need logits. Build it with "
                             f"classifier_activation=None.")
        if mode == "soft" and _outputs_probabilities(teacher):
            raise ValueError(f"The teacher {teacher.name!r} ends in a softmax/sigmoid: soft "
                             f"distillation needs its logits. Build it with "
                             f"classifier_activation=None (hard distillation only needs its argmax).")
        kwargs.setdefault("dtype", student.dtype_policy)
        kwargs.setdefault("name", "distiller")
        super().__init__(**kwargs)
        teacher.trainable = False  # frozen, as DeiT's teacher (eval mode, no gradients)
        self.student = student
        self.teacher = teacher
        self.mode = mode
        self.alpha = float(alpha)
        self.temperature = temperature
        self.teacher_preprocessing = teacher_preprocessing
        self._teacher_size = _input_size(teacher)
        self._distillation_loss = (ClassificationCrossentropy(from_logits=True) if mode == "hard"
                                   else SoftDistillationLoss(temperature))
        heads = None
        if getattr(student, "distilled", False):
            # Both heads' logits from the student's own layers (no copy of its weights). Not an
            # attribute Keras tracks: the student already holds these layers and variables.
            heads = keras.Model(student.inputs, [student.get_layer("head").output,
                                                 student.get_layer("head_dist").output])
        object.__setattr__(self, "_heads", heads)
        self.built = True

    def call(self, images, training=False):
        """The student's inference output; in training, its `(class, distillation)` logits."""
        if training and self._heads is not None:
            return tuple(self._heads(images, training=True))
        return self.student(images, training=training)

    def teacher_logits(self, images):
        """The frozen teacher's float32 logits for a batch of the student's input images."""
        images = ops.cast(images, "float32")
        if self._teacher_size is not None and tuple(images.shape[1:3]) != self._teacher_size:
            images = ops.image.resize(images, self._teacher_size, interpolation="bilinear",
                                      antialias=True)
        if self.teacher_preprocessing is not None:
            images = self.teacher_preprocessing(images)
        logits = self.teacher(images, training=False)
        return ops.stop_gradient(ops.cast(logits, "float32"))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not training:  # validation: the compiled loss on the student's inference output
            return super().compute_loss(x, y, y_pred, sample_weight, training=False)
        class_logits, distillation_logits = y_pred if isinstance(y_pred, tuple) else (y_pred, y_pred)
        teacher = self.teacher_logits(x)
        if self.mode == "hard":
            teacher = ops.argmax(teacher, axis=-1)
        base = self._compile_loss(y, class_logits, sample_weight)
        distillation = self._distillation_loss(teacher, distillation_logits, sample_weight)
        total = (1.0 - self.alpha) * ops.cast(base, "float32") + self.alpha * distillation
        for loss in self.losses:
            total = total + ops.sum(ops.cast(loss, "float32"))
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, tuple):  # training with two heads: their mean is the prediction
            y_pred = (y_pred[0] + y_pred[1]) / 2.0
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """`keras.Model.compile`; `loss` is the loss on the labels (required). The student is
        compiled with the same optimizer (shared state) so that its saved file trains on."""
        if loss is None:
            raise ValueError("Distiller.compile needs the loss on the labels (e.g. "
                             "keras_vit.training.ClassificationCrossentropy()); the teacher's term "
                             "is added by the Distiller.")
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        # Copies of the metric objects: the student's must not share the Distiller's state.
        copies = [m if isinstance(m, str) else keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(m)) for m in metrics] if isinstance(
            metrics, (list, tuple)) else metrics
        self.student.compile(optimizer=self.optimizer, loss=loss, metrics=copies,
                             jit_compile=kwargs.get("jit_compile", "auto"))

    def compile_from_config(self, config):
        """Compiles a Distiller loaded from a whole-Distiller `.keras` file (Keras skips models
        that override `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Saves the student (not the teacher) as a `.keras` file."""
        return self.student.save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def export(self, filepath, format="tf_saved_model", **kwargs):
        """Exports the student (`keras.Model.export`)."""
        return self.student.export(filepath, format=format, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None):
        """The student's weights and the optimizer state, without the frozen teacher."""
        from keras.src.saving import saving_lib

        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"{filepath} exists and overwrite=False.")
        saving_lib.save_weights_only(self, filepath, max_shard_size=max_shard_size,
                                     objects_to_skip=[self.teacher])

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads what `save_weights` wrote (the teacher keeps its own weights)."""
        from keras.src.saving import saving_lib

        if kwargs:
            raise TypeError(f"Distiller.load_weights got unknown keyword arguments {sorted(kwargs)}.")
        saving_lib.load_weights_only(self, filepath, skip_mismatch=skip_mismatch,
                                     objects_to_skip=[self.teacher])

    def get_config(self):
        preprocessing = self.teacher_preprocessing
        return {"student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "mode": self.mode, "alpha": self.alpha, "temperature": self.temperature,
                "teacher_preprocessing": None if preprocessing is None
                else keras.saving.serialize_keras_object(preprocessing),
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher", "teacher_preprocessing"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _check_temperature(temperature):
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}.")
    return float(temperature)


def _check_models(student, teacher):
    for role, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, keras.Model):
            raise TypeError(f"The {role} must be a keras.Model, got {type(model).__name__}.")
        if not model.built:
            raise ValueError(f"The {role} {model.name!r} is not built: build it (call it on a "
                             f"batch) before making the Distiller.")
    if student is teacher:
        raise ValueError("The student and the teacher are the same model.")
    if getattr(student, "include_top", True) is False:
        raise ValueError(f"The student {student.name!r} has no head (include_top=False).")
    if getattr(student, "distilled", False) and not getattr(student, "inputs", None):
        raise ValueError(f"The distilled student {student.name!r} must be a functional model.")
    classes = [_num_classes(model) for model in (student, teacher)]
    if None not in classes and classes[0] != classes[1]:
        raise ValueError(f"The student {student.name!r} predicts {classes[0]} classes but the "
                         f"teacher {teacher.name!r} predicts {classes[1]}: they must share the "
                         f"classes (and their order).")


def _num_classes(model):
    outputs = getattr(model, "outputs", None)
    if not outputs:
        return None  # a subclassed model: checked when it runs
    if len(outputs) != 1:
        raise ValueError(f"{model.name!r} has {len(outputs)} outputs; the student and the teacher "
                         f"must each output one logits tensor (batch, classes).")
    shape = outputs[0].shape
    if len(shape) != 2:
        raise ValueError(f"{model.name!r} outputs shape {tuple(shape)}; expected logits of shape "
                         f"(batch, classes).")
    return shape[-1]


def _input_size(model):
    """The (height, width) the model's input is fixed to, or None when it takes any size."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs[0].shape) != 4:
        return None
    height, width = inputs[0].shape[1:3]
    return None if height is None or width is None else (int(height), int(width))


def _outputs_probabilities(model):
    """True when the model's output goes through a softmax or sigmoid (not logits)."""
    if getattr(model, "classifier_activation", None) is not None:
        return True
    layers = getattr(model, "layers", None)
    activation = getattr(layers[-1], "activation", None) if layers else None
    return getattr(activation, "__name__", None) in ("softmax", "sigmoid")
