"""Loading the families beside the plain ViT, against independent PyTorch references:

* hybrids: transformers' BitBackbone (bottleneck units, TF "SAME" padding: the vit_jax ResNet) feeding
  a transformers ViT whose patch convolution runs on the feature map, written as the official .npz
  (vit_jax numerics, so the reference is test_resnet's vit_jax-patched BiT) and as timm's hub layout;
* DeiT: transformers' DeiTForImageClassificationWithTeacher / DeiTForImageClassification, saved by
  `save_pretrained`, as transformers 5 names the modules in memory, and as timm's distilled layout.

Every tensor of every reference is perturbed from its initialisation. The files are written by this
test's own conversion code (from the formats' documentation), and load with `load_pretrained(path)`
alone."""

import json
import logging
import os
import re

import keras
import numpy as np
import pytest
from conftest import random_images
from test_resnet import official_layouts, reference, reference_state, with_vit_jax_numerics
from test_weights import DEPTH, HEADS, HIDDEN, TOLERANCE, google_from_hf, posemb, timm_from_hf, write_timm

import keras_vit
from keras_vit import resnet as R
from keras_vit.weights import downloads
from keras_vit.weights.formats import timm as timm_format

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
MLP, CLASSES = 128, 10


def perturb(model, seed):
    """Every parameter random (the zero-initialised classifiers and tokens too); norms around 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            if "layernorm" in name and name.endswith("weight"):
                parameter.add_(1.0)
    return model.eval()


def pixels(images, mean=0.5, std=0.5):
    """[0, 255] NHWC -> normalised NCHW, as the checkpoint's preprocessing does."""
    x = (images.astype("float32") / 255.0 - np.asarray(mean, "float32")) / np.asarray(std, "float32")
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def predict(model, images):
    return model.predict(images, verbose=0)


def head_outputs(model, images):
    """The class head's and the distillation head's logits of a distilled keras_vit model."""
    heads = keras.Model(model.input, [model.get_layer("head").output,
                                      model.get_layer("head_dist").output])
    return [keras.ops.convert_to_numpy(out) for out in heads(images)]


# ------------------------------------------------------------------------------------------------
# Hybrids


class Hybrid:
    """The torch reference: BiT (`test_resnet.reference`) -> ViTForImageClassification on its
    feature map (num_channels = the ResNet's, patch `patch`), LayerNorm eps 1e-6 as vit_jax/timm."""

    def __init__(self, block_units, patch, image_size, seed=0):
        self.block_units, self.image_size = block_units, image_size
        self.feature_size = R.feature_map_size(image_size, block_units)
        self.bit = reference(block_units)
        config = transformers.ViTConfig(
            image_size=self.feature_size, patch_size=patch, num_channels=R.backbone_channels(block_units),
            hidden_size=HIDDEN, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
            intermediate_size=MLP, num_labels=CLASSES, layer_norm_eps=1e-6, hidden_act="gelu")
        torch.manual_seed(seed)
        self.vit = perturb(transformers.ViTForImageClassification(config), seed)

    def logits(self, images, vit_jax_numerics, vit=None):
        bit = with_vit_jax_numerics(self.bit) if vit_jax_numerics else self.bit
        with torch.no_grad():
            features = bit(pixels(images)).feature_maps[0]
            return (vit or self.vit)(pixel_values=features).logits.numpy()

    def layouts(self, folder):
        """(npz path, timm folder): the ResNet's tensors as test_resnet writes them, the ViT's as
        test_weights writes them; timm's root-only ResNet ("R") is the stem itself."""
        self.vit.save_pretrained(folder / "vit")
        vit = safetensors_numpy.load_file(str(folder / "vit" / "model.safetensors"))
        npz, timm = official_layouts(reference_state(self.block_units))
        if not self.block_units:
            timm = {k.replace("backbone.stem.", "backbone."): v for k, v in timm.items()}
        np.savez(folder / "hybrid.npz", **npz, **google_from_hf(vit))
        height, width = self.image_size
        write_timm(folder / "timm", {**timm, **timm_from_hf(vit)}, {
            "architecture": "vit_test_hybrid", "num_classes": CLASSES, "global_pool": "token",
            "model_args": {"embed_dim": HIDDEN, "depth": DEPTH, "num_heads": HEADS},
            "pretrained_cfg": {"input_size": [3, height, width], "mean": [0.5] * 3,
                               "std": [0.5] * 3, "num_classes": CLASSES}})
        return folder / "hybrid.npz", folder / "timm"


# (ResNet units, patch on the feature map, image size): R50-style stages, and AugReg's "R" (root).
HYBRIDS = {"stages": ((1, 1), 1, (64, 64)), "root": ((), 2, (32, 32))}


@pytest.fixture(scope="module", params=list(HYBRIDS))
def hybrid(request, tmp_path_factory):
    block_units, patch, size = HYBRIDS[request.param]
    reference_model = Hybrid(block_units, patch, size)
    npz, timm = reference_model.layouts(tmp_path_factory.mktemp("hybrid"))
    images = random_images(2, size, seed=3)
    return dict(reference=reference_model, npz=npz, timm=timm, images=images,
                block_units=list(block_units), patch=patch, size=size)


@pytest.mark.parametrize("layout", ["npz", "timm"])
def test_hybrid_files_load_with_the_references_logits(hybrid, layout):
    """No arguments: the ResNet's units, the patch on its feature map, the image size and the
    numerics (vit_jax's for the .npz, timm's for timm) all come from the file."""
    model = keras_vit.load_pretrained(hybrid[layout])
    numerics = R.VIT_JAX_NUMERICS if layout == "npz" else R.TIMM_NUMERICS
    assert model.backbone == dict(block_units=hybrid["block_units"], width_factor=1, **numerics)
    assert model.patch_size == (hybrid["patch"],) * 2 and model.image_size == hybrid["size"]
    # vit_jax evaluates on the whole image resized bilinearly; timm's defaults are 0.875, bicubic.
    assert (model.crop_pct, model.interpolation) == (
        (1.0, "bilinear") if layout == "npz" else (0.875, "bicubic"))
    expected = hybrid["reference"].logits(hybrid["images"], vit_jax_numerics=layout == "npz")
    # (The numerics' effect on these logits is ~1e-4, below the tolerance: the backbone config
    # above is what pins them; test_resnet shows each numerics on the feature map.)
    np.testing.assert_allclose(predict(model, hybrid["images"]), expected, atol=TOLERANCE)


def test_hybrid_resampling_uses_the_feature_map_grid(hybrid):
    """timm's antialiased bicubic on the feature map's grid (torch's own interpolate), checked
    through the whole reference at the new, rectangular size."""
    import torch.nn.functional as F

    height, width = hybrid["size"]
    size = (height, width + width // 2)
    model = keras_vit.load_pretrained(hybrid["timm"], image_size=size)
    stride = R.backbone_stride(hybrid["block_units"]) * hybrid["patch"]
    old, new = (height // stride, width // stride), (size[0] // stride, size[1] // stride)
    assert model.grid_size == new
    reference_model = hybrid["reference"]
    pos = reference_model.vit.vit.embeddings.position_embeddings.detach()
    grid = pos[:, 1:].reshape(1, *old, HIDDEN).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=True)
    resampled = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, HIDDEN)], 1)
    np.testing.assert_allclose(posemb(model), resampled.numpy(), atol=1e-5)

    config = reference_model.vit.config.to_dict()
    config["image_size"] = R.feature_map_size(size, hybrid["block_units"])
    vit = transformers.ViTForImageClassification(transformers.ViTConfig(**config)).eval()
    state = dict(reference_model.vit.state_dict(), **{"vit.embeddings.position_embeddings": resampled})
    vit.load_state_dict(state)
    images = random_images(2, size, seed=5)
    np.testing.assert_allclose(predict(model, images),
                               reference_model.logits(images, vit_jax_numerics=False, vit=vit),
                               atol=TOLERANCE)


def test_vit_weights_with_a_backbone_takes_the_files_numerics(hybrid):
    """`keras_vit.ViT(backbone=..., weights=path)` (what R50ViTB16(weights=...) runs): the units
    are checked, the numerics follow the file."""
    arguments = dict(image_size=hybrid["size"], patch_size=hybrid["patch"], hidden_size=HIDDEN,
                     num_layers=DEPTH, num_heads=HEADS, mlp_dim=MLP, num_classes=CLASSES)
    model = keras_vit.ViT(**arguments, backbone={"block_units": hybrid["block_units"]},
                          weights=str(hybrid["npz"]))
    assert model.backbone["standardization_epsilon"] == R.VIT_JAX_NUMERICS["standardization_epsilon"]
    np.testing.assert_allclose(predict(model, hybrid["images"]),
                               hybrid["reference"].logits(hybrid["images"], vit_jax_numerics=True),
                               atol=TOLERANCE)
    with pytest.raises(ValueError, match=r"backbone \{'block_units': \[1, 2, 3\].*asked, "
                                         r"\{'block_units': \[" + r"[^]]*\], 'width_factor': 1\} in "
                                         r"the checkpoint"):
        keras_vit.ViT(**arguments, backbone={"block_units": [1, 2, 3]}, weights=str(hybrid["npz"]))
    with pytest.raises(ValueError, match="backbone None asked"):
        keras_vit.ViT(**arguments, weights=str(hybrid["timm"]))


def test_hybrid_keras_file_rebuilds_at_another_size(hybrid, tmp_path):
    model = keras_vit.load_pretrained(hybrid["npz"])
    model.save(tmp_path / "hybrid.keras")
    same = keras_vit.load_pretrained(tmp_path / "hybrid.keras", image_size=hybrid["size"])
    assert same.backbone == model.backbone
    np.testing.assert_allclose(predict(same, hybrid["images"]), predict(model, hybrid["images"]),
                               atol=1e-6)
    height, width = hybrid["size"]
    larger = keras_vit.load_pretrained(tmp_path / "hybrid.keras", image_size=(2 * height, width))
    assert larger.grid_size == (2 * model.grid_size[0], model.grid_size[1])


def test_hybrid_with_rectangular_grid_needs_the_image_size(hybrid, tmp_path):
    """The .npz has no config: a grid of 4x8 feature-map patches (no square count) is found from
    the image size asked for, in pixels (patch x the ResNet's stride)."""
    with np.load(hybrid["npz"]) as data:
        tensors = {k: data[k] for k in data.files}
    tensors["Transformer/posembed_input/pos_embedding"] = np.random.default_rng(0).normal(
        size=(1, 1 + 4 * 8, HIDDEN)).astype("float32")
    np.savez(tmp_path / "rectangular.npz", **tensors)
    with pytest.raises(ValueError, match="Cannot infer the patch grid"):
        keras_vit.load_pretrained(tmp_path / "rectangular.npz")
    pixel_patch = R.backbone_stride(hybrid["block_units"]) * hybrid["patch"]
    size = (4 * pixel_patch, 8 * pixel_patch)
    model = keras_vit.load_pretrained(tmp_path / "rectangular.npz", image_size=size)
    assert model.grid_size == (4, 8) and model.image_size == size


def test_timm_hybrid_names_imply_their_architecture(hybrid, tmp_path):
    """The model names of timm's hybrid repositories (vision_transformer_hybrid.py: ResNetV2 with
    layers (3, 4, 9), (3, 4, 6, 3), (2, 2, 2, 2) or the stem alone; `_p8`: 8x8 patches)."""
    implied = {
        "vit_base_r50_s16_384": (768, 12, 1, [3, 4, 9]),
        "vit_large_r50_s32_224": (1024, 24, 1, [3, 4, 6, 3]),
        "vit_small_r26_s32_224": (384, 12, 1, [2, 2, 2, 2]),
        "vit_tiny_r_s16_p8_224": (192, 12, 8, []),
    }
    for name, (width, depth, patch, units) in implied.items():
        assert timm_format._name_implies(name) == dict(hidden_size=width, num_layers=depth,
                                                       patch_size=patch, block_units=units,
                                                       distilled=False)
    config = json.loads((hybrid["timm"] / "config.json").read_text())
    write_timm(tmp_path, safetensors_numpy.load_file(str(hybrid["timm"] / "model.safetensors")),
               dict(config, architecture="vit_base_r50_s16_224", model_args={"num_heads": HEADS}))
    with pytest.raises(ValueError, match=r"ResNet units per stage: \[3, 4, 9\] declared, "
                                         + re.escape(str(hybrid["block_units"])) + " in the tensors"):
        keras_vit.load_pretrained(tmp_path)


def test_registered_hybrids_name_their_files(monkeypatch, tmp_path):
    """The builders find their registered files (no network: the download fails, naming them)."""
    def offline(url, destination):
        raise OSError("no network in tests")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # the cache folder, never ~/.keras
    monkeypatch.setattr(downloads, "_fetch", offline)
    gcs = "https://storage.googleapis.com/vit_models/"
    with pytest.raises(ConnectionError, match=re.escape(
            gcs + "imagenet21k%2Bimagenet2012/R50%2BViT-B_16.npz")):
        keras_vit.R50ViTB16(weights="imagenet21k+imagenet2012")
    with pytest.raises(ConnectionError, match=re.escape(gcs + "imagenet21k/R50%2BViT-B_16.npz")):
        keras_vit.load_pretrained("R50+B/16:imagenet21k")
    augreg = {
        ("R+Ti/16", "augreg_in21k_ft_in1k"): "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
                                             "--imagenet2012-steps_20k-lr_0.03-res_224.npz",
        ("R26+S/32", "imagenet21k"): "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0.npz",
        ("R50+L/32", "augreg_in21k_ft_in1k_384"): "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-"
                                                  "do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz",
    }
    for (variant, name), file in augreg.items():
        with pytest.raises(ConnectionError, match=re.escape(gcs + "augreg/" + file)):
            keras_vit.load_pretrained(f"{variant}:{name}")
    with pytest.raises(ConnectionError, match="R_Ti_16-i21k"):
        keras_vit.RViTTi16(weights="augreg_in21k")
    with pytest.raises(ValueError, match="No registered weights 'imagenet1k' for R50\\+B/32"):
        keras_vit.R50ViTB32(weights="imagenet1k")


# ------------------------------------------------------------------------------------------------
# DeiT


def deit_config(**overrides):
    return transformers.DeiTConfig(image_size=32, patch_size=4, hidden_size=HIDDEN,
                                   num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                   intermediate_size=MLP, num_labels=CLASSES, **overrides)


@pytest.fixture(scope="module")
def deit(tmp_path_factory):
    """Random (perturbed) DeiT with and without teacher head (layer_norm_eps 1e-12, transformers'
    default), saved by save_pretrained (the hub's names) and with transformers 5's module names;
    the teacher also in timm's distilled layout, against a copy with timm's eps 1e-6."""
    folder = tmp_path_factory.mktemp("deit")
    teacher = perturb(transformers.DeiTForImageClassificationWithTeacher(deit_config()), 1)
    single = perturb(transformers.DeiTForImageClassification(deit_config()), 2)
    teacher.save_pretrained(folder / "teacher")
    with open(folder / "teacher" / "preprocessor_config.json", "w") as f:
        json.dump({"image_processor_type": "DeiTImageProcessor", "image_mean": IMAGENET[0],
                   "image_std": IMAGENET[1]}, f)
    os.makedirs(folder / "renamed")  # no preprocessor_config.json: DeiT's ImageNet mean/std
    safetensors_numpy.save_file({k: v.numpy() for k, v in teacher.state_dict().items()},
                                str(folder / "renamed" / "model.safetensors"))
    teacher.config.to_json_file(folder / "renamed" / "config.json")
    single.save_pretrained(folder / "single")

    saved = safetensors_numpy.load_file(str(folder / "teacher" / "model.safetensors"))
    assert "deit.encoder.layer.0.attention.attention.query.weight" in saved  # the hub's names
    assert "deit.layers.0.attention.q_proj.weight" in teacher.state_dict()   # transformers 5's
    vit = {"vit." + k[len("deit."):]: v for k, v in saved.items() if k.startswith("deit.")}
    timm = timm_from_hf({**vit, "classifier.weight": saved["cls_classifier.weight"],
                         "classifier.bias": saved["cls_classifier.bias"]})
    timm["dist_token"] = saved["deit.embeddings.distillation_token"]
    timm["head_dist.weight"] = saved["distillation_classifier.weight"]
    timm["head_dist.bias"] = saved["distillation_classifier.bias"]
    write_timm(folder / "timm", timm, {
        "architecture": "deit_test_distilled_patch4_32", "num_classes": CLASSES,
        "global_pool": "token", "model_args": {"embed_dim": HIDDEN, "depth": DEPTH, "num_heads": HEADS},
        "pretrained_cfg": {"input_size": [3, 32, 32], "mean": IMAGENET[0], "std": IMAGENET[1]}})
    timm_teacher = transformers.DeiTForImageClassificationWithTeacher(
        deit_config(layer_norm_eps=1e-6)).eval()
    timm_teacher.load_state_dict(teacher.state_dict())
    return dict(folder=folder, teacher=teacher, single=single, timm_teacher=timm_teacher,
                images=random_images(2, 32, seed=6))


def run_deit(model, images, interpolate=False):
    with torch.no_grad():
        return model(pixel_values=pixels(images, *IMAGENET), interpolate_pos_encoding=interpolate)


@pytest.mark.parametrize("layout", ["teacher", "renamed", "timm"])
def test_distilled_files_match_transformers_with_teacher(deit, layout):
    """Both heads' logits, not only their mean (a swap of the heads or tokens keeps the mean)."""
    model = keras_vit.load_pretrained(deit["folder"] / layout)
    assert model.distilled and model.distillation_head and model.num_prefix_tokens == 2
    assert model.layer_norm_epsilon == (1e-6 if layout == "timm" else 1e-12)
    np.testing.assert_allclose(model.normalization_mean, IMAGENET[0])
    np.testing.assert_allclose(model.normalization_std, IMAGENET[1])
    expected = run_deit(deit["timm_teacher" if layout == "timm" else "teacher"], deit["images"])
    np.testing.assert_allclose(predict(model, deit["images"]), expected.logits.numpy(), atol=TOLERANCE)
    heads = head_outputs(model, deit["images"])
    np.testing.assert_allclose(heads[0], expected.cls_logits.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(heads[1], expected.distillation_logits.numpy(), atol=TOLERANCE)


def test_distilled_backbone_with_one_head_matches_transformers(deit, tmp_path):
    """DeiTForImageClassification: the distillation token is there, the head reads the class
    token alone; mean/std from preprocessor_config.json, as transformers' own processor applies."""
    model = keras_vit.load_pretrained(deit["folder"] / "single")
    assert model.distilled and not model.distillation_head
    np.testing.assert_allclose(predict(model, deit["images"]),
                               run_deit(deit["single"], deit["images"]).logits.numpy(), atol=TOLERANCE)

    deit["single"].save_pretrained(tmp_path)
    stats = dict(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25])
    with open(tmp_path / "preprocessor_config.json", "w") as f:
        json.dump(stats, f)
    processor = transformers.DeiTImageProcessor(do_resize=False, do_center_crop=False, **stats)
    with torch.no_grad():
        expected = deit["single"](**processor(list(deit["images"]), return_tensors="pt")).logits
    np.testing.assert_allclose(predict(keras_vit.load_pretrained(tmp_path), deit["images"]),
                               expected.numpy(), atol=TOLERANCE)


def test_distilled_resolution_change_matches_interpolate_pos_encoding(deit):
    """Both prefix entries kept, the grid resampled as transformers' DeiT does (bicubic)."""
    images = random_images(2, 48, seed=7)
    model = keras_vit.load_pretrained(deit["folder"] / "teacher", image_size=48)
    assert model.grid_size == (12, 12)
    expected = run_deit(deit["teacher"], images, interpolate=True).logits.numpy()
    np.testing.assert_allclose(predict(model, images), expected, atol=TOLERANCE)


def test_distilled_head_changes(deit, caplog):
    folder = deit["folder"] / "teacher"
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        tuned = keras_vit.load_pretrained(folder, num_classes=5)
    assert "heads are re-initialised" in caplog.text
    for name in ("head", "head_dist"):
        layer = tuned.get_layer(name)
        assert layer.kernel.shape == (HIDDEN, 5) and not np.any(keras.ops.convert_to_numpy(layer.kernel))

    # The feature extractor gives what the two heads read, averaged (timm's pre-logits, and the
    # classifier's exported `embeddings`); without the distillation head, the class token (HF's).
    features = keras_vit.load_pretrained(folder, include_top=False)
    with torch.no_grad():
        tokens = deit["teacher"].deit(pixel_values=pixels(deit["images"], *IMAGENET)).last_hidden_state
    np.testing.assert_allclose(predict(features, deit["images"]),
                               ((tokens[:, 0] + tokens[:, 1]) / 2).numpy(), atol=TOLERANCE)
    class_token = keras_vit.load_pretrained(folder, include_top=False, distillation_head=False)
    np.testing.assert_allclose(predict(class_token, deit["images"]), tokens[:, 0].numpy(),
                               atol=TOLERANCE)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        one_head = keras_vit.load_pretrained(folder, distillation_head=False)
    assert "distillation head is not loaded" in caplog.text
    np.testing.assert_allclose(predict(one_head, deit["images"]),
                               run_deit(deit["teacher"], deit["images"]).cls_logits.numpy(),
                               atol=TOLERANCE)


def test_distilled_mismatches_are_clear_errors(deit, tmp_path):
    teacher, single = deit["folder"] / "teacher", deit["folder"] / "single"
    with pytest.raises(ValueError, match="distilled=False was asked.*is a distilled DeiT"):
        keras_vit.load_pretrained(teacher, distilled=False)
    with pytest.raises(ValueError, match="has no distillation head.*distillation_head=False"):
        keras_vit.load_pretrained(single, distillation_head=True)
    arguments = dict(image_size=32, patch_size=4, hidden_size=HIDDEN, num_layers=DEPTH,
                     num_heads=HEADS, mlp_dim=MLP, num_classes=CLASSES)
    with pytest.raises(ValueError, match="distilled=False was asked"):
        keras_vit.ViT(**arguments, distilled=False, weights=str(teacher))

    timm = safetensors_numpy.load_file(str(deit["folder"] / "timm" / "model.safetensors"))
    config = json.loads((deit["folder"] / "timm" / "config.json").read_text())
    named = write_timm(tmp_path / "named", timm, dict(config, architecture="deit_tiny_patch16_224",
                                                      model_args={"num_heads": HEADS},
                                                      num_features=None))
    with pytest.raises(ValueError, match="distillation token: False declared, True in the tensors"):
        keras_vit.load_pretrained(named)
    no_class = write_timm(tmp_path / "no_class", {k: v for k, v in timm.items() if k != "cls_token"},
                          config)
    with pytest.raises(ValueError, match="dist_token.*without a class token"):
        keras_vit.load_pretrained(no_class)
    without_token = {k: v for k, v in timm.items() if k != "dist_token"}
    without_token["pos_embed"] = np.delete(timm["pos_embed"], 1, axis=1)  # its entry too
    stray = write_timm(tmp_path / "stray", without_token, config)
    with pytest.raises(ValueError, match="no place for.*head_dist"):
        keras_vit.load_pretrained(stray)


def test_vit_weights_follow_a_distilled_checkpoint(deit):
    """`distilled` unset (and DeiT builders' default) follows the checkpoint, as pooling does."""
    model = keras_vit.ViT(image_size=32, patch_size=4, hidden_size=HIDDEN, num_layers=DEPTH,
                          num_heads=HEADS, mlp_dim=MLP, num_classes=CLASSES,
                          weights=str(deit["folder"] / "teacher"))
    assert model.distilled and model.layer_norm_epsilon == 1e-12
    np.testing.assert_allclose(predict(model, deit["images"]),
                               run_deit(deit["teacher"], deit["images"]).logits.numpy(),
                               atol=TOLERANCE)


def test_distilled_keras_file_rebuilds(deit, tmp_path):
    model = keras_vit.load_pretrained(deit["folder"] / "teacher")
    model.save(tmp_path / "deit.keras")
    rebuilt = keras_vit.load_pretrained(tmp_path / "deit.keras", image_size=48)
    assert rebuilt.distilled and rebuilt.grid_size == (12, 12)
    np.testing.assert_allclose(posemb(rebuilt)[:, :2], posemb(model)[:, :2])


def test_deit_registry_names(monkeypatch):
    """Registered DeiT weights are timm's safetensors on the Hub; `distilled=True` picks the
    distilled checkpoint of a name; timm's model names find them too."""
    asked = []
    monkeypatch.setattr("keras_vit.weights.hub.snapshot", lambda spec: asked.append(spec) or "/nonexistent")
    for call in (lambda: keras_vit.DeiTTi16(weights="imagenet1k"),
                 lambda: keras_vit.DeiTTi16(distilled=True, weights="imagenet1k"),
                 lambda: keras_vit.DeiTB16(distilled=True, weights="imagenet1k_384"),
                 lambda: keras_vit.load_pretrained("deit_small_distilled_patch16_224"),
                 lambda: keras_vit.load_pretrained("S/16:imagenet1k")):
        with pytest.raises(FileNotFoundError):
            call()
    assert asked == ["hf://timm/deit_tiny_patch16_224.fb_in1k",
                     "hf://timm/deit_tiny_distilled_patch16_224.fb_in1k",
                     "hf://timm/deit_base_distilled_patch16_384.fb_in1k",
                     "hf://timm/deit_small_distilled_patch16_224.fb_in1k",
                     "hf://timm/deit_small_patch16_224.fb_in1k"]
