"""Shared fixtures: tiny configs, the real-data folder, random weights and images. The layer test
harness every layer goes through is tests/harness.py."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("KERAS_VIT_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))

# The unit-test ViT: 32x32 images, patch 4, width 64, 2 blocks.
TINY = dict(image_size=32, patch_size=4, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128,
            num_classes=10)


@pytest.fixture
def tiny_config():
    return dict(TINY)


@pytest.fixture
def shared_data():
    """Path of ../shared/data; skips the test when it is absent (a user's clone has none)."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it exists only on the project's machines)")
    return os.path.abspath(SHARED_DATA)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


def random_images(batch=2, size=32, seed=0):
    height, width = (size, size) if np.isscalar(size) else size
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3)).astype("uint8")


def disagreeing_runner(model):
    """A stand-in for an exported file's runner (`tflite_runner`, `onnx_runner`) whose logits and
    embeddings are the Keras model's negated: every top-1 class differs and every cosine is -1,
    as from a broken quantisation or conversion."""
    from keras_vit.export import common

    def runner(content, num_threads=None):
        outputs = common.outputs_model(model)
        return lambda images: {k: -np.asarray(v)
                               for k, v in outputs(np.asarray(images, "float32")).items()}
    return runner


def randomize_weights(model, seed=0, scale=0.05):
    """Gives every variable random values (the zero-initialised head and class token too), so that
    comparisons cannot pass on zeros."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0.0, scale, variable.shape)
        if variable.path.endswith("gamma"):
            value += 1.0
        variable.assign(value.astype(variable.dtype))
    return model
