"""tf.data input pipelines: TFDS datasets, image folders and arrays -> batches for `model.fit`.

Every pipeline yields `(images, labels)`: images float32 `(batch, height, width, 3)` with raw pixel
values in [0, 255] (the ViT normalises inside its graph) and labels float32 one-hot
`(batch, num_classes)`, so label smoothing, MixUp and CutMix compose and every recipe uses
`CategoricalCrossentropy`. Augmentation, label smoothing and mixing apply only with
`training=True`; evaluation pipelines are deterministic. The returned dataset carries
`class_names`, `num_classes` and `cardinality_examples` (number of examples, or None when unknown).
An encoded image that fails to decode at run time is dropped with a warning on stderr that names
it (file path, or TFDS example id) and counts the drops of that pass.

    train = keras_vit.data.from_directory("flowers/train", 224, 64, training=True, mixup_alpha=0.2)
    test = keras_vit.data.from_directory("flowers/test", 224, 64)
    model.fit(train, validation_data=test)

Training: Inception-style random crop (`crop_area_range`, `aspect_ratio_range`) resized to
`image_size`, random horizontal flip, then per batch the optional `augment` layer (e.g.
`keras.layers.RandAugment()` or a keras-cv layer), random erasing, label smoothing and MixUp /
CutMix; optionally repeated augmentation (see `from_arrays` for DeiT's options).
Evaluation: the short side is resized to `image_size / crop_pct` and the centre is cropped, as
`keras_vit.images.load_image` does (`crop_pct=1.0`: plain resize). Randomness comes from
per-element stateless seeds, so a `seed` makes a run reproducible while each epoch still differs,
and the map functions have no Python side effects (safe under `tf.distribute`).
"""

import concurrent.futures
import gzip
import logging
import os
import re
import sys
import time
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_vit.config import IMAGENET_NORMALIZATION, INTERPOLATIONS, check_keywords
from keras_vit.images import DEFAULT_CROP_PCT, IMAGE_EXTENSIONS, check_crop_pct, read_image

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

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
              label_smoothing=0.0, cache=False, seed=None, drop_remainder=None,
              crop_pct=DEFAULT_CROP_PCT, download=True, **options):
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

    _check_arguments(batch_size, crop_pct, mixup_alpha, cutmix_alpha, label_smoothing, augment,
                     options)
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
        read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False, add_tfds_id=True))
    # The id ("cifar10-train.tfrecord-00000-of-00001__17") names an example that fails to decode.
    dataset = dataset.map(lambda example: (example["image"], example["label"],
                                           example.get("tfds_id", f"{tfds_name}[{split}]")),
                          num_parallel_calls=AUTOTUNE)
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):
        num_examples = None
    if num_examples is None and int(dataset.cardinality()) >= 0:  # no split info, counted records
        num_examples = int(dataset.cardinality())
    return _pipeline(dataset, encoded=True, source=f"{tfds_name}[{split}]",
                     class_names=list(features["label"].names), num_examples=num_examples,
                     image_size=image_size, batch_size=batch_size, training=training,
                     shuffle_buffer=shuffle_buffer, augment=augment, mixup_alpha=mixup_alpha,
                     cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing, cache=cache,
                     seed=seed, drop_remainder=drop_remainder, crop_pct=crop_pct, **options)


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


def from_directory(path, image_size=224, batch_size=64, training=False, class_names=None,
                   shuffle_buffer=10_000, augment=None, mixup_alpha=0.0, cutmix_alpha=0.0,
                   label_smoothing=0.0, cache=False, seed=None, drop_remainder=None,
                   crop_pct=DEFAULT_CROP_PCT, verify_files=True, **options):
    """A folder with one sub-folder of images per class.

    Classes: by default the sorted sub-folder names, in that order, are the classes. Pass
    `class_names` (the training set's `dataset.class_names`, or a model's) to label a validation
    or test folder by name: each sub-folder gets the index of its name in `class_names`, a folder
    may hold a subset of the classes, and `dataset.class_names` is `class_names`, so the one-hot
    depth matches the model. A sub-folder whose name is not in `class_names` raises ValueError
    before anything is read. A class folder without a readable image stays a class (indices keep
    following the folder names) and is named in a warning.

    Files: `IMAGE_EXTENSIONS` (JPEG, PNG, BMP, GIF, WebP), searched recursively; hidden files and
    folders are ignored, other files are counted in a log warning. Symbolic links are followed,
    but no folder is entered twice, nor one that contains the dataset (a loop): those are named
    in a warning.

    Counts: with `verify_files=True` every file is decoded once, with the decoder the pipeline
    uses, in a thread pool (a full decode is the only check that matches what the pipeline will
    do; its cost is in benchmarks/RESULTS.md). Files that fail, and BMPs/GIFs that TensorFlow decodes
    differently from Pillow, are skipped with one warning that counts them and names each with
    the reason. The counts then hold: `dataset.cardinality()` (batches), `cardinality_examples`
    and `file_paths` (the files read, in folder order) are what the dataset yields. A file that
    stops decoding after the scan is dropped with a warning naming it, and that pass then ends
    with an error, as the count no longer holds. `verify_files=False` skips the scan: the number
    of examples is then unknown (`cardinality_examples` None, `file_paths` the files found) and
    files that fail are dropped with a warning naming each. The skipped paths are in
    `dataset.skipped_files`. `**options`: see `from_arrays`.

    >>> train = from_directory("flowers/train", image_size=224, training=True)
    >>> train.class_names  # ['daisy', 'dandelion', ...]
    >>> val = from_directory("flowers/val", 224, class_names=train.class_names)
    """
    _check_arguments(batch_size, crop_pct, mixup_alpha, cutmix_alpha, label_smoothing, augment,
                     options)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No directory at {path!r} (expected one sub-folder per class).")
    if image_size is None:
        raise ValueError("from_directory needs an image_size: the files have varying sizes.")
    _pair(image_size)
    folders = sorted(entry.name for entry in os.scandir(path)
                     if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise ValueError(f"{path!r} has no class sub-folders (expected e.g. {path}/cat/1.jpg).")
    class_names = folders if class_names is None else _check_class_names(path, folders, class_names)
    files, labels, others, skipped_folders = _list_images(path, folders, class_names)
    skipped = []
    if verify_files:
        # Decoding is CPU-bound, reading may wait on a network disk: a few threads per core.
        with concurrent.futures.ThreadPoolExecutor(min(16, 2 * (os.cpu_count() or 1))) as pool:
            problems = list(pool.map(_decode_problem, files))
        skipped = [f for f, problem in zip(files, problems) if problem]
        if skipped:
            named = [f"{f} ({problem})" for f, problem in zip(files, problems) if problem]
            warnings.warn(f"{path}: skipped {len(skipped)} image files that do not decode: "
                          f"{'; '.join(named[:20])}{' ...' if len(named) > 20 else ''}",
                          stacklevel=2)
        files = [f for f, problem in zip(files, problems) if not problem]
        labels = [label for label, problem in zip(labels, problems) if not problem]
    if others:
        logger.warning("%s: ignored %d files outside class folders or without an image extension "
                       "%s, e.g. %s", path, len(others), IMAGE_EXTENSIONS, others[:3])
    if skipped_folders:
        warnings.warn(f"{path}: did not enter {len(skipped_folders)} folders reached again through "
                      f"symbolic links or unreadable: {skipped_folders[:20]}", stacklevel=2)
    if not files:
        raise ValueError(f"{path!r} has no readable images with extensions {IMAGE_EXTENSIONS}.")
    seen = set(labels)
    empty = [folder for folder in folders if class_names.index(folder) not in seen]
    if empty:
        warnings.warn(
            f"{path}: {len(empty)} class folders have no readable image: {empty}. They stay "
            f"classes (label indices follow the class names {class_names[:20]}"
            f"{' ...' if len(class_names) > 20 else ''}), but nothing of them is seen.",
            stacklevel=2)
    dataset = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, "int64"), files))
    if training:  # shuffle the (cheap) file names in full; the buffer below then mixes decodes
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = _pipeline(dataset, encoded=True, source=path, read=tf.io.read_file,
                        class_names=class_names, num_examples=len(files) if verify_files else None,
                        image_size=image_size, batch_size=batch_size, training=training,
                        shuffle_buffer=shuffle_buffer, augment=augment, mixup_alpha=mixup_alpha,
                        cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing, cache=cache,
                        seed=seed, drop_remainder=drop_remainder, crop_pct=crop_pct, **options)
    dataset.skipped_files = skipped
    dataset.file_paths = files
    return dataset


def _check_class_names(path, folders, class_names):
    """The given class names as a list, after checking that every folder is one of them."""
    if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}.")
    class_names = [str(name) for name in class_names]
    repeated = sorted({n for n in class_names if class_names.count(n) > 1})
    if repeated:
        raise ValueError(f"class_names lists {repeated} more than once.")
    unknown = [folder for folder in folders if folder not in class_names]
    if unknown:
        raise ValueError(
            f"{path!r} has class folders {unknown} that are not in class_names. Folders: "
            f"{folders}; class_names: {class_names}. Classes are matched by name.")
    return class_names


def _list_images(root, folders, class_names):
    """`(files, labels, other files, folders not entered)` below the class folders of `root`.

    Symbolic links are followed, but a folder is entered at most once (by real path), and never
    one that contains `root` or is another class's folder: a link loop would otherwise repeat the
    same photos without end, and a link across classes would give them two labels.
    """
    root_real = os.path.realpath(root)
    class_reals = {os.path.realpath(os.path.join(root, folder)) for folder in folders}
    visited, files, labels, skipped = set(), [], [], []
    others = [os.path.join(root, f) for f in sorted(os.listdir(root))
              if not f.startswith(".") and os.path.isfile(os.path.join(root, f))]
    for folder in folders:
        label, top = class_names.index(folder), os.path.join(root, folder)
        if os.path.realpath(top) in visited:
            skipped.append(top)
            continue
        visited.add(os.path.realpath(top))
        for where, subfolders, names in os.walk(top, followlinks=True,
                                                onerror=lambda error: skipped.append(error.filename)):
            kept = []
            for sub in sorted(subfolders):
                real = os.path.realpath(os.path.join(where, sub))
                if sub.startswith("."):
                    continue
                if (real in visited or real in class_reals
                        or os.path.commonpath([real, root_real]) == real):
                    skipped.append(os.path.join(where, sub))
                else:
                    visited.add(real)
                    kept.append(sub)
            subfolders[:] = kept
            for name in sorted(names):
                if name.startswith("."):
                    continue
                file_path = os.path.join(where, name)
                # Not a FIFO or device (reading one would block) but dangling links: named later.
                if name.lower().endswith(IMAGE_EXTENSIONS) and (
                        os.path.isfile(file_path) or not os.path.exists(file_path)):
                    files.append(file_path)
                    labels.append(label)
                else:
                    others.append(file_path)
    return files, labels, others, skipped


def from_arrays(images, labels, image_size=None, batch_size=64, training=False, class_names=None,
                shuffle_buffer=10_000, augment=None, mixup_alpha=0.0, cutmix_alpha=0.0,
                label_smoothing=0.0, cache=False, seed=None, drop_remainder=None,
                crop_pct=DEFAULT_CROP_PCT, **options):
    """In-memory images `(N, H, W, C)` (uint8 or float in [0, 255]; C=1 or a missing channel
    axis is gray, repeated to RGB) and int labels `(N,)` as a batched pipeline.

    `image_size=None` keeps the arrays' size (evaluation then passes the pixels through
    unchanged). `class_names` defaults to `["0", "1", ...]` up to the largest label.

    Options shared by every pipeline: `crop_area_range=(0.08, 1.0)` and
    `aspect_ratio_range=(3/4, 4/3)` of the training crop (small images train better with
    e.g. `(0.35, 1.0)`), `flip=True`, `interpolation="bicubic"`, `deterministic=None` (element
    order; None: deterministic unless training without a seed), `skip_errors` (drop elements
    that fail to decode; default True for files, False for arrays).

    Training options of DeiT's recipe (both off by default):
      - `random_erasing=p`: with probability `p` per image, one rectangle of 2%-1/3 of the
        image (aspect ratio 0.3-3.3, up to 10 tries to fit) is replaced by per-pixel Gaussian
        noise: timm's `RandomErasing(mode="pixel")`, DeiT's `--reprob 0.25`. timm erases after
        normalisation with N(0, 1); these pipelines yield pixels, so the noise is
        `255 * (mean + std * N(0, 1))` per channel with `erasing_mean_std=(mean, std)` (default
        ImageNet's, DeiT's normalisation): exactly N(0, 1) once the model normalises with the
        same mean/std. The noise is not clipped, so erased pixels leave [0, 255]. Applied per
        batch after `augment` and before label smoothing and MixUp/CutMix, as in timm.
      - `repeated_augmentations=k`: repeated augmentation (Hoffer et al., 2020; DeiT's
        `RASampler`): each epoch takes a random `1/k` of the examples and yields each `k` times
        in a row, each copy with its own crop, flip and augmentation, so copies share a batch.
        The epoch keeps the dataset's length (`ceil(N/k)` examples, `k` times, cut to `N`) and
        `cardinality()` counts it. Needs the number of examples (not `verify_files=False`); for
        arrays the shuffle then takes all `N` examples (a buffer of `N`), so the third is
        uniform; folders shuffle their file names in full anyway, TFDS its files.

    >>> data = np.load("cifar10_subset.npz", allow_pickle=False)
    >>> train = from_arrays(data["x_train"], data["y_train"], batch_size=128, training=True)
    """
    _check_arguments(batch_size, crop_pct, mixup_alpha, cutmix_alpha, label_smoothing, augment,
                     options)
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
              drop_remainder, crop_pct, source=None, read=None, crop_area_range=(0.08, 1.0),
              aspect_ratio_range=(3 / 4, 4 / 3), flip=True, interpolation="bicubic",
              deterministic=None, skip_errors=True, resize_eval=True, random_erasing=0.0,
              erasing_mean_std=IMAGENET_NORMALIZATION, repeated_augmentations=1):
    """(uint8 pixels, int label) or, `encoded`, (encoded bytes or what `read` turns into them,
    int label, name for warnings) -> batches of (float pixels, one-hot labels)."""
    size = _pair(image_size)
    num_classes = len(class_names)
    if training and repeated_augmentations > 1 and num_examples is None:
        raise ValueError(f"repeated_augmentations={repeated_augmentations} keeps each epoch at the "
                         f"number of examples, which is unknown here (a folder read with "
                         f"verify_files=False, or a TFDS split without counts): scan the files "
                         f"(verify_files=True) or pass repeated_augmentations=1.")
    if drop_remainder is None:  # equal batches for training, unless that would leave none
        drop_remainder = training and (num_examples is None or num_examples >= batch_size)
    if training and num_examples is not None and drop_remainder and num_examples < batch_size:
        warnings.warn(f"{num_examples} examples and drop_remainder=True with batch_size "
                      f"{batch_size}: the dataset yields no batch.", stacklevel=3)

    def one_hot(label):
        return tf.one_hot(label, num_classes, dtype=tf.float32)

    def train_example(element, seeds):
        x, label = element[:2]
        x = read(x) if read else x
        crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seeds, 2))
        crop = _decode_random_crop if encoded else _random_crop
        image = crop(x, crop_seed, crop_area_range, aspect_ratio_range)
        image = tf.ensure_shape(_resize(image, size, interpolation), (*size, 3))
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        return image, one_hot(label)

    def eval_example(x, label, *name):
        x = read(x) if read else x
        image = _decode(x) if encoded else x
        if resize_eval:
            image = center_crop(image, size, crop_pct, interpolation)
        image = tf.cast(image, tf.float32)
        image.set_shape((*size, 3))
        return image, one_hot(label)

    def examples(dataset, function, name_of):
        if not skip_errors:
            return dataset.map(function, num_parallel_calls=AUTOTUNE)
        if not encoded:
            return dataset.map(function, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
        placeholder = (tf.zeros((*size, 3)), tf.zeros((num_classes,)))
        dataset = _map_reporting_failures(dataset, function, placeholder, name_of, source)
        # Scanned files all decode: say how many examples there are (Keras shows the steps) and
        # fail the pass, after the warning that named it, if one stopped decoding since.
        if num_examples is not None and read is not None:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_examples))
        return dataset

    mix = MixUpCutMix(mixup_alpha, cutmix_alpha, label_smoothing, num_classes)

    def train_batch(batch, seeds):
        images, labels = batch
        if augment is not None:
            augmented = augment(images, training=True) if _takes_training(augment) else augment(images)
            images = tf.cast(augmented, tf.float32)
        if random_erasing:
            erase_seed = tf.random.experimental.stateless_fold_in(tf.cast(seeds, tf.int64), 1)
            images = erase_random_rectangles(images, erase_seed, random_erasing, *erasing_mean_std)
        return mix(images, labels, seeds)

    if training:
        if cache:
            dataset = dataset.cache(cache if isinstance(cache, str) else "")
        repeats = repeated_augmentations
        if shuffle_buffer or (repeats > 1 and not encoded):
            buffer = min(shuffle_buffer, num_examples) if num_examples else shuffle_buffer
            if repeats > 1 and not encoded:
                buffer = num_examples  # a uniform 1/k of the arrays each epoch, not the first ones
            dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeats > 1:
            dataset = dataset.take(-(-num_examples // repeats)).flat_map(
                lambda *element: tf.data.Dataset.from_tensors(element).repeat(repeats))
            dataset = dataset.take(num_examples).apply(
                tf.data.experimental.assert_cardinality(num_examples))
        dataset = tf.data.Dataset.zip(dataset, _seeds(seed, 0))
        dataset = examples(dataset, train_example, lambda element, seeds: element[2])
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder,
                                num_parallel_calls=AUTOTUNE)
        dataset = tf.data.Dataset.zip(dataset, _seeds(seed, 1))
        dataset = dataset.map(train_batch, num_parallel_calls=AUTOTUNE)
    else:
        dataset = examples(dataset, eval_example, lambda x, label, name: name)
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


def _map_reporting_failures(dataset, function, placeholder, name_of, source):
    """`dataset.map(function)`, dropping the elements it fails on (an image that does not decode)
    with a warning on stderr that names each (`name_of(*element)`) and counts them per pass.

    tf.data cannot catch an error inside a map, so each element runs in its own one-element
    dataset with `ignore_errors`, followed by a placeholder marked as failed: whichever comes
    first is the outcome. Pure tf ops, no Python side effects (safe under tf.distribute).
    """

    def attempt(*element):
        name = name_of(*element)

        def succeeded(*same_element):
            return function(*same_element), True, name

        done = tf.data.Dataset.from_tensors(element).map(succeeded).ignore_errors()
        return done.concatenate(tf.data.Dataset.from_tensors((placeholder, False, name))).take(1)

    def count(dropped, outcome):
        _, ok, name = outcome
        dropped += tf.cast(tf.logical_not(ok), tf.int64)
        if not ok:
            tf.print("WARNING keras_vit.data:", source, ": dropped", name, "(it does not decode);",
                     dropped, "dropped in this pass", output_stream=sys.stderr)
        return dropped, outcome

    dataset = dataset.interleave(attempt, num_parallel_calls=AUTOTUNE)
    def succeeded(result, ok, name):
        return ok

    def result_of(result, ok, name):
        return result

    dataset = dataset.scan(tf.constant(0, tf.int64), count)
    return dataset.filter(succeeded).map(result_of)


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


OPTIONS = ("crop_area_range", "aspect_ratio_range", "flip", "interpolation", "deterministic",
           "skip_errors", "resize_eval", "random_erasing", "erasing_mean_std",
           "repeated_augmentations")


def _check_arguments(batch_size, crop_pct, mixup_alpha, cutmix_alpha, label_smoothing, augment,
                     options):
    """Every pipeline argument, checked before anything is read or scanned."""
    check_keywords(options, OPTIONS, "keras_vit.data.from_*")
    options = {**_pipeline.__kwdefaults__, **options}
    if (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
            or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    check_crop_pct(crop_pct)
    low, high = options["crop_area_range"]
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"crop_area_range must be (low, high) with 0 < low <= high <= 1, got "
                         f"{options['crop_area_range']}.")
    low, high = options["aspect_ratio_range"]
    if not 0.0 < low <= high:
        raise ValueError(f"aspect_ratio_range must be (low, high) with 0 < low <= high, got "
                         f"{options['aspect_ratio_range']}.")
    if options["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {options['interpolation']!r}: expected one of "
                         f"{INTERPOLATIONS}.")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, "
                         f"{cutmix_alpha}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
    erasing = options["random_erasing"]
    if (isinstance(erasing, bool) or not isinstance(erasing, (int, float, np.integer, np.floating))
            or not 0 <= erasing <= 1):
        raise ValueError(f"random_erasing is a probability in [0, 1], got {erasing!r}.")
    try:
        mean, std = (np.broadcast_to(np.asarray(value, "float64"), (3,))
                     for value in options["erasing_mean_std"])
    except (TypeError, ValueError):
        mean = std = None
    if mean is None or not (np.all((0 <= mean) & (mean <= 1)) and np.all((0 < std) & (std <= 1))):
        raise ValueError(f"erasing_mean_std must be (mean, std), each a number or 3 numbers, std > 0 "
                         f"(on the [0, 1] scale), got {options['erasing_mean_std']!r}.")
    repeats = options["repeated_augmentations"]
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeated_augmentations must be an int >= 1, got {repeats!r}.")
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be a Keras layer or a callable on image batches, got "
                         f"{augment!r}.")


def _takes_training(augment):
    import keras

    return isinstance(augment, keras.layers.Layer)


def _decode(encoded):
    """Encoded JPEG/PNG/BMP/GIF/WebP bytes -> uint8 (H, W, 3), the pixels of
    `keras_vit.images.read_image`. JPEGs use the accurate integer DCT, as Pillow does."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: _decode_other(encoded))


def _decode_other(encoded):
    """PNG, GIF, BMP and WebP. TF reads a WebP with alpha only as 4 channels (and one without
    only as 3): take the file's own and drop the alpha, as read_image does. An animated WebP
    read that way corrupts the heap in TF 2.21, so it is refused before the decoder sees it."""
    head = tf.strings.substr(tf.strings.join([encoded, b"\0" * 21]), 0, 21)
    webp = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                          tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))
    # An extended (VP8X) header with the animation flag, bit 1 of byte 20.
    animated = tf.logical_and(tf.equal(tf.strings.substr(head, 12, 4), b"VP8X"),
                              tf.bitwise.bitwise_and(tf.io.decode_raw(head, tf.uint8)[20], 2) > 0)

    def webp_image():
        check = tf.debugging.Assert(tf.logical_not(animated), ["animated WebP is not supported"])
        with tf.control_dependencies([check]):
            image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
        return tf.ensure_shape(image[..., :3], (None, None, 3))

    return tf.cond(webp, webp_image,
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
        return _random_crop(_decode_other(encoded), seed, area_range, aspect_ratio_range)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _resize(image, size, interpolation):
    # Antialiasing matches Pillow when shrinking; bicubic overshoots, hence the clip. "nearest"
    # keeps the input's dtype (uint8 from a decoder): cast, so every method gives float32.
    image = tf.image.resize(image, size, method=interpolation, antialias=True)
    return tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0)


def center_crop(image, image_size, crop_pct=DEFAULT_CROP_PCT, interpolation="bicubic"):
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


def erase_random_rectangles(images, seed, probability, mean=IMAGENET_NORMALIZATION[0],
                            std=IMAGENET_NORMALIZATION[1], area_range=(0.02, 1 / 3),
                            aspect_ratio_range=(0.3, 1 / 0.3), attempts=10):
    """Random erasing (Zhong et al., 2017) of a batch of pixels `(B, H, W, 3)` in [0, 255], as
    timm's `RandomErasing(probability, mode="pixel", max_count=1)`: with `probability` per image,
    up to `attempts` draws of an area (uniform in `area_range` of the image) and a log-uniform
    aspect ratio until the rounded rectangle fits strictly inside, at a uniform position, filled
    with per-pixel noise `255 * (mean + std * N(0, 1))` (N(0, 1) after normalising with
    `mean`/`std`). Stateless: `seed` is a shape-(2,) int tensor.

    >>> erased = erase_random_rectangles(images, seed=[1, 2], probability=0.25)
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    apply_seed, area_seed, ratio_seed, place_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5))
    area = tf.cast(height * width, tf.float32)
    target = area * tf.random.stateless_uniform([batch, attempts], area_seed, *area_range)
    ratio = tf.exp(tf.random.stateless_uniform([batch, attempts], ratio_seed,
                                               np.log(aspect_ratio_range[0]),
                                               np.log(aspect_ratio_range[1])))
    # tf.round rounds half to even, as Python's round() in timm.
    heights = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
    widths = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
    fits = (heights < height) & (widths < width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1)  # the first try that fits
    erase_height = tf.gather(heights, first, batch_dims=1)
    erase_width = tf.gather(widths, first, batch_dims=1)
    erase = (tf.reduce_any(fits, axis=1)
             & (tf.random.stateless_uniform([batch], apply_seed) < probability))
    # Top and left uniform over [0, H - h] and [0, W - w], both ends included (random.randint).
    place = tf.random.stateless_uniform([batch, 2], place_seed)
    top = tf.cast(place[:, 0] * tf.cast(height - erase_height + 1, tf.float32), tf.int32)
    left = tf.cast(place[:, 1] * tf.cast(width - erase_width + 1, tf.float32), tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + erase_height)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + erase_width)[:, None, None])
              & erase[:, None, None])
    mean = 255.0 * tf.constant(np.broadcast_to(mean, (3,)), tf.float32)
    std = 255.0 * tf.constant(np.broadcast_to(std, (3,)), tf.float32)
    noise = mean + std * tf.random.stateless_normal(shape, noise_seed)
    return tf.where(inside[..., None], noise, images)


def _sample_beta(alpha, seed):
    """Beta(alpha, alpha) from two Gamma draws (tf has no stateless Beta)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    x = tf.random.stateless_gamma([], seeds[0], alpha)
    y = tf.random.stateless_gamma([], seeds[1], alpha)
    return x / (x + y)


def _decode_problem(path):
    """None when the pipeline's decoder reads the file, else the reason why not."""
    try:  # Pillow reads only the header here: refuse what read_image (predict) would refuse as
        with Image.open(path):  # a decompression bomb before TensorFlow allocates its pixels
            pass
    except Image.DecompressionBombError as error:
        return str(error)
    except (OSError, ValueError):
        pass  # not Pillow's to decide: TensorFlow's decoder is the one the pipeline uses
    try:
        contents = tf.io.read_file(path)
        pixels = _decode(contents)
    except tf.errors.OpError as error:
        # "{{function_node ...}} Invalid JPEG data or crop window [Op:DecodeImage]" -> the middle.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\s+name:\s*$", "", str(error).strip())
        # A failed tf.debugging.Assert: "Expected ... to be true. Summarized data: b'why'".
        reason = re.sub(r"^Expected .* Summarized data: b'(.*)'$", r"\1", reason.strip())
        return reason or type(error).__name__
    # TensorFlow misdecodes some BMPs (palette ones: the indices come out as grey levels) and GIFs
    # (a first frame smaller than the canvas is misplaced) without an error: compare with Pillow.
    head = contents.numpy()[:4]
    if head == b"GIF8" or head[:2] == b"BM":
        try:
            same = np.array_equal(pixels.numpy(), read_image(path))
        except ValueError:
            same = False
        if not same:
            return ("TensorFlow and Pillow decode it differently (a palette BMP, or a GIF whose "
                    "first frame does not fill the canvas?): convert it to PNG")
    return None


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
