"""`keras-vit`: one command line for training, evaluating, exporting, predicting, explaining.

Each command lives in the module of its concern, which provides `add_<command>_arguments(parser)`
and `run_<command>(args) -> int`; that module (and TensorFlow, where it needs it) is imported only
when its command runs, so `keras-vit --help` is instant.
"""

import argparse
import importlib
import os
import platform
import sys

# command: (module, one-line help)
COMMANDS = {
    "train": ("keras_vit.training", "train a ViT (default: a small ViT on a built-in real dataset)"),
    "evaluate": ("keras_vit.training", "evaluate a saved model on a dataset"),
    "export": ("keras_vit.export", "export to SavedModel (TF Serving) or TFLite/LiteRT"),
    "predict": ("keras_vit.predict", "top-k labels for images, from .keras, SavedModel or .tflite"),
    "explain": ("keras_vit.explain", "attention rollout, per-head maps, distances, filters as PNGs"),
    "benchmark": ("keras_vit.benchmark", "speed and memory side by side with peer libraries"),
    "info": ("keras_vit.cli", "list the variants and registered weights, or describe a model"),
}


def add_info_arguments(parser):
    parser.add_argument("model", nargs="?", help="a .keras file or checkpoint to describe")


def run_info(args):
    from keras_vit import models

    if args.model is None:
        print("Variants (patch, width, depth, heads, MLP):")
        for name, builder in models.VARIANT_BUILDERS.items():
            print(f"  {name:8s} {builder.__doc__.splitlines()[0]}")
        try:
            from keras_vit import weights

            print("\nRegistered weights:")
            for line in weights.describe_registry():
                print(f"  {line}")
        except ImportError:
            pass
        return 0
    from keras_vit import weights

    model = weights.load_model_or_checkpoint(args.model)
    model.summary()
    return 0


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-vit",
        description="Vision Transformers for Keras 3: train, evaluate, export, predict, explain, "
        "benchmark. Run `keras-vit COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser, sub


def enable_onednn(environ=os.environ, modules=sys.modules, machine=None):
    """Turns TensorFlow's oneDNN kernels on for the command (TF_ENABLE_ONEDNN_OPTS=1) on x86-64,
    unless the user set the variable or TensorFlow is already imported (it reads it at import).

    TensorFlow enables oneDNN by default only on CPUs with AVX512-VNNI/BF16 or AMX; on older x86
    CPUs it falls back to Eigen. On AMD Zen 3 (AVX2 only), oneDNN made keras_vit ViT-S/16 float32
    1.20x faster at batch-8 inference and 1.32x faster per training step (benchmarks/RESULTS.md).
    Returns whether it set the variable."""
    machine = machine or platform.machine()
    if ("TF_ENABLE_ONEDNN_OPTS" in environ or "tensorflow" in modules
            or machine.lower() not in ("x86_64", "amd64")):
        return False
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    enable_onednn()
    parser, sub = _parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        if command is not None:
            parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    module = importlib.import_module(COMMANDS[command][0])
    getattr(module, f"add_{command}_arguments")(sub.choices[command])
    args = parser.parse_args(argv)
    return int(getattr(module, f"run_{command}")(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
