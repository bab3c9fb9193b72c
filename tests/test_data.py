"""keras_vit.data: shapes, labels, crops vs Pillow, MixUp/CutMix, corrupt files, real data."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
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
    with pytest.warns(UserWarning, match="skipped 2 image files that do not decode") as record:
        dataset = data.from_directory(str(image_folder), image_size=16, batch_size=16)
    message = str(record[0].message)
    assert "truncated.jpg (" in message and "notes.jpg (" in message
    assert sorted(os.path.basename(f) for f in dataset.skipped_files) == ["notes.jpg", "truncated.jpg"]
    assert dataset.cardinality_examples == 5 and sum(len(y) for _, y in dataset) == 5


def corrupt_body(jpeg_bytes):
    """Valid start (SOI) and end (EOI) markers, an unknown marker (0xFF20) in the middle of the
    entropy-coded data: libjpeg, in TensorFlow and in Pillow, refuses it."""
    middle = (jpeg_bytes.index(b"\xff\xda") + len(jpeg_bytes)) // 2
    return jpeg_bytes[:middle] + b"\xff\x20" + jpeg_bytes[middle + 2:]


@pytest.mark.parametrize("training", [False, True])
def test_corrupt_body_with_valid_markers_is_skipped_and_the_counts_hold(image_folder, training):
    broken = corrupt_body((image_folder / "cats" / "c.jpg").read_bytes())
    assert broken.startswith(b"\xff\xd8\xff") and broken.endswith(b"\xff\xd9")
    (image_folder / "dogs" / "broken.jpg").write_bytes(broken)
    with pytest.raises(ValueError):  # Pillow, an independent decoder, refuses it too
        load_image(str(image_folder / "dogs" / "broken.jpg"))
    with pytest.warns(UserWarning, match=r"skipped 1 image files.*broken\.jpg \(.*Invalid JPEG"):
        dataset = data.from_directory(str(image_folder), image_size=16, batch_size=2,
                                      training=training, seed=0, drop_remainder=False)
    yielded = [len(y) for _, y in dataset]
    assert dataset.cardinality_examples == len(dataset.file_paths) == sum(yielded) == 5
    assert int(dataset.cardinality()) == len(yielded) == 3
    assert [os.path.basename(f) for f in dataset.skipped_files] == ["broken.jpg"]


def test_decompression_bomb_is_skipped_without_decoding(image_folder):
    """A PNG header claiming 30000 x 30000 pixels (900 MB to decode) over a few bytes of data: the
    scan refuses it from the header, as Pillow (predict) does."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (image_folder / "cats" / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 30001))
        + chunk(b"IEND", b""))
    with pytest.warns(UserWarning, match=r"bomb\.png \(Image size \(900000000 pixels\) exceeds"):
        dataset = data.from_directory(str(image_folder), image_size=8)
    assert dataset.cardinality_examples == 5


def test_run_time_failures_are_named_and_counted(image_folder, capfd):
    """Without the scan, or when a file breaks after it, the file is dropped with a warning
    naming it; the counts are then unknown (no scan) or the pass fails (count no longer holds)."""
    good = (image_folder / "cats" / "c.jpg").read_bytes()
    (image_folder / "dogs" / "broken.jpg").write_bytes(corrupt_body(good))
    (image_folder / "dogs" / "notes.jpg").write_text("this is text, not a JPEG")
    unchecked = data.from_directory(str(image_folder), image_size=16, batch_size=16,
                                    verify_files=False)
    assert unchecked.cardinality_examples is None and sum(len(y) for _, y in unchecked) == 5
    stderr = capfd.readouterr().err
    assert "broken.jpg" in stderr and "notes.jpg" in stderr and "2 dropped in this pass" in stderr
    # Training decodes only a random crop of a JPEG, which may miss the broken part: text only.
    os.remove(image_folder / "dogs" / "broken.jpg")
    unchecked = data.from_directory(str(image_folder), image_size=16, batch_size=16,
                                    training=True, drop_remainder=False, verify_files=False)
    assert sum(len(y) for _, y in unchecked) == 5
    stderr = capfd.readouterr().err
    assert "notes.jpg" in stderr and "1 dropped in this pass" in stderr
    with pytest.warns(UserWarning, match="notes.jpg"):
        dataset = data.from_directory(str(image_folder), image_size=16, batch_size=2)
    assert int(dataset.cardinality()) == 3
    (image_folder / "cats" / "c.jpg").write_bytes(corrupt_body(good))  # breaks after the scan
    with pytest.raises(tf.errors.OpError, match="expected to contain 5"):
        list(dataset)
    assert "c.jpg" in capfd.readouterr().err


def test_symlink_loops_are_not_followed(tmp_path):
    root = tmp_path / "data"
    for name, size in {"cats/a.png": 20, "cats/deep/b.png": 24, "dogs/c.png": 28}.items():
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        Image.fromarray(smooth_image(size, size, size)).save(root / name)
    os.symlink("..", root / "cats" / "deep" / "up")  # cats/deep/up -> cats: a loop
    os.symlink(tmp_path, root / "cats" / "above")  # contains the whole dataset
    os.symlink("../dogs", root / "cats" / "dogs_too")  # another class's folder
    os.makedirs(tmp_path / "outside")
    Image.fromarray(smooth_image(16, 16, 3)).save(tmp_path / "outside" / "d.png")
    os.symlink(tmp_path / "outside", root / "dogs" / "linked")  # a plain link: followed once
    os.symlink(tmp_path / "outside", root / "dogs" / "linked_again")
    os.symlink(root / "cats" / "a.png", root / "dogs" / "a_link.png")  # a file: followed
    with pytest.warns(UserWarning, match="did not enter 4 folders") as record:
        dataset = data.from_directory(str(root), image_size=8, batch_size=16)
    message = str(record[0].message)
    for skipped in ("cats/deep/up", "cats/above", "cats/dogs_too", "dogs/linked_again"):
        assert str(root / skipped) + "'" in message
    names = sorted(os.path.relpath(f, root) for f in dataset.file_paths)
    assert names == ["cats/a.png", "cats/deep/b.png", "dogs/a_link.png", "dogs/c.png",
                     "dogs/linked/d.png"]
    assert sum(len(y) for _, y in dataset) == 5 and dataset.cardinality_examples == 5


def test_empty_class_folder_stays_a_class_with_a_warning(image_folder):
    os.makedirs(image_folder / "birds")
    os.makedirs(image_folder / "fish")
    (image_folder / "fish" / "notes.txt").write_text("no photos yet")
    with pytest.warns(UserWarning, match=r"2 class folders have no readable image: \['birds', 'fish'\]"):
        dataset = data.from_directory(str(image_folder), image_size=8, batch_size=8)
    assert dataset.class_names == ["birds", "cats", "dogs", "fish"] and dataset.num_classes == 4
    [(_, labels)] = batches(dataset)
    np.testing.assert_array_equal(labels, np.eye(4)[[1, 1, 1, 2, 2]])


def labels_by_file(dataset):
    labels = np.concatenate([y for _, y in dataset])
    return {os.path.basename(f): int(np.argmax(y)) for f, y in zip(dataset.file_paths, labels)}


def test_class_names_match_folders_by_name(image_folder):
    train_names = ["ants", "cats", "dogs"]
    reordered = data.from_directory(str(image_folder), image_size=8, class_names=["dogs", "cats"])
    assert reordered.class_names == ["dogs", "cats"]
    assert labels_by_file(reordered) == {"a.png": 1, "b.png": 1, "c.jpg": 1, "d.jpg": 0, "e.jpeg": 0}
    subset = data.from_directory(str(image_folder), image_size=8, class_names=train_names)
    assert subset.class_names == train_names and subset.num_classes == 3
    assert {y.shape[-1] for _, y in subset} == {3}  # one-hot depth: the model's classes
    assert labels_by_file(subset) == {"a.png": 1, "b.png": 1, "c.jpg": 1, "d.jpg": 2, "e.jpeg": 2}
    with pytest.raises(ValueError, match=r"\['cats', 'dogs'\].*\['horses', 'zebras'\]"):
        data.from_directory(str(image_folder), image_size=8, class_names=["horses", "zebras"])
    with pytest.raises(ValueError, match=r"\['dogs'\] that are not in class_names"):
        data.from_directory(str(image_folder), image_size=8, class_names=["cats"])
    with pytest.raises(ValueError, match="more than once"):
        data.from_directory(str(image_folder), image_size=8, class_names=["cats", "dogs", "cats"])
    with pytest.raises(ValueError, match="list of strings"):
        data.from_directory(str(image_folder), image_size=8, class_names="cats")


def test_bad_batch_size_and_unknown_options_fail_before_reading(image_folder):
    images, labels = random_images(4, 8), np.zeros(4, int)
    for batch_size in (0, -2, 2.0, True, None):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            data.from_directory(str(image_folder), image_size=8, batch_size=batch_size)
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            data.from_arrays(images, labels, batch_size=batch_size)
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            data.from_tfds("cifar10", batch_size=batch_size)
    with pytest.raises(TypeError, match="'flipp'.*did you mean 'flip'"):
        data.from_arrays(images, labels, flipp=False)
    with pytest.raises(TypeError, match="'crop_area'"):
        data.from_directory(str(image_folder), image_size=8, crop_area=(0.5, 1.0))


def test_folder_formats_follow_image_extensions(image_folder):
    """Every listed format is read, WebP with alpha too; what TensorFlow cannot decode, or decodes
    differently from Pillow, is skipped with its reason."""
    pixels = smooth_image(40, 40, 7)
    Image.fromarray(pixels).save(image_folder / "cats" / "photo.webp", lossless=True)
    Image.fromarray(pixels).save(image_folder / "cats" / "photo.bmp")
    Image.fromarray(pixels).quantize(16).save(image_folder / "cats" / "palette.gif")
    Image.fromarray(np.dstack([pixels, pixels[..., 0]]), "RGBA").save(
        image_folder / "dogs" / "alpha.webp", lossless=True)
    Image.fromarray(pixels).save(image_folder / "dogs" / "animated.webp", save_all=True,
                                 append_images=[Image.fromarray(pixels[::-1])], lossless=True)
    Image.fromarray(pixels).quantize(16).save(image_folder / "dogs" / "palette.bmp")
    with pytest.warns(UserWarning, match="skipped 2 image files") as record:
        dataset = data.from_directory(str(image_folder), image_size=8, batch_size=16)
    message = str(record[0].message)
    assert "animated.webp (animated WebP is not supported)" in message
    assert "palette.bmp (TensorFlow and Pillow decode it differently" in message
    added = ["photo.webp", "photo.bmp", "palette.gif", "alpha.webp"]
    assert set(added) <= {os.path.basename(f) for f in dataset.file_paths}
    [(images, _)] = batches(dataset)
    assert len(images) == 9
    for image, path in zip(images, dataset.file_paths):
        if os.path.basename(path) in added:
            reference = load_image(path, 8).astype("float32")
            assert np.abs(image - reference).max() <= 2.0, path
    for training in (False, True):  # the animated WebP fails safely in the pipeline too
        unchecked = data.from_directory(str(image_folder), image_size=8, batch_size=16,
                                        training=training, drop_remainder=False,
                                        verify_files=False)
        assert sum(len(y) for _, y in unchecked) == 10  # the palette BMP decodes, wrongly


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



def erased_masks(images, fill):
    """Where `images` (filled with `fill`, a value the noise never takes) were erased."""
    return np.any(images != fill, axis=-1)


def test_random_erasing_erases_one_rectangle_within_timms_bounds():
    fill = -1000.0
    images = np.full((64, 64, 64, 3), fill, "float32")
    masks = erased_masks(data.erase_random_rectangles(images, [3, 7], 1.0).numpy(), fill)
    for mask in masks:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert rows.size and cols.size, "probability 1 erased nothing"
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert mask.sum() == height * width  # one solid rectangle
        assert height < 64 and width < 64
        # Area 2%-1/3 of 64x64 before rounding each side to the nearest pixel: by hand, the
        # rounded rectangle holds 1.7%-34% of the image and its aspect ratio is within 0.25-4.
        assert 0.017 <= mask.mean() <= 0.34, mask.mean()
        assert 0.25 <= height / width <= 4.0


def test_random_erasing_probability_and_noise_statistics():
    fill = -1000.0
    images = np.full((400, 32, 32, 3), fill, "float32")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.1, 0.3)
    erased = data.erase_random_rectangles(images, [1, 2], 0.25, mean, std).numpy()
    masks = erased_masks(erased, fill)
    # 400 Bernoulli(0.25) draws: 0.25 +- 4.6 standard deviations (0.0217 each).
    assert 0.15 <= masks.any(axis=(1, 2)).mean() <= 0.35
    noise = erased[masks]  # (pixels, 3), every channel of an erased pixel is noise
    assert noise.shape[0] > 10_000
    np.testing.assert_allclose(noise.mean(0), 255 * np.array(mean), atol=3)
    np.testing.assert_allclose(noise.std(0), 255 * np.array(std), rtol=0.05)
    untouched = data.erase_random_rectangles(images, [1, 2], 0.0).numpy()
    np.testing.assert_array_equal(untouched, images)


def test_pipeline_random_erasing_changes_only_the_erased_rectangle():
    images, labels = random_images(8, 16, seed=3), np.arange(8) % 2
    options = dict(batch_size=8, training=True, seed=4, crop_area_range=(1.0, 1.0))
    [(plain, plain_labels)] = batches(data.from_arrays(images, labels, **options))
    [(same, _)] = batches(data.from_arrays(images, labels, random_erasing=0.0, **options))
    np.testing.assert_array_equal(same, plain)  # probability 0 is the pipeline without it
    [(erased, erased_labels)] = batches(data.from_arrays(images, labels, random_erasing=1.0,
                                                         **options))
    np.testing.assert_array_equal(erased_labels, plain_labels)
    changed = np.any(erased != plain, axis=-1)
    assert changed.any(axis=(1, 2)).all()  # every image: the same crops, one erased rectangle
    for mask in changed:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        # Noise equal to the pixel is unlikely; allow a pixel or two of the rectangle to match.
        assert mask.sum() >= (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) - 2


def test_repeated_augmentation_keeps_the_epoch_and_repeats_a_third():
    n = 12
    images, labels = random_images(n, 16, seed=5), np.arange(n)  # label i = image i
    names = [str(i) for i in range(n)]
    dataset = data.from_arrays(images, labels, batch_size=4, training=True, seed=0,
                               class_names=names, repeated_augmentations=3)
    assert int(dataset.cardinality()) == 3  # 12 examples a epoch, as without it
    seen = []
    for _ in range(2):
        epoch = batches(dataset)
        ids = np.concatenate([y.argmax(1) for _, y in epoch])
        pixels = np.concatenate([x for x, _ in epoch])
        assert len(ids) == n
        counts = np.bincount(ids, minlength=n)
        assert sorted(counts[counts > 0]) == [3, 3, 3, 3]  # 4 images, each 3 times
        for i in np.flatnonzero(counts):  # each copy with its own crop and flip
            copies = pixels[ids == i]
            assert not np.allclose(copies[0], copies[1]) or not np.allclose(copies[1], copies[2])
        seen.append(set(np.flatnonzero(counts)))
    assert seen[0] != seen[1]  # another third next epoch

    odd = data.from_arrays(images[:10], labels[:10], batch_size=5, training=True, seed=1,
                           class_names=names, repeated_augmentations=3)
    ids = np.concatenate([y.argmax(1) for _, y in batches(odd)])
    assert int(odd.cardinality()) == 2 and len(ids) == 10
    assert sorted(np.bincount(ids)[np.bincount(ids) > 0]) == [1, 3, 3, 3]  # ceil(10/3) = 4, cut to 10


def test_repeated_augmentation_in_folders_counts_and_needs_the_count(image_folder):
    dataset = data.from_directory(str(image_folder), image_size=8, batch_size=5, training=True,
                                  seed=0, repeated_augmentations=2)
    assert int(dataset.cardinality()) == 1
    [(x, y)] = batches(dataset)  # ceil(5 / 2) = 3 files, twice each, cut to 5
    assert x.shape == (5, 8, 8, 3)
    with pytest.raises(ValueError, match="repeated_augmentations=2.*verify_files=True"):
        data.from_directory(str(image_folder), image_size=8, batch_size=5, training=True,
                            verify_files=False, repeated_augmentations=2)


@pytest.mark.parametrize("key,value", [("random_erasing", 1.5), ("random_erasing", -0.1),
                                       ("random_erasing", True), ("repeated_augmentations", 0),
                                       ("repeated_augmentations", 2.5),
                                       ("erasing_mean_std", (0.5, 0.0)),
                                       ("erasing_mean_std", (124.0, 58.0)),  # 0-255 scale
                                       ("erasing_mean_std", "imagenet")])
def test_erasing_and_repetition_options_are_checked(key, value):
    with pytest.raises(ValueError, match=key):
        data.from_arrays(random_images(4, 8), np.arange(4) % 2, training=True, **{key: value})


def test_repeated_augmentation_from_tfds_keeps_the_split_length(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10):
        train = data.from_tfds("cifar10", "train", image_size=16, batch_size=5, training=True,
                               data_dir=str(tmp_path), seed=0, repeated_augmentations=3,
                               random_erasing=0.5)
        out = batches(train)
    # 10 examples a epoch, as without it (TFDS drops what fails to decode: count unknown).
    assert [x.shape for x, _ in out] == [(5, 16, 16, 3)] * 2
