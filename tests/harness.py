"""The shared layer test harness (in the spirit of KerasHub's `run_layer_test`): every keras_vit
layer goes through the same checks, so a new layer is one line in a list.

    run_layer_test(lambda: MyLayer(4, 0.1), input_shape=(2, 5, 16), tmp_path=tmp_path)
"""

import inspect

import keras
import numpy as np
from conftest import randomize_weights

# Keys every Keras layer config has besides the layer's own `__init__` arguments.
KERAS_LAYER_KEYS = {"name", "trainable", "dtype"}


def _init_parameters(layer_class):
    parameters = inspect.signature(layer_class.__init__).parameters
    return {n for n, p in parameters.items() if n != "self" and p.kind != p.VAR_KEYWORD}


def run_layer_test(make, input_shape, tmp_path, atol=1e-5):
    """Builds `make()` on `input_shape` and checks, against the layer's own first output:
      1. `get_config()` holds exactly the `__init__` arguments (plus Keras's name/trainable/dtype);
      2. a round trip through Keras's registry by name gives a built layer with the same output;
      3. a `.keras` file of a functional model around it loads in safe mode, same output;
      4. the symbolic output shape equals the eager one;
      5. under `mixed_bfloat16` it computes in bfloat16 with float32 variables, close to float32.
    """
    x = np.random.default_rng(5).normal(size=input_shape).astype("float32") * 3
    layer = make()
    layer.build(input_shape)
    randomize_weights(layer, seed=1, scale=0.3)  # away from init: a lost weight changes the output
    y = keras.ops.convert_to_numpy(layer(x))

    config = layer.get_config()
    own = set(config) - KERAS_LAYER_KEYS
    assert own == _init_parameters(type(layer)) - {"dtype", "name", "trainable"}, (
        f"{type(layer).__name__}.get_config() keys {sorted(own)} are not its __init__ arguments")

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"].startswith("keras_vit>")
    clone = keras.saving.deserialize_keras_object(serialized)
    assert clone.get_config() == config and clone.built
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(x)), y, atol=atol)

    inputs = keras.Input(input_shape[1:])
    symbolic = make()(inputs)
    model = keras.Model(inputs, symbolic)
    model.layers[-1].set_weights(layer.get_weights())
    path = tmp_path / f"{type(layer).__name__}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), y, atol=atol)
    assert tuple(symbolic.shape[1:]) == y.shape[1:]

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = make()
        mixed.build(input_shape)
    finally:
        keras.config.set_dtype_policy(previous)
    if mixed.weights:
        assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in mixed.weights)
        mixed.set_weights(layer.get_weights())
    out = mixed(x)
    assert keras.backend.standardize_dtype(out.dtype) in ("bfloat16", "float32")
    out = keras.ops.convert_to_numpy(keras.ops.cast(out, "float32"))
    assert np.all(np.isfinite(out))
    scale = max(np.linalg.norm(y), 1e-6)
    assert np.linalg.norm(out - y) / scale < 0.05, "mixed_bfloat16 far from float32"
