"""Distribution for real: MirroredStrategy over two logical CPUs and MultiWorkerMirroredStrategy
with two worker processes on localhost must give the weights of one device on the same global
batch. Each run is a subprocess (logical devices and TF_CONFIG must be set before TF starts)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_vit import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of a run: builds a tiny ViT under the strategy, gives it fixed weights, trains 4 SGD
# steps on a fixed global batch of 8 (no dropout, no shuffling) and saves the weights.
SCRIPT = textwrap.dedent("""
    import os, sys
    mode, out = sys.argv[1], sys.argv[2]
    import tensorflow as tf
    if mode == "mirrored":  # before TF initialises: two logical devices on the one CPU
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    import keras_vit
    from keras_vit import training

    strategy = training.get_strategy({"single": "default"}.get(mode, mode))
    with strategy.scope():
        model = keras_vit.ViT(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                              mlp_dim=32, num_classes=4)
        rng = np.random.default_rng(0)
        model.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in model.weights])
        model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False,
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    data = np.random.default_rng(1)
    images = data.integers(0, 256, (16, 8, 8, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[data.integers(0, 4, 16)]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    history = model.fit(dataset, epochs=2, verbose=0)
    print("replicas", strategy.num_replicas_in_sync, "loss", history.history["loss"])
    if training.is_chief():
        np.savez(out, *[np.asarray(w) for w in model.get_weights()])
""")


def _run(tmp_path, mode, env=None, name="weights"):
    script = tmp_path / "distributed_step.py"
    script.write_text(SCRIPT)
    out = str(tmp_path / f"{name}.npz")
    command = [sys.executable, str(script), mode, out]
    environ = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2",
               "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.Popen(command, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True), out


def _finish(process, timeout=240):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"distributed run timed out:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def _weights(path):
    with np.load(path, allow_pickle=False) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("single")
    process, out = _run(tmp_path, "single")
    output = _finish(process)
    assert "replicas 1" in output
    return _weights(out)


def _assert_same_weights(reference, weights):
    assert len(reference) == len(weights)
    initial = np.random.default_rng(0)
    moved = False
    for ref, got in zip(reference, weights):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        moved |= not np.allclose(ref, initial.normal(0, 0.2, ref.shape).astype("float32"))
    assert moved, "training did not change the weights: the comparison would prove nothing"


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(tmp_path, single_device):
    process, out = _run(tmp_path, "mirrored")
    output = _finish(process)
    assert "replicas 2" in output, output[-2000:]
    _assert_same_weights(single_device, _weights(out))


@pytest.mark.slow
def test_multi_worker_two_processes_matches_one_device(tmp_path, single_device):
    processes = [_run(tmp_path, "multi_worker", {"TF_CONFIG": tf_config}, name=f"worker{index}")
                 for index, tf_config in enumerate(training.local_tf_configs(2))]
    try:
        outputs = [_finish(process) for process, _ in processes]
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
    assert all("replicas 2" in output for output in outputs), outputs[0][-2000:]
    assert os.path.exists(processes[0][1]) and not os.path.exists(processes[1][1])
    _assert_same_weights(single_device, _weights(processes[0][1]))


def test_strategy_errors_name_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="mirrored.*multi_worker.*tpu"):
        training.get_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.get_strategy("multi_worker")


def test_default_strategy_and_chief(monkeypatch):
    import tensorflow as tf

    assert training.get_strategy("default") is tf.distribute.get_strategy()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert training.is_chief()
    for index, chief in ((1, False), (0, True)):
        task = {"type": "worker", "index": index}
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": task}))
        assert training.is_chief() is chief
