"""`keras-vit predict MODEL IMAGE [IMAGE ...]`: the top-k labels of each image, as a table or JSON.

Parsing and printing only; the work is `keras_vit.predict.predict_top_k`.
"""

import json

from keras_vit.predict import predict_top_k


def add_predict_arguments(parser):
    parser.add_argument("model", help="a .keras file, a SavedModel (or TF Serving base) directory, "
                        "a .tflite or an .onnx file")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to print (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--labels", help="class-name file, one name per line, in class order")


def run_predict(args):
    results = predict_top_k(args.model, args.images, args.top_k, args.labels)
    if args.json:
        print(json.dumps([
            {"image": path, "predictions": [{"label": label, "index": index, "probability": p}
                                            for label, index, p in rows]}
            for path, rows in zip(args.images, results)
        ], indent=2))
        return 0
    for path, rows in zip(args.images, results):
        print(path)
        for label, index, p in rows:
            print(f"  {p:7.2%}  {label} ({index})")
    return 0
