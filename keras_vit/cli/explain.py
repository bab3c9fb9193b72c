"""`keras-vit explain MODEL IMAGE [IMAGE ...] --output DIR`: rollout, per-head maps, attention
distances, position-embedding similarity and patch filters as PNGs; prints the paths written.

Parsing and printing only; the work is `keras_vit.explain.plot_all`.
"""

import os

from keras_vit import explain


def add_explain_arguments(parser):
    parser.add_argument("model", metavar="MODEL",
                        help="a .keras file or a checkpoint (.npz, .safetensors, HF folder)")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image file(s): the first is explained; all feed the attention distances")
    parser.add_argument("--output", default="explain", help="folder for the PNGs (default: explain/)")
    parser.add_argument("--layer", type=int, default=-1,
                        help="block whose per-head maps are drawn (default: -1, the last)")
    parser.add_argument("--head-fusion", choices=explain.HEAD_FUSIONS, default="mean",
                        help="how rollout fuses the heads of a layer (default: mean)")
    parser.add_argument("--discard-ratio", type=float, default=0.0,
                        help="rollout: fraction of lowest attentions zeroed per layer (default: 0)")


def run_explain(args):
    from keras_vit.export import load_model

    # Arguments first: a bad one should not cost a model load and the attention maps.
    if not 0.0 <= args.discard_ratio < 1.0:
        raise ValueError(f"--discard-ratio must be in [0, 1), got {args.discard_ratio}.")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise NotADirectoryError(f"--output {args.output!r} is a file; expected a folder for the PNGs.")
    model = load_model(args.model)
    for path in explain.plot_all(model, list(args.images), args.output, args.layer,
                                 args.head_fusion, args.discard_ratio):
        print(path)
    return 0
