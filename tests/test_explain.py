"""keras_vit.explain: rollout, attention distance, similarity and PCA against hand-computed values;
the attention probe against a NumPy softmax(q k^T / sqrt(d)); pictures and the CLI; real DeiT-Tiny."""

import glob
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO, SHARED_DATA, TINY, random_images, randomize_weights
from test_export import assert_cli_error, assert_usage_error
from PIL import Image

import keras_vit
from keras_vit import explain
from keras_vit.images import load_image

# ----------------------------------------------------------------------------------------------
# Rollout on constructed attention (2x2 grid, one class token: T = 5)


def concentrated(tokens, key):
    """Every query attends only to token `key`."""
    attention = np.zeros((tokens, tokens))
    attention[:, key] = 1.0
    return attention


def test_rollout_of_uniform_attention_is_uniform():
    heat = explain.rollout(np.full((3, 2, 5, 5), 0.2), (2, 2))
    # One layer: ((A + I) / 2)[0] = [0.6, 0.1, 0.1, 0.1, 0.1]; more layers keep the patches equal.
    np.testing.assert_allclose(heat, np.full((2, 2), heat[0, 0]))
    np.testing.assert_allclose(explain.rollout(np.full((1, 2, 5, 5), 0.2), (2, 2)), np.full((2, 2), 0.1))


def test_rollout_of_identity_attention():
    identity = np.broadcast_to(np.eye(5), (2, 1, 5, 5))
    # The class token only ever sees itself: nothing flows from the patches.
    np.testing.assert_allclose(explain.rollout(identity, (2, 2)), np.zeros((2, 2)))
    # Averaging the patch rows instead (GAP models): each patch sees itself -> uniform 1/4.
    np.testing.assert_allclose(explain.rollout(identity, (2, 2), from_class_token=False),
                               np.full((2, 2), 0.25))


def test_rollout_lights_the_patch_everyone_attends_to():
    attention = concentrated(5, key=1 + 3)  # patch (1, 1) of the 2x2 grid
    one = explain.rollout(attention[None, None], (2, 2))
    np.testing.assert_allclose(one, [[0, 0], [0, 0.5]])  # (A + I) / 2, class row
    # Two layers: 0.5 * row_0 + 0.5 * row_patch = 0.25 e_cls + 0.75 e_patch.
    two = explain.rollout(np.stack([attention[None]] * 2), (2, 2))
    np.testing.assert_allclose(two, [[0, 0], [0, 0.75]])


def test_rollout_head_fusion_by_hand():
    heads = np.stack([np.eye(5), concentrated(5, key=2)])[None]  # head 0: identity, 1: patch (0, 1)
    expected = {"mean": 0.25, "max": 1 / 3, "min": 0.0}
    # mean: row 0 = [.5, 0, .5, 0, 0] -> (+I)/2 = [.75, 0, .25, 0, 0].
    # max: row 0 = [1, 0, 1, 0, 0] -> (+I)/2 = [1, 0, .5, 0, 0] -> /1.5.   min: row 0 = 0 -> [1, 0...].
    for fusion, value in expected.items():
        np.testing.assert_allclose(explain.rollout(heads, (2, 2), head_fusion=fusion),
                                   [[0, value], [0, 0]], atol=1e-12, err_msg=fusion)


def test_rollout_discard_ratio_by_hand():
    attention = np.eye(5)
    attention[0] = [0.05, 0.5, 0.2, 0.15, 0.1]
    # 25 entries, 16 zeros; 72% = 18 lowest -> the zeros, 0.05 and 0.1 go. Row 0 becomes
    # [0, .5, .2, .15, 0] -> (+I)/2 = [.5, .25, .1, .075, 0] -> / 0.925.
    heat = explain.rollout(attention[None, None], (2, 2), discard_ratio=0.72)
    np.testing.assert_allclose(heat, np.array([[0.25, 0.1], [0.075, 0]]) / 0.925)
    plain = explain.rollout(attention[None, None], (2, 2))
    np.testing.assert_allclose(plain, [[0.25, 0.1], [0.075, 0.05]])


def test_rollout_skips_register_tokens_on_a_rectangular_grid():
    # GAP model without class token, 2 registers, a 2x3 grid: T = 2 + 6. All attend to patch (1, 2).
    attention = concentrated(8, key=2 + 1 * 3 + 2)
    heat = explain.rollout(attention[None, None], (2, 3), num_prefix_tokens=2, from_class_token=False)
    expected = np.full((2, 3), 0.5 / 6)  # (A + I) / 2: each patch row keeps half on itself ...
    expected[1, 2] += 0.5  # ... and gives half to patch (1, 2)
    np.testing.assert_allclose(heat, expected)


def test_rollout_batch_and_bad_input():
    batch = np.stack([np.full((1, 2, 5, 5), 0.2), np.broadcast_to(concentrated(5, 4), (1, 2, 5, 5))],
                     axis=1)
    heat = explain.rollout(batch, (2, 2))
    np.testing.assert_allclose(heat[0], np.full((2, 2), 0.1))
    np.testing.assert_allclose(heat[1], [[0, 0], [0, 0.5]])
    with pytest.raises(ValueError, match=r"\(layers, \[batch,\] heads, 10, 10\)"):
        explain.rollout(np.ones((1, 1, 5, 5)), (3, 3))
    with pytest.raises(ValueError, match="head_fusion"):
        explain.rollout(np.ones((1, 1, 5, 5)) / 5, (2, 2), head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        explain.rollout(np.ones((1, 1, 5, 5)) / 5, (2, 2), discard_ratio=1.0)


# ----------------------------------------------------------------------------------------------
# Mean attention distance, cosine similarity, PCA


def test_attention_distance_to_the_right_neighbour_is_the_patch_width():
    grid, patch = (3, 4), (16, 8)
    tokens = 1 + 12
    attention = np.zeros((tokens, tokens))
    attention[0, 0] = 1.0
    for q in range(12):
        row, col = divmod(q, 4)
        neighbour = row * 4 + (col + 1 if col < 3 else col - 1)  # the last column looks left
        # Half of the attention goes to the class token: dropped and re-normalised away.
        attention[1 + q, 0] = 0.5
        attention[1 + q, 1 + neighbour] = 0.5
    distance = explain.attention_distance(attention[None, None], grid, patch)
    np.testing.assert_allclose(distance, [[8.0]])


def test_attention_distance_of_uniform_attention_on_2x2():
    # From any corner of a 2x2 grid of 16 px patches: 0, 16, 16, 16*sqrt(2) px, each 1/4.
    attention = np.full((2, 3, 2, 5, 5), 0.2)  # layers, batch, heads
    distance = explain.attention_distance(attention, (2, 2), (16, 16))
    np.testing.assert_allclose(distance, np.full((2, 2), 16 * (2 + math.sqrt(2)) / 4))


def test_cosine_similarity_grid_by_hand():
    grid = np.array([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 3.0], [-1.0, 0.0]]])  # (2, 2, 2)
    sim = explain.cosine_similarity_grid(grid)
    assert sim.shape == (2, 2, 2, 2)
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(sim[0, 0], [[1, 0], [r, -1]], atol=1e-12)
    np.testing.assert_allclose(sim[1, 0], [[r, r], [1, -r]], atol=1e-12)


def test_position_embedding_similarity_leaves_the_class_entry_out():
    model = keras_vit.ViT(**{**TINY, "image_size": (8, 12)})  # a 2x3 grid
    vectors = np.zeros((1, 1 + 6, TINY["hidden_size"]), "float32")
    vectors[0, 0, :] = 5.0  # class entry: would correlate with everything if it leaked in
    for index in range(6):
        vectors[0, 1 + index, index] = 1.0  # orthogonal ...
    vectors[0, 1 + 5, 0] = 1.0  # ... except patch (1, 2) = e5 + e0, at 45 degrees to patch (0, 0)
    model.get_layer("position_embedding").embedding.assign(vectors)
    sim = explain.position_embedding_similarity(model)
    expected = np.zeros((2, 3))
    expected[0, 0], expected[1, 2] = 1.0, 1 / math.sqrt(2)
    assert sim.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(sim[0, 0], expected, atol=1e-6)


def test_principal_components_recover_a_known_subspace():
    rng = np.random.default_rng(0)
    u, v = np.linalg.qr(rng.normal(size=(48, 2)))[0].T  # orthonormal directions in 4*4*3 pixels
    a, b = rng.normal(0, 3.0, 64), rng.normal(0, 1.0, 64)  # var(a) > var(b)
    a, b = a - a.mean(), b - b.mean()
    b -= (b @ a) / (a @ a) * a  # uncorrelated samples, so the principal axes are exactly u and v
    filters = a[:, None] * u + b[:, None] * v + 0.7 * u  # 64 filters; the offset is centred away
    kernel = filters.T.reshape(4, 4, 3, 64)
    components, ratio = explain.principal_components(kernel, 2)
    assert components.shape == (2, 4, 4, 3)
    assert abs(components[0].ravel() @ u) == pytest.approx(1.0, abs=1e-9)
    assert abs(components[1].ravel() @ v) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(ratio.sum(), 1.0)
    assert ratio[0] > ratio[1]
    with pytest.raises(ValueError, match=r"\[1, 48\]"):
        explain.principal_components(kernel, 49)


# ----------------------------------------------------------------------------------------------
# The attention probe on a model


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_first_block_attention(model, images):
    """Block 0's attention weights from the model's variables, in NumPy, from the pixels on."""
    w = {v.path: np.asarray(v.numpy(), "float64") for v in model.weights}
    (ph, pw), (gh, gw) = model.patch_size, model.grid_size
    dim, heads = model.hidden_size, model.num_heads
    x = images.astype("float64") / 127.5 - 1.0  # Google normalisation: [0, 255] -> [-1, 1]
    patches = x.reshape(len(x), gh, ph, gw, pw, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(len(x), gh * gw, ph * pw * 3)
    tokens = patches @ w["patch_embedding/projection/kernel"].reshape(-1, dim)
    tokens += w["patch_embedding/projection/bias"]
    cls = np.broadcast_to(w["class_token/token"], (len(x), 1, dim))
    tokens = np.concatenate([cls, tokens], axis=1) + w["position_embedding/embedding"]
    mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
    y = (tokens - mean) / np.sqrt(var + 1e-6) * w["encoderblock_0/norm1/gamma"]
    y += w["encoderblock_0/norm1/beta"]
    qkv = y @ w["encoderblock_0/attention/qkv/kernel"] + w["encoderblock_0/attention/qkv/bias"]
    q, k = (qkv[..., i * dim:(i + 1) * dim].reshape(len(x), -1, heads, dim // heads) for i in (0, 1))
    return np_softmax(np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim // heads))


@pytest.fixture
def rectangular_model():
    return randomize_weights(keras_vit.ViT(**{**TINY, "image_size": (32, 48)}), scale=0.1)


def test_probe_matches_numpy_attention_and_leaves_the_model_alone(rectangular_model, tmp_path):
    model = rectangular_model
    images = random_images(2, (32, 48))
    before = model.predict(images, verbose=0)
    maps = explain.attention_maps(model, images)
    tokens = 1 + 8 * 12
    assert maps.shape == (2, 2, 4, tokens, tokens)  # layers, batch, heads, T, T
    np.testing.assert_allclose(maps[0], np_first_block_attention(model, images), atol=2e-5)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert explain.attention_probe(model) is explain.attention_probe(model)  # cached
    # Same weights, same predictions, and the model still saves and reloads as before.
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)
    assert {id(v) for v in explain.attention_probe(model).weights} <= {id(v) for v in model.weights}
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), before, atol=1e-6)
    np.testing.assert_allclose(explain.attention_maps(reloaded, images), maps, atol=1e-6)


def test_model_level_functions_on_a_rectangular_model(rectangular_model, tmp_path):
    model, image = rectangular_model, random_images(1, (32, 48))[0]
    maps = explain.attention_maps(model, image)
    assert maps.shape == (2, 4, 97, 97)  # one image: no batch axis
    heat = explain.attention_rollout(model, image, head_fusion="max", discard_ratio=0.5)
    np.testing.assert_allclose(heat, explain.rollout(maps, (8, 12), 1, "max", 0.5))
    heads = explain.head_attention_maps(model, image, layer=0)
    assert heads.shape == (4, 8, 12)
    # The class token's row (query 0) over the patch columns: patch (3, 5) is token 1 + 3 * 12 + 5,
    # and the row's rest (what the class token gives itself) is left out, so a head sums to 1 - that.
    np.testing.assert_allclose(heads[:, 3, 5], maps[0, :, 0, 42])
    np.testing.assert_allclose(heads.sum(axis=(1, 2)), 1.0 - maps[0, :, 0, 0], atol=1e-6)
    assert explain.mean_attention_distance(model, image[None]).shape == (2, 4)
    assert explain.position_embedding_similarity(model).shape == (8, 12, 8, 12)
    # A file path is read with the model's own size; a wrong size is an error, not a resize.
    Image.fromarray(random_images(1, (40, 60))[0]).save(tmp_path / "photo.png")
    assert explain.attention_rollout(model, tmp_path / "photo.png").shape == (8, 12)
    with pytest.raises(ValueError, match=r"\(32, 48, 3\).*\(1, 32, 32, 3\)"):
        explain.attention_maps(model, random_images(1, 32))
    with pytest.raises(ValueError, match="layer 2 does not exist"):
        explain.head_attention_maps(model, image, layer=2)


def test_gap_model_with_registers():
    model = randomize_weights(keras_vit.ViT(**TINY, pooling="gap", class_token=False,
                                            num_registers=2))
    image = random_images(1, 32)[0]
    maps = explain.attention_maps(model, image)
    assert maps.shape == (2, 4, 2 + 64, 2 + 64)
    np.testing.assert_allclose(explain.attention_rollout(model, image),
                               explain.rollout(maps, (8, 8), 2, from_class_token=False))
    heads = explain.head_attention_maps(model, image)
    # No class token: the mean over the 64 patch queries of the last block. Patch (2, 7) is token
    # 2 + 2 * 8 + 7 = 25 (after the 2 registers).
    np.testing.assert_allclose(heads[:, 2, 7], sum(maps[-1, :, q, 25] for q in range(2, 66)) / 64,
                               rtol=1e-6)


def test_plots_write_pngs(rectangular_model, tmp_path):
    model, image = rectangular_model, random_images(1, (32, 48))[0]
    written = [
        explain.plot_rollout(model, image, tmp_path / "a" / "rollout.png"),
        explain.plot_attention_heads(model, image, tmp_path / "heads.png", layer=0),
        explain.plot_attention_distances(model, image, tmp_path / "distances.png"),
        explain.plot_position_similarity(model, tmp_path / "similarity.png"),
        explain.plot_patch_filters(model, tmp_path / "filters.png", num_components=7),
    ]
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) > 100


def test_filters_of_a_small_kernel_warn_and_show_what_exists(tmp_path):
    model = keras_vit.ViT(**{**TINY, "image_size": 8, "patch_size": 2})  # 2*2*3 = 12 per filter
    with pytest.warns(UserWarning, match="Showing 12 filter components instead of 28"):
        explain.plot_patch_filters(model, tmp_path / "filters.png")
    with pytest.raises(ValueError, match=r"num_components must be in \[1, 12\]"):
        explain.plot_patch_filters(model, tmp_path / "filters.png", num_components=13)


def test_cli_explain_writes_the_pngs(tmp_path, capsys):
    model = randomize_weights(keras_vit.ViT(**TINY))
    model.save(tmp_path / "tiny.keras")
    Image.fromarray(random_images(1, 40)[0]).save(tmp_path / "photo.png")
    output = tmp_path / "explain"
    code = keras_vit.cli.main(["explain", str(tmp_path / "tiny.keras"), str(tmp_path / "photo.png"),
                               "--output", str(output), "--layer", "0", "--head-fusion", "min",
                               "--discard-ratio", "0.5"])
    assert code == 0
    names = ["rollout.png", "heads.png", "distances.png", "position_similarity.png", "filters.png"]
    printed = capsys.readouterr().out.split()
    assert printed == [str(output / name) for name in names]
    for name in names:
        with Image.open(output / name) as picture:
            assert picture.format == "PNG"


def test_cli_explain_errors_are_one_line(tmp_path, capsys):
    model = str(tmp_path / "tiny.keras")
    randomize_weights(keras_vit.ViT(**TINY)).save(model)
    photo = str(tmp_path / "photo.png")
    Image.fromarray(random_images(1, 40)[0]).save(photo)
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "junk.keras").write_text("not a zip")
    (tmp_path / "file").write_text("x")
    dense = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    dense.save(tmp_path / "dense.keras")
    out = ["--output", str(tmp_path / "out")]
    assert_usage_error(capsys, ["explain", model, photo, "--head-fusion", "median"], "'median'")
    assert_usage_error(capsys, ["explain", model, photo, "--layer", "last"], "invalid int value")
    for argv, pattern in [
        (["explain", model, str(tmp_path / "missing.png"), *out], "missing.png"),
        (["explain", model, photo, str(tmp_path / "notes.png"), *out], "notes.png.* not a readable image"),
        (["explain", str(tmp_path / "missing.keras"), photo, *out], "No model at .*missing.keras"),
        (["explain", str(tmp_path / "junk.keras"), photo, *out], "junk.keras"),
        (["explain", str(tmp_path / "file"), photo, *out], "not a checkpoint"),
        (["explain", str(tmp_path / "dense.keras"), photo, *out], "needs a keras_vit VisionTransformer"),
        (["explain", model, photo, "--layer", "2", *out], r"layer 2 does not exist: the model has 2 blocks"),
        (["explain", model, photo, "--layer", "-3", *out], "layer -3 does not exist"),
        (["explain", model, photo, "--discard-ratio", "1", *out],
         r"--discard-ratio must be in \[0, 1\), got 1.0"),
        (["explain", model, photo, "--discard-ratio", "-0.1", *out], "got -0.1"),
        (["explain", model, photo, "--discard-ratio", "nan", *out], "got nan"),
        (["explain", model, photo, "--output", str(tmp_path / "file")], "is a file"),
    ]:
        assert_cli_error(capsys, argv, pattern)
    assert not os.path.exists(tmp_path / "out")


def test_pictures_replace_old_ones_whole(rectangular_model, tmp_path, monkeypatch):
    path = tmp_path / "filters.png"
    path.write_bytes(b"the previous picture")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        explain.plot_position_similarity(rectangular_model, path)
    assert path.read_bytes() == b"the previous picture" and os.listdir(tmp_path) == ["filters.png"]
    monkeypatch.undo()
    explain.plot_position_similarity(rectangular_model, path)
    with Image.open(path) as picture:
        assert picture.format == "PNG"
    assert os.listdir(tmp_path) == ["filters.png"]


def test_explain_reads_files_with_load_image(tmp_path):
    # One decode path: a 16-bit grey PNG gives explain the pixels images.load_image gives.
    model = randomize_weights(keras_vit.ViT(**TINY), scale=0.1)
    path = str(tmp_path / "grey16.png")
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) * 34).astype("uint16")).save(path)
    np.testing.assert_array_equal(explain.attention_maps(model, path),
                                  explain.attention_maps(model, load_image(path, 32)))


@pytest.mark.slow
def test_jax_backend():
    script = (
        "import numpy as np, keras, keras_vit\n"
        "from keras_vit import explain\n"
        "assert keras.backend.backend() == 'jax'\n"
        "m = keras_vit.ViT(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2,"
        " mlp_dim=64, num_classes=3)\n"
        "maps = explain.attention_maps(m, np.zeros((16, 16, 3), 'uint8'))\n"
        "assert maps.shape == (2, 2, 17, 17), maps.shape\n"
        "np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)\n"
        "assert explain.attention_rollout(m, np.zeros((2, 16, 16, 3))).shape == (2, 4, 4)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# Real DeiT-Tiny weights


@pytest.fixture(scope="module")
def deit():
    path = os.path.join(SHARED_DATA, "deit_tiny_patch16_224", "model.safetensors")
    if not os.path.isfile(path):
        pytest.skip(f"DeiT-Tiny weights {path} are absent (they exist only on the project's machines)")
    return keras_vit.load_pretrained(path)


@pytest.mark.real_data
def test_deit_attention_distance_grows_with_depth(shared_data, deit):
    paths = sorted(glob.glob(os.path.join(shared_data, "imagenet20", "*.jpg")))[:8]
    distance = explain.mean_attention_distance(deit, paths)
    assert distance.shape == (12, 3)
    # Measured: first 3 blocks 52.6 px, last 3 blocks 109.8 px (8 images).
    assert distance[-3:].mean() > distance[:3].mean() + 30
    assert distance.max() < 224 * math.sqrt(2)


@pytest.mark.real_data
def test_deit_position_embeddings_know_their_neighbours(deit):
    sim = explain.position_embedding_similarity(deit).reshape(196, 196)
    rows, cols = np.divmod(np.arange(196), 14)
    distance = np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
    # Measured: 4-neighbours 0.93 on average, patches 7+ apart -0.20.
    assert sim[distance == 1].mean() > sim[distance >= 7].mean() + 0.5
    # Measured: for all 196 patches, the most similar other patch is a 4-neighbour.
    best_is_neighbour = [sim[i][distance[i] == 1].max() >= sim[i][distance[i] > 1].max()
                         for i in range(196)]
    assert np.mean(best_is_neighbour) >= 0.95


@pytest.mark.real_data
def test_deit_rollout_on_a_centred_object(shared_data, deit):
    # coffee.png: an espresso cup in the middle of a table. With jacobgil's discard_ratio=0.9 the
    # rollout per patch is 2.7x higher in the central 6x6 patches than on the outer ring (measured;
    # 0.95x without discarding: DeiT-Tiny's class token also draws on a few background patches).
    heat = explain.attention_rollout(deit, os.path.join(shared_data, "images", "coffee.png"),
                                     discard_ratio=0.9)
    ring = np.ones((14, 14), bool)
    ring[1:-1, 1:-1] = False
    assert heat[4:10, 4:10].mean() > 1.5 * heat[ring].mean()
