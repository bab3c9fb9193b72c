"""`keras-vit`: bad options, files and values end in one clear line and exit 2, never a
traceback; TensorFlow's start-up notices are hidden."""

import os
import subprocess
import sys

import pytest

import keras_vit
from keras_vit import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line_error(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if "error" in line]
    assert code == 2, captured.out + captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.out + captured.err
    return lines[0]


def test_options_without_a_command(capsys):
    assert "unrecognized arguments: --bogus" in _one_line_error(capsys, "--bogus")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0 and "COMMAND" in capsys.readouterr().out
    assert cli.main([]) == 2 and "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["benchmark", "--repeats", "0"], "--repeats: expected a positive integer, got 0"),
    (["benchmark", "--warmup", "-1"], "--warmup: expected an integer >= 0, got -1"),
    (["benchmark", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["benchmark", "--threads", "0"], "--threads"),
])
def test_bad_benchmark_values_are_one_line(capsys, argv, says):
    assert says in _one_line_error(capsys, *argv)


def test_library_errors_go_to_stderr(capsys, tmp_path):
    assert cli.main(["predict", str(tmp_path / "absent.keras"), str(tmp_path / "x.jpg")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ")


@pytest.mark.parametrize("argv, says", [
    (["train", "--dropout", "2"], "--dropout: expected a number in [0, 1), got 2"),
    (["train", "--drop-path", "-0.1"], "--drop-path"),
    (["train", "--gradient-accumulation", "0"], "expected a positive integer, got 0"),
    (["train", "--lr", "-1"], "--lr: expected a number > 0, got -1"),
    (["train", "--lr", "nan"], "--lr: expected a finite number"),
    (["train", "--label-smoothing", "1.5"], "--label-smoothing"),
    (["train", "--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["train", "--warmup-steps", "-5"], "--warmup-steps"),
    (["train", "--epochs", "two"], "expected an integer, got 'two'"),
])
def test_bad_train_values_are_one_line(capsys, argv, says):
    assert says in _one_line_error(capsys, *argv)


def test_bad_train_setups_are_one_line_before_anything_is_written(capsys, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    line = _one_line_error(capsys, "train", "--run-dir", str(a_file))
    assert "is a file" in line and str(a_file) in line
    run_dir = tmp_path / "run"
    # The tiny model has 4x4 patches: 30 pixels is no multiple of 4.
    line = _one_line_error(capsys, "train", "--image-size", "30", "--epochs", "1", "--run-dir",
                           str(run_dir))
    assert "30" in line and "patch" in line
    assert not os.path.exists(run_dir / "history.csv")
    line = _one_line_error(capsys, "train", "--data-dir", str(tmp_path), "--val-dir",
                           str(tmp_path / "nope"), "--run-dir", str(run_dir))
    assert "--val-dir" in line and "nope" in line


def test_bad_files_for_info_and_evaluate_are_one_line(capsys, tmp_path):
    assert "missing.keras" in _one_line_error(capsys, "info", str(tmp_path / "missing.keras"))
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    assert "notes.keras" in _one_line_error(capsys, "evaluate", str(text))
    assert "notes.keras" in _one_line_error(capsys, "info", str(text))


def test_the_command_hides_tensorflows_start_up_notices():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "keras_vit.cli", "info"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Registered weights" in result.stdout
    for notice in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard",
                   "cudart_stub"):
        assert notice not in result.stderr, result.stderr
    # The user's own level is left alone: TensorFlow's notices come back.
    from keras_vit import _startup

    assert not _startup.wanted({"TF_CPP_MIN_LOG_LEVEL": "0"}, ["keras-vit"])
    assert _startup.wanted({}, ["/usr/bin/keras-vit"]) and not _startup.wanted({}, ["python"])


@pytest.mark.parametrize("call, message", [
    (lambda: keras_vit.ViT(dropout=0.5), "'dropout'; did you mean 'dropout_rate'"),
    (lambda: keras_vit.ViTS16(num_class=10), "'num_class'; did you mean 'num_classes'"),
    (lambda: keras_vit.VisionTransformer(imagesize=32), "'imagesize'; did you mean 'image_size'"),
])
def test_unknown_keywords_are_type_errors_naming_the_nearest(call, message):
    with pytest.raises(TypeError, match=message):
        call()


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_layers=0), "num_layers must be an int >= 1, got 0"),
    (dict(num_heads=2.5), "num_heads must be an int >= 1"),
    (dict(layer_norm_epsilon=-1e-6), "layer_norm_epsilon must be a positive number"),
    (dict(image_size=0), "image_size"),
    (dict(num_registers=-1), "num_registers must be an int >= 0"),
    (dict(representation_size=0), "representation_size must be an int >= 1 or None"),
    (dict(normalization_std=0.0), "normalization_std"),
    (dict(num_classes=-3), "num_classes must be a positive int"),
])
def test_bad_model_values_are_value_errors(kwargs, message):
    config = dict(image_size=8, patch_size=4, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=8)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        keras_vit.ViT(**{**config, **kwargs})


@pytest.mark.slow
def test_train_and_info_on_a_hybrid(capsys, tmp_path):
    run_dir = tmp_path / "run"
    code = cli.main(["train", "--model", "RViTTi16", "--image-size", "32", "--steps", "2",
                     "--batch-size", "8", "--quiet", "--run-dir", str(run_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "Held-out accuracy" in out, out
    assert cli.main(["info", str(run_dir / "model.keras")]) == 0
    assert "ResNetBackbone" in capsys.readouterr().out


def test_resume_with_other_plan_options_is_refused(capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "backup").mkdir(parents=True)
    (run_dir / "backup" / "step-5.weights.h5").write_bytes(b"")
    (run_dir / "backup" / "training_metadata.json").write_text(
        '{"epoch": 0, "steps": 5, "epoch_start_step": 0, "weights": "step-5.weights.h5"}')
    plan = {"model": "tiny", "image_size": 16, "batch_size": 64, "epochs": 2,
            "steps_per_epoch": 22, "recipe": "scratch", "gradient_accumulation": None,
            "data_dir": None, "dataset": None, "weights": None}
    (run_dir / "plan.json").write_text(__import__("json").dumps(plan))
    line = _one_line_error(capsys, "train", "--resume", "--run-dir", str(run_dir), "--epochs", "2",
                           "--batch-size", "32")
    assert "batch_size was 64, now 32" in line and "steps_per_epoch was 22, now 44" in line
    damaged = tmp_path / "damaged"
    (damaged / "backup").mkdir(parents=True)
    (damaged / "backup" / "training_metadata.json").write_text('{"epoch": 0, "ste')
    line = _one_line_error(capsys, "train", "--resume", "--run-dir", str(damaged))
    assert "damaged" in line and "training_metadata.json" in line


@pytest.mark.slow
def test_train_with_a_teacher_writes_and_resumes_the_student(capsys, tmp_path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    assert cli.main(["train", "--steps", "3", "--quiet", "--run-dir", str(teacher_dir)]) == 0
    capsys.readouterr()
    code = cli.main(["train", "--steps", "3", "--quiet", "--run-dir", str(student_dir),
                     "--teacher", str(teacher_dir / "model.keras"), "--distillation", "soft"])
    out = capsys.readouterr().out
    assert code == 0 and "distilled from" in out and "Held-out accuracy" in out, out
    import keras

    student = keras.models.load_model(student_dir / "model.keras")
    assert isinstance(student, keras_vit.VisionTransformer) and student.distilled
    assert "--distillation needs --teacher" in _one_line_error(
        capsys, "train", "--distillation", "hard", "--run-dir", str(tmp_path / "x"))
