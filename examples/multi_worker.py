"""Multi-GPU and multi-worker training with tf.distribute.

One machine, several GPUs: nothing to set up, `keras-vit train --strategy mirrored` (or `auto`)
mirrors the model on every local GPU; `--batch-size` is the global batch.

Several machines (MultiWorkerMirroredStrategy): run the same command on every worker, each with
its own TF_CONFIG, which this script builds from --workers and --index:

    # on host1 (worker 0, the chief)
    python examples/multi_worker.py --workers host1:12345,host2:12345 --index 0 -- \
        --model ViTB16 --weights imagenet21k --dataset cifar10 --image-size 384 --run-dir runs/mw
    # on host2 (worker 1): the same, with --index 1

or set TF_CONFIG yourself, e.g. TF_CONFIG='{"cluster": {"worker": ["host1:12345",
"host2:12345"]}, "task": {"type": "worker", "index": 0}}', and run `keras-vit train --strategy
multi_worker ...`. Worker 0 is the chief: it writes the run directory; the others write to
scratch folders. All workers must reach each other on the given ports, start within a few
minutes of each other and see the same data (TFDS shards it between them automatically).

Try it on one machine with --local N: starts N CPU workers on 127.0.0.1 (slow, just a check).
"""

import argparse
import json
import os
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser(
        description="Multi-worker `keras-vit train` launcher (see the module docstring).",
        epilog="Arguments after `--` go to `keras-vit train` (default: the built-in digits run).")
    parser.add_argument("--workers", help="comma-separated host:port of every worker")
    parser.add_argument("--index", type=int, help="this worker's position in --workers")
    parser.add_argument("--local", type=int, metavar="N", help="start N workers on this machine")
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    command = ["train", "--strategy", "multi_worker", *train_args]
    if args.local:
        from keras_vit.training import local_tf_configs

        processes = [subprocess.Popen([sys.executable, "-m", "keras_vit.cli", *command],
                                      env={**os.environ, "TF_CONFIG": tf_config})
                     for tf_config in local_tf_configs(args.local)]
        return max(process.wait() for process in processes)
    if args.workers:
        if args.index is None:
            parser.error("--workers needs --index (this worker's position in the list)")
        os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": args.workers.split(",")},
                                              "task": {"type": "worker", "index": args.index}})
    elif "TF_CONFIG" not in os.environ:
        parser.error("give --workers and --index, --local N, or set TF_CONFIG")
    from keras_vit import cli

    return cli.main(command)


if __name__ == "__main__":
    sys.exit(main())
