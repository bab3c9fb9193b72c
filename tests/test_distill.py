"""Distillation (DeiT): the Distiller's losses against DeiT's own code in PyTorch, its teacher
plumbing, metrics, saving (the student), resume, mixed precision, tf.distribute and backends;
the DeiT recipe and its EMA."""

import os
import subprocess
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest
from conftest import REPO, random_images, randomize_weights

import keras_vit
from keras_vit import training
from keras_vit.training import ClassificationCrossentropy, Distiller

TINY = dict(image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=16,
            num_classes=4)
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def student(distilled=True, seed=1, **kwargs):
    return randomize_weights(keras_vit.ViT(distilled=distilled, **{**TINY, **kwargs}), seed, 0.3)


def teacher(image_size=16, seed=2, **kwargs):
    config = {**TINY, "image_size": image_size, "patch_size": image_size // 2, **kwargs}
    return randomize_weights(keras_vit.ViT(**config, name="teacher"), seed, 0.3)


def labels(batch, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(4), batch).astype("float32")


def deit_loss_in_torch(mode, class_logits, distillation_logits, teacher_logits, targets, alpha,
                       tau, label_smoothing):
    """facebookresearch/deit losses.py `DistillationLoss.forward`, with a label-smoothed
    cross-entropy on (soft) targets as the base criterion."""
    import torch
    from torch.nn import functional as F

    outputs, outputs_kd, teacher_outputs = (torch.tensor(np.asarray(v, "float64")) for v in
                                            (class_logits, distillation_logits, teacher_logits))
    base_loss = F.cross_entropy(outputs, torch.tensor(np.asarray(targets, "float64")),
                                label_smoothing=label_smoothing)
    if mode == "soft":
        T = tau
        distillation_loss = F.kl_div(F.log_softmax(outputs_kd / T, dim=1),
                                     F.log_softmax(teacher_outputs / T, dim=1),
                                     reduction="sum", log_target=True) * (T * T) / outputs_kd.numel()
    else:
        distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
    return float(base_loss * (1 - alpha) + distillation_loss * alpha)


def heads(model):
    return keras.Model(model.input, [model.get_layer("head").output,
                                     model.get_layer("head_dist").output])


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_training_loss_is_deits_distillation_loss(mode):
    pytest.importorskip("torch")
    pupil, master = student(), teacher()
    distiller = Distiller(pupil, master, mode=mode, alpha=0.3, temperature=2.0)
    distiller.compile(optimizer="sgd", loss=ClassificationCrossentropy(label_smoothing=0.1))
    images, targets = random_images(6, 16).astype("float32"), labels(6)
    y_pred = distiller(images, training=True)
    loss = distiller.compute_loss(images, targets, y_pred, training=True)
    class_logits, distillation_logits = (np.asarray(v) for v in heads(pupil)(images))
    assert not np.allclose(class_logits, distillation_logits)  # the heads really differ
    expected = deit_loss_in_torch(mode, class_logits, distillation_logits, master(images),
                                  targets, 0.3, 2.0, 0.1)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_student_with_one_head_distils_through_it():
    pytest.importorskip("torch")
    pupil, master = student(distilled=False), teacher()
    distiller = Distiller(pupil, master, mode="hard", alpha=0.5)
    distiller.compile(optimizer="sgd", loss=ClassificationCrossentropy())
    images, targets = random_images(6, 16).astype("float32"), labels(6, seed=1)
    loss = distiller.compute_loss(images, targets, distiller(images, training=True))
    logits = np.asarray(pupil(images))
    expected = deit_loss_in_torch("hard", logits, logits, master(images), targets, 0.5, 1.0, 0.0)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_teacher_gets_its_input_size_and_preprocessing_and_no_gradient():
    import tensorflow as tf

    master = teacher(image_size=32)
    distiller = Distiller(student(), master, teacher_preprocessing=lambda x: 255.0 - x)
    images = random_images(3, 16).astype("float32")
    resized = tf.image.resize(images, (32, 32), method="bilinear", antialias=True)
    np.testing.assert_allclose(distiller.teacher_logits(images), master(255.0 - resized),
                               atol=1e-5)
    assert master.trainable is False and not master.trainable_weights
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in distiller.student.trainable_variables}


def test_metrics_and_predictions_are_the_students_inference_output():
    pupil = student()
    distiller = Distiller(pupil, teacher())
    distiller.compile(optimizer="sgd", loss=ClassificationCrossentropy(),
                      metrics=[training.TopKAccuracy(1)])
    images, targets = random_images(8, 16).astype("float32"), np.arange(8) % 4
    np.testing.assert_allclose(distiller.predict(images, verbose=0),
                               pupil.predict(images, verbose=0), atol=1e-6)
    result = distiller.evaluate(images, targets, verbose=0, return_dict=True)
    mean_logits = np.mean(heads(pupil)(images), axis=0)
    np.testing.assert_allclose(result["accuracy"], np.mean(mean_logits.argmax(1) == targets))
    # In training the two heads' mean is scored: here each head alone gets it wrong.
    class_logits = np.array([[2.0, 0.0, 1.5, 0.0]], "float32")
    distillation_logits = np.array([[0.0, 2.0, 1.5, 0.0]], "float32")
    distiller.reset_metrics()
    logs = distiller.compute_metrics(images[:1], np.array([2]),
                                     (class_logits, distillation_logits))
    assert float(logs["accuracy"]) == 1.0


def test_fit_saves_the_student_and_resumes_from_backups(tmp_path):
    """A killed run directory of a Distiller resumes to its planned steps; model.keras is the
    student; backups hold the student and optimizer, not the teacher."""
    from test_run_directory import KillAt, Killed

    def run(kill=None):
        pupil, master = student(), teacher(image_size=24)
        distiller = Distiller(pupil, master, mode="soft", alpha=0.5)
        distiller.compile(**training.deit_recipe(8, batch_size=4, steps_per_epoch=2,
                                                 warmup_epochs=1, end_lr=0.0, num_classes=4))
        callbacks = training.callbacks(str(tmp_path / "run"), backup_every=1, tensorboard=False)
        if kill:
            callbacks.append(kill)
        train = keras_vit.data.from_arrays(random_images(8, 16), np.arange(8) % 4, batch_size=4,
                                           training=True, seed=0)
        training.fit(distiller, train, 4, callbacks, validation_data=train, verbose=0)
        return distiller

    with pytest.raises(Killed):
        run(KillAt("on_train_batch_end", epoch=2, batch=0))
    with h5py.File(tmp_path / "run" / "backup" / "step-5.weights.h5") as backup:
        names = []
        backup.visit(names.append)
    assert any("vision_transformer" in n for n in names) and any("optimizer" in n for n in names)
    assert not any("teacher" in n for n in names), names
    distiller = run()
    assert int(distiller.optimizer.iterations) == 8
    rows = training.read_history(str(tmp_path / "run" / "history.csv"))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    saved = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert isinstance(saved, keras_vit.VisionTransformer) and saved.distilled
    assert int(saved.optimizer.iterations) == 8
    images = random_images(2, 16).astype("float32")
    np.testing.assert_allclose(saved.predict(images, verbose=0),
                               distiller.student.predict(images, verbose=0), atol=1e-5)


def test_weights_round_trip_restores_the_student_and_keeps_the_teacher(tmp_path):
    master = teacher()
    first = Distiller(student(seed=1), master)
    first.compile(**training.deit_recipe(4, batch_size=4, end_lr=0.0))
    first.fit(random_images(4, 16).astype("float32"), np.arange(4), epochs=1, verbose=0)
    first.save_weights(tmp_path / "d.weights.h5")
    other_teacher = teacher(seed=5)
    second = Distiller(student(seed=3), other_teacher)
    second.compile(**training.deit_recipe(4, batch_size=4, end_lr=0.0))
    second.optimizer.build(second.trainable_variables)
    before = [np.array(v) for v in other_teacher.weights]
    second.load_weights(tmp_path / "d.weights.h5")
    for got, want in zip(second.student.weights, first.student.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert int(second.optimizer.iterations) == int(first.optimizer.iterations) == 1
    for got, want in zip(other_teacher.weights, before):  # the teacher is not in the file
        np.testing.assert_array_equal(np.asarray(got), want)


def test_save_and_export_write_the_student(tmp_path):
    import tensorflow as tf

    pupil = student()
    distiller = Distiller(pupil, teacher())
    distiller.compile(optimizer="adam", loss=ClassificationCrossentropy())
    distiller.save(tmp_path / "student.keras")
    loaded = keras.models.load_model(tmp_path / "student.keras")
    assert isinstance(loaded, keras_vit.VisionTransformer) and loaded.name == pupil.name
    images = random_images(2, 16).astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), pupil.predict(images, verbose=0),
                               atol=1e-6)
    distiller.export(str(tmp_path / "saved_model"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved_model"))  # keep it: serve needs it
    np.testing.assert_allclose(reloaded.serve(images), pupil.predict(images, verbose=0),
                               atol=1e-5)
    # The whole Distiller (student and teacher) through Keras's own serialisation, safe mode.
    keras.saving.save_model(distiller, tmp_path / "distiller.keras")
    whole = keras.models.load_model(tmp_path / "distiller.keras")
    assert isinstance(whole, Distiller) and whole.mode == "hard" and whole.alpha == 0.5
    np.testing.assert_allclose(whole.predict(images, verbose=0), pupil.predict(images, verbose=0),
                               atol=1e-6)


def test_mixed_float16_casts_the_teacher_and_trains():
    keras.config.set_dtype_policy("mixed_float16")
    pupil = student()
    master = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Rescaling(1 / 255),
                               keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D(),
                               keras.layers.Dense(4)])
    distiller = Distiller(pupil, master, mode="soft")
    distiller.compile(**training.deit_recipe(2, batch_size=4, end_lr=0.0))
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    images = random_images(4, 16).astype("float32")
    assert master(random_images(1, 24)).dtype == "float16"  # the teacher's own logits
    assert distiller.teacher_logits(images).dtype == "float32"
    history = distiller.fit(images, np.arange(4), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(distiller.optimizer.iterations) == 2


@pytest.mark.parametrize("arguments,error,match", [
    (dict(mode="feature"), ValueError, "mode 'feature'.*hard.*soft"),
    (dict(alpha=1.5), ValueError, "alpha"),
    (dict(temperature=0), ValueError, "temperature"),
    (dict(teacher_preprocessing="imagenet"), ValueError, "teacher_preprocessing"),
    (dict(tau=3.0), TypeError, "tau"),
])
def test_bad_arguments_are_named(arguments, error, match):
    with pytest.raises(error, match=match):
        Distiller(student(), teacher(), **arguments)


def test_incompatible_models_are_refused():
    with pytest.raises(ValueError, match="4 classes.*teacher.*10"):
        Distiller(student(), teacher(num_classes=10))
    softmax_teacher = teacher(classifier_activation="softmax")
    with pytest.raises(ValueError, match="soft distillation needs its logits"):
        Distiller(student(), softmax_teacher, mode="soft")
    Distiller(student(), softmax_teacher, mode="hard")  # the argmax does not mind
    with pytest.raises(ValueError, match="student.*softmax"):
        Distiller(student(distilled=False, classifier_activation="softmax"), teacher())
    same = student()
    with pytest.raises(ValueError, match="same model"):
        Distiller(same, same)
    with pytest.raises(TypeError, match="keras.Model"):
        Distiller(student(), lambda images: images)
    with pytest.raises(ValueError, match="loss on the labels"):
        Distiller(student(), teacher()).compile(optimizer="sgd")


def test_keras_applications_cnn_teaches_a_vit():
    cnn = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=4,
                                              include_preprocessing=True,
                                              classifier_activation=None)
    distiller = Distiller(student(), cnn, mode="soft")
    distiller.compile(**training.deit_recipe(1, batch_size=2, end_lr=0.0))
    history = distiller.fit(random_images(2, 16).astype("float32"), np.arange(2), verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_deit_recipe_values():
    kwargs = training.deit_recipe(1000, batch_size=128, steps_per_epoch=50, num_classes=10)
    optimizer, loss = kwargs["optimizer"], kwargs["loss"]
    schedule = optimizer._learning_rate
    assert schedule.peak_lr == pytest.approx(5e-4 * 128 / 512)
    assert schedule.warmup_steps == 250 and schedule.total_steps == 1000  # 5 epochs of 50
    assert schedule.end_lr == 1e-5 and float(schedule(1000)) == pytest.approx(1e-5)
    assert optimizer.weight_decay == 0.05 and optimizer.epsilon == 1e-8
    assert optimizer.global_clipnorm is None and not optimizer.use_ema
    assert loss.label_smoothing == 0.1
    assert training.deit_recipe(1000, 128)["optimizer"]._learning_rate.warmup_steps == 100
    with pytest.raises(ValueError, match="warmup_epochs=5 .*longer than the run"):
        training.deit_recipe(100, 128, steps_per_epoch=50)
    with pytest.raises(ValueError, match="end_lr=1e-05.*peak.*end_lr=0"):
        training.deit_recipe(100, 8)
    options = training.deit_data_options()
    assert isinstance(options["augment"], keras.layers.RandAugment)
    assert options["augment"].factor == (0, 0.9) or options["augment"].factor == 0.9
    train = keras_vit.data.from_arrays(random_images(6, 16), np.arange(6) % 2, batch_size=3,
                                       training=True, seed=0, **options)
    assert int(train.cardinality()) == 2 and [x.shape for x, _ in train] == [(3, 16, 16, 3)] * 2


def test_ema_goes_into_the_model_once_the_schedule_is_done():
    """keras_vit's AdamW defers Keras's end-of-fit EMA copy until the schedule's last step, so a
    run resumed in two fit() calls does not continue from the average."""
    model = student(distilled=False)
    model.compile(**training.deit_recipe(4, batch_size=4, ema=True, ema_momentum=0.5,
                                         end_lr=0.0))
    images, targets = random_images(4, 16).astype("float32"), np.arange(4)
    model.fit(images, targets, epochs=2, verbose=0)  # 2 of 4 steps: the raw weights stay
    average = model.optimizer._model_variables_moving_average
    assert not all(np.allclose(v, a) for v, a in zip(model.trainable_variables, average))
    model.fit(images, targets, epochs=2, verbose=0)  # the last step: the model is the average
    assert int(model.optimizer.iterations) == 4
    for variable, moving in zip(model.trainable_variables, average):
        np.testing.assert_array_equal(np.asarray(variable), np.asarray(moving))


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device(tmp_path):
    script = textwrap.dedent("""
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np, keras_vit
        from keras_vit import training
        TINY = dict(image_size=8, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
                    mlp_dim=16, num_classes=4)
        data = np.random.default_rng(1)
        images = data.integers(0, 256, (16, 8, 8, 3)).astype("float32")
        labels = np.eye(4, dtype="float32")[data.integers(0, 4, 16)]
        results = []
        for name in ("default", "mirrored"):
            strategy = training.get_strategy(name)
            with strategy.scope():
                rng = np.random.default_rng(0)
                student = keras_vit.ViT(distilled=True, **TINY)
                teacher = keras_vit.ViT(**{**TINY, "image_size": 12, "patch_size": 6})
                for model in (student, teacher):
                    model.set_weights([rng.normal(0, 0.3, w.shape).astype("float32")
                                       for w in model.weights])
                distiller = training.Distiller(student, teacher, mode=sys.argv[1])
                distiller.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False,
                                  loss=training.ClassificationCrossentropy())
            dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
            history = distiller.fit(dataset, epochs=2, verbose=0)
            print(name, strategy.num_replicas_in_sync, history.history["loss"])
            results.append([np.asarray(w) for w in student.weights])
        for single, mirrored in zip(*results):
            np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5)
        print("same weights")
    """)
    for mode in ("hard", "soft"):
        result = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                                text=True, timeout=300, env={**ENV, "KERAS_BACKEND": "tensorflow"})
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "mirrored 2" in result.stdout and "same weights" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_distiller_trains_and_saves_on_other_backends(backend, tmp_path):
    pytest.importorskip(backend)
    script = textwrap.dedent("""
        import sys, keras, numpy as np, keras_vit
        from keras_vit import training
        TINY = dict(image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                    mlp_dim=16, num_classes=4)
        student = keras_vit.ViT(distilled=True, **TINY)
        teacher = keras_vit.ViT(**{**TINY, "image_size": 24})
        for mode in ("hard", "soft"):
            distiller = training.Distiller(student, teacher, mode=mode)
            distiller.compile(**training.deit_recipe(4, batch_size=4, end_lr=0.0, num_classes=4))
            images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype("float32")
            history = distiller.fit(images, np.arange(8) % 4, batch_size=4, epochs=2, verbose=0)
            assert np.all(np.isfinite(history.history["loss"])), history.history
        distiller.save(sys.argv[1])
        loaded = keras.models.load_model(sys.argv[1])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)),
                                   keras.ops.convert_to_numpy(student(images)), atol=1e-5)
        print(keras.backend.backend(), "ok")
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s.keras")],
                            capture_output=True, text=True, timeout=300,
                            env={**ENV, "KERAS_BACKEND": backend})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{backend} ok" in result.stdout
