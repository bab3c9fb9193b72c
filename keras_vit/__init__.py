"""keras_vit: the Vision Transformer (Dosovitskiy et al., 2020) for Keras 3.

    import keras_vit
    model = keras_vit.ViTB16(num_classes=10)            # raw [0, 255] pixels in, logits out

The model code runs on the TensorFlow, JAX and PyTorch backends; TensorFlow is imported only by the
modules that need it (data pipelines, SavedModel/TFLite export, tf.distribute), lazily.
"""

import importlib

from keras_vit import _startup

if _startup.wanted():
    with _startup.tensorflow_notices_dropped():
        import keras  # noqa: F401 - imports TensorFlow, which prints its notices now

from keras_vit import layers  # noqa: E402
from keras_vit import resnet  # noqa: E402,F401 - the hybrids' ResNet layers, registered
from keras_vit.config import ModelConfig  # noqa: E402,F401
# Registers every object a trained model's `.keras` file references (schedules, loss, metrics,
# optimizer), so `keras.models.load_model` works after `import keras_vit` alone. No TensorFlow.
from keras_vit import training  # noqa: E402
from keras_vit.models import (  # noqa: E402
    HYBRID_VARIANTS,
    VARIANTS,
    DeiTB16,
    DeiTS16,
    DeiTTi16,
    R26ViTS32,
    R50ViTB16,
    R50ViTB32,
    R50ViTL16,
    R50ViTL32,
    RViTTi16,
    ViT,
    ViTB8,
    ViTB16,
    ViTB32,
    ViTH14,
    ViTL16,
    ViTL32,
    ViTS16,
    ViTS32,
    ViTTi16,
    VisionTransformer,
    preprocess_inputs,
)

__version__ = "0.1.0"

# Submodules that need TensorFlow or heavy libraries load on first use: `keras_vit.export` etc.
_LAZY_SUBMODULES = ("weights", "data", "export", "explain", "benchmark", "cli", "labels",
                    "predict", "inference", "images")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"keras_vit.{name}")
    if name == "load_pretrained":
        return importlib.import_module("keras_vit.weights").load_pretrained
    raise AttributeError(f"module 'keras_vit' has no attribute {name!r}")
