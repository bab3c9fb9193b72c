"""A run directory: its callbacks (models, history, curves, summary, backup) and the resumable fit.

    model.fit(ds, epochs=10, validation_data=val, callbacks=callbacks("runs/x"))
    fit(model, ds, 10, callbacks("runs/x"), validation_data=val)   # resumes at the exact step

Every file is written atomically (`keras_vit.fileio`): a run killed at any moment leaves each
file either as it was or complete.
"""

import csv
import io
import json
import logging
import math
import os
import shutil
import time

import keras
from keras import ops

from keras_vit.fileio import atomic_path, write_json

logger = logging.getLogger("keras_vit.training")


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's `BackupAndRestore` that also records the global step and where the epoch began,
    writes each backup atomically (a kill while saving leaves the previous one intact), and keeps
    the backup at the end (`fit()` removes it once the whole run has finished).

    Step backups skip the last batch of an epoch: the epoch-end backup follows it, after
    validation and the epoch's saves, so a kill in between resumes before that batch and the
    epoch ends (validation, history row, model files) exactly once.

    With plain `model.fit` a restored run restarts the interrupted epoch (Keras's behaviour);
    `keras_vit.training.fit` also skips the batches that epoch had already done.
    """

    def __init__(self, backup_dir, save_freq="epoch"):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=False)
        self.global_step = 0
        self._epoch_start_step = 0
        self._resumed_epoch = None
        self._seen_this_epoch = 0
        self.managed_by_fit = False  # True under `fit()`, which chooses the initial epoch itself

    def _load_model(self):
        state = self.restore()
        if state is not None and not self.managed_by_fit:
            self.model._initial_epoch = state["epoch"]

    def restore(self):
        """Loads the backup's weights and optimizer state into the model; returns its state or
        None when there is no backup."""
        state = read_backup(self.backup_dir)
        if state is None:
            return None
        if not self.model.built:
            raise ValueError("Build the model (call it on a batch) before fit() to restore a backup.")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        self.global_step, self._epoch_start_step = state["steps"], state["epoch_start_step"]
        self._current_epoch = self._resumed_epoch = state["epoch"]
        logger.info("Restored the backup of epoch %d, step %d from %s", state["epoch"] + 1,
                    state["steps"], self.backup_dir)
        return state

    def on_epoch_begin(self, epoch, logs=None):
        self._seen_this_epoch = 0
        if epoch != self._resumed_epoch:
            self._epoch_start_step = self.global_step
        self._resumed_epoch = None
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.global_step += batch + 1 - self._seen_this_epoch
        self._seen_this_epoch = batch + 1
        last_batch = batch + 1 == (self.params or {}).get("steps")
        if self.save_freq != "epoch" and self.global_step % self.save_freq == 0 and not last_batch:
            self._save_model()

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        self._epoch_start_step = self.global_step
        self._save_model()

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = f"step-{self.global_step}.weights.h5"
        with atomic_path(os.path.join(self.backup_dir, weights), suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        state = {"epoch": self._current_epoch, "steps": self.global_step,
                 "epoch_start_step": self._epoch_start_step, "weights": weights}
        write_json(self._training_metadata_path, state)
        for name in os.listdir(self.backup_dir):
            if name.endswith(".weights.h5") and name != weights:
                os.remove(os.path.join(self.backup_dir, name))

    def on_train_end(self, logs=None):
        pass


def read_backup(backup_dir):
    """The state of the last backup in `backup_dir` (`epoch`, `steps`, `epoch_start_step`,
    `weights`), or None when there is none. ValueError naming the file when it is damaged."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        missing = {"epoch", "steps", "epoch_start_step", "weights"} - set(state)
    except (ValueError, TypeError) as error:
        raise ValueError(f"The backup state {path} is damaged ({error}); delete {backup_dir} to "
                         f"start the run again.") from None
    if missing:
        raise ValueError(f"The backup state {path} lacks {sorted(missing)}; delete {backup_dir} "
                         f"to start the run again.")
    if not os.path.exists(os.path.join(backup_dir, state["weights"])):
        return None
    return state


class RunCheckpoint(keras.callbacks.Callback):
    """Saves the model as a `.keras` file at each epoch end, atomically (Keras's
    `ModelCheckpoint` writes in place: a kill during the save leaves a truncated file). With a
    `monitor`, only when it improves on `best` (pass the best value of earlier epochs on resume)."""

    def __init__(self, filepath, monitor=None, mode="max", best=None):
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.filepath, self.monitor, self.mode = filepath, monitor, mode
        self.best = best
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = _float((logs or {}).get(self.monitor))
            if value is None:
                if not self._warned:
                    logger.warning("%s not saved: the logs have no %r (they have %s).",
                                   self.filepath, self.monitor, sorted(logs or {}))
                    self._warned = True
                return
            if self.best is not None and not (value < self.best if self.mode == "min"
                                              else value > self.best):
                return
            self.best = value
        self.save()

    def save(self):
        with atomic_path(self.filepath, suffix=".keras") as tmp:
            self.model.save(tmp, overwrite=True)


class TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """Stops training on a NaN/inf loss and says where it happened and what to try."""

    message = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.message = (
                f"The loss became {float(loss)} at epoch {getattr(self, '_epoch', 0) + 1}, batch "
                f"{batch + 1}: training stopped. Try a lower learning rate (--lr), float32 instead of "
                f"mixed float16 (no --mixed-precision), or check the data for NaN/inf pixels.")
            logger.error(self.message)
            print(self.message)
            self.model.stop_training = True


class TrainingCurves(keras.callbacks.Callback):
    """Plots loss and accuracy per epoch from `history.csv` (so a resumed run's curves include the
    epochs before the interruption) into a PNG: at epoch ends, at most every `min_interval`
    seconds (a plot costs more than a short epoch of a small run), and at the end."""

    def __init__(self, history_path, png_path, min_interval=10.0):
        super().__init__()
        self.history_path, self.png_path, self.min_interval = history_path, png_path, min_interval
        self._last_plot = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        if time.time() - self._last_plot >= self.min_interval:
            self.plot()

    def on_train_end(self, logs=None):
        self.plot()

    def plot(self):
        rows = read_history(self.history_path)
        if not rows:
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        epochs = [int(r["epoch"]) + 1 for r in rows]
        figure = Figure(figsize=(10, 4), layout="constrained")
        FigureCanvasAgg(figure)
        for index, key in enumerate(("loss", "accuracy")):
            axis = figure.add_subplot(1, 2, index + 1)
            for prefix, label in (("", "train"), ("val_", "validation")):
                values = [_float(r.get(prefix + key)) for r in rows]
                if any(v is not None for v in values):
                    axis.plot(epochs, values, marker=".", label=label)
            axis.set(title=key, xlabel="epoch")
            axis.grid(alpha=0.3)
            axis.legend()
        with atomic_path(self.png_path, suffix=".png") as tmp:
            figure.savefig(tmp, dpi=80)
        self._last_plot = time.time()


class HistoryLogger(keras.callbacks.Callback):
    """`history.csv`, one row per epoch, rewritten atomically at each epoch end (Keras's
    `CSVLogger` appends in place: a kill mid-write leaves a half row). Keeps the rows of earlier
    runs of the same directory; a new metric adds a column."""

    def __init__(self, filename):
        super().__init__()
        self.filename = filename

    def on_epoch_end(self, epoch, logs=None):
        rows = [r for r in read_history(self.filename) if int(r["epoch"]) != epoch]
        rows.append({"epoch": epoch, **{k: _format(v) for k, v in (logs or {}).items()}})
        write_history(self.filename, rows)


def _format(value):
    number = _float(value)
    return value if number is None else repr(number)


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_history(path):
    """The rows of a `history.csv` (dicts of strings), or [] when it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_history(path, rows):
    """Writes `history.csv` rows (dicts) atomically, sorted by epoch, with every key as a column."""
    rows = sorted(rows, key=lambda r: int(r["epoch"]))
    columns = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text.getvalue())


class RunSummary(keras.callbacks.Callback):
    """Writes `metrics.json` at the end: final and best metrics, optimizer steps, the settings and
    the elapsed time."""

    def __init__(self, path, monitor, settings=None, nan_guard=None):
        super().__init__()
        self.path, self.monitor, self.settings = path, monitor, dict(settings or {})
        self.nan_guard = nan_guard
        self.start = None
        self.last_logs = {}

    def on_train_begin(self, logs=None):
        self.start = self.start or time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.last_logs = {k: float(v) for k, v in (logs or {}).items() if _float(v) is not None}
        self.last_logs["epoch"] = epoch + 1

    def on_train_end(self, logs=None):
        self.write()

    def write(self, **extra):
        rows = read_history(os.path.join(os.path.dirname(self.path), "history.csv"))
        if not self.last_logs and rows:  # a resumed run that had no epoch left to train
            self.last_logs = {k: float(v) for k, v in rows[-1].items() if _float(v) is not None}
            self.last_logs["epoch"] = int(rows[-1]["epoch"]) + 1
        best = None
        scored = [r for r in rows if _float(r.get(self.monitor)) is not None]
        if scored:
            pick = min if "loss" in self.monitor else max
            row = pick(scored, key=lambda r: float(r[self.monitor]))
            best = {"epoch": int(row["epoch"]) + 1, self.monitor: float(row[self.monitor])}
        optimizer = getattr(self.model, "optimizer", None)
        summary = {
            "final": self.last_logs, "best": best, "monitor": self.monitor,
            "optimizer_steps": int(ops.convert_to_numpy(optimizer.iterations)) if optimizer else None,
            "elapsed_seconds": round(time.time() - (self.start or time.time()), 2),
            "stopped_on_nan": getattr(self.nan_guard, "message", None),
            "settings": self.settings, **extra,
        }
        write_json(self.path, summary)


def callbacks(run_dir, monitor="val_accuracy", settings=None, backup_every="epoch",
              tensorboard=True):
    """The callbacks of a run directory:

        run_dir/model.keras     the last model (every epoch)     run_dir/best.keras  best by monitor
        run_dir/history.csv     one row per epoch (kept on resume)
        run_dir/curves.png      loss and accuracy curves         run_dir/metrics.json  at the end
        run_dir/logs/           TensorBoard                      run_dir/backup/  BackupAndRestore

    `backup_every`: `"epoch"` or a number of steps. A run killed and started again with the same
    `run_dir` resumes from the last backup. Non-chief workers of a multi-worker run should pass
    their own scratch directory (see `is_chief`).

        model.fit(ds, epochs=10, validation_data=val, callbacks=callbacks("runs/x"))
    """
    if backup_every != "epoch" and (isinstance(backup_every, bool) or not isinstance(
            backup_every, int) or backup_every <= 0):
        raise ValueError(f"backup_every must be 'epoch' or a positive int, got {backup_every!r}.")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"The run directory {run_dir!r} is a file, not a directory.")
    os.makedirs(run_dir, exist_ok=True)
    history = os.path.join(run_dir, "history.csv")
    mode = "min" if "loss" in monitor else "max"
    previous = [_float(r.get(monitor)) for r in read_history(history)]
    previous = [v for v in previous if v is not None]
    # A resumed run must not replace best.keras with a worse model.
    best_so_far = (min(previous) if mode == "min" else max(previous)) if previous else None
    nan_guard = TerminateOnNaN()
    result = [
        nan_guard,
        HistoryLogger(history),
        RunCheckpoint(os.path.join(run_dir, "model.keras")),
        RunCheckpoint(os.path.join(run_dir, "best.keras"), monitor=monitor, mode=mode,
                      best=best_so_far),
        TrainingCurves(history, os.path.join(run_dir, "curves.png")),
        RunSummary(os.path.join(run_dir, "metrics.json"), monitor, settings, nan_guard),
        BackupAndRestore(os.path.join(run_dir, "backup"), save_freq=backup_every),
    ]
    if tensorboard and _has_tensorboard():
        result.insert(1, keras.callbacks.TensorBoard(os.path.join(run_dir, "logs")))
    elif tensorboard:
        logger.warning("No TensorBoard logs: `pip install tensorboard` to get them.")
    return result


def _has_tensorboard():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def fit(model, train_data, epochs, callbacks, steps_per_epoch=None, validation_data=None,
        verbose="auto"):
    """`model.fit` over a run directory's `callbacks(...)` that resumes a killed run exactly where
    its last backup was: the interrupted epoch runs only its remaining steps, so the resumed run
    ends with the same number of optimizer steps as an uninterrupted one, in every kill window
    (mid-epoch, after an epoch's last batch, during validation, during the saves). Epoch rows
    after the backup are dropped from `history.csv`; the backup is removed when the run has
    finished.

    `train_data` is a tf.data.Dataset; a finite one is repeated (`steps_per_epoch` defaults to its
    number of batches). Note: the data order after a resume is not the one the killed run would
    have seen (the input pipeline's position is not checkpointed).

        fit(model, train_ds, 10, callbacks("runs/x"), validation_data=val_ds)
    """
    import tensorflow as tf

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
    backup = next((c for c in callbacks if isinstance(c, BackupAndRestore)), None)
    if steps_per_epoch is None:
        steps_per_epoch = int(train_data.cardinality())
        if steps_per_epoch <= 0:
            raise ValueError("Pass steps_per_epoch: the dataset's number of batches is unknown.")
    # Repeat unless already infinite: an unknown cardinality (folders and TFDS after filtering
    # unreadable images) is finite too, and would otherwise stop the run after its first epoch.
    if int(train_data.cardinality()) != int(tf.data.INFINITE_CARDINALITY):
        train_data = train_data.repeat()
    # shuffle=False: tf.data pipelines shuffle themselves (Keras would only warn it ignores it).
    kwargs = dict(validation_data=validation_data, callbacks=callbacks, verbose=verbose,
                  shuffle=False)
    start_epoch, history = 0, None
    if backup is not None:
        backup.managed_by_fit = True
    state = read_backup(backup.backup_dir) if backup else None
    if state is not None:
        start_epoch = state["epoch"]
        _truncate_history(callbacks, start_epoch)
        done = state["steps"] - state["epoch_start_step"]
        if done >= steps_per_epoch:
            raise ValueError(
                f"The backup in {backup.backup_dir} is {done} steps into epoch {start_epoch + 1}, "
                f"but an epoch now has {steps_per_epoch} steps: resume with the options of the "
                f"first run (batch size, --steps, data).")
        if 0 < done and start_epoch < epochs:
            logger.info("Resuming epoch %d at step %d of %d", start_epoch + 1, done + 1,
                        steps_per_epoch)
            history = model.fit(train_data, epochs=start_epoch + 1, initial_epoch=start_epoch,
                                steps_per_epoch=steps_per_epoch - done, **kwargs)
            start_epoch += 1
    if start_epoch < epochs and not model.stop_training:
        history = model.fit(train_data, epochs=epochs, initial_epoch=start_epoch,
                            steps_per_epoch=steps_per_epoch, **kwargs)
    elif state is not None and history is None:
        # Killed after the last epoch's backup, before the backup was removed: nothing is left
        # to train, but the caller gets the trained model, not the fresh one.
        backup.set_model(model)
        backup.restore()
    if backup and not model.stop_training:
        shutil.rmtree(backup.backup_dir, ignore_errors=True)
    return history


def _truncate_history(callbacks_list, from_epoch):
    """Drops history.csv rows of epochs the restored backup had not finished."""
    for callback in callbacks_list:
        if isinstance(callback, HistoryLogger):
            rows = read_history(callback.filename)
            kept = [r for r in rows if int(r["epoch"]) < from_epoch]
            if len(kept) != len(rows):
                write_history(callback.filename, kept)
