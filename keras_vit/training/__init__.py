"""Training: the paper's recipes, resumable run directories, distribution.

    model = keras_vit.ViTB16(num_classes=10, image_size=384, weights="imagenet21k")
    model.compile(**keras_vit.training.finetune_recipe(steps=10_000, base_lr=0.03))
    model.fit(train_ds, validation_data=val_ds, epochs=10,
              callbacks=keras_vit.training.callbacks("runs/cifar10"))

`keras_vit.training.fit(...)` is `model.fit` that resumes a killed run at the exact step it stopped
(plain `model.fit` with these callbacks resumes at the start of the interrupted epoch).

Modules: `schedules` (warmup + decay), `losses` (loss and metrics for integer or one-hot labels),
`recipes` (`model.compile` arguments, XLA, mixed precision), `distribute` (strategies),
`run_directory` (callbacks and the resumable `fit`), `distill` (`Distiller`: training with a
teacher, as DeiT). Every object a saved model can reference is
registered serializable when `keras_vit` is imported. TensorFlow is imported only where a
function needs it (tf.distribute, the tf.data pipelines).
"""

from keras_vit.training.distribute import (
    STRATEGIES,
    get_strategy,
    is_chief,
    local_tf_configs,
)
from keras_vit.training.distill import (
    Distiller,
    SoftDistillationLoss,
)
from keras_vit.training.losses import (
    ClassificationCrossentropy,
    TopKAccuracy,
    classification_metrics,
)
from keras_vit.training.recipes import (
    NO_WEIGHT_DECAY,
    NO_WEIGHT_DECAY_PATTERN,
    PRECISIONS,
    RECIPES,
    WEIGHT_DECAY_MODES,
    AdamW,
    deit_data_options,
    deit_recipe,
    finetune_recipe,
    resolve_jit_compile,
    scratch_recipe,
    set_mixed_precision,
)
from keras_vit.training.run_directory import (
    BackupAndRestore,
    HistoryLogger,
    RunCheckpoint,
    RunSummary,
    TerminateOnNaN,
    TrainingCurves,
    callbacks,
    fit,
    read_backup,
    read_history,
)
from keras_vit.training.schedules import (
    DECAYS,
    WarmupCosine,
    WarmupLinear,
    default_warmup_steps,
    make_schedule,
)
