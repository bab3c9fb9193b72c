"""`keras-vit export`: one command over the formats of `keras_vit.export.FORMATS`, each an `Exporter`.

Parsing only; each format's `Exporter` adds its own options and runs its export.
"""

from keras_vit.export import FORMATS, common
from keras_vit.images import DEFAULT_CROP_PCT


def add_export_arguments(parser):
    parser.add_argument("model", help="a .keras file or a checkpoint (.safetensors, .npz, HF directory)")
    parser.add_argument("--format", choices=list(FORMATS), default=next(iter(FORMATS)),
                        help="; ".join(f"{e.name}: {e.help}" for e in FORMATS.values()))
    parser.add_argument("--output", help="SavedModel base directory (versions go in <output>/<N>/), "
                        "or the .tflite / .onnx path; default saved_models/<model name>[.tflite|.onnx]")
    parser.add_argument("--crop-pct", type=float, help=f"centre-crop fraction of serve_image_bytes "
                        f"and of images read from folders (default {DEFAULT_CROP_PCT})")
    parser.add_argument("--labels", help="class-name file (one per line), or 'imagenet' "
                        "(saved_model, onnx; classifiers only)")
    check = parser.add_argument_group(
        "--format tflite / onnx: the parity check against the Keras model")
    check.add_argument("--evaluation-data", help="folder of real images to compare the file with "
                       "the Keras model on (without images the check runs on random noise and is "
                       "only reported)")
    check.add_argument("--min-top1-agreement", type=float, help=f"lowest top-1 agreement "
                       f"(classifiers; defaults per mode: {common.MIN_TOP1_AGREEMENT})")
    check.add_argument("--min-embedding-cosine", type=float, help=f"lowest mean cosine similarity "
                       f"of the embeddings (defaults per mode: {common.MIN_EMBEDDING_COSINE})")
    for exporter in FORMATS.values():
        exporter.add_arguments(parser.add_argument_group(f"--format {exporter.name}"))


def run_export(args):
    exporter = FORMATS[args.format]
    # Options of another format would be ignored without a word: refuse them.
    others = {name for e in FORMATS.values() for name in e.options} - set(exporter.options)
    misplaced = sorted(name for name in others if getattr(args, name) is not None)
    if misplaced:
        users = sorted(e.name for e in FORMATS.values() if set(e.options) & set(misplaced))
        raise ValueError(f"{', '.join('--' + name.replace('_', '-') for name in misplaced)} "
                         f"{'applies' if len(misplaced) == 1 else 'apply'} only to --format "
                         f"{' / '.join(users)}, not to --format {args.format}.")
    exporter.run(common.load_model(args.model), args)
    return 0
