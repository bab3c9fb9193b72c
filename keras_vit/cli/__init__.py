"""`keras-vit`: one command line for training, evaluating, exporting, predicting, explaining.

Each command's module provides `add_<command>_arguments(parser)` and `run_<command>(args) -> int`;
that module (and TensorFlow, where it needs it) is imported only when its command runs, so
`keras-vit --help` is instant. A bad option, file or value (ValueError, TypeError, OSError from
the library) ends the command with one `error: ...` line and exit status 2, never a traceback;
`KERAS_VIT_DEBUG=1` shows the traceback instead.
"""

import argparse
import importlib
import os
import platform
import sys

# command: (module, one-line help)
COMMANDS = {
    "train": ("keras_vit.cli.train", "train a ViT (default: a small ViT on a built-in real dataset)"),
    "evaluate": ("keras_vit.cli.train", "evaluate a saved model on a dataset"),
    "export": ("keras_vit.cli.export", "export to SavedModel (TF Serving), TFLite/LiteRT or ONNX"),
    "predict": ("keras_vit.cli.predict",
                "top-k labels for images, from .keras, SavedModel, .tflite or .onnx"),
    "explain": ("keras_vit.cli.explain", "attention rollout, per-head maps, distances, filters as PNGs"),
    "benchmark": ("keras_vit.cli.benchmark",
                  "speed, memory and MFU of keras_vit and its TFLite and ONNX exports"),
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
    from keras_vit import export

    export.load_model(args.model).summary()
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `keras-vit train: error: ... (see --help)`, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser():
    parser = _Parser(
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
    CPUs it falls back to Eigen kernels, which were slower for keras_vit's inference and training
    on an AVX2-only CPU (the A/B of benchmarks/onednn_ab.py, in benchmarks/RESULTS.md).
    Returns whether it set the variable."""
    machine = machine or platform.machine()
    if ("TF_ENABLE_ONEDNN_OPTS" in environ or "tensorflow" in modules
            or machine.lower() not in ("x86_64", "amd64")):
        return False
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


# What the library raises for a user's bad option, file or value.
USER_ERRORS = (ValueError, TypeError, OSError, KeyError, ImportError)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    enable_onednn()
    parser, sub = _parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        if command is not None:
            parser.error(f"unknown command {command!r}; choose from {', '.join(COMMANDS)}")
        if argv:  # options without a command: --help exits 0, anything else is an error (exit 2)
            parser.parse_args(argv)
            parser.error("a command is needed")
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    getattr(module, f"add_{command}_arguments")(sub.choices[command])
    args = parser.parse_args(argv)
    try:
        return int(getattr(module, f"run_{command}")(args) or 0)
    except USER_ERRORS as error:
        if os.environ.get("KERAS_VIT_DEBUG"):
            raise
        message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
        # stderr, as argparse's errors: `--json > out.json` stays clean.
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
