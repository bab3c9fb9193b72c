"""What a teacher changes: a small ViT trained from scratch on real CIFAR-10 images, without a
teacher and with DeiT's hard and soft distillation (keras_vit.training.Distiller), same data,
recipe, initialisation seed and number of steps.

Teachers (`--teacher`):
  - `cnn` (default): a small CNN (4 conv-BN-ReLU stages, 137k parameters) trained here on the
    same images first; DeiT's own teachers are CNNs, whose inductive bias is what a ViT lacks
    on little data.
  - `deit-tiny`: the real DeiT-Tiny ImageNet checkpoint (../shared/data/deit_tiny_patch16_224)
    at 64 px (position embeddings resampled) with a logistic-regression head on its frozen
    class-token features (fine-tuning it does not fit 10 minutes on 2 CPU cores). The Distiller
    resizes the 32-px batches to 64 px for it, and the probe's features go through the same
    resize.

    python benchmarks/distillation.py                       # ~6-8 min on 2 busy CPU cores
    python benchmarks/distillation.py --epochs 12 --modes baseline,hard --seeds 0,1

Prints a Markdown table and writes benchmarks/results/distillation.json (atomically).
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_vit  # noqa: E402
from keras_vit import training  # noqa: E402
from keras_vit.fileio import write_json  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("KERAS_VIT_SHARED_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
STUDENT = dict(image_size=32, patch_size=4, hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128,
               num_classes=10)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(SHARED, "cifar10_subset.npz"))
    parser.add_argument("--teacher", choices=("cnn", "deit-tiny"), default="cnn")
    parser.add_argument("--teacher-epochs", type=int, default=12, help="training of the CNN teacher")
    parser.add_argument("--deit-tiny", default=os.path.join(SHARED, "deit_tiny_patch16_224"))
    parser.add_argument("--teacher-size", type=int, default=64, help="DeiT-Tiny's input size")
    parser.add_argument("--epochs", type=int, default=6, help="training of each student")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--base-lr", type=float, default=8e-3,
                        help="deit_recipe base_lr per 512 images (DeiT: 5e-4 for 300 epochs; a "
                             "6-epoch run needs more): 8e-3 -> 1e-3 at batch 64")
    parser.add_argument("--modes", default="baseline,hard,soft",
                        help="comma-separated: baseline (no teacher), hard, soft")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each a full set")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "distillation.json"))
    return parser.parse_args()


def teacher_input(images, size):
    """The Distiller's resize (bilinear, antialiased) of float pixels to the teacher's size."""
    return ops.image.resize(ops.cast(images, "float32"), (size, size), interpolation="bilinear",
                            antialias=True)


def deit_tiny_teacher(path, size, x_train, y_train, x_test, batch=128):
    """DeiT-Tiny at `size` px with a logistic-regression head on its frozen features."""
    from sklearn.linear_model import LogisticRegression

    teacher = keras_vit.load_pretrained(path, image_size=size, num_classes=10)
    body = keras.Model(teacher.input, teacher.get_layer("pooling").output)

    def features(images):
        return np.concatenate([ops.convert_to_numpy(body(teacher_input(images[i:i + batch], size)))
                               for i in range(0, len(images), batch)])

    probe = LogisticRegression(C=1.0, max_iter=2000).fit(features(x_train), y_train)
    teacher.get_layer("head").set_weights([probe.coef_.T.astype("float32"),
                                           probe.intercept_.astype("float32")])
    # The teacher's head is the probe: the same predictions.
    test_features = features(x_test[:256])
    agreement = np.mean(teacher.predict(teacher_input(x_test[:256], size), verbose=0).argmax(1)
                        == probe.predict(test_features))
    assert agreement > 0.99, agreement
    return teacher, "DeiT-Tiny ImageNet at %d px + logistic-regression head (C=1)" % size


def cnn_teacher(train, epochs, seed):
    """A small CNN trained on the training pipeline (scratch_recipe, label smoothing 0.1)."""
    keras.utils.set_random_seed(seed)

    def stage(channels):
        return [keras.layers.Conv2D(channels, 3, padding="same", use_bias=False),
                keras.layers.BatchNormalization(), keras.layers.ReLU()]

    teacher = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Rescaling(1 / 255)] + stage(24)
        + [keras.layers.MaxPooling2D()] + stage(48) + [keras.layers.MaxPooling2D()] + stage(96)
        + [keras.layers.MaxPooling2D()] + stage(96)
        + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)], name="cnn_teacher")
    steps = int(train.cardinality())
    teacher.compile(**training.scratch_recipe(epochs * steps, base_lr=3e-3, weight_decay=0.05,
                                              warmup_steps=steps, label_smoothing=0.1,
                                              num_classes=10))
    teacher.fit(train, epochs=epochs, verbose=0)
    return teacher, (f"CNN, {teacher.count_params():,} parameters, trained {epochs} epochs here "
                     f"(scratch_recipe lr 3e-3, label smoothing 0.1)")


def training_data(x_train, y_train, args, seed):
    """A fresh pipeline per run: every run with `seed` sees the same crops, flips and order.
    Small images train better with a milder crop (keras_vit.data's advice): area 0.35-1."""
    return keras_vit.data.from_arrays(x_train, y_train, batch_size=args.batch_size, training=True,
                                      seed=seed, crop_area_range=(0.35, 1.0))


def train_student(mode, teacher, train, test, y_test, teacher_test_logits, args, steps_per_epoch,
                  seed):
    keras.utils.set_random_seed(seed)
    student = keras_vit.ViT(distilled=mode != "baseline", **STUDENT, name=f"student_{mode}")
    recipe = training.deit_recipe(args.epochs * steps_per_epoch, args.batch_size,
                                  steps_per_epoch=steps_per_epoch, base_lr=args.base_lr,
                                  warmup_epochs=1, end_lr=0.0, num_classes=10)
    model = student if mode == "baseline" else training.Distiller(student, teacher, mode=mode)
    model.compile(**recipe)
    start = time.time()
    history = model.fit(train, epochs=args.epochs, verbose=0)
    seconds = time.time() - start
    logits = student.predict(test, verbose=0)
    result = {"mode": mode, "seed": seed, "parameters": student.count_params(),
              "test_accuracy": float(np.mean(logits.argmax(1) == y_test)),
              "agreement_with_teacher": float(np.mean(logits.argmax(1)
                                                      == teacher_test_logits.argmax(1))),
              "final_train_loss": float(history.history["loss"][-1]),
              "final_train_accuracy": float(history.history["accuracy"][-1]),
              "train_seconds": round(seconds, 1)}
    if mode != "baseline":  # each head alone, beside their mean (the student's output)
        heads = keras.Model(student.input, [student.get_layer("head").output,
                                            student.get_layer("head_dist").output])
        class_logits, distillation_logits = heads.predict(test, verbose=0)
        result["class_head_accuracy"] = float(np.mean(class_logits.argmax(1) == y_test))
        result["distillation_head_accuracy"] = float(np.mean(distillation_logits.argmax(1)
                                                             == y_test))
    return result


def main():
    args = parse_args()
    modes = args.modes.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    unknown = sorted(set(modes) - {"baseline", "hard", "soft"})
    if unknown:
        raise SystemExit(f"error: unknown modes {unknown}: expected baseline, hard, soft")
    needed = [args.data] + ([args.deit_tiny] if args.teacher == "deit-tiny" else [])
    for path in needed:
        if not os.path.exists(path):
            raise SystemExit(f"error: {path} is missing (the project's shared real data)")
    with np.load(args.data, allow_pickle=False) as data:
        x_train, y_train = data["x_train"], data["y_train"].astype("int64")
        x_test, y_test = data["x_test"], data["y_test"].astype("int64")
    total = time.time()
    train = training_data(x_train, y_train, args, seeds[0])
    test = keras_vit.data.from_arrays(x_test, y_test, batch_size=256)
    steps_per_epoch = int(train.cardinality())

    start = time.time()
    if args.teacher == "cnn":
        teacher, teacher_kind = cnn_teacher(train, args.teacher_epochs, seeds[0])
        teacher_logits = teacher.predict(test, verbose=0)
    else:
        teacher, teacher_kind = deit_tiny_teacher(args.deit_tiny, args.teacher_size, x_train,
                                                  y_train, x_test)
        teacher_logits = teacher.predict(teacher_input(x_test, args.teacher_size), verbose=0)
    teacher_seconds = time.time() - start
    teacher_accuracy = float(np.mean(teacher_logits.argmax(1) == y_test))
    print(f"teacher: {teacher_kind}: test accuracy {teacher_accuracy:.3f} "
          f"({teacher_seconds:.0f} s)", flush=True)

    results = []
    for seed in seeds:
        for mode in modes:
            results.append(train_student(mode, teacher, training_data(x_train, y_train, args, seed),
                                         test, y_test, teacher_logits, args, steps_per_epoch,
                                         seed))
            print(json.dumps(results[-1]), flush=True)

    print(f"\nCIFAR-10 subset ({len(x_train)} train / {len(x_test)} test images, real); student "
          f"ViT width {STUDENT['hidden_size']}, {STUDENT['num_layers']} blocks, patch "
          f"{STUDENT['patch_size']}, {args.epochs} epochs of {steps_per_epoch} steps, batch "
          f"{args.batch_size}; teacher: {teacher_kind}, test accuracy {teacher_accuracy:.3f}\n")
    print("| student | seed | test acc | class head | dist. head | agrees with teacher | train s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        heads = (f"{r['class_head_accuracy']:.3f} | {r['distillation_head_accuracy']:.3f}"
                 if "class_head_accuracy" in r else "- | -")
        print(f"| {r['mode']} | {r['seed']} | {r['test_accuracy']:.3f} | {heads} "
              f"| {r['agreement_with_teacher']:.3f} | {r['train_seconds']:.0f} |")
    report = {
        "benchmark": "distillation", "data": os.path.basename(args.data),
        "train_images": len(x_train), "test_images": len(x_test),
        "teacher": {"kind": teacher_kind, "test_accuracy": teacher_accuracy,
                    "seconds": round(teacher_seconds, 1)},
        "student": STUDENT,
        "settings": {"epochs": args.epochs, "steps_per_epoch": steps_per_epoch,
                     "batch_size": args.batch_size, "seeds": seeds,
                     "recipe": f"deit_recipe(base_lr={args.base_lr}, warmup_epochs=1, "
                               f"end_lr=0, label_smoothing=0.1, weight_decay=0.05)",
                     "augmentation": "random crop area 0.35-1 + flip (no RandAugment, MixUp, "
                                     "erasing: a short run)",
                     "distillation": "Distiller(mode, alpha=0.5, temperature=3.0)"},
        "results": results, "total_seconds": round(time.time() - total, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "keras": keras.__version__, "backend": keras.backend.backend()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_json(args.output, report)
    print(f"\nwrote {args.output} ({report['total_seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
