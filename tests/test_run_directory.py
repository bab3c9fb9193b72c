"""Run directories: nothing lost between training, reloading and resuming.

A kill is simulated in-process by a callback that raises at a chosen moment: what is on disk
then is what a SIGKILL at that moment leaves (the callbacks before it have run, those after it
have not). tests/test_training.py also kills a real `keras-vit train` subprocess.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow",
       "CUDA_VISIBLE_DEVICES": ""}
EPOCHS, STEPS_PER_EPOCH, BATCH = 4, 4, 8


class Killed(Exception):
    pass


class KillAt(keras.callbacks.Callback):
    """Raises `Killed` at the first matching moment: `where` is a callback method name."""

    def __init__(self, where, epoch, batch=None):
        super().__init__()
        self.where, self.epoch, self.batch, self._epoch = where, epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _maybe(self, where, batch=None):
        if where == self.where and self._epoch == self.epoch and (self.batch is None or
                                                                  batch == self.batch):
            raise Killed(f"{where} epoch {self._epoch} batch {batch}")

    def on_train_batch_end(self, batch, logs=None):
        self._maybe("on_train_batch_end", batch)

    def on_test_begin(self, logs=None):
        self._maybe("on_test_begin")

    def on_epoch_end(self, epoch, logs=None):
        self._maybe("on_epoch_end")


def _data():
    images = np.random.default_rng(0).integers(0, 256, (STEPS_PER_EPOCH * BATCH, 16, 16, 3))
    labels = np.arange(STEPS_PER_EPOCH * BATCH) % 3
    train = keras_vit.data.from_arrays(images.astype("uint8"), labels, batch_size=BATCH,
                                       training=True, seed=0)
    val = keras_vit.data.from_arrays(images[:8].astype("uint8"), labels[:8], batch_size=BATCH)
    return train, val


def _model():
    model = keras_vit.ViT(image_size=16, patch_size=8, hidden_size=16, num_layers=1, num_heads=2,
                          mlp_dim=16, num_classes=3)
    model.compile(**training.scratch_recipe(EPOCHS * STEPS_PER_EPOCH, base_lr=1e-3,
                                            warmup_steps=2))
    return model


def _run(run_dir, kill=None, backup_every=2):
    train, val = _data()
    model = _model()
    run_callbacks = training.callbacks(run_dir, backup_every=backup_every, tensorboard=False)
    if kill is not None:
        # The position decides what had run: a kill at on_epoch_end sits between the model saves
        # and the backup (the backup is the last callback).
        position = {"on_epoch_end": len(run_callbacks) - 1}.get(kill.where, len(run_callbacks))
        run_callbacks.insert(position, kill)
    training.fit(model, train, EPOCHS, run_callbacks, steps_per_epoch=STEPS_PER_EPOCH,
                 validation_data=val, verbose=0)
    return model


@pytest.mark.parametrize("kill", [
    KillAt("on_train_batch_end", epoch=1, batch=1),  # mid-epoch, right after a step backup
    KillAt("on_train_batch_end", epoch=1, batch=3),  # after the epoch's last batch
    KillAt("on_test_begin", epoch=1),                 # during validation
    KillAt("on_epoch_end", epoch=1),                  # during the epoch-end saves
    KillAt("on_epoch_end", epoch=3),                  # after the last epoch's model saves
], ids=["mid-epoch", "after-last-batch", "validation", "saves", "last-epoch-saves"])
def test_a_killed_run_resumes_to_exactly_its_planned_steps(tmp_path, kill):
    run_dir = str(tmp_path / "run")
    with pytest.raises(Killed):
        _run(run_dir, kill)
    model = _run(run_dir)  # the resumed run: a fresh process would build exactly this
    assert int(model.optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH
    rows = training.read_history(os.path.join(run_dir, "history.csv"))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    saved = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    assert int(saved.optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["optimizer_steps"] == EPOCHS * STEPS_PER_EPOCH


def test_resume_with_another_epoch_length_is_refused(tmp_path):
    run_dir = str(tmp_path / "run")
    with pytest.raises(Killed):
        _run(run_dir, KillAt("on_train_batch_end", epoch=0, batch=2), backup_every=3)
    train, val = _data()
    with pytest.raises(ValueError, match="3 steps into epoch 1.*now has 2 steps"):
        training.fit(_model(), train, EPOCHS, training.callbacks(run_dir, tensorboard=False),
                     steps_per_epoch=2, verbose=0)


def test_a_failed_save_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    from keras.src.saving import saving_lib

    run_dir = str(tmp_path / "run")
    train, _ = _data()
    model = _model()
    run_callbacks = training.callbacks(run_dir, monitor="accuracy", tensorboard=False)
    training.fit(model, train, 1, run_callbacks, steps_per_epoch=STEPS_PER_EPOCH, verbose=0)

    def killed_midway(*args, **kwargs):  # the config is written; the weights never come
        raise Killed("killed while saving the weights")

    monkeypatch.setattr(saving_lib, "_save_state", killed_midway)
    with pytest.raises(Killed):
        training.fit(model, train, 2, run_callbacks, steps_per_epoch=STEPS_PER_EPOCH, verbose=0)
    monkeypatch.undo()
    for name in ("model.keras", "best.keras"):
        saved = keras.saving.load_model(os.path.join(run_dir, name))
        assert int(saved.optimizer.iterations) == STEPS_PER_EPOCH, name
    assert sorted(os.listdir(run_dir)) == ["best.keras", "curves.png", "history.csv",
                                           "metrics.json", "model.keras"]  # no temporary files


def test_a_trained_model_loads_in_a_fresh_process_after_import_keras_vit(tmp_path):
    run_dir = str(tmp_path / "run")
    train, _ = _data()
    model = _model()  # AdamW + WarmupCosine + the recipe's loss and metrics
    training.fit(model, train, 1, training.callbacks(run_dir, monitor="accuracy",
                                                     tensorboard=False),
                 steps_per_epoch=STEPS_PER_EPOCH, verbose=0)
    images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "logits.npy", model.predict(images, verbose=0))
    script = f"""
import keras, numpy as np, keras_vit
images, expected = np.load({str(tmp_path / 'images.npy')!r}), np.load({str(tmp_path / 'logits.npy')!r})
for path in [{os.path.join(run_dir, 'model.keras')!r}, {os.path.join(run_dir, 'best.keras')!r}]:
    model = keras.models.load_model(path)  # safe_mode=True is the default
    assert type(model.optimizer._learning_rate).__name__ == "WarmupCosine"
    assert model.optimizer.exclude_from_weight_decay_names, "weight-decay exclusions lost"
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
    model.fit(images, np.array([0, 2]), epochs=1, verbose=0)  # trains on, integer labels too
model = keras_vit.load_pretrained({os.path.join(run_dir, 'model.keras')!r})
np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=1e-5)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], env=ENV, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
