"""Before/after of the three attention/MLP changes in keras_vit/layers.py, beside KerasHub.

The "before" model is the same VisionTransformer with its blocks' `call` methods swapped back to
the code as it was before the change (rank-5 slice of the fused qkv, `ops.dot_product_attention`
on TensorFlow, GELU in the compute dtype). All contenders run in one process on the same inputs,
interleaved (benchmark.time_interleaved), so machine load hits them alike.

    python benchmarks/layer_changes.py --output benchmarks/results/layer_changes.json

Prints a Markdown table (median ms; ratio = time / keras_vit now) and writes JSON.
"""

import argparse
import math
import os
import platform
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_vit import benchmark, models  # noqa: E402
from keras_vit import layers as L  # noqa: E402
from keras_vit.fileio import write_json  # noqa: E402
from peers import keras_hub_contender  # noqa: E402 - benchmarks/peers.py, beside this script


def _attention_call_before(self, x, training=None, return_attention_scores=False):
    tokens, hidden = x.shape[1], x.shape[-1]
    qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.num_heads, self.head_dim))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = ops.dot_product_attention(q, k, v)
    return self.proj(ops.reshape(out, (-1, tokens, hidden)))


def _mlp_call_before(self, x, training=None):
    x = keras.activations.gelu(self.fc1(x), approximate=False)
    x = self.dropout(x, training=training)
    return self.dropout(self.fc2(x), training=training)


def build_before(config, dtype):
    model = models.VisionTransformer(**config, dtype=dtype)
    for layer in model.layers:
        if isinstance(layer, L.TransformerBlock):
            layer.attention.call = types.MethodType(_attention_call_before, layer.attention)
            layer.mlp.call = types.MethodType(_mlp_call_before, layer.mlp)
    return model


def build_now(config, dtype):
    return models.VisionTransformer(**config, dtype=dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ViTTi16:16,ViTS16:8",
                        help="comma-separated VARIANT:BATCH (default: %(default)s)")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="benchmarks/results/layer_changes.json")
    args = parser.parse_args(argv)
    benchmark.set_threads(args.threads)
    rows = []
    for spec in args.models.split(","):
        variant, batch = spec.split(":")
        config = benchmark.resolve_config(variant)
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, (int(batch), 224, 224, 3)).astype("float32")
        labels = rng.integers(0, 1000, int(batch))
        for precision in args.precisions.split(","):
            contenders = {
                "keras_vit now": benchmark.keras_contender(
                    "now", "keras_vit", lambda d: build_now(config, d), precision, "sgd"),
                "keras_vit before": benchmark.keras_contender(
                    "before", "keras_vit", lambda d: build_before(config, d), precision, "sgd"),
                "keras_hub": keras_hub_contender(config, precision, "sgd"),
            }
            for task in ("inference", "training"):
                if task == "inference":
                    functions = {name: (lambda f=c.build_predict(images): f(images))
                                 for name, c in contenders.items()}
                else:
                    functions = {name: c.build_train(images, labels)
                                 for name, c in contenders.items()}
                times = benchmark.time_interleaved(functions, repeats=args.repeats, warmup=2)
                medians = {name: 1000 * float(np.median(t)) for name, t in times.items()}
                rows.append(dict(model=variant, batch=int(batch), precision=precision, task=task,
                                 median_ms=medians,
                                 spread_ms={n: [1000 * min(t), 1000 * max(t)] for n, t in times.items()}))
                print(rows[-1], flush=True)
                keras.backend.clear_session()
    env = benchmark.environment(args.threads)
    report = dict(environment=env, repeats=args.repeats, rows=rows,
                  settings="random weights, uniform pixels, 224x224, 1000 classes; training = "
                           "compile(SGD momentum 0.9) + train_on_batch; bfloat16 = dtype policy "
                           "'bfloat16' for inference, 'mixed_bfloat16' for training")
    write_json(args.output, report)
    print(f"\nCPU {env['cpu']}, {args.threads} threads, {platform.python_version()}; median of "
          f"{args.repeats}, interleaved.\n")
    print("| model | batch | precision | task | now (ms) | before (ms) | before / now | "
          "KerasHub (ms) | KerasHub / now |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        m = row["median_ms"]
        now, before, hub = m["keras_vit now"], m["keras_vit before"], m["keras_hub"]
        print(f"| {row['model']} | {row['batch']} | {row['precision']} | {row['task']} | "
              f"{now:.1f} | {before:.1f} | {before / now:.2f}x | {hub:.1f} | {hub / now:.2f}x |")
    assert not any(math.isnan(v) for row in rows for v in row["median_ms"].values())


if __name__ == "__main__":
    main()
