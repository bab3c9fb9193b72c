"""Recipes, schedules, weight decay, clipping, callbacks, resumable runs and `keras-vit train`.

Every expected number is written out by hand here (schedules, AdamW decay, SGD with clipping),
never read back from the code under test.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vit
from keras_vit import cli, inference, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
       "CUDA_VISIBLE_DEVICES": ""}
DIGITS_STEPS_PER_EPOCH = 1437 // 64  # 1437 training digits, full batches of 64


def _cosine(step, peak, total, warmup):
    warm = min(1.0, step / warmup) if warmup else 1.0
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return peak * warm * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("step, expected", [(0, 0.0), (50, 0.015), (100, 0.03), (550, 0.015),
                                            (1000, 0.0), (2000, 0.0)])
def test_warmup_cosine_values(step, expected):
    schedule = training.WarmupCosine(0.03, total_steps=1000, warmup_steps=100)
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (5_000, 5e-4), (10_000, 1e-3),
                                            (55_000, 5e-4), (100_000, 0.0)])
def test_warmup_linear_values(step, expected):
    schedule = training.WarmupLinear(1e-3, total_steps=100_000, warmup_steps=10_000)
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-9)


def test_finetune_recipe_is_the_papers():
    recipe = training.finetune_recipe(steps=200, base_lr=0.03)  # warmup: 10% of 200, not 500
    optimizer = recipe["optimizer"]
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert optimizer.global_clipnorm == 1.0 and optimizer.clipnorm is None
    assert getattr(optimizer, "weight_decay", None) in (None, 0.0)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, training.WarmupCosine)
    assert (schedule.total_steps, schedule.warmup_steps) == (200, 20)
    assert float(schedule(10)) == pytest.approx(0.015)
    assert float(schedule(100)) == pytest.approx(_cosine(100, 0.03, 200, 20))
    assert recipe["loss"].get_config()["from_logits"]
    assert [m.name for m in recipe["metrics"]] == ["accuracy", "top5_accuracy"]
    assert [m.name for m in training.finetune_recipe(10, num_classes=3)["metrics"]] == ["accuracy"]
    assert recipe["jit_compile"] is False  # these tests run on CPU


def test_gradient_accumulation_stretches_the_schedule():
    recipe = training.finetune_recipe(100, warmup_steps=10, gradient_accumulation_steps=4)
    optimizer = recipe["optimizer"]
    assert optimizer.gradient_accumulation_steps == 4
    assert (optimizer._learning_rate.total_steps, optimizer._learning_rate.warmup_steps) == (400, 40)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        training.finetune_recipe(100, gradient_accumulation_steps=0)


def test_schedule_errors():
    with pytest.raises(ValueError, match="cosine.*linear"):
        training.finetune_recipe(100, decay="step")
    with pytest.raises(ValueError, match="keras.*decoupled"):
        training.scratch_recipe(100, weight_decay_mode="torch")


# ----------------------------------------------------------------------------- optimizer maths
def _all_variables_model():
    """A ViT with every kind of variable: class token, registers, LayerScale, MAP head."""
    model = keras_vit.ViT(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                          mlp_dim=32, num_classes=3, pooling="map", class_token=True,
                          num_registers=2, layer_scale_init_value=0.5, representation_size=8)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0.5, 0.1, variable.shape).astype("float32"))  # no zeros
    return model


@pytest.mark.parametrize("mode, weight_decay", [("keras", 0.1), ("decoupled", 1e-4)])
def test_weight_decay_value_and_exclusions(mode, weight_decay):
    model = _all_variables_model()
    base_lr, total, warmup, step = 1e-3, 100, 10, 30
    optimizer = training.scratch_recipe(total, base_lr=base_lr, weight_decay=weight_decay,
                                        warmup_steps=warmup, weight_decay_mode=mode)["optimizer"]
    variables = model.trainable_variables
    optimizer.build(variables)
    optimizer.iterations.assign(step)
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    # Zero gradients: Adam's update is exactly 0, so only the weight decay moves a weight.
    optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in variables])
    lr = _cosine(step, base_lr, total, warmup)
    per_step = weight_decay * lr if mode == "keras" else weight_decay * lr / base_lr
    assert per_step > 1e-6
    decayed = []
    for variable, old in zip(variables, before):
        new = keras.ops.convert_to_numpy(variable)
        if variable.path.endswith("/kernel"):  # the rule: kernels decay, nothing else
            np.testing.assert_allclose(new, old * (1 - per_step), rtol=1e-6, err_msg=variable.path)
            decayed.append(variable.path)
        else:
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
    excluded = {v.path for v in variables} - set(decayed)
    for expected in ("class_token/token", "register_tokens/tokens", "position_embedding/embedding",
                     "encoderblock_0/norm1/gamma", "encoderblock_0/norm1/beta",
                     "encoderblock_0/layer_scale1/gamma", "encoderblock_0/attention/qkv/bias",
                     "map_head/probe", "encoder_norm/gamma", "head/bias"):
        assert expected in excluded, (expected, sorted(excluded))
    assert {"head/kernel", "encoderblock_0/attention/qkv/kernel", "patch_embedding/projection/kernel",
            "pre_logits/kernel"} <= set(decayed)


def test_gradient_clipping_is_global_norm_one():
    optimizer = training.finetune_recipe(10, base_lr=0.1, warmup_steps=0)["optimizer"]
    a, b = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones((2, 2), "float32"))
    ga = np.array([3.0, 0.0, 4.0], "float32")            # norm 5 on its own: under per-variable
    gb = np.full((2, 2), np.sqrt(75 / 4), "float32")     # clipping both would be cut to norm 1
    norm = np.sqrt((ga ** 2).sum() + (gb ** 2).sum())    # global norm 10
    optimizer.apply_gradients([(ga, a), (gb, b)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(a), 1 - 0.1 * ga / norm, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(b), 1 - 0.1 * gb / norm, rtol=1e-6)


# ----------------------------------------------------------------------------- precision, XLA
def test_jit_compile_auto_chooses_and_logs(caplog):
    with caplog.at_level("INFO", logger="keras_vit.training"):
        assert training.resolve_jit_compile("auto") is False  # TF on a CPU-only machine
    assert "CPU" in caplog.text and "slower" in caplog.text
    assert training.resolve_jit_compile("true") is True
    assert training.resolve_jit_compile(False) is False
    with pytest.raises(ValueError, match="auto"):
        training.resolve_jit_compile("sometimes")


def test_mixed_float16_gets_loss_scaling():
    if inference.on_accelerator():
        training.set_mixed_precision("float16")
    else:
        with pytest.warns(UserWarning, match="float16' on the CPU"):
            training.set_mixed_precision("float16")
    model = keras_vit.ViT(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                          mlp_dim=32, num_classes=3)
    model.compile(**training.finetune_recipe(10, num_classes=3))
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.get_layer("encoderblock_0").compute_dtype == "float16"
    assert model.get_layer("head").compute_dtype == "float32"
    x = np.zeros((2, 8, 8, 3), "float32")
    y = np.eye(3, dtype="float32")[[0, 1]]
    assert np.isfinite(model.train_on_batch(x, y)[0])
    training.set_mixed_precision(None)
    assert keras.config.dtype_policy().name == "float32"
    with pytest.raises(ValueError, match="float16.*bfloat16"):
        training.set_mixed_precision("int8")


def test_mixed_bfloat16_warns_only_where_it_is_emulated(monkeypatch):
    import warnings

    monkeypatch.setattr(inference, "on_accelerator", lambda: False)
    try:
        monkeypatch.setattr(inference, "cpu_info", lambda path=None: {"flags": {"avx2", "fma"}})
        with pytest.warns(UserWarning, match="without native bfloat16"):
            assert training.set_mixed_precision("bfloat16") == "mixed_bfloat16"
        monkeypatch.setattr(inference, "cpu_info", lambda path=None: {"flags": {"amx_bf16"}})
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            training.set_mixed_precision("bfloat16")
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        training.set_mixed_precision(None)


def test_terminate_on_nan_says_where_and_what_to_try():
    model = keras_vit.ViT(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                          mlp_dim=32, num_classes=3)
    model.compile(**training.finetune_recipe(10, num_classes=3))
    x = np.full((8, 8, 8, 3), np.nan, "float32")
    y = np.eye(3, dtype="float32")[np.arange(8) % 3]
    guard = training.TerminateOnNaN()
    history = model.fit(x, y, batch_size=4, epochs=3, callbacks=[guard], verbose=0)
    assert len(history.history["loss"]) == 1  # stopped in the first epoch
    assert "epoch 1, batch 1" in guard.message and "lower learning rate" in guard.message


# ----------------------------------------------------------------------------- CLI
def _cli(capsys, *argv):
    """Exit status and what the command printed (errors go to stderr, the rest to stdout)."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_cli_errors_list_the_choices(capsys, tmp_path):
    code, out = _cli(capsys, "train", "--model", "ViTX16", "--run-dir", str(tmp_path / "a"))
    assert code == 2 and "ViTB16" in out and "tiny" in out
    code, out = _cli(capsys, "train", "--recipe", "adam", "--run-dir", str(tmp_path / "b"))
    assert code == 2 and "finetune" in out and "scratch" in out
    code, out = _cli(capsys, "train", "--resume", "--run-dir", str(tmp_path / "c"))
    assert code == 2 and "no backup" in out
    code, out = _cli(capsys, "evaluate", str(tmp_path / "missing.keras"))
    assert code == 2 and "missing.keras" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--strategy", "horovod"])
    assert "mirrored" in capsys.readouterr().err


def test_cli_unknown_dataset_lists_known_ones(capsys, tmp_path):
    code, out = _cli(capsys, "train", "--dataset", "no_such_dataset_xyz", "--run-dir",
                     str(tmp_path / "d"))
    assert code == 2 and "cifar10" in out and "digits" in out


def test_cli_help_explains_with_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for text in ("examples:", "keras-vit train --model ViTB16", "--resume", "--mixed-precision",
                 "--strategy", "digits"):
        assert text in out


@pytest.mark.parametrize("script", ["finetune_tfds.py", "train_from_folder.py", "multi_worker.py"])
def test_examples_have_help(script):
    result = subprocess.run([sys.executable, os.path.join(REPO, "examples", script), "--help"],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout


# ----------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`keras-vit train` with no options (the built-in digits run), in a subprocess, timed."""
    run_dir = str(tmp_path_factory.mktemp("default") / "run")
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "keras_vit.cli", "train", "--quiet",
                             "--run-dir", run_dir], env=ENV, cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    elapsed = time.time() - start
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    print(f"\ndefault `keras-vit train` run: {elapsed:.0f} s wall")
    return run_dir, result.stdout, elapsed


@pytest.mark.slow
def test_default_run_learns_digits(default_run):
    run_dir, stdout, _ = default_run
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["held_out"]["accuracy"] >= 0.95, metrics["held_out"]
    assert "Held-out accuracy" in stdout and run_dir in stdout


@pytest.mark.slow
def test_run_directory_contents(default_run, capsys, tmp_path):
    run_dir, _, _ = default_run
    for name in ("model.keras", "best.keras", "history.csv", "metrics.json", "curves.png"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    assert not os.path.exists(os.path.join(run_dir, "backup"))  # removed once finished
    events = [f for _, _, files in os.walk(os.path.join(run_dir, "logs")) for f in files]
    assert any(f.startswith("events.out.tfevents") for f in events)
    assert Image.open(os.path.join(run_dir, "curves.png")).format == "PNG"
    rows = training.read_history(os.path.join(run_dir, "history.csv"))
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    epochs = metrics["settings"]["epochs"]
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert metrics["optimizer_steps"] == epochs * DIGITS_STEPS_PER_EPOCH
    assert metrics["best"]["val_accuracy"] == max(float(r["val_accuracy"]) for r in rows)
    assert metrics["elapsed_seconds"] > 0
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))  # schedule reloads
    assert isinstance(model.optimizer._learning_rate, training.WarmupCosine)
    assert int(model.optimizer.iterations) == epochs * DIGITS_STEPS_PER_EPOCH
    output = str(tmp_path / "eval.json")
    code, out = _cli(capsys, "evaluate", os.path.join(run_dir, "model.keras"), "--output", output)
    assert code == 0 and "accuracy" in out
    assert json.load(open(output))["accuracy"] == pytest.approx(metrics["held_out"]["accuracy"],
                                                                abs=1e-6)


def _train_command(run_dir, *extra):
    return [sys.executable, "-m", "keras_vit.cli", "train", "--quiet", "--epochs", "4",
            "--backup-every", "5", "--run-dir", run_dir, *extra]


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_number_of_steps(tmp_path):
    run_dir = str(tmp_path / "run")
    metadata = os.path.join(run_dir, "backup", "training_metadata.json")
    process = subprocess.Popen(_train_command(run_dir), env=ENV, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            state = training.read_backup(os.path.join(run_dir, "backup"))
            if state and state["steps"] % DIGITS_STEPS_PER_EPOCH:  # a mid-epoch backup
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = json.load(open(metadata))["steps"]
    assert 0 < killed_at < 4 * DIGITS_STEPS_PER_EPOCH
    result = subprocess.run(_train_command(run_dir, "--resume"), env=ENV, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["optimizer_steps"] == 4 * DIGITS_STEPS_PER_EPOCH
    assert metrics["settings"]["resumed_from_step"] == killed_at
    model = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    assert int(model.optimizer.iterations) == 4 * DIGITS_STEPS_PER_EPOCH
    rows = training.read_history(os.path.join(run_dir, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_fit_repeats_a_dataset_of_unknown_length(tmp_path):
    # Folders and TFDS splits have an unknown cardinality once unreadable files are filtered out:
    # fit() must still run every epoch, not stop when the data runs dry after the first.
    import tensorflow as tf

    images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3)).astype("uint8")
    data = keras_vit.data.from_arrays(images, np.arange(24) % 10, batch_size=8)
    data = data.filter(lambda image, label: True)
    assert int(data.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    model = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                          mlp_dim=64, num_classes=10)
    model.compile(**training.finetune_recipe(steps=9, warmup_steps=1))
    training.fit(model, data, epochs=3, steps_per_epoch=3,
                 callbacks=training.callbacks(str(tmp_path / "run"), tensorboard=False), verbose=0)
    assert int(model.optimizer.iterations) == 9


def test_cli_turns_onednn_on_only_where_it_may():
    env = {}
    assert cli.enable_onednn(env, modules={}, machine="x86_64") and env == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    env = {"TF_ENABLE_ONEDNN_OPTS": "0"}  # the user's choice stands
    assert not cli.enable_onednn(env, modules={}, machine="x86_64") and env["TF_ENABLE_ONEDNN_OPTS"] == "0"
    env = {}
    assert not cli.enable_onednn(env, modules={"tensorflow": object()}, machine="x86_64")
    assert not cli.enable_onednn(env, modules={}, machine="aarch64") and env == {}


# ----------------------------------------------------------------------------- labels, warmup rule
def test_recipe_loss_and_metrics_take_integer_one_hot_and_soft_labels():
    logits = np.array([[2.0, 0.5, -1.0, 0.0, 0.3, 0.1], [0.1, 0.2, 3.0, -2.0, 0.0, 0.4]], "float32")
    labels = np.array([1, 2])
    recipe = training.finetune_recipe(10, label_smoothing=0.1)
    loss = recipe["loss"]
    # Hand-computed: smoothed targets (1 - 0.1) * onehot + 0.1 / 6, cross-entropy of log-softmax.
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = 0.9 * np.eye(6)[labels] + 0.1 / 6
    expected = float(np.mean(-(targets * log_probs).sum(-1)))
    for y in (labels, labels[:, None], np.eye(6)[labels]):
        assert float(loss(y, logits)) == pytest.approx(expected, rel=1e-5)
    soft = np.array([[0.0, 0.7, 0.3, 0, 0, 0], [0.5, 0, 0.5, 0, 0, 0]])
    soft_targets = 0.9 * soft + 0.1 / 6
    assert float(loss(soft, logits)) == pytest.approx(
        float(np.mean(-(soft_targets * log_probs).sum(-1))), rel=1e-5)
    accuracy, top5 = recipe["metrics"]
    for y in (labels, labels[:, None], np.eye(6)[labels]):
        accuracy.reset_state(), top5.reset_state()
        accuracy.update_state(y, logits), top5.update_state(y, logits)
        # Row 0: argmax is 0, label 1 -> wrong; row 1: argmax 2 = label. Label 1 of row 0 is
        # its 2nd largest logit, so both are in the top 5.
        assert (float(accuracy.result()), float(top5.result())) == (0.5, 1.0)
    with pytest.raises(ValueError, match=r"\(batch, 6\)"):
        loss(np.zeros((2, 4)), logits)
    top5.reset_state()  # fewer classes than k: every label is in the top k
    top5.update_state(np.array([2, 0]), logits[:, :3])
    assert float(top5.result()) == 1.0


def test_fit_with_integer_labels_the_most_common_keras_case():
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype("float32")
    y = np.arange(16) % 3
    model = keras_vit.ViT(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                          mlp_dim=16, num_classes=3)
    for recipe in (training.finetune_recipe(4), training.scratch_recipe(4)):
        model.compile(**recipe)
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        assert math.isfinite(history.history["loss"][0]) and "accuracy" in history.history
        assert model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] >= 0.0


def test_one_warmup_rule_for_the_library_and_the_cli():
    # 10% of the updates, at most the paper's value: a 216-step fine-tune decays after 22 steps.
    assert training.default_warmup_steps(216, cap=500) == 22
    assert training.finetune_recipe(216)["optimizer"]._learning_rate.warmup_steps == 22
    assert training.finetune_recipe(100_000)["optimizer"]._learning_rate.warmup_steps == 500
    assert training.scratch_recipe(1_000_000)["optimizer"]._learning_rate.warmup_steps == 10_000
    assert training.finetune_recipe(216, warmup_steps=0)["optimizer"]._learning_rate.warmup_steps == 0
    with pytest.raises(ValueError, match="warmup_steps=300 is longer than the run"):
        training.finetune_recipe(216, warmup_steps=300)
    from keras_vit.cli import train as train_cli

    args = train_cli.argparse.Namespace(gradient_accumulation=None, label_smoothing=None,
                                        jit_compile="auto", warmup_steps=None, lr=None,
                                        weight_decay=None)
    for recipe in ("finetune", "scratch"):
        kwargs = train_cli._recipe_from_args(args, recipe, 216, 27, False, 10)
        assert kwargs["optimizer"]._learning_rate.warmup_steps == 22, recipe


def test_weight_decay_exclusions_survive_the_config_round_trip():
    optimizer = training.scratch_recipe(100)["optimizer"]
    config = keras.optimizers.serialize(optimizer)
    restored = keras.optimizers.deserialize(json.loads(json.dumps(config)))
    assert restored.exclude_from_weight_decay_names == [training.NO_WEIGHT_DECAY_PATTERN]
    bias = keras.Variable(np.ones(3), name="bias")
    kernel = keras.Variable(np.ones((3, 3)), name="kernel")
    assert restored._use_weight_decay(kernel) and not restored._use_weight_decay(bias)


@pytest.mark.parametrize("kwargs, error", [
    (dict(steps=0), "steps must be a positive int"),
    (dict(steps=10, base_lr=-1.0), "base_lr must be a positive number"),
    (dict(steps=10, label_smoothing=1.5), r"label_smoothing must be in \[0, 1\)"),
    (dict(steps=10, momentum=1.0), r"momentum must be in \[0, 1\)"),
])
def test_recipes_reject_bad_values(kwargs, error):
    with pytest.raises(ValueError, match=error):
        training.finetune_recipe(**kwargs)
    with pytest.raises(TypeError, match="warmup"):
        training.finetune_recipe(10, warmup=5)
