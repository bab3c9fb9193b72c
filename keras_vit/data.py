"""tf.data input pipelines: TFDS datasets, image folders and arrays -> batches for `model.fit`.

Every pipeline yields `(images, labels)`: images float32 `(batch, height, width, 3)` with raw pixel
values in [0, 255] (the ViT normalises inside its graph) and labels float32 one-hot
`(batch, num_classes)`, so label smoothing, MixUp and CutMix compose and every recipe uses
`CategoricalCrossentropy`. Augmentation, label smoothing and mixing apply only with
`training=True`; evaluation pipelines are deterministic. The returned dataset carries
`class_names`, `num_classes` and `cardinality_examples` (number of examples, or None when unknown).

    train = keras_vit.data.from_directory("flowers/train", 224, 64, training=True, mixup_alpha=0.2)
    test = keras_vit.data.from_directory("flowers/test", 224, 64)
    model.fit(train, validation_data=test)

Training: Inception-style random crop (`crop_area_range`, `aspect_ratio_range`) resized to
`image_size`, random horizontal flip, then per batch the optional `augment` layer (e.g.
`keras.layers.RandAugment()` or a keras-cv layer), label smoothing and MixUp / CutMix.
Evaluation: the short side is resized to `image_size / crop_pct` and the centre is cropped, as
`keras_vit.images.load_image` does (`crop_pct=1.0`: plain resize). Randomness comes from
per-element stateless seeds, so a `seed` makes a run reproducible while each epoch still differs,
and the map functions have no Python side effects (safe under `tf.distribute`).
"""

import concurrent.futures
import gzip
import logging
import os
import time
import warnings

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what tf.io.decode_image reads
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")

# Short names -> TFDS names; any other TFDS dataset with `image` and `label` features works too.
TFDS_ALIASES = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "oxford_iiit_pet": "oxford_iiit_pet",
    "pets": "oxford_iiit_pet",
    "oxford_flowers102": "oxford_flowers102",
    "flowers102": "oxford_flowers102",
    "imagenette": "imagenette/full-size-v2",
    "imagenet2012": "imagenet2012",
    "imagenet": "imagenet2012",
}
KNOWN_DATASETS = ("cifar10", "cifar100", "oxford_iiit_pet", "oxford_flowers102", "imagenette",
                  "imagenet2012")
# The split each known dataset is evaluated on (the fine-tuning tables of the ViT papers).
EVAL_SPLITS = {"cifar10": "test", "cifar100": "test", "oxford_iiit_pet": "test",
               "oxford_flowers102": "test", "imagenette": "validation",
               "imagenet2012": "validation"}
BUILTIN_DATASETS = ("digits", "mnist")


def from_tfds(name, split="train", image_size=224, batch_size=64, training=False, data_dir=None,
              shuffle_buffer=10_000, augment=None, mixup_alpha=0.0, cutmix_alpha=0.0,
              label_smoothing=0.0, cache=False, seed=None, drop_remainder=None, crop_pct=0.875,
              download=True, **options):
    """A TensorFlow Datasets image-classification split as a batched pipeline.

    `name` is one of `KNOWN_DATASETS` (or an alias in `TFDS_ALIASES`) or any TFDS name with
    `image` and `label` features (`"imagenette/160px-v2"`, `"cifar10:3.0.2"`); `split` takes TFDS
    slicing (`"train[:90%]"`). Images are read still encoded and decoded in the pipeline (JPEGs
    decode only the random crop when training). `image_size=None` keeps the dataset's own size
    when it is fixed (CIFAR: 32). Without the data and with `download=False`, or when the
    download fails (no network, manual download needed), raises FileNotFoundError saying how to
    prepare it. `**options`: see `from_arrays`.

    >>> train = from_tfds("cifar10", "train", image_size=224, batch_size=128, training=True)
    """
    import tensorflow_datasets as tfds  # optional dependency, only needed here

    tfds_name = TFDS_ALIASES.get(name, name)
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"Unknown dataset {name!r}: known ones are {list(KNOWN_DATASETS)} (aliases "
            f"{sorted(set(TFDS_ALIASES) - set(KNOWN_DATASETS))}); any TFDS dataset name with "
            f"'image' and 'label' features works too (see tfds.list_builders())."
        ) from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {tfds_name!r} has features {list(features)}; image classification "
            f"needs an 'image' and a 'label' feature."
        )
    if not builder.is_prepared():
        _prepare_tfds(builder, tfds_name, data_dir, download)
    if image_size is None:
        image_size = features["image"].shape[:2]
        if None in image_size:
            raise ValueError(f"{tfds_name!r} has images of varying size: pass an image_size.")
    dataset = builder.as_dataset(
        split=split, shuffle_files=training, decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False))
    dataset = dataset.map(lambda example: (example["image"], example["label"]),
                          num_parallel_calls=AUTOTUNE)
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):
        num_examples = None
    return _pipeline(dataset, encoded=True, class_names=list(features["label"].names),
                     num_examples=num_examples, image_size=image_size, batch_size=batch_size,
                     training=training, shuffle_buffer=shuffle_buffer, augment=augment,
                     mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                     label_smoothing=label_smoothing, cache=cache, seed=seed,
                     drop_remainder=drop_remainder, crop_pct=crop_pct, **options)


def _prepare_tfds(builder, tfds_name, data_dir, download):
    where = data_dir or "the default ~/tensorflow_datasets"
    how = (
        f"Prepare it once on a machine with internet access: `tfds build {tfds_name.split('/')[0]}"
        f"{' --data_dir ' + str(data_dir) if data_dir else ''}` (imagenet2012 needs the ILSVRC2012 "
        f"tar files in <data_dir>/downloads/manual first) or call from_tfds(..., download=True), "
        f"then copy the data_dir here."
    )
    if not download:
        raise FileNotFoundError(
            f"TFDS dataset {tfds_name!r} is not prepared in data_dir {where!r} and download=False. "
            f"{how}"
        )
    try:
        builder.download_and_prepare()
    except Exception as error:  # network, manual-download and disk errors all end here
        raise FileNotFoundError(
            f"TFDS dataset {tfds_name!r} is not in data_dir {where!r} and downloading it failed "
            f"({type(error).__name__}: {error}). {how}"
        ) from error


def from_directory(path, image_size=224, batch_size=64, training=False, shuffle_buffer=10_000,
                   augment=None, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0,
                   cache=False, seed=None, drop_remainder=None, crop_pct=0.875,
                   verify_files=True, **options):
    """A folder with one sub-folder of images per class (sorted names = class indices).

    JPEG, PNG, BMP and GIF files are read (sub-folders are searched recursively; hidden files
    are ignored). With `verify_files=True` a quick scan (file signature and end marker; a full
    decode only for files that fail it) skips unreadable or truncated files with one warning
    that counts and names them; anything that still fails to decode at run time is dropped with
    a TensorFlow warning instead of stopping training. The skipped paths are in
    `dataset.skipped_files`, the read ones (in class order) in `dataset.file_paths`.
    `**options`: see `from_arrays`.

    >>> train = from_directory("flowers/train", image_size=224, training=True)
    >>> train.class_names  # ['daisy', 'dandelion', ...]
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No directory at {path!r} (expected one sub-folder per class).")
    if image_size is None:
        raise ValueError("from_directory needs an image_size: the files have varying sizes.")
    class_names = sorted(entry.name for entry in os.scandir(path)
                         if entry.is_dir() and not entry.name.startswith("."))
    if not class_names:
        raise ValueError(f"{path!r} has no class sub-folders (expected e.g. {path}/cat/1.jpg).")
    files, labels, others = [], [], []
    for label, class_name in enumerate(class_names):
        for root, folders, names in os.walk(os.path.join(path, class_name), followlinks=True):
            folders.sort()
            for file_name in sorted(names):
                if file_name.startswith("."):
                    continue
                file_path = os.path.join(root, file_name)
                if file_name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(file_path)
                    labels.append(label)
                else:
                    others.append(file_path)
    skipped = []
    if verify_files:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            readable = list(pool.map(_looks_readable, files))
        skipped = [f for f, ok in zip(files, readable) if not ok]
        files = [f for f, ok in zip(files, readable) if ok]
        labels = [label for label, ok in zip(labels, readable) if ok]
    if others:
        logger.warning("%s: ignored %d files without an image extension %s, e.g. %s", path,
                       len(others), IMAGE_EXTENSIONS, others[:3])
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} unreadable or truncated image files: "
            f"{skipped[:20]}{' ...' if len(skipped) > 20 else ''}", stacklevel=2)
    if not files:
        raise ValueError(f"{path!r} has no readable images with extensions {IMAGE_EXTENSIONS}.")
    dataset = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, "int64")))
    if training:  # shuffle the (cheap) file names in full; the buffer below then mixes decodes
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(lambda file, label: (tf.io.read_file(file), label),
                          num_parallel_calls=AUTOTUNE)
    dataset = _pipeline(dataset, encoded=True, class_names=class_names, num_examples=len(files),
                        image_size=image_size, batch_size=batch_size, training=training,
                        shuffle_buffer=shuffle_buffer, augment=augment, mixup_alpha=mixup_alpha,
                        cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing, cache=cache,
                        seed=seed, drop_remainder=drop_remainder, crop_pct=crop_pct, **options)
    dataset.skipped_files = skipped
    dataset.file_paths = files
    return dataset


def from_arrays(images, labels, image_size=None, batch_size=64, training=False, class_names=None,
                shuffle_buffer=10_000, augment=None, mixup_alpha=0.0, cutmix_alpha=0.0,
                label_smoothing=0.0, cache=False, seed=None, drop_remainder=None, crop_pct=0.875,
                **options):
    """In-memory images `(N, H, W, C)` (uint8 or float in [0, 255]; C=1 or a missing channel
    axis is gray, repeated to RGB) and int labels `(N,)` as a batched pipeline.

    `image_size=None` keeps the arrays' size (evaluation then passes the pixels through
    unchanged). `class_names` defaults to `["0", "1", ...]` up to the largest label.

    Options shared by every pipeline: `crop_area_range=(0.08, 1.0)` and
    `aspect_ratio_range=(3/4, 4/3)` of the training crop (small images train better with
    e.g. `(0.35, 1.0)`), `flip=True`, `interpolation="bicubic"`, `deterministic=None` (element
    order; None: deterministic unless training without a seed), `skip_errors` (drop elements
    that fail to decode; default True for files, False for arrays).

    >>> data = np.load("cifar10_subset.npz", allow_pickle=False)
    >>> train = from_arrays(data["x_train"], data["y_train"], batch_size=128, training=True)
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, 1 or 3) or (N, H, W), got {images.shape}.")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {len(images)} integers (shape ({len(images)},)), got "
                         f"{labels.dtype} {labels.shape}.")
    labels = labels.astype("int64")
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"labels range over [{labels.min()}, {labels.max()}] but there are "
                         f"{len(class_names)} classes: expected 0 <= label < {len(class_names)}.")
    if image_size is None:
        image_size = images.shape[1:3]
        options.setdefault("resize_eval", False)
    options.setdefault("skip_errors", False)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return _pipeline(dataset, encoded=False, class_names=list(class_names),
                     num_examples=len(images), image_size=image_size, batch_size=batch_size,
                     training=training, shuffle_buffer=shuffle_buffer, augment=augment,
                     mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                     label_smoothing=label_smoothing, cache=cache, seed=seed,
                     drop_remainder=drop_remainder, crop_pct=crop_pct, **options)


def _pipeline(dataset, *, encoded, class_names, num_examples, image_size, batch_size, training,
              shuffle_buffer, augment, mixup_alpha, cutmix_alpha, label_smoothing, cache, seed,
              drop_remainder, crop_pct, crop_area_range=(0.08, 1.0),
              aspect_ratio_range=(3 / 4, 4 / 3), flip=True, interpolation="bicubic",
              deterministic=None, skip_errors=True, resize_eval=True):
    """(encoded bytes or uint8 pixels, int label) -> batches of (float pixels, one-hot labels)."""
    size = _pair(image_size)
    num_classes = len(class_names)
    _check_options(batch_size, crop_pct, crop_area_range, aspect_ratio_range, interpolation,
                   mixup_alpha, cutmix_alpha, label_smoothing, augment)
    if drop_remainder is None:  # equal batches for training, unless that would leave none
        drop_remainder = training and (num_examples is None or num_examples >= batch_size)
    if training and num_examples is not None and drop_remainder and num_examples < batch_size:
        warnings.warn(f"{num_examples} examples and drop_remainder=True with batch_size "
                      f"{batch_size}: the dataset yields no batch.", stacklevel=3)

    def one_hot(label):
        return tf.one_hot(label, num_classes, dtype=tf.float32)

    def train_example(element, seeds):
        x, label = element
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
        crop = _decode_random_crop if encoded else _random_crop
        image = crop(x, crop_seed, crop_area_range, aspect_ratio_range)
        image = tf.ensure_shape(_resize(image, size, interpolation), (*size, 3))
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image, one_hot(label)

    def eval_example(x, label):
        image = _decode(x) if encoded else x
        if resize_eval:
            image = center_crop(image, size, crop_pct, interpolation)
        image = tf.cast(image, tf.float32)
        image.set_shape((*size, 3))
        return image, one_hot(label)

    mix = MixUpCutMix(mixup_alpha, cutmix_alpha, label_smoothing, num_classes)

    def train_batch(batch, seeds):
        images, labels = batch
        if augment is not None:
            augmented = augment(images, training=True) if _takes_training(augment) else augment(images)
            images = tf.cast(augmented, tf.float32)
        return mix(images, labels, seeds)

    if training:
        if cache:
            dataset = dataset.cache(cache if isinstance(cache, str) else "")
        if shuffle_buffer:
            buffer = min(shuffle_buffer, num_examples) if num_examples else shuffle_buffer
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, _seeds(seed, 0))
        dataset = dataset.map(train_example, num_parallel_calls=AUTOTUNE)
        if skip_errors:
            dataset = dataset.ignore_errors(log_warning=True)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                                num_parallel_calls=AUTOTUNE)
        dataset = tf.data.Dataset.zip(dataset, _seeds(seed, 1))
        dataset = dataset.map(train_batch, num_parallel_calls=AUTOTUNE)
    else:
        dataset = dataset.map(eval_example, num_parallel_calls=AUTOTUNE)
        if skip_errors:
            dataset = dataset.ignore_errors(log_warning=True)
        if cache:  # evaluation is deterministic: cache the finished images
            dataset = dataset.cache(cache if isinstance(cache, str) else "")
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                                num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = (seed is not None or not training) if deterministic is None else bool(
        deterministic)
    dataset = dataset.with_options(options).prefetch(AUTOTUNE)
    dataset.class_names = list(class_names)
    dataset.num_classes = num_classes
    dataset.cardinality_examples = num_examples
    return dataset


def _seeds(seed, stream):
    """Infinite dataset of stateless-op seeds, shape (2,); new ones each epoch, reproducible
    from `seed`."""
    if seed is not None:
        seed = seed * 2 + stream
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)


def _pair(size):
    size = (size, size) if np.isscalar(size) else tuple(size)
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {size}.")
    return int(size[0]), int(size[1])


def _check_options(batch_size, crop_pct, crop_area_range, aspect_ratio_range, interpolation,
                   mixup_alpha, cutmix_alpha, label_smoothing, augment):
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
    if not 0.0 < crop_area_range[0] <= crop_area_range[1] <= 1.0:
        raise ValueError(f"crop_area_range must be (low, high) with 0 < low <= high <= 1, got "
                         f"{crop_area_range}.")
    if not 0.0 < aspect_ratio_range[0] <= aspect_ratio_range[1]:
        raise ValueError(f"aspect_ratio_range must be (low, high) with 0 < low <= high, got "
                         f"{aspect_ratio_range}.")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {interpolation!r}: expected one of {INTERPOLATIONS}.")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, "
                         f"{cutmix_alpha}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be a Keras layer or a callable on image batches, got "
                         f"{augment!r}.")


def _takes_training(augment):
    import keras

    return isinstance(augment, keras.layers.Layer)


def _decode(encoded):
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 (H, W, 3). JPEGs use the accurate integer DCT, as
    Pillow does, so evaluation matches `keras_vit.images.load_image`."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))


def _crop_window(shape, seed, area_range, aspect_ratio_range):
    whole_image = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, whole_image, seed=seed, min_object_covered=0.0, area_range=area_range,
        aspect_ratio_range=aspect_ratio_range, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    return begin, crop_size


def _random_crop(image, seed, area_range, aspect_ratio_range):
    begin, crop_size = _crop_window(tf.shape(image), seed, area_range, aspect_ratio_range)
    return tf.slice(image, begin, crop_size)


def _decode_random_crop(encoded, seed, area_range, aspect_ratio_range):
    """Random crop of encoded bytes; JPEGs decode only the crop window (much faster)."""

    def jpeg():
        begin, crop_size = _crop_window(tf.image.extract_jpeg_shape(encoded), seed, area_range,
                                        aspect_ratio_range)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3,
                                             dct_method="INTEGER_ACCURATE")

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return _random_crop(image, seed, area_range, aspect_ratio_range)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _resize(image, size, interpolation):
    # Antialiasing matches Pillow when shrinking; bicubic overshoots, hence the clip.
    image = tf.image.resize(image, size, method=interpolation, antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def center_crop(image, image_size, crop_pct=0.875, interpolation="bicubic"):
    """Resizes the short side of one `(H, W, 3)` image to `image_size / crop_pct` and crops the
    centre `image_size` (float32 in [0, 255]); `crop_pct=1.0` resizes straight to `image_size`.
    The sizes and offsets are those of `keras_vit.images.load_image`.

    >>> center_crop(tf.zeros((300, 400, 3)), 224).shape  # (224, 224, 3)
    """
    height, width = _pair(image_size)
    if crop_pct == 1.0:
        return _resize(image, (height, width), interpolation)
    shape = tf.cast(tf.shape(image)[:2], tf.float64)
    scale = max(height, width) / crop_pct / tf.reduce_min(shape)
    # tf.round rounds half to even, like Python's round() in load_image.
    new_size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), [height, width])
    image = _resize(image, new_size, interpolation)
    top, left = (new_size[0] - height) // 2, (new_size[1] - width) // 2
    image = tf.slice(image, [top, left, 0], [height, width, -1])
    image.set_shape((height, width, 3))
    return image


class MixUpCutMix:
    """Label smoothing, then MixUp or CutMix of a batch with the batch reversed (as timm does).

    One `lam ~ Beta(alpha, alpha)` per batch. MixUp blends pixels and one-hot labels with `lam`;
    CutMix pastes a box of area about `1 - lam` from the partner image and weights the labels by
    the box area actually pasted (after clipping at the border). With both alphas set, each batch
    uses one of the two with probability 1/2. Stateless: `seeds` is a shape-(2,) int tensor.
    Written in tf ops because Keras 3.15's `CutMix` layer weights labels by the unclipped box
    (measured: a 6 % pasted area labelled 0 %).

    >>> images, labels = MixUpCutMix(0.2, 1.0)(images, one_hot_labels, seeds=[1, 2])
    """

    def __init__(self, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=None):
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes

    def __call__(self, images, labels, seeds):
        images = tf.convert_to_tensor(images, tf.float32)
        labels = tf.convert_to_tensor(labels, tf.float32)
        if self.label_smoothing:
            num_classes = self.num_classes or labels.shape[-1]
            labels = labels * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        if not (self.mixup_alpha or self.cutmix_alpha):
            return images, labels
        choice_seed, lam_seed, box_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.cast(seeds, tf.int64), 3))
        if not self.cutmix_alpha:
            return self.mixup(images, labels, lam_seed)
        if not self.mixup_alpha:
            return self.cutmix(images, labels, lam_seed, box_seed)
        return tf.cond(tf.random.stateless_uniform([], choice_seed) < 0.5,
                       lambda: self.mixup(images, labels, lam_seed),
                       lambda: self.cutmix(images, labels, lam_seed, box_seed))

    def mixup(self, images, labels, seed):
        lam = _sample_beta(self.mixup_alpha, seed)
        return (lam * images + (1.0 - lam) * tf.reverse(images, [0]),
                lam * labels + (1.0 - lam) * tf.reverse(labels, [0]))

    def cutmix(self, images, labels, lam_seed, box_seed):
        lam = _sample_beta(self.cutmix_alpha, lam_seed)
        shape = tf.shape(images)
        height, width = shape[1], shape[2]
        cut = tf.sqrt(1.0 - lam)
        cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
        cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
        center = tf.random.stateless_uniform([2], box_seed, maxval=tf.int32.max, dtype=tf.int32)
        center_y, center_x = center[0] % height, center[1] % width
        top = tf.clip_by_value(center_y - cut_h // 2, 0, height)
        bottom = tf.clip_by_value(center_y + cut_h // 2, 0, height)
        left = tf.clip_by_value(center_x - cut_w // 2, 0, width)
        right = tf.clip_by_value(center_x + cut_w // 2, 0, width)
        rows = tf.range(height)
        cols = tf.range(width)
        inside = ((rows[:, None] >= top) & (rows[:, None] < bottom)
                  & (cols[None, :] >= left) & (cols[None, :] < right))
        mask = tf.cast(inside, tf.float32)[None, :, :, None]
        pasted = tf.reduce_mean(mask)  # the area fraction that really comes from the partner
        images = images * (1.0 - mask) + tf.reverse(images, [0]) * mask
        labels = (1.0 - pasted) * labels + pasted * tf.reverse(labels, [0])
        return images, labels


def _sample_beta(alpha, seed):
    """Beta(alpha, alpha) from two Gamma draws (tf has no stateless Beta)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    x = tf.random.stateless_gamma([], seeds[0], alpha)
    y = tf.random.stateless_gamma([], seeds[1], alpha)
    return x / (x + y)


_SIGNATURES = {  # leading bytes -> bytes that must appear near the end of a complete file
    b"\xff\xd8\xff": b"\xff\xd9",  # JPEG: end-of-image marker
    b"\x89PNG\r\n\x1a\n": b"IEND",  # PNG: final chunk
    b"GIF8": b";",  # GIF trailer
}


def _looks_readable(path):
    """Cheap check that a file is a complete image: known signature and end marker; anything
    else (BMP, trailing junk, unknown) is decoded in full once to decide."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
            file.seek(max(0, os.path.getsize(path) - 64))
            tail = file.read()
    except OSError:
        return False
    for signature, end in _SIGNATURES.items():
        if head.startswith(signature) and end in tail:
            return True
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return True
    except (tf.errors.OpError, ValueError):
        return False


def measure_throughput(dataset, batches=50):
    """Images per second that `dataset` delivers over `batches` batches, after one warm-up batch
    (fills the prefetch buffer and traces the map functions). For benchmarks; noisy on shared
    machines.

    >>> measure_throughput(from_arrays(x, y, 224, 64, training=True), batches=20)  # e.g. 950.0
    """
    iterator = iter(dataset)
    next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        images += int(tf.shape(tf.nest.flatten(batch)[0])[0])
    elapsed = time.perf_counter() - start
    if not images:
        raise ValueError("The dataset ran out after the warm-up batch: nothing to time.")
    return images / elapsed


def builtin_dataset(name="digits", path=None, test_fraction=0.2, seed=0):
    """A small real dataset that needs no download: `((x_train, y_train), (x_test, y_test),
    class_names)` with uint8 RGB images `(N, H, W, 3)` and int labels.

    `"digits"`: scikit-learn's 1,797 handwritten digits, 8x8 (its 0..16 scale mapped to 0..255),
    in a fixed stratified split (`test_fraction` held out per class, `seed`). `"mnist"`: the IDX
    `.gz` files in `path` (`train-*` and `t10k-*`; with only `t10k-*` present, that set is split
    the same way).

    >>> (x_train, y_train), (x_test, y_test), names = builtin_dataset("digits")
    """
    if name == "digits":
        from sklearn.datasets import load_digits  # the data ships inside the scikit-learn wheel

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype("uint8")
        x, y = images, digits.target.astype("int64")
        train, test = _stratified_split(y, test_fraction, seed)
        split = (x[train], y[train]), (x[test], y[test])
    elif name == "mnist":
        if path is None:
            raise ValueError("builtin_dataset('mnist') needs path=, the folder with the IDX .gz files.")
        if any(f.startswith("train-") for f in os.listdir(path)):
            split = load_mnist(path, "train"), load_mnist(path, "test")
        else:
            x, y = load_mnist(path, "test")
            train, test = _stratified_split(y, test_fraction, seed)
            split = (x[train], y[train]), (x[test], y[test])
    else:
        raise ValueError(f"Unknown builtin dataset {name!r}: expected one of {list(BUILTIN_DATASETS)}.")
    (x_train, y_train), (x_test, y_test) = split
    class_names = [str(i) for i in range(10)]
    return (_gray_to_rgb(x_train), y_train), (_gray_to_rgb(x_test), y_test), class_names


def _gray_to_rgb(images):
    return np.repeat(images[..., None], 3, axis=-1)


def _stratified_split(labels, test_fraction, seed):
    """Train and test indices with `test_fraction` of every class held out (sorted)."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.extend(members[:int(round(test_fraction * len(members)))])
    test_mask = np.zeros(len(labels), bool)
    test_mask[test] = True
    return np.flatnonzero(~test_mask), np.flatnonzero(test_mask)


def load_mnist(path_dir, split="test"):
    """MNIST images `(N, 28, 28)` uint8 and int64 labels `(N,)` from the IDX files in `path_dir`
    (`t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz` for `split="test"`, `train-*`
    for `"train"`; gzipped or not).

    >>> x, y = load_mnist("data/mnist")  # (10000, 28, 28), (10000,)
    """
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise ValueError(f"Unknown MNIST split {split!r}: expected 'train' or 'test'.")
    images = _read_idx(_find_idx(path_dir, f"{prefix}-images-idx3-ubyte"), ndim=3)
    labels = _read_idx(_find_idx(path_dir, f"{prefix}-labels-idx1-ubyte"), ndim=1)
    if len(images) != len(labels):
        raise ValueError(f"{path_dir}: {len(images)} MNIST images but {len(labels)} labels.")
    return images, labels.astype("int64")


def _find_idx(path_dir, stem):
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(path_dir, name)):
            return os.path.join(path_dir, name)
    raise FileNotFoundError(f"No {stem}.gz (or {stem}) in {path_dir!r}.")


def _read_idx(path, ndim):
    """IDX format: 2 zero bytes, dtype code 0x08 (uint8), ndim, then big-endian int32 sizes."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise ValueError(f"{path!r} is not a uint8 IDX file with {ndim} dimensions.")
    shape = tuple(np.frombuffer(data, ">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path!r} holds {len(data) - offset} bytes of pixels, expected {shape}.")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)
