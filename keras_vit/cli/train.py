"""`keras-vit train` and `keras-vit evaluate`: options -> data, model, recipe -> a run directory.

Parsing and printing only; the work is `keras_vit.training` and `keras_vit.data`.
"""

import argparse
import json
import logging
import math
import os
import time

import keras

from keras_vit.cli.arguments import (
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from keras_vit.fileio import write_json
from keras_vit.training import (
    RECIPES,
    STRATEGIES,
    RunSummary,
    callbacks,
    classification_metrics,
    finetune_recipe,
    fit,
    get_strategy,
    is_chief,
    read_backup,
    scratch_recipe,
    set_mixed_precision,
)
from keras_vit.training.losses import ClassificationCrossentropy

logger = logging.getLogger("keras_vit.training")

# The built-in run: scikit-learn's real 8x8 handwritten digits (1797 images, shipped with the pip
# package, works offline) and a small ViT that gets ~97% held-out accuracy in 2-4 minutes on a
# 2-core CPU. Tuned on that split: upsampling to 16 pixels (so training crops and evaluation images
# are both resampled) with 4x4 patches, dropout and label smoothing beat 8 pixels with 2x2 patches
# (~94%: over-fitting) at the same 16 tokens and cost.
TINY_MODEL = dict(patch_size=4, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128)
DIGITS_DEFAULTS = dict(image_size=16, batch_size=64, epochs=60, lr=2e-3, weight_decay=0.05,
                       warmup_epochs=3, crop_area_range=(0.6, 1.0), dropout=0.1,
                       label_smoothing=0.1)

EPILOG = """examples:
  keras-vit train
      the built-in run: a small ViT on scikit-learn's 8x8 handwritten digits (offline, minutes on a
      laptop CPU); prints the held-out accuracy and the run directory
  keras-vit train --model ViTB16 --weights imagenet21k --dataset cifar10 --image-size 384 \\
      --recipe finetune --epochs 10
      fine-tune a pretrained ViT-B/16 on a TensorFlow Datasets dataset
  keras-vit train --model ViTS16 --data-dir ~/photos/train --val-dir ~/photos/val \\
      --recipe scratch --mixed-precision bfloat16
      train from scratch on folders of images (one sub-folder per class)
  keras-vit train --run-dir runs/x --resume
      continue a killed run from its last backup (same options as the first time)

A run directory (default runs/<date-time>) gets model.keras, best.keras, history.csv, curves.png,
metrics.json and TensorBoard logs (tensorboard --logdir runs/)."""


def add_train_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    data = parser.add_argument_group("data (default: the built-in digits)")
    data.add_argument("--dataset", help="a TensorFlow Datasets name (e.g. cifar10, oxford_flowers102) "
                      "or 'digits' (built in, offline)")
    data.add_argument("--data-dir", help="training images, one sub-folder per class")
    data.add_argument("--val-dir", help="validation images, same class sub-folders as --data-dir")
    data.add_argument("--tfds-data-dir", help="where TensorFlow Datasets stores/downloads data")
    data.add_argument("--train-split", default="train", help="TFDS training split (default: train)")
    data.add_argument("--val-split", help="TFDS validation split (default: the dataset's usual "
                      "evaluation split, else test)")
    data.add_argument("--image-size", type=positive_int,
                      help="input size (default: 16 for digits, 224 for ViT variants, 32 for tiny)")
    data.add_argument("--batch-size", type=positive_int, help="global batch size (default 64)")
    data.add_argument("--randaugment", action="store_true", help="RandAugment on training images")
    data.add_argument("--mixup", type=non_negative_float, default=0.0, metavar="ALPHA",
                      help="MixUp alpha (0 = off)")
    data.add_argument("--cutmix", type=non_negative_float, default=0.0, metavar="ALPHA",
                      help="CutMix alpha (0 = off)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="tiny",
                       help="'tiny' (small ViT: patch 4, width 64, 4 blocks; the default), a "
                       "variant (ViTTi16, ViTS16, ViTS32, ViTB8, ViTB16, ViTB32, ViTL16, ViTL32, "
                       "ViTH14) or a ResNet hybrid (R50ViTB16, R50ViTB32, R50ViTL16, R50ViTL32, "
                       "R26ViTS32, RViTTi16)")
    model.add_argument("--weights", help="pretrained weights: a registered name (imagenet21k, "
                       "...), a checkpoint path or hf://ORG/NAME[@REVISION]; default: random init")
    model.add_argument("--teacher", metavar="PATH",
                       help="distil from this teacher (a .keras model or a checkpoint; DeiT): "
                       "the student gets a distillation token unless --weights has none")
    model.add_argument("--distillation", choices=["hard", "soft"],
                       help="with --teacher: DeiT's hard distillation (default) or soft (KL at a "
                       "temperature)")
    model.add_argument("--distillation-alpha", type=fraction, default=0.5, metavar="ALPHA",
                       help="weight of the distillation term (default 0.5)")
    model.add_argument("--distillation-temperature", type=positive_float, default=3.0,
                       metavar="T", help="soft distillation temperature (default 3.0)")
    model.add_argument("--dropout", type=fraction,
                       help="dropout rate (default 0.1 on digits, else 0)")
    model.add_argument("--drop-path", type=fraction, default=0.0, help="stochastic depth rate")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--recipe", help="finetune (SGD momentum, the paper's fine-tuning; default with "
                     "--weights) or scratch (AdamW with weight decay; default without)")
    opt.add_argument("--epochs", type=positive_int, help="epochs (default 60 on digits, else 10)")
    opt.add_argument("--steps", type=positive_int,
                     help="total optimizer steps instead of --epochs (rounded up to whole epochs)")
    opt.add_argument("--lr", type=positive_float,
                     help="peak learning rate (default: 0.03 finetune, 1e-3 scratch)")
    opt.add_argument("--weight-decay", type=non_negative_float,
                     help="scratch recipe AdamW weight decay, multiplied by the learning rate "
                     "(default 0.1, the paper's; 0.05 on digits)")
    opt.add_argument("--warmup-steps", type=non_negative_int,
                     help="linear warmup steps (default: 10%% of the steps, at most 500 for "
                     "finetune and 10000 for scratch; 3 epochs on digits)")
    opt.add_argument("--label-smoothing", type=fraction,
                     help="label smoothing (default 0.1 on digits, else 0)")
    opt.add_argument("--gradient-accumulation", type=positive_int, metavar="K",
                     help="update every K batches (an effective batch K x --batch-size)")
    opt.add_argument("--mixed-precision", choices=["float16", "bfloat16"],
                     help="mixed precision compute (bfloat16 on TPU/Ampere+, float16 on older GPUs)")
    opt.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"],
                     help="XLA compilation (auto: on for GPU/TPU, off on CPU where it is slower)")
    opt.add_argument("--strategy", default="auto", choices=STRATEGIES,
                     help="distribution: auto, default (one device), mirrored (all local GPUs), "
                     "multi_worker (TF_CONFIG), tpu")
    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", help="output directory (default: runs/<date-time>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its "
                     "last backup")
    run.add_argument("--backup-every", type=positive_int, metavar="STEPS",
                     help="back up every STEPS steps as well as at each epoch end (default 200)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _model_choices():
    from keras_vit import models

    return ["tiny"] + list(models.VARIANT_BUILDERS)


def _check_train_args(args):
    """Raises ValueError with the valid choices for a bad model, recipe or data combination."""
    if args.model not in _model_choices():
        raise ValueError(f"Unknown model {args.model!r}: choose one of {', '.join(_model_choices())}.")
    if args.recipe is not None and args.recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {args.recipe!r}: choose one of {', '.join(RECIPES)}.")
    if args.dataset and args.data_dir:
        raise ValueError("Give either --dataset or --data-dir, not both.")
    if args.val_dir and not args.data_dir:
        raise ValueError("--val-dir needs --data-dir (the training folder).")
    if args.distillation and not args.teacher:
        raise ValueError("--distillation needs --teacher PATH.")
    if args.teacher and not (os.path.exists(args.teacher) or args.teacher.startswith("hf://")):
        raise FileNotFoundError(f"--teacher {args.teacher!r} does not exist.")
    for option, folder in (("--data-dir", args.data_dir), ("--val-dir", args.val_dir)):
        if folder and not os.path.isdir(os.path.expanduser(folder)):
            raise FileNotFoundError(f"{option} {folder!r} is not a directory.")
    if args.run_dir and os.path.exists(args.run_dir) and not os.path.isdir(args.run_dir):
        raise ValueError(f"--run-dir {args.run_dir!r} is a file, not a directory.")


def _load_data(args, image_size, batch_size):
    """(train, validation or None) datasets for the CLI options."""
    from keras_vit import data

    options = dict(batch_size=batch_size, seed=args.seed, mixup_alpha=args.mixup,
                   cutmix_alpha=args.cutmix,
                   augment=keras.layers.RandAugment(value_range=(0, 255), seed=args.seed)
                   if args.randaugment else None)
    if args.data_dir:
        train = data.from_directory(os.path.expanduser(args.data_dir), image_size=image_size,
                                    training=True, **options)
        # Validation folders are matched to the training classes by name, not by position.
        val = (data.from_directory(os.path.expanduser(args.val_dir), image_size=image_size,
                                   batch_size=batch_size, class_names=list(train.class_names))
               if args.val_dir else None)
    elif args.dataset in (None, "digits"):
        (x, y), (x_test, y_test), names = data.builtin_dataset("digits")
        # Digits are not mirror-symmetric and have 8x8 pixels: no flips, gentle crops, and a
        # plain resize (no centre crop) for evaluation. The native size needs no resize at all.
        size = None if image_size == 8 else image_size
        train = data.from_arrays(x, y, image_size=size, training=True, class_names=names,
                                 flip=False, crop_area_range=DIGITS_DEFAULTS["crop_area_range"],
                                 aspect_ratio_range=(0.8, 1.25), **options)
        val = data.from_arrays(x_test, y_test, image_size=size, batch_size=batch_size,
                               class_names=names, crop_pct=1.0)
    else:
        train = data.from_tfds(args.dataset, split=args.train_split, image_size=image_size,
                               training=True, data_dir=args.tfds_data_dir, **options)
        val_split = args.val_split or data.EVAL_SPLITS.get(args.dataset, "test")
        val = data.from_tfds(args.dataset, split=val_split, image_size=image_size,
                             batch_size=batch_size, data_dir=args.tfds_data_dir)
    return train, val


def _build_model(args, image_size, num_classes, class_names, dropout):
    from keras_vit import models

    common = dict(image_size=image_size, num_classes=num_classes, class_names=class_names,
                  dropout_rate=dropout, drop_path_rate=args.drop_path)
    if args.teacher and not args.weights:
        common["distilled"] = True  # DeiT: the teacher speaks to the distillation token
    if args.model == "tiny":
        return models.ViT(**TINY_MODEL, weights=args.weights, name="vit_tiny", **common)
    return models.VARIANT_BUILDERS[args.model](weights=args.weights, **common)


def _distiller(args, student, num_classes):
    """The student inside a `training.Distiller` with the teacher of --teacher (frozen)."""
    from keras_vit import export, training

    teacher = export.load_model(args.teacher)
    if teacher.output_shape[-1] != num_classes:
        raise ValueError(f"--teacher {args.teacher!r} has {teacher.output_shape[-1]} classes, the "
                         f"data {num_classes}.")
    return training.Distiller(student, teacher, mode=args.distillation or "hard",
                              alpha=args.distillation_alpha,
                              temperature=args.distillation_temperature)


def _steps_plan(args, steps_per_epoch, digits):
    """(epochs, steps_per_epoch) from --epochs / --steps."""
    if args.steps:
        steps_per_epoch = min(steps_per_epoch, args.steps)
        epochs = math.ceil(args.steps / steps_per_epoch)
        if epochs * steps_per_epoch != args.steps:
            logger.warning("--steps %d rounded up to %d epochs x %d steps = %d steps", args.steps,
                           epochs, steps_per_epoch, epochs * steps_per_epoch)
        return epochs, steps_per_epoch
    return args.epochs or (DIGITS_DEFAULTS["epochs"] if digits else 10), steps_per_epoch


def _default(value, key, digits):
    """The option if given, else the built-in digits run's value (on digits), else 0."""
    return value if value is not None else DIGITS_DEFAULTS[key] if digits else 0.0


def _recipe_from_args(args, recipe, steps, steps_per_epoch, digits, num_classes):
    """`model.compile` kwargs of `--recipe` with the CLI's defaults. The warmup is the library's
    rule (10% of the updates, at most 500 for finetune and 10k for scratch) except on digits,
    whose scratch run was tuned with 3 epochs."""
    accumulate = args.gradient_accumulation
    updates = max(1, steps // accumulate) if accumulate and accumulate > 1 else steps
    common = dict(label_smoothing=_default(args.label_smoothing, "label_smoothing", digits),
                  gradient_accumulation_steps=accumulate, jit_compile=args.jit_compile,
                  num_classes=num_classes, warmup_steps=args.warmup_steps)
    if args.warmup_steps is not None and args.warmup_steps > updates:
        raise ValueError(f"--warmup-steps {args.warmup_steps} is longer than the run "
                         f"({updates} optimizer steps).")
    if recipe == "finetune":
        return finetune_recipe(updates, base_lr=args.lr or 0.03, **common)
    if args.warmup_steps is None and digits:
        common["warmup_steps"] = min(updates, DIGITS_DEFAULTS["warmup_epochs"] * steps_per_epoch)
    return scratch_recipe(
        updates, base_lr=args.lr or (DIGITS_DEFAULTS["lr"] if digits else 1e-3),
        weight_decay=args.weight_decay if args.weight_decay is not None else
        (DIGITS_DEFAULTS["weight_decay"] if digits else 0.1), **common)


# The options that fix a run's plan: a resume with others would not end at the planned step.
PLAN_KEYS = ("model", "image_size", "batch_size", "epochs", "steps_per_epoch", "recipe",
             "gradient_accumulation", "data_dir", "dataset", "weights", "teacher", "distillation")


def run_train(args):
    """`keras-vit train`: builds data, model and recipe from the options, trains into a run dir.
    Bad options raise ValueError/FileNotFoundError, which `keras-vit` prints as one line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_train_args(args)
    run_dir = args.run_dir or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    backup_dir = os.path.join(run_dir, "backup")
    resumed = read_backup(backup_dir)
    if args.resume and resumed is None:
        raise ValueError(f"--resume: no backup in {backup_dir} (a finished run leaves none).")
    if not args.resume and (resumed or os.path.exists(os.path.join(run_dir, "history.csv"))):
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose "
                         f"another --run-dir.")
    keras.utils.set_random_seed(args.seed)
    set_mixed_precision(args.mixed_precision)
    strategy = get_strategy(args.strategy)
    digits = not args.data_dir and args.dataset in (None, "digits")
    image_size = args.image_size or (DIGITS_DEFAULTS["image_size"] if digits else
                                     32 if args.model == "tiny" else 224)
    batch_size = args.batch_size or 64
    try:
        train, val = _load_data(args, image_size, batch_size)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{error}" + (" Built in: 'digits'." if args.dataset else "")) from None
    batches = int(train.cardinality())
    if batches <= 0:  # unknown (folders read with verify_files=False): from the examples; training
        # pipelines drop the last partial batch, so the floor is exact
        if not train.cardinality_examples:
            raise ValueError("the number of training examples is unknown: pass --steps.")
        batches = max(1, train.cardinality_examples // batch_size)
    epochs, steps_per_epoch = _steps_plan(args, batches, digits)
    steps = epochs * steps_per_epoch
    recipe = args.recipe or ("finetune" if args.weights else "scratch")
    settings = {k: v for k, v in vars(args).items() if k != "command"}
    settings.update(run_dir=run_dir, recipe=recipe, image_size=image_size, batch_size=batch_size,
                    epochs=epochs, steps_per_epoch=steps_per_epoch, total_steps=steps)
    _check_plan(run_dir, settings, resuming=args.resume)
    with strategy.scope():  # the optimizer's variables, too, must belong to the strategy
        model = student = _build_model(args, image_size, train.num_classes,
                                       list(train.class_names),
                                       _default(args.dropout, "dropout", digits))
        if args.teacher:
            model = _distiller(args, student, train.num_classes)
        compile_kwargs = _recipe_from_args(args, recipe, steps, steps_per_epoch, digits,
                                           train.num_classes)
        model.compile(**compile_kwargs)
    settings.update(jit_compile=compile_kwargs["jit_compile"],
                    replicas=getattr(strategy, "num_replicas_in_sync", 1),
                    backend=keras.backend.backend(), parameters=student.count_params(),
                    resumed_from_step=resumed["steps"] if resumed and args.resume else 0)
    out_dir = run_dir if is_chief() else os.path.join(run_dir, f".worker-{os.getpid()}")
    monitor = "val_accuracy" if val is not None else "accuracy"
    run_callbacks = callbacks(out_dir, monitor=monitor, settings=settings,
                              backup_every=args.backup_every or min(200, steps_per_epoch))
    if is_chief() and not args.resume:
        write_json(os.path.join(run_dir, "plan.json"), {k: settings[k] for k in PLAN_KEYS})
    print(f"Training {student.name} ({student.count_params():,} parameters) with the {recipe} "
          f"recipe{f', distilled from {args.teacher}' if args.teacher else ''}: "
          f"{epochs} epochs x {steps_per_epoch} steps, batch {batch_size}, run dir {run_dir}")
    fit(model, train, epochs, run_callbacks, steps_per_epoch=steps_per_epoch, validation_data=val,
        verbose=0 if args.quiet else "auto")
    summary = next(c for c in run_callbacks if isinstance(c, RunSummary))
    if summary.nan_guard.message:
        print(f"error: {summary.nan_guard.message}")
        return 1
    if val is not None:
        held_out = model.evaluate(val, verbose=0, return_dict=True)
        summary.write(held_out={k: float(v) for k, v in held_out.items()})
        extra = (f", top-5 {held_out['top5_accuracy']:.2%}" if "top5_accuracy" in held_out else "")
        print(f"Held-out accuracy: {held_out['accuracy']:.2%}{extra} "
              f"(loss {held_out['loss']:.4f})")
    else:
        summary.write()
    print(f"Run directory: {run_dir}  (model.keras, best.keras, history.csv, curves.png, "
          f"metrics.json, logs/)")
    return 0


def _check_plan(run_dir, settings, resuming):
    """On --resume, the options that fix the plan must be those of the first run."""
    path = os.path.join(run_dir, "plan.json")
    if not resuming or not os.path.exists(path):
        return
    with open(path) as f:
        planned = json.load(f)
    changed = {k: (planned[k], settings[k]) for k in PLAN_KEYS
               if k in planned and planned[k] != json.loads(json.dumps(settings[k]))}
    if changed:
        details = ", ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"--resume needs the options of the first run ({details}); see "
                         f"{path}.")


def add_evaluate_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = """examples:
  keras-vit evaluate runs/x/model.keras                       (the built-in digits test split)
  keras-vit evaluate runs/x/best.keras --dataset cifar10 --split test --output eval.json
  keras-vit evaluate model.keras --data-dir ~/photos/val"""
    parser.add_argument("model", help="a .keras model file (e.g. runs/<name>/model.keras)")
    parser.add_argument("--dataset", help="TensorFlow Datasets name or 'digits' (default: digits)")
    parser.add_argument("--data-dir", help="a folder of images, one sub-folder per class")
    parser.add_argument("--split", default="test", help="TFDS split (default test)")
    parser.add_argument("--tfds-data-dir", help="where TensorFlow Datasets stores data")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--output", help="write the metrics as JSON to this file")


def run_evaluate(args):
    """`keras-vit evaluate`: loss, accuracy and top-5 of a saved model on a dataset. A folder's
    classes are matched to the model's `class_names` by name."""
    from keras_vit import data, export

    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file {args.model!r} does not exist.")
    if args.dataset and args.data_dir:
        raise ValueError("give either --dataset or --data-dir, not both.")
    model = export.load_model(args.model)
    image_size = tuple(model.input_shape[1:3])
    num_classes = model.output_shape[-1]
    class_names = getattr(model, "class_names", None)
    options = dict(image_size=image_size, batch_size=args.batch_size)
    try:
        if args.data_dir:
            if class_names is None:
                logger.warning("%s has no class names: the folder's classes are matched to its "
                               "outputs by sorted position.", args.model)
            dataset = data.from_directory(os.path.expanduser(args.data_dir),
                                          class_names=class_names, **options)
        elif args.dataset in (None, "digits"):
            _, (x_test, y_test), names = data.builtin_dataset("digits")
            size = None if image_size == (8, 8) else image_size
            dataset = data.from_arrays(x_test, y_test, class_names=names, crop_pct=1.0,
                                       **{**options, "image_size": size})
        else:
            dataset = data.from_tfds(args.dataset, split=args.split, data_dir=args.tfds_data_dir,
                                     **options)
    except (ValueError, FileNotFoundError) as error:
        raise type(error)(f"{error}" + (" Built in: 'digits'." if args.dataset else "")) from None
    if dataset.num_classes != num_classes:
        raise ValueError(f"the model has {num_classes} classes, the dataset {dataset.num_classes}.")
    from_logits = getattr(model, "classifier_activation", None) in (None, "linear")
    model.compile(loss=ClassificationCrossentropy(from_logits=from_logits),
                  metrics=classification_metrics(num_classes))
    results = {k: float(v) for k, v in model.evaluate(dataset, verbose=0, return_dict=True).items()}
    for name, value in results.items():
        print(f"{name}: {value:.4f}")
    if args.output:
        results.update(model=args.model, examples=dataset.cardinality_examples)
        write_json(args.output, results)
    return 0
