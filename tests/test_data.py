"""keras_vit.data: shapes, labels, crops vs Pillow, MixUp/CutMix, corrupt files, real data."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_vit import data
from keras_vit.images import load_image
from conftest import random_images

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def smooth_image(height, width, seed):
    """A photo-like image: smooth colour gradients plus mild noise (no hard wrap-around edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    phase = rng.uniform(0, 6, 3)
    image = 127.5 + 100 * np.stack([np.sin(3 * xx + phase[0]), np.cos(4 * yy + phase[1]),
                                    np.sin(2 * (xx + yy) + phase[2])], -1)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype("uint8")


@pytest.fixture
def image_folder(tmp_path):
    """cats/ (2 PNG + 1 JPEG) and dogs/ (2 JPEG), varied sizes, plus a README to ignore."""
    sizes = {"cats/a.png": (90, 130), "cats/b.png": (64, 48), "cats/c.jpg": (120, 100),
             "dogs/d.jpg": (75, 75), "dogs/e.jpeg": (50, 160)}
    for i, (name, (height, width)) in enumerate(sizes.items()):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        Image.fromarray(smooth_image(height, width, i)).save(tmp_path / name, quality=95)
    (tmp_path / "dogs" / "README.txt").write_text("not an image")
    return tmp_path


def test_from_arrays_eval_passes_pixels_and_one_hot_labels():
    gray = random_images(10, 12, seed=1)[..., 0]  # (N, H, W): gray, repeated to RGB
    labels = np.array([0, 3, 1, 2, 3, 0, 1, 2, 3, 3])
    dataset = data.from_arrays(gray, labels, batch_size=4, class_names=list("abcd"))
    out = batches(dataset)
    assert [x.shape for x, _ in out] == [(4, 12, 12, 3), (4, 12, 12, 3), (2, 12, 12, 3)]
    images = np.concatenate([x for x, _ in out])
    one_hot = np.concatenate([y for _, y in out])
    assert images.dtype == np.float32 and one_hot.dtype == np.float32
    np.testing.assert_array_equal(images, np.repeat(gray[..., None], 3, -1).astype("float32"))
    np.testing.assert_array_equal(one_hot, np.eye(4, dtype="float32")[labels])
    assert dataset.class_names == list("abcd") and dataset.num_classes == 4
    assert dataset.cardinality_examples == 10 and int(dataset.cardinality()) == 3


def test_from_arrays_rejects_bad_input():
    images = random_images(4, 8)
    with pytest.raises(ValueError, match="labels range over"):
        data.from_arrays(images, np.array([0, 1, 2, 5]), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(N, H, W, 1 or 3\)"):
        data.from_arrays(images[..., :2], np.zeros(4, int))
    with pytest.raises(ValueError, match="4 integers"):
        data.from_arrays(images, np.zeros(3, int))
    with pytest.raises(ValueError, match="crop_pct"):
        data.from_arrays(images, np.zeros(4, int), crop_pct=1.5)


def test_eval_is_deterministic_and_training_random_but_seeded():
    images, labels = random_images(16, 24, seed=2), np.arange(16) % 4
    evaluation = data.from_arrays(images, labels, image_size=16, batch_size=8)
    first, second = batches(evaluation), batches(evaluation)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)

    def train(seed):
        return data.from_arrays(images, labels, image_size=16, batch_size=8, training=True,
                                seed=seed)

    pipeline = train(seed=3)
    epoch1, epoch2 = batches(pipeline), batches(pipeline)
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])  # new crops/flips/order each epoch
    np.testing.assert_array_equal(batches(train(seed=3))[0][0], epoch1[0][0])  # reproducible
    for x, y in epoch1:
        assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 255.0
        np.testing.assert_array_equal(y.sum(1), 1.0)
        assert set(np.unique(y)) == {0.0, 1.0}


def test_training_drops_remainder_unless_smaller_than_a_batch():
    images, labels = random_images(10, 8), np.zeros(10, int)
    assert [len(y) for _, y in data.from_arrays(images, labels, batch_size=4, training=True)] == [4, 4]
    assert [len(y) for _, y in data.from_arrays(images, labels, batch_size=16, training=True)] == [10]


def test_from_directory_labels_shapes_and_center_crop_match_load_image(image_folder):
    dataset = data.from_directory(str(image_folder), image_size=32, batch_size=8)
    assert dataset.class_names == ["cats", "dogs"] and dataset.num_classes == 2
    assert dataset.cardinality_examples == 5 and dataset.skipped_files == []
    [(images, labels)] = batches(dataset)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, np.eye(2)[[0, 0, 0, 1, 1]])
    # Independent path: Pillow decode + resize + crop in keras_vit.images.
    for image, path in zip(images, dataset.file_paths):
        reference = load_image(path, 32, crop_pct=0.875).astype("float32")
        difference = np.abs(image - reference)
        assert difference.max() <= 2.0, (path, difference.max())
        assert difference.mean() < 0.5
    plain = data.from_directory(str(image_folder), image_size=(24, 40), crop_pct=1.0)
    [(images, _)] = batches(plain)
    reference = load_image(plain.file_paths[0], (24, 40), crop_pct=1.0).astype("float32")
    assert images.shape == (5, 24, 40, 3) and np.abs(images[0] - reference).max() <= 2.0


@pytest.mark.real_data
def test_center_crop_matches_load_image_on_a_real_photo(shared_data, tmp_path):
    path = os.path.join(shared_data, "images", "chelsea.png")
    os.makedirs(tmp_path / "photo")
    os.symlink(path, tmp_path / "photo" / "chelsea.png")
    dataset = data.from_directory(str(tmp_path), image_size=224)
    [(images, _)] = batches(dataset)
    difference = np.abs(images[0] - load_image(path, 224).astype("float32"))
    assert difference.max() <= 2.0 and difference.mean() < 0.5


def test_from_directory_training_pipeline(image_folder):
    dataset = data.from_directory(str(image_folder), image_size=16, batch_size=2, training=True,
                                  seed=0, crop_area_range=(0.3, 1.0))
    out = batches(dataset)
    assert len(out) == 2  # 5 images, equal batches of 2
    for x, y in out:
        assert x.shape == (2, 16, 16, 3) and 0 <= x.min() and x.max() <= 255
        np.testing.assert_array_equal(y.sum(1), 1.0)


def test_corrupt_and_fake_images_are_skipped_and_counted(image_folder):
    good = (image_folder / "cats" / "c.jpg").read_bytes()
    (image_folder / "cats" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (image_folder / "dogs" / "notes.jpg").write_text("this is text, not a JPEG")
    with pytest.warns(UserWarning, match="skipped 2 unreadable") as record:
        dataset = data.from_directory(str(image_folder), image_size=16, batch_size=16)
    message = str(record[0].message)
    assert "truncated.jpg" in message and "notes.jpg" in message
    assert sorted(os.path.basename(f) for f in dataset.skipped_files) == ["notes.jpg", "truncated.jpg"]
    assert dataset.cardinality_examples == 5 and sum(len(y) for _, y in dataset) == 5
    # Without the scan the decoder fails on them at run time: dropped, never a crash.
    for training in (False, True):
        unchecked = data.from_directory(str(image_folder), image_size=16, batch_size=16,
                                        training=training, verify_files=False)
        assert unchecked.cardinality_examples == 7
        assert sum(len(y) for _, y in unchecked) == 5


def constant_batch(n=8, size=16):
    """Image i is constant with value 10 * (i + 1) and has label i: mixing is visible in pixels."""
    values = 10.0 * (np.arange(n) + 1)
    images = np.broadcast_to(values[:, None, None, None], (n, size, size, 3)).astype("float32")
    return images, np.eye(n, dtype="float32"), values


def test_mixup_blends_pixels_and_labels_with_the_same_weight():
    images, labels, values = constant_batch()
    mixed, mixed_labels = data.MixUpCutMix(mixup_alpha=0.4)(images, labels, seeds=[3, 4])
    mixed, mixed_labels = mixed.numpy(), mixed_labels.numpy()
    np.testing.assert_allclose(mixed_labels.sum(1), 1.0, rtol=1e-6)
    lam = mixed_labels[0, 0]
    assert 0.0 < lam < 1.0
    for i in range(8):
        partner = 7 - i  # mixed with the batch reversed
        np.testing.assert_allclose(mixed_labels[i, [i, partner]], [lam, 1 - lam], rtol=1e-5)
        np.testing.assert_allclose(mixed[i], lam * values[i] + (1 - lam) * values[partner], rtol=1e-5)


def test_cutmix_label_weight_equals_pasted_area():
    images, labels, values = constant_batch()
    seen_partial = False
    for seed in range(6):
        mixed, mixed_labels = data.MixUpCutMix(cutmix_alpha=1.0)(images, labels, seeds=[seed, 1])
        mixed, mixed_labels = mixed.numpy(), mixed_labels.numpy()
        np.testing.assert_allclose(mixed_labels.sum(1), 1.0, rtol=1e-6)
        for i in range(8):
            partner = 7 - i
            pasted = np.mean(mixed[i, ..., 0] == values[partner])
            assert np.all(np.isin(mixed[i], [values[i], values[partner]]))
            np.testing.assert_allclose(mixed_labels[i, partner], pasted, atol=1e-6)
            np.testing.assert_allclose(mixed_labels[i, i], 1 - pasted, atol=1e-6)
            seen_partial |= 0.0 < pasted < 1.0 and i != partner
    assert seen_partial


def test_label_smoothing_values():
    labels = np.eye(4, dtype="float32")[[2, 0]]
    _, smoothed = data.MixUpCutMix(label_smoothing=0.2, num_classes=4)(np.zeros((2, 4, 4, 3)),
                                                                       labels, seeds=[0, 0])
    np.testing.assert_allclose(smoothed.numpy(), [[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]],
                               rtol=1e-6)


def test_pipeline_mixing_and_smoothing_only_when_training():
    images, _, values = constant_batch(n=8)
    labels = np.arange(8)
    options = dict(batch_size=8, mixup_alpha=0.5, cutmix_alpha=0.5, label_smoothing=0.1,
                   crop_area_range=(1.0, 1.0), seed=5, shuffle_buffer=0)
    [(x, y)] = batches(data.from_arrays(images.astype("uint8"), labels, **options))
    np.testing.assert_array_equal(y, np.eye(8))  # evaluation: plain one-hot
    for x, y in batches(data.from_arrays(images.astype("uint8"), labels, training=True, **options)):
        np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)
        assert y.min() >= 0.1 / 8 - 1e-6  # smoothed before mixing
        # The pixels of each image are the label-weighted mix of the two sources.
        smoothing_free = (y - 0.1 / 8) / 0.9
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), smoothing_free @ values, rtol=1e-3)


def test_augment_runs_per_batch_only_when_training():
    images, labels = random_images(8, 16, seed=4), np.arange(8) % 2
    invert = lambda batch: 255.0 - batch  # noqa: E731 - any callable on a batch
    options = dict(batch_size=4, augment=invert, crop_area_range=(1.0, 1.0), flip=False,
                   shuffle_buffer=0, deterministic=True)  # keep the order: no shuffle, no race
    [evaluated, _] = batches(data.from_arrays(images, labels, **options))
    np.testing.assert_array_equal(evaluated[0], images[:4].astype("float32"))
    [trained, _] = batches(data.from_arrays(images, labels, training=True, **options))
    np.testing.assert_allclose(trained[0], 255.0 - images[:4], atol=1e-3)

    randaugment = data.from_arrays(images, labels, batch_size=8, training=True, seed=0,
                                   augment=keras.layers.RandAugment(value_range=(0, 255)))
    [(x, _)] = batches(randaugment)
    assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255


def test_builtin_digits_split_is_stratified_disjoint_and_real():
    from sklearn.datasets import load_digits

    (x_train, y_train), (x_test, y_test), names = data.builtin_dataset("digits")
    assert names == [str(i) for i in range(10)]
    assert x_train.shape == (1438, 8, 8, 3) and x_test.shape == (359, 8, 8, 3)
    assert x_train.dtype == np.uint8 and x_train.max() == 255 and x_train.min() == 0
    np.testing.assert_array_equal(x_train[..., 0], x_train[..., 2])
    digits = load_digits()
    expected = np.round(digits.images * 255 / 16).astype("uint8")
    # train + test is exactly the original set (each example once), with matching labels.
    rows = lambda x, y: sorted(zip(y.tolist(), (i.tobytes() for i in x)))  # noqa: E731
    assert rows(np.concatenate([x_train[..., 0], x_test[..., 0]]), np.concatenate([y_train, y_test])) \
        == rows(expected, digits.target)
    test_share = np.bincount(y_test, minlength=10) / np.bincount(digits.target, minlength=10)
    assert np.all(np.abs(test_share - 0.2) < 0.02)
    again = data.builtin_dataset("digits")
    np.testing.assert_array_equal(again[1][1], y_test)
    with pytest.raises(ValueError, match="digits"):
        data.builtin_dataset("imagenet")


@pytest.mark.real_data
def test_load_mnist_real_test_set(shared_data):
    x, y = data.load_mnist(os.path.join(shared_data, "mnist"))
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    # Published facts about the MNIST test set.
    np.testing.assert_array_equal(y[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    np.testing.assert_array_equal(np.bincount(y),
                                  [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
    assert x.max() == 255 and x[0, :4].max() == 0  # white digit on black, empty border
    (x_train, _), (x_test, _), _ = data.builtin_dataset("mnist", os.path.join(shared_data, "mnist"))
    assert x_train.shape == (8000, 28, 28, 3) and x_test.shape == (2000, 28, 28, 3)
    with pytest.raises(FileNotFoundError, match="train-images"):
        data.load_mnist(os.path.join(shared_data, "mnist"), split="train")


@pytest.mark.real_data
def test_cifar10_subset_through_from_arrays(shared_data):
    with np.load(os.path.join(shared_data, "cifar10_subset.npz"), allow_pickle=False) as arrays:
        x, y = arrays["x_test"], arrays["y_test"].reshape(-1)
    evaluation = data.from_arrays(x, y, batch_size=256, class_names=CIFAR10_NAMES)
    images = np.concatenate([b for b, _ in batches(evaluation)])
    labels = np.concatenate([b for _, b in batches(evaluation)])
    np.testing.assert_array_equal(images, x.astype("float32"))
    np.testing.assert_array_equal(labels.argmax(1), y)
    assert evaluation.class_names[3] == "cat" and evaluation.cardinality_examples == len(x)
    train = data.from_arrays(x, y, image_size=32, batch_size=128, training=True, seed=0,
                             class_names=CIFAR10_NAMES, crop_area_range=(0.5, 1.0),
                             mixup_alpha=0.2, label_smoothing=0.1)
    out = batches(train)
    assert len(out) == len(x) // 128
    assert all(b.shape == (128, 32, 32, 3) and l.shape == (128, 10) for b, l in out)
    assert data.measure_throughput(train, batches=3) > 0


def test_from_tfds_unknown_name_and_missing_data_errors(tmp_path):
    with pytest.raises(ValueError, match="cifar10.*'image' and 'label'"):
        data.from_tfds("no_such_dataset_xyz")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as error:
        data.from_tfds("cifar10", data_dir=missing, download=False)
    message = str(error.value)
    assert "'cifar10'" in message and missing in message and "tfds build cifar10" in message


def test_from_tfds_pipeline_with_mocked_records(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):  # TFDS's offline stand-in records
        dataset = data.from_tfds("cifar10", "train", image_size=None, batch_size=4,
                                 data_dir=str(tmp_path))
        train = data.from_tfds("cifar10", "train", image_size=24, batch_size=4, training=True,
                               data_dir=str(tmp_path), seed=0)
        out, trained = batches(dataset), batches(train)
    # The mock's metadata has no label names, only their number.
    assert len(dataset.class_names) == 10 and dataset.num_classes == 10
    assert [x.shape for x, _ in out] == [(4, 32, 32, 3), (4, 32, 32, 3), (2, 32, 32, 3)]
    assert all(set(np.unique(y)) <= {0.0, 1.0} and np.all(y.sum(1) == 1) for _, y in out)
    assert [x.shape for x, _ in trained] == [(4, 24, 24, 3)] * 2


def test_tfds_aliases_point_at_known_datasets():
    assert set(data.KNOWN_DATASETS) <= set(data.TFDS_ALIASES)
    assert data.TFDS_ALIASES["imagenette"].startswith("imagenette/")
    assert set(data.EVAL_SPLITS) == set(data.KNOWN_DATASETS)

