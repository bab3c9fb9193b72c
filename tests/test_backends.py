"""One model, three Keras backends: the same weights give the same logits under TensorFlow, JAX and
PyTorch, and the core test modules pass under JAX too (CI runs this file under the TF default)."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO, TINY, random_images, randomize_weights

import keras_vit

PROBE = """
import json, sys, numpy as np, keras, keras_vit
config, weights, images = json.loads(sys.argv[1]), sys.argv[2], np.load(sys.argv[3])
model = keras_vit.ViT(**config)
model.load_weights(weights)
np.save(sys.argv[4], keras.ops.convert_to_numpy(model(images)))
print(keras.backend.backend())
"""


def run_under(backend, *args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("family", ["vit", "hybrid", "deit"])
def test_same_logits_on_every_backend(backend, family, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    config = dict(TINY, image_size=(32, 48), pooling="token", num_registers=1)
    if family == "hybrid":  # the ResNet's SAME padding and weight standardisation too
        config.update(patch_size=1, backbone={"block_units": [1, 1]})
    if family == "deit":  # the distillation token and the mean of two heads
        config.update(distilled=True, num_registers=0)
    model = randomize_weights(keras_vit.ViT(**config))
    images = random_images(3, (32, 48))
    model.save_weights(tmp_path / "w.weights.h5")
    np.save(tmp_path / "x.npy", images)
    result = run_under(backend, "-c", PROBE, json.dumps(config), str(tmp_path / "w.weights.h5"),
                       str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(backend)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"),
                               keras.ops.convert_to_numpy(model(images)), atol=1e-4)


@pytest.mark.slow
def test_core_suite_passes_under_jax():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    if os.environ.get("KERAS_BACKEND") == "jax":
        pytest.skip("already running under JAX")
    result = run_under("jax", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                       "tests/test_layers.py", "tests/test_models.py", timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout.splitlines()[-1]
