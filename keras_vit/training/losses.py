"""The recipes' loss and metrics, for integer class labels and one-hot or soft labels alike.

Keras's `CategoricalCrossentropy` and `CategoricalAccuracy` take one-hot labels only, and the
`Sparse*` ones integer labels only; `model.fit(x, y)` with integer labels is the most common Keras
case, and keras_vit's own pipelines yield one-hot (or MixUp/CutMix soft) labels. These take both,
decided from the static shapes: labels with the logits' rank and last dimension are
probabilities, anything else (shape `(batch,)` or `(batch, 1)`) is class indices.
"""

import keras
from keras import ops

from keras_vit.layers import PACKAGE

register = keras.saving.register_keras_serializable(package=PACKAGE)


def _is_distribution(y_true, y_pred):
    """True for one-hot/soft labels, False for class indices; ValueError for anything else."""
    true_shape, pred_shape = tuple(y_true.shape), tuple(y_pred.shape)
    num_classes = pred_shape[-1]
    if len(true_shape) == len(pred_shape) and true_shape[-1] == num_classes and num_classes != 1:
        return True
    if len(true_shape) == len(pred_shape) - 1 or (len(true_shape) == len(pred_shape)
                                                  and true_shape[-1] == 1):
        return False
    raise ValueError(
        f"Labels of shape {true_shape} do not fit logits of shape {pred_shape}: expected class "
        f"indices of shape (batch,) or (batch, 1), or one-hot/soft labels of shape "
        f"(batch, {num_classes}).")


def class_indices(y_true, y_pred):
    """Labels -> int32 class indices of shape `(batch,)` (argmax of one-hot/soft labels)."""
    if _is_distribution(y_true, y_pred):
        return ops.cast(ops.argmax(y_true, axis=-1), "int32")
    return ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")


def class_distribution(y_true, y_pred):
    """Labels -> float one-hot or soft labels with the logits' shape."""
    if _is_distribution(y_true, y_pred):
        return ops.cast(y_true, y_pred.dtype)
    indices = ops.reshape(ops.cast(y_true, "int32"), ops.shape(y_pred)[:-1])
    return ops.one_hot(indices, y_pred.shape[-1], dtype=y_pred.dtype)


@register
class ClassificationCrossentropy(keras.losses.Loss):
    """Softmax cross-entropy with label smoothing, for integer and one-hot/soft labels.

    >>> loss = ClassificationCrossentropy(label_smoothing=0.1)
    >>> loss([2], [[0.0, 0.0, 1.0]]) == loss([[0, 0, 1]], [[0.0, 0.0, 1.0]])
    """

    def __init__(self, from_logits=True, label_smoothing=0.0, reduction="sum_over_batch_size",
                 name="classification_crossentropy", dtype=None):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = class_distribution(ops.convert_to_tensor(y_true), y_pred)
        return keras.losses.categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits, label_smoothing=self.label_smoothing)

    def get_config(self):
        config = super().get_config()
        config.update(from_logits=self.from_logits, label_smoothing=self.label_smoothing)
        return config


def _top_k_accuracy(y_true, y_pred, k):
    y_pred = ops.convert_to_tensor(y_pred)
    indices = class_indices(ops.convert_to_tensor(y_true), y_pred)
    # With k >= the number of classes every label is in the top k (torch's topk would fail).
    k = min(k, y_pred.shape[-1] or k)
    if k == 1:
        return ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), indices),
                        "float32")
    return ops.cast(ops.in_top_k(indices, ops.cast(y_pred, "float32"), k), "float32")


@register
class TopKAccuracy(keras.metrics.MeanMetricWrapper):
    """How often the label (an index, or the argmax of one-hot/soft labels) is in the top `k`
    logits; `k=1` is accuracy. Named `accuracy` / `top{k}_accuracy` by default."""

    def __init__(self, k=1, name=None, dtype=None):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}.")
        super().__init__(_top_k_accuracy, name=name or ("accuracy" if k == 1 else f"top{k}_accuracy"),
                         dtype=dtype, k=k)
        self.k = k
        self._direction = "up"

    def get_config(self):
        return {"k": self.k, "name": self.name, "dtype": self.dtype}


def classification_metrics(num_classes=None):
    """Top-1 accuracy, and top-5 unless `num_classes` is known to be 5 or fewer (it would be 1)."""
    metrics = [TopKAccuracy(1)]
    if num_classes is None or num_classes > 5:
        metrics.append(TopKAccuracy(5))
    return metrics
