"""The hybrids' ResNet backbone against independent references: transformers' BitBackbone
(layer_type="bottleneck", global_padding="SAME") in PyTorch, TensorFlow's own SAME convolution,
and the parameter counts that the issue's model totals imply."""

import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
from conftest import REPO

from keras_vit import resnet as R

torch = pytest.importorskip("torch")


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def images(size, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, *size, 3)).astype("float32")


def build(config, input_shape, weights=None):
    backbone = R.ResNetBackbone(**config, name="backbone")
    backbone.build(input_shape)
    if weights is not None:
        backbone.set_weights(weights)
    return backbone


# ----------------------------------------------------------------------------------------------
# The torch reference: transformers' BiT in the ViT-hybrid configuration, every tensor perturbed.


@functools.lru_cache(maxsize=None)
def reference(block_units, seed=0):
    """BitBackbone with `block_units` (root only: its stem output) and random weights."""
    from transformers import BitBackbone, BitConfig

    stages = max(len(block_units), 1)
    config = BitConfig(layer_type="bottleneck", global_padding="SAME",
                       embedding_dynamic_padding=True, depths=list(block_units) or [1],
                       hidden_sizes=[256 * 2 ** i for i in range(stages)],
                       out_features=[f"stage{len(block_units)}" if block_units else "stem"])
    torch.manual_seed(seed)
    model = BitBackbone(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim == 4:  # kernels: small spread, and a per-channel mean to subtract
                mean = torch.randn(parameter.shape[0], 1, 1, 1, generator=generator)
                parameter.copy_(0.01 * noise + 0.003 * mean)
            elif name.endswith("weight"):  # GroupNorm scales around 1 (gn3 starts at 0 in vit_jax)
                parameter.copy_(1.0 + 0.2 * noise)
            else:
                parameter.copy_(0.2 * noise)
    return model


def reference_state(block_units):
    state = reference(block_units).state_dict()
    return {k: v.numpy().copy() for k, v in state.items()
            if block_units or k.startswith("bit.embedder.")}


def run_reference(model, x):
    with torch.no_grad():
        out = model(torch.tensor(x).permute(0, 3, 1, 2)).feature_maps[0]
    return out.permute(0, 2, 3, 1).numpy()


def with_vit_jax_numerics(model):
    """The same network with vit_jax's numerics: kernels standardised as (w - mean) / (std + 1e-5)
    (models_resnet.weight_standardize), flax GroupNorm epsilon 1e-6."""
    from transformers.models.bit.modeling_bit import WeightStandardizedConv2d

    def forward(self, x):
        if self.pad is not None:
            x = self.pad(x)
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        w = w / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
        return torch.nn.functional.conv2d(x, w, None, self.stride, self.padding, self.dilation,
                                          self.groups)

    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, WeightStandardizedConv2d):
            module.forward = types.MethodType(forward, module)
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = 1e-6
    return model


def official_layouts(torch_state):
    """The reference's tensors written as the real files name and lay them out (written here from
    the files' documentation, not from keras_vit's mapping): vit_jax .npz and timm's hub names."""
    npz, timm = {}, {}
    for name, value in torch_state.items():
        kernel = value.ndim == 4
        hwio = value.transpose(2, 3, 1, 0) if kernel else value
        kind = "weight" if name.endswith("weight") else "bias"
        if name.startswith("bit.embedder."):
            conv = ".convolution." in name
            gn = f"gn_root/{'scale' if kind == 'weight' else 'bias'}"
            npz["conv_root/kernel" if conv else gn] = hwio
            timm[f"patch_embed.backbone.stem.{'conv' if conv else 'norm'}.{kind}"] = value
            continue
        stage, unit, module = re.fullmatch(r"bit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)\.\w+",
                                           name).groups()
        npz_module = {"downsample.conv": "conv_proj", "downsample.norm": "gn_proj"}.get(
            module, module.replace("norm", "gn"))
        npz_kind = "kernel" if kernel else ("scale" if kind == "weight" else "bias")
        npz[f"block{int(stage) + 1}/unit{int(unit) + 1}/{npz_module}/{npz_kind}"] = hwio
        timm[f"patch_embed.backbone.stages.{stage}.blocks.{unit}.{module}.{kind}"] = value
    return npz, timm


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_units", [(1, 1, 1), (2, 2, 2, 2), ()], ids=str)
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (36, 52)], ids=str)
def test_backbone_matches_transformers_bit(block_units, size):
    """Same feature map as BitBackbone (NCHW there, NHWC here), square, rectangular and odd sizes
    (36x52 has odd sizes on the way: TF SAME pads stride-2 windows differently there)."""
    state, config = R.from_transformers(reference_state(block_units))
    assert config == dict(block_units=list(block_units), width_factor=1, **R.TIMM_NUMERICS)
    x = images(size)
    backbone = build(config, x.shape)
    backbone.set_weights(R.ordered_weights(backbone, state))
    ours = to_numpy(backbone(x))
    expected = run_reference(reference(block_units), x)
    stride = R.backbone_stride(block_units)
    assert ours.shape == (2, -(-size[0] // stride), -(-size[1] // stride),
                          R.backbone_channels(block_units)) == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=1e-4)


def test_numerics_matter_and_vit_jax_numerics_match():
    """vit_jax's standardisation differs measurably from timm's on these weights, and ours follows
    each: a swapped epsilon would fail here."""
    block_units = (1, 1, 1)
    state, config = R.from_transformers(reference_state(block_units))
    x = images((64, 64), seed=3)
    timm_backbone = build(config, x.shape)
    weights = R.ordered_weights(timm_backbone, state)
    timm_backbone.set_weights(weights)
    timm_out = to_numpy(timm_backbone(x))
    jax_out = to_numpy(build(dict(config, **R.VIT_JAX_NUMERICS), x.shape, weights)(x))
    expected = run_reference(with_vit_jax_numerics(reference(block_units)), x)
    np.testing.assert_allclose(jax_out, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(jax_out - timm_out).max() > 1e-3


@pytest.mark.parametrize("epsilon_inside_sqrt", [False, True])
def test_std_conv_matches_tensorflow_same_convolution(epsilon_inside_sqrt):
    """TF's own SAME padding (odd and even sizes, stride 1 and 2) on the kernel standardised in
    NumPy as vit_jax ((w - mean) / (std + eps)) or timm ((w - mean) / sqrt(var + eps))."""
    tf = pytest.importorskip("tensorflow")
    eps = 0.05  # large, so that where it goes shows
    rng = np.random.default_rng(7)
    cases = [(3, 2, (7, 8)), (7, 2, (9, 12)), (3, 1, (5, 6)), (1, 2, (7, 6))]
    for kernel_size, strides, size in cases:
        layer = R.StdConv2D(5, kernel_size, strides, epsilon=eps,
                            epsilon_inside_sqrt=epsilon_inside_sqrt)
        x = rng.normal(size=(2, *size, 3)).astype("float32")
        layer.build(x.shape)
        w = rng.normal(0.3, 0.2, layer.kernel.shape).astype("float32")
        layer.kernel.assign(w)
        centred = w - w.mean(axis=(0, 1, 2))
        scale = (np.sqrt(centred.var(axis=(0, 1, 2)) + eps) if epsilon_inside_sqrt
                 else centred.std(axis=(0, 1, 2)) + eps)
        expected = tf.nn.conv2d(x, centred / scale, strides, "SAME").numpy()
        np.testing.assert_allclose(to_numpy(layer.standardized_kernel()), centred / scale,
                                   atol=1e-6)
        np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-5)


def test_parameter_counts_match_the_issue_totals():
    """Backbone = issue total - ViT part (computed here by hand) - the hybrid's embedding + the
    plain ViT's patch embedding. 224 px, 1000 classes, token pooling."""

    def vit(hidden, layers, mlp, tokens, patch_params):
        block = 4 * hidden * hidden + 4 * hidden + 2 * hidden * mlp + mlp + hidden + 4 * hidden
        return (patch_params + layers * block + hidden + tokens * hidden + 2 * hidden
                + hidden * 1000 + 1000)

    def embedding(channels, patch, hidden):
        return patch * patch * channels * hidden + hidden

    # (issue total, ViT width, depth, MLP, tokens, backbone channels, patch on the feature map)
    hybrids = {
        (3, 4, 9): [(98_659_112, 768, 12, 3072, 197, 1024, 1),
                    (316_483_624, 1024, 24, 4096, 197, 1024, 1)],
        (3, 4, 6, 3): [(110_945_832, 768, 12, 3072, 50, 2048, 1),
                       (328_994_856, 1024, 24, 4096, 50, 2048, 1)],
        (2, 2, 2, 2): [(36_431_912, 384, 12, 1536, 50, 2048, 1)],
        (): [(6_337_704, 192, 12, 768, 50, 64, 8)],  # R+Ti/16: patch 8 on the stride-4 root
    }
    for block_units, models in hybrids.items():
        for total, hidden, layers, mlp, tokens, channels, patch in models:
            expected = total - vit(hidden, layers, mlp, tokens, embedding(channels, patch, hidden))
            assert R.count_params(block_units) == expected, (block_units, hidden)
            assert R.backbone_channels(block_units) == channels
    assert R.count_params((3, 4, 9)) == 11_894_848 and R.count_params((3, 4, 6, 3)) == 23_508_032
    assert R.count_params((2, 2, 2, 2)) == 13_946_176 and R.count_params(()) == 9_536
    assert R.count_params((), width_factor=2) == 7 * 7 * 3 * 128 + 2 * 128


def test_flops_count_the_reference_convolutions():
    """Multiply-adds of every convolution of BitBackbone, counted with forward hooks."""
    for block_units, size in [((1, 2), (36, 52)), ((2, 1, 1), (64, 96)), ((), (30, 30))]:
        macs = []

        def count(module, inputs, output):
            macs.append(output[0].numel() * module.weight[0].numel())

        model = reference(block_units)
        hooks = [m.register_forward_hook(count) for m in model.modules()
                 if isinstance(m, torch.nn.Conv2d)]
        run_reference(model, images(size, batch=1))
        for hook in hooks:
            hook.remove()
        if not block_units:  # the reference has one stage after the stem: count the stem's only
            macs = macs[:1]
        assert R.backbone_flops(size, block_units) == 2 * sum(macs)
    # torchvision's ResNet-50 (the same v1.5 topology): 4.09 GMACs, of which 2.05 M are the head.
    assert abs(R.backbone_flops(224, (3, 4, 6, 3)) / 2 + 2048 * 1000 - 4.09e9) < 0.005e9


@pytest.mark.parametrize("block_units", [(3, 4, 9), ()], ids=str)
def test_built_backbone_has_the_counted_weights_in_order(block_units):
    backbone = build(dict(block_units=block_units), (None, 64, 64, 3))
    assert backbone.count_params() == R.count_params(block_units)
    paths = [(v.path, tuple(v.shape)) for v in backbone.weights]
    assert paths == [("backbone/" + p, s) for p, s in R.weight_shapes(block_units).items()]
    assert "backbone/block3/unit9/gn3/beta" in dict(paths) or not block_units


def test_symbolic_and_eager_shapes():
    for block_units, size in [((1, 1), (32, 48)), ((1,), (35, 17)), ((), (9, 10))]:
        backbone = R.ResNetBackbone(block_units)
        symbolic = backbone(keras.Input(size + (3,))).shape
        eager = to_numpy(backbone(images(size, batch=1))).shape
        grid = R.feature_map_size(size, block_units)
        assert symbolic == (None, *grid, R.backbone_channels(block_units))
        assert eager == (1, *grid, R.backbone_channels(block_units))
        assert backbone.compute_output_shape((None,) + size + (3,)) == symbolic
    assert R.backbone_stride((3, 4, 9)) == 16 and R.backbone_stride((3, 4, 6, 3)) == 32
    assert R.backbone_stride(()) == 4 and R.feature_map_size(224, (3, 4, 9)) == (14, 14)
    pixels = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3)).astype("uint8")
    backbone = R.ResNetBackbone([])
    np.testing.assert_allclose(to_numpy(backbone(pixels)),
                               to_numpy(backbone(pixels.astype("float32"))), atol=1e-6)


def test_unknown_image_size_is_refused_clearly():
    """Eager calls take any size; a graph traced for unknown sizes cannot pad as TF SAME does."""
    backbone = R.ResNetBackbone([1])
    assert backbone(keras.Input((None, None, 3))).shape == (None, None, None, 256)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(backbone, input_signature=[tf.TensorSpec((1, None, None, 3))])
        with pytest.raises(ValueError, match="known image height and width"):
            traced.get_concrete_function()
    with pytest.raises(ValueError, match="height, width, channels"):
        R.ResNetBackbone([1]).build((None, 32, 3))


@pytest.mark.parametrize("bad", [dict(block_units=[3, 0]), dict(block_units="349"),
                                 dict(block_units=[3.0]), dict(block_units=None),
                                 dict(block_units=[1], width_factor=0),
                                 dict(block_units=[1], width_factor=1.5),
                                 dict(block_units=[1], width_factor=True)])
def test_bad_architecture_is_refused(bad):
    with pytest.raises(ValueError, match="block_units|width_factor"):
        R.ResNetBackbone(**bad)
    if "width_factor" not in bad:
        with pytest.raises(ValueError, match="block_units"):
            R.count_params(bad["block_units"])


def test_bad_layer_arguments_are_refused():
    with pytest.raises(ValueError, match="filters"):
        R.StdConv2D(0, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        R.StdConv2D(4, (3, 3, 3))
    with pytest.raises(ValueError, match="multiple of 32"):
        R.BottleneckUnit(48)
    with pytest.raises(ValueError, match="num_units"):
        R.ResNetStage(0, 64)


# Serialisation, .keras files, shapes and mixed precision of every layer: tests/harness.py
# (tests/test_layers.py runs it over these layers too).


def test_get_config_is_exactly_the_init_arguments():
    config = R.ResNetBackbone((3, 4, 9), name="backbone").get_config()
    own = {k: config[k] for k in ("block_units", "width_factor", "standardization_epsilon",
                                  "epsilon_inside_sqrt", "norm_epsilon")}
    assert own == dict(block_units=[3, 4, 9], width_factor=1, **R.VIT_JAX_NUMERICS)
    json.dumps(config)  # the model config holds it as JSON


def test_mixed_bfloat16():
    state, config = R.from_transformers(reference_state((1, 1, 1)))
    x = images((32, 32))
    full = build(config, x.shape)
    full.set_weights(R.ordered_weights(full, state))
    expected = to_numpy(full(x))
    keras.config.set_dtype_policy("mixed_bfloat16")
    half = build(config, x.shape, full.get_weights())
    out = half(x)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in half.weights)
    out = to_numpy(keras.ops.cast(out, "float32"))
    assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 0.05


# ----------------------------------------------------------------------------------------------
# Converters: the official .npz and timm layouts, written from the reference's weights.


def test_npz_and_timm_files_load_to_the_reference(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    block_units = (1, 2)
    npz, timm = official_layouts(reference_state(block_units))
    np.savez(tmp_path / "R50+ViT.npz", **npz, **{"embedding/kernel": np.zeros((1, 1, 1024, 8)),
                                                  "cls": np.zeros((1, 1, 8))})
    safetensors_numpy.save_file({**timm, "patch_embed.proj.weight": np.zeros((8, 1024, 1, 1)),
                                 "cls_token": np.zeros((1, 1, 8))}, tmp_path / "model.safetensors")
    x = images((64, 96), seed=4)
    model = reference(block_units)
    expectations = {"vit_jax": run_reference(with_vit_jax_numerics(model), x),
                    "timm": run_reference(model, x)}

    with np.load(tmp_path / "R50+ViT.npz") as data:
        tensors = {k: data[k] for k in data.files}
    state, config = R.from_npz(tensors, "R50+ViT.npz")
    assert sorted(tensors) == ["cls", "embedding/kernel"]  # the ViT's tensors are left
    assert config == dict(block_units=[1, 2], width_factor=1, **R.VIT_JAX_NUMERICS)
    backbone = build(config, x.shape)
    backbone.set_weights(R.ordered_weights(backbone, state))
    np.testing.assert_allclose(to_numpy(backbone(x)), expectations["vit_jax"], atol=1e-4, rtol=1e-4)

    tensors = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    state, config = R.from_timm(tensors, source="model.safetensors")
    assert sorted(tensors) == ["cls_token", "patch_embed.proj.weight"]
    assert config == dict(block_units=[1, 2], width_factor=1, **R.TIMM_NUMERICS)
    backbone = build(config, x.shape)
    backbone.set_weights(R.ordered_weights(backbone, state))
    np.testing.assert_allclose(to_numpy(backbone(x)), expectations["timm"], atol=1e-4, rtol=1e-4)


def test_root_only_files_load_to_the_reference():
    """AugReg's "R": the npz has only conv_root / gn_root; timm's backbone is the stem itself."""
    npz, timm = official_layouts(reference_state(()))
    timm = {k.replace("backbone.stem.", "backbone."): v for k, v in timm.items()}
    x = images((36, 52), seed=5)
    for convert, tensors, model in [(R.from_npz, npz, with_vit_jax_numerics(reference(()))),
                                    (R.from_timm, timm, reference(()))]:
        state, config = convert(dict(tensors))
        assert config["block_units"] == []
        backbone = build(config, x.shape)
        backbone.set_weights(R.ordered_weights(backbone, state))
        np.testing.assert_allclose(to_numpy(backbone(x)), run_reference(model, x), atol=1e-5)


def test_names_of_every_layout():
    assert R.npz_name("gn_root/gamma") == "gn_root/scale"
    assert R.npz_name("block2/unit1/conv_proj/kernel") == "block2/unit1/conv_proj/kernel"
    assert R.npz_name("block3/unit9/gn3/beta") == "block3/unit9/gn3/bias"
    assert R.timm_name("conv_root/kernel") == "patch_embed.backbone.stem.conv.weight"
    assert R.timm_name("gn_root/beta", stem_only=True) == "patch_embed.backbone.norm.bias"
    timm = "patch_embed.backbone.stages."
    assert R.timm_name("block2/unit1/gn_proj/gamma") == timm + "1.blocks.0.downsample.norm.weight"
    assert R.timm_name("block1/unit2/gn3/gamma") == timm + "0.blocks.1.norm3.weight"
    assert R.transformers_name("conv_root/kernel") == "bit.embedder.convolution.weight"
    assert (R.transformers_name("block1/unit1/conv_proj/kernel")
            == "bit.encoder.stages.0.layers.0.downsample.conv.weight")


def test_plain_vit_files_have_no_backbone():
    assert R.from_npz({"embedding/kernel": np.zeros((16, 16, 3, 8))}) == (None, None)
    assert R.from_timm({"patch_embed.proj.weight": np.zeros((8, 3, 16, 16))}) == (None, None)
    assert R.from_transformers({}) == (None, None)


def test_transformers_vit_hybrid_prefix():
    prefix = "vit.embeddings.patch_embeddings.backbone.bit."
    tensors = {prefix + k[len("bit."):]: v for k, v in reference_state((1,)).items()}
    state, config = R.from_transformers(tensors, prefix=prefix)
    assert not tensors and config["block_units"] == [1]


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.pop("block1/unit1/gn2/scale"), "lacks the tensor 'block1/unit1/gn2/scale'"),
    (lambda t: t.update({"block1/unit1/conv4/kernel": np.zeros((1, 1, 64, 64))}), "no place for"),
    (lambda t: t.update({k.replace("unit2", "unit3"): t.pop(k) for k in list(t) if "2/unit2" in k}),
     r"unit \(stage 2\) indices are \[1, 3\]"),
    (lambda t: t.update({"block3/unit1/conv1/kernel": np.zeros((1, 1, 1024, 256))}),
     "'block3/unit1/conv1/kernel' has shape"),
    (lambda t: t.update({"block1/unit1/conv2/kernel": np.zeros((3, 3, 64, 32))}),
     r"'block1/unit1/conv2/kernel' has shape \(3, 3, 64, 32\)"),
    (lambda t: t.update({"conv_root/kernel": np.zeros((7, 7, 3, 48))}), "64 \\* width_factor"),
], ids=["missing", "extra", "gap", "stray_stage", "shape", "root_width"])
def test_npz_converter_errors_name_the_tensor(damage, message):
    npz, _ = official_layouts(reference_state((1, 2)))
    damage(npz)
    before = set(npz)
    with pytest.raises(ValueError, match=message):
        R.from_npz(npz, "broken.npz")
    assert set(npz) == before  # nothing taken out on an error


def test_timm_converter_errors_name_the_tensor():
    _, timm = official_layouts(reference_state((1, 2)))
    kernel = "patch_embed.backbone.stages.1.blocks.1.conv2.weight"
    broken = dict(timm, **{kernel: timm[kernel].transpose(1, 0, 2, 3)[:, :64]})
    with pytest.raises(ValueError, match=re.escape(kernel)):
        R.from_timm(broken, source="model.safetensors")
    broken = dict(timm, **{"patch_embed.backbone.stages.0.blocks.0.se.fc.weight": np.zeros(4)})
    with pytest.raises(ValueError, match="no place for"):
        R.from_timm(broken)


def test_ordered_weights_is_strict():
    backbone = build(dict(block_units=[]), (None, 16, 16, 3))
    state = {p: np.zeros(s) for p, s in R.weight_shapes([]).items()}
    assert [w.shape for w in R.ordered_weights(backbone, state)] == [(7, 7, 3, 64), (64,), (64,)]
    with pytest.raises(ValueError, match="missing \\['gn_root/beta'\\]"):
        R.ordered_weights(backbone, {k: v for k, v in state.items() if k != "gn_root/beta"})
    with pytest.raises(ValueError, match="unexpected"):
        R.ordered_weights(backbone, dict(state, extra=np.zeros(1)))
    with pytest.raises(ValueError, match="shape mismatches"):
        R.ordered_weights(backbone, dict(state, **{"gn_root/beta": np.zeros(65)}))


def test_ordered_weights_of_a_backbone_inside_another_layer():
    """A hybrid may nest the backbone in its embedding layer: paths are then
    `patch_embedding/backbone/...`, and the mapping still holds."""

    class Embedding(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.backbone = R.ResNetBackbone([1], name="backbone")

        def build(self, input_shape):
            self.backbone.build(input_shape)
            self.built = True

    layer = Embedding(name="patch_embedding")
    layer.build((None, 16, 16, 3))
    assert layer.weights[0].path == "patch_embedding/backbone/conv_root/kernel"
    shapes = R.weight_shapes([1])
    weights = R.ordered_weights(layer.backbone, {p: np.zeros(s) for p, s in shapes.items()})
    assert [w.shape for w in weights] == list(shapes.values())


# ----------------------------------------------------------------------------------------------

PROBE = """
import json, sys, numpy as np, keras
from keras_vit import resnet as R
config, weights, x = json.loads(sys.argv[1]), np.load(sys.argv[2]), np.load(sys.argv[3])
backbone = R.ResNetBackbone(**config)
backbone.build(x.shape)
backbone.set_weights([weights[f"arr_{i}"] for i in range(len(weights.files))])
np.save(sys.argv[4], keras.ops.convert_to_numpy(backbone(x)))
print(keras.backend.backend())
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_same_features_on_every_backend(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    if keras.backend.backend() == backend:
        pytest.skip(f"already running under {backend}")
    state, config = R.from_transformers(reference_state((1, 1, 1)))
    x = images((36, 52))
    backbone = build(config, x.shape)
    weights = R.ordered_weights(backbone, state)
    backbone.set_weights(weights)
    np.savez(tmp_path / "w.npz", *weights)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    files = [str(tmp_path / name) for name in ("w.npz", "x.npy", "y.npy")]
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(config), *files], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(backend)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), to_numpy(backbone(x)), atol=1e-4)
