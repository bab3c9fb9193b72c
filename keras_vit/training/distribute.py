"""Distribution: tf.distribute strategies on TensorFlow, `keras.distribution` on JAX.

TensorFlow is imported only inside the functions that need it.
"""

import json
import logging
import os

import keras

logger = logging.getLogger("keras_vit.training")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")

class _SingleDevice:
    """What `get_strategy` returns where there is nothing to distribute (a no-op `scope()`)."""

    num_replicas_in_sync = 1

    def scope(self):
        import contextlib

        return contextlib.nullcontext()


def get_strategy(name="auto"):
    """A distribution strategy; build and compile the model inside its `scope()`.

    TensorFlow backend: `"default"` (one device), `"mirrored"` (all local GPUs, or all logical CPUs
    when there is no GPU), `"multi_worker"` (`MultiWorkerMirroredStrategy`, reads `TF_CONFIG`),
    `"tpu"` (`TPUStrategy`), `"auto"` (multi_worker when `TF_CONFIG` lists several workers, else
    mirrored with more than one GPU, else default). JAX backend: `keras.distribution.DataParallel`
    over all devices (set as the global distribution), `"multi_worker"` after
    `keras.distribution.initialize()`. The batch size you give the dataset is the global batch.

        strategy = get_strategy("mirrored")
        with strategy.scope():
            model = keras_vit.ViTS16(num_classes=10); model.compile(**finetune_recipe(1000))
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}: expected one of {list(STRATEGIES)}.")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = _tf_strategy(name)
    elif backend == "jax":
        strategy = _jax_distribution(name)
    else:
        if name not in ("auto", "default"):
            raise ValueError(f"strategy {name!r} needs the TensorFlow or JAX backend, not {backend}.")
        strategy = _SingleDevice()
    logger.info("strategy %r -> %s with %d replica(s)", name, type(strategy).__name__,
                getattr(strategy, "num_replicas_in_sync", 1))
    return strategy


def _workers_in_tf_config():
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tf_strategy(name):
    import tensorflow as tf

    # MultiWorkerMirroredStrategy must exist before anything initialises the TF runtime (listing
    # devices does), so it is decided from TF_CONFIG alone.
    if name == "auto" and _workers_in_tf_config() > 1:
        name = "multi_worker"
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "strategy 'multi_worker' needs the TF_CONFIG environment variable on every worker, "
                'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}\' (index 1 on the second host). '
                "See examples/multi_worker.py.")
        _patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices=devices)


def _patch_keras_for_multi_worker():
    """Keras 3's `fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585): it
    reduces a data batch across workers to build the model, and reduces the scalar logs with
    `axis=0`. Builds from the local part of the batch and reduces the logs with `axis=None`
    instead; tests/test_distribution.py checks that the result matches one device."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_keras_vit_multi_worker_patch", False):
        return
    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    reduce_per_replica = tf_trainer.reduce_per_replica
    maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_logs(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(self, iterator=None, data_batch=None):
        if iterator is not None and multi_worker(self.distribute_strategy):
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(batches))
                break
            iterator = None
        return maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_logs
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    tf_trainer._keras_vit_multi_worker_patch = True


def _jax_distribution(name):
    if name == "tpu":
        name = "auto"  # on JAX a TPU host is just a set of devices
    if name == "multi_worker":
        keras.distribution.initialize()
    devices = keras.distribution.list_devices()
    if name == "default" or (name == "auto" and len(devices) == 1):
        return _SingleDevice()
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    distribution.num_replicas_in_sync = len(devices)
    return distribution


def local_tf_configs(num_workers):
    """`TF_CONFIG` JSON strings for `num_workers` workers on 127.0.0.1, one per worker index.

    For trying MultiWorkerMirroredStrategy on one machine (tests, `examples/multi_worker.py`):
    the ports are free ones picked by the OS.
    """
    import socket

    sockets = [socket.socket() for _ in range(num_workers)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    workers = [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    for sock in sockets:
        sock.close()
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            for index in range(num_workers)]


def is_chief():
    """False on the non-chief workers of a `TF_CONFIG` cluster (they must not write the run dir):
    the chief is the `chief` task if the cluster has one, else worker 0."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task")
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and task.get("index", 0) == 0
