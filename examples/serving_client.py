"""Query a keras_vit model in TF Serving over gRPC, with both signatures.

    keras-vit export runs/x/model.keras --format saved_model --output saved_models/vit
    docker run -p 8500:8500 -p 8501:8501 -v $PWD/saved_models/vit:/models/vit -e MODEL_NAME=vit tensorflow/serving
    python examples/serving_client.py photo.jpg --host localhost --port 8500

Needs `pip install tensorflow-serving-api grpcio` (and TensorFlow for `tf.make_tensor_proto`).
`serve_image_bytes` sends the file as it is (the server decodes, resizes and crops it);
`serving_default` sends pixels, resized and cropped here with keras_vit.images.load_image.
"""

import argparse
import json
import os

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def request_bytes(stub, model_name, paths, timeout):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serve_image_bytes"
    encoded = [open(path, "rb").read() for path in paths]
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(encoded, dtype=tf.string))
    return stub.Predict(request, timeout)


def request_pixels(stub, model_name, paths, image_size, crop_pct, timeout):
    from keras_vit.images import load_images

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    pixels = load_images(paths, image_size, crop_pct).astype("float32")  # raw [0, 255], no normalising
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(pixels))
    return stub.Predict(request, timeout)


def print_response(title, paths, response):
    labels = tf.make_ndarray(response.outputs["top_k_labels"])
    indices = tf.make_ndarray(response.outputs["top_k_indices"])
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    print(f"== {title}")
    for path, names, index, probs in zip(paths, labels, indices, probabilities):
        print(path)
        for name, i in zip(names, index):
            print(f"  {probs[i]:7.2%}  {name.decode()} ({i})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8500, help="TF Serving's gRPC port")
    parser.add_argument("--model-name", default="vit")
    parser.add_argument("--metadata", help="the export's metadata.json (image size and crop for "
                        "the pixel request); default: 224 and crop 0.875")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    image_size, crop_pct = 224, 0.875
    if args.metadata and os.path.isfile(args.metadata):
        metadata = json.load(open(args.metadata, encoding="utf-8"))
        image_size, crop_pct = tuple(metadata["image_size"]), metadata["preprocessing"]["crop_pct"]

    channel = grpc.insecure_channel(f"{args.host}:{args.port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    print_response("serve_image_bytes", args.images,
                   request_bytes(stub, args.model_name, args.images, args.timeout))
    print_response("serving_default", args.images,
                   request_pixels(stub, args.model_name, args.images, image_size, crop_pct, args.timeout))


if __name__ == "__main__":
    main()
