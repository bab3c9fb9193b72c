"""The benchmark runs and reports (no timing asserts), the FLOP count matches a hand count, and the
fast inference path computes the model's function."""

import glob
import json
import os

import numpy as np
import pytest
from conftest import TINY, random_images, randomize_weights

import keras_vit
from keras_vit import benchmark, inference
from keras_vit.cli import main


def test_vit_flops_matches_hand_count():
    # ViT-B/16 at 224: 196 patches + class token = 197 tokens, width 768, MLP 3072, 12 blocks.
    embed = 2 * 196 * (16 * 16 * 3) * 768
    qkv = 2 * 197 * 768 * 2304
    attention = 2 * (2 * 197 * 197 * 768)
    projection = 2 * 197 * 768 * 768
    mlp = 2 * (2 * 197 * 768 * 3072)
    head = 2 * 768 * 1000
    expected = embed + 12 * (qkv + attention + projection + mlp) + head
    assert benchmark.vit_flops() == expected
    assert round(expected / 2e9, 1) == 17.6  # the 17.6 "GFLOPs" (GMACs) of the DeiT/timm tables
    assert benchmark.training_flops() == 3 * expected
    # TINY: 32/4 = 8x8 patches, 65 tokens, width 64, MLP 128, 2 blocks, 10 classes.
    tiny = (2 * 64 * 48 * 64
            + 2 * (2 * 65 * 64 * 192 + 4 * 65 * 65 * 64 + 2 * 65 * 64 * 64 + 4 * 65 * 64 * 128)
            + 2 * 64 * 10)
    assert benchmark.vit_flops(**TINY) == tiny == 11_077_376
    # Non-square images and registers change the token count.
    assert benchmark.vit_flops(**{**TINY, "image_size": (32, 16)}) < tiny
    assert benchmark.vit_flops(**TINY, num_registers=4) > tiny


def test_hybrid_flops_count_the_resnet_and_the_feature_map_patches():
    from keras_vit import resnet

    # R50+ViT-B/16 at 224: the ResNet's 14x14x1024 feature map, 1x1 patches, 197 tokens.
    config = benchmark.resolve_config("R50ViTB16")
    assert config["backbone"] == {"block_units": [3, 4, 9]} and config["patch_size"] == 1
    blocks = 12 * (2 * 197 * 768 * 2304 + 4 * 197 * 197 * 768 + 2 * 197 * 768 * 768
                   + 4 * 197 * 768 * 3072)
    expected = (resnet.backbone_flops(224, (3, 4, 9)) + 2 * 196 * 1024 * 768 + blocks
                + 2 * 768 * 1000)
    assert benchmark.vit_flops(**config) == expected
    assert benchmark.vit_flops(**config) > benchmark.vit_flops() + 2e9  # the ResNet is not free


def test_benchmark_cli_writes_markdown_and_json(tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    code = main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "2",
                 "--repeats", "2", "--warmup", "1", "--tasks", "latency,throughput,training",
                 "--peers", "keras_hub,hf,timm", "--output", str(out), "--markdown", str(md)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["config"]["hidden_size"] == 64
    assert report["settings"]["forward_gflops_per_image"] == pytest.approx(11_077_376 / 1e9)
    for task in ("latency", "throughput", "training"):
        rows = report["results"][task]
        assert "keras_vit" in rows
        for row in rows.values():
            assert row["repeats"] == 2 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert report["results"]["throughput"]["keras_vit"]["batch_size"] == 2
    assert "keras_vit fast_predictor" in report["results"]["latency"]
    assert "keras_vit fast_predictor" not in report["results"]["training"]  # inference only
    table = md.read_text()
    assert "### Training step, batch 2" in table and "| keras_vit |" in table
    assert report["environment"]["cpu_cores"] >= 1 and report["environment"]["cpu"] in table
    # Peers that are installed are measured; missing ones are listed with the reason.
    for peer, name in (("keras_hub", "keras_hub ViTBackbone"), ("hf", "HF ViTForImageClassification"),
                       ("timm", "timm eager")):
        if peer in report["skipped"]:
            assert f"- {peer}: not measured, not installed" in table
        else:
            assert name in report["results"]["latency"]


def test_benchmark_memory_and_tflite(tmp_path):
    out = tmp_path / "results.json"
    main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "2",
          "--repeats", "1", "--warmup", "0", "--tasks", "memory,tflite", "--tflite-modes", "none",
          "--peers", "none", "--no-fast", "--output", str(out)])
    report = json.loads(out.read_text())
    memory = report["results"]["memory"]["keras_vit"]
    assert memory["peak_rss_mib"] >= memory["rss_after_imports_mib"] > 50
    assert report["results"]["tflite"]["LiteRT none"]["size_mb"] > 0.1


def test_onnxruntime_joins_as_an_inference_contender(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "2",
          "--repeats", "2", "--warmup", "1", "--tasks", "latency,throughput",
          "--peers", "onnxruntime", "--no-fast", "--threads", "1", "--output", str(out),
          "--markdown", str(md)])
    report = json.loads(out.read_text())
    for task in ("latency", "throughput"):
        row = report["results"][task]["ONNX Runtime (CPU)"]
        assert row["repeats"] == 2 and 0 < row["min_ms"] <= row["median_ms"]
    assert report["environment"]["onnxruntime"] and "| ONNX Runtime (CPU) |" in md.read_text()
    assert report["settings"]["contenders"]["ONNX Runtime (CPU)"]["provider"] == "CPUExecutionProvider"
    # Its export runs float32 only: a bfloat16 run says why it is left out.
    report = benchmark.run_suite(TINY, batch_size=2, precision="bfloat16", peers=["onnxruntime"],
                                 tasks=["latency"], repeats=1, warmup=0, fast=False)
    assert report["skipped"]["onnxruntime"].startswith("float32 only")
    assert "ONNX Runtime (CPU)" not in report["results"]["latency"]


@pytest.mark.slow
def test_onnxruntime_memory_loads_the_file_converted_once():
    pytest.importorskip("onnxruntime")
    contenders, _ = benchmark.build_contenders(TINY, "float32", "sgd", ["onnxruntime"], fast=False)
    ort_contender = contenders[-1]
    assert ort_contender.build_train is None  # inference only
    spec = {"config": TINY, "precision": "float32", "optimizer": "sgd", "fast": False, "threads": 1}
    memory = benchmark._memory_in_subprocess(spec, ort_contender, [2, 32, 32, 3])
    assert memory["peak_rss_mib"] >= memory["rss_after_imports_mib"] > 50, memory
    # The subprocess ran the file this process converted: one conversion, not one per process.
    (path,) = benchmark._ONNX_FILES.values()
    assert os.path.isfile(path) and ort_contender.prepare() == path


def test_benchmark_pipeline_beside_training(tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "4",
          "--repeats", "2", "--warmup", "1", "--tasks", "training,pipeline", "--peers", "none",
          "--no-fast", "--output", str(out), "--markdown", str(md)])
    report = json.loads(out.read_text())
    row = report["results"]["pipeline"]["keras_vit.data pipeline"]
    assert row["batch_size"] == 4 and row["repeats"] == 2
    assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert row["images_per_s"] == pytest.approx(4000 / row["median_ms"])
    table = md.read_text()
    assert "### tf.data training pipeline alone, batch 4" in table
    assert "The pipeline delivers" in table and "images/s of keras_vit's training step" in table


def test_synthetic_jpegs_are_photo_like(tmp_path):
    from PIL import Image

    from keras_vit.benchmark import _synthetic_jpegs

    _synthetic_jpegs(tmp_path, 4, shape=(60, 80))
    files = sorted(tmp_path.rglob("*.jpg"))
    assert [f.parent.name for f in files] == ["class_0", "class_0", "class_1", "class_1"]
    pixels = np.asarray(Image.open(files[0]))
    assert pixels.shape == (60, 80, 3) and 40 < pixels.std() < 90  # textured, not flat, not noise


X86_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
flags\t\t: fpu avx512_bf16
"""
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_cpu_info_reads_x86_and_arm_flags(tmp_path):
    (tmp_path / "x86").write_text(X86_ZEN3)
    (tmp_path / "arm").write_text(ARM_BF16)
    x86 = inference.cpu_info(str(tmp_path / "x86"))
    assert x86["model name"] == "AMD EPYC 7B13" and x86["cpu family"] == "25"
    assert "avx2" in x86["flags"] and "avx512_bf16" not in x86["flags"]  # first processor only
    assert "bf16" in inference.cpu_info(str(tmp_path / "arm"))["flags"]
    assert inference.cpu_info(str(tmp_path / "missing")) == {}


def test_fast_predictor_auto_precision_follows_the_hardware(monkeypatch, tmp_path):
    """precision="auto": float32 on a CPU without native bfloat16, bfloat16 where it is native."""
    model = randomize_weights(keras_vit.ViT(**TINY))
    images = random_images(4, 32, seed=2)
    float32 = inference.fast_predictor(model, precision="float32")(images)
    bf16 = inference.fast_predictor(model, precision="bfloat16")(images)
    assert np.abs(float32 - bf16).max() > 1e-4  # the two precisions are distinguishable
    monkeypatch.setattr(inference, "on_accelerator", lambda: False)
    (tmp_path / "cpuinfo").write_text(X86_ZEN3)  # a CPU without native bfloat16 (AMD Zen 3)
    zen3 = inference.cpu_info(str(tmp_path / "cpuinfo"))
    monkeypatch.setattr(inference, "cpu_info", lambda path=None: zen3)
    assert not inference.native_bfloat16()
    np.testing.assert_array_equal(inference.fast_predictor(model)(images), float32)
    monkeypatch.setattr(inference, "_warned_emulated_bfloat16", False)
    with pytest.warns(UserWarning, match="without native bfloat16"):
        inference.fast_predictor(model, precision="bfloat16")
    monkeypatch.setattr(inference, "cpu_info", lambda path=None: {"flags": {"avx2", "avx512_bf16"}})
    assert inference.native_bfloat16()
    np.testing.assert_array_equal(inference.fast_predictor(model)(images), bf16)
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        inference.fast_predictor(model, precision="fp8")


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown peer 'pytorch'"):
        benchmark.build_contenders(TINY, "float32", "sgd", ["pytorch"])
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        benchmark.resolve_config("ViTQ7")
    with pytest.raises(ValueError, match="Unknown task"):
        benchmark.run_suite(TINY, tasks=("speed",))


def test_time_interleaved_round_robin():
    calls = []
    times = benchmark.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                       repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times.values()] == [3, 3]


@pytest.mark.parametrize("options", [
    {},
    {"pooling": "gap"},
    {"num_registers": 2, "layer_scale_init_value": 0.1, "representation_size": 32},
    {"normalization_mean": [0.485, 0.456, 0.406], "normalization_std": [0.229, 0.224, 0.225]},
])
def test_fast_predictor_matches_model(options):
    model = randomize_weights(keras_vit.ViT(**TINY, **options))
    images = random_images(8, 32, seed=1)
    reference = np.asarray(model.predict_on_batch(images.astype("float32")), "float64")
    float32 = inference.fast_predictor(model, precision="float32")(images)
    np.testing.assert_allclose(float32, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    bf16 = inference.fast_predictor(model, precision="bfloat16")(images)
    assert bf16.dtype == np.float32 and bf16.shape == reference.shape
    # bfloat16 has 8 bits of mantissa: a few 1e-3 relative per op, about 1e-2 through the net.
    assert np.linalg.norm(bf16 - reference) / np.linalg.norm(reference) < 3e-2
    clear = np.sort(reference, axis=-1)
    confident = clear[:, -1] - clear[:, -2] > 0.05 * np.abs(reference).max()
    assert np.array_equal(bf16.argmax(-1)[confident], reference.argmax(-1)[confident])


def test_fast_predictor_snapshot_and_errors():
    model = keras_vit.ViT(**TINY)
    predict = inference.fast_predictor(model, precision="float32")
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\)"):
        predict(np.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="Unknown precision 'int4'"):
        inference.fast_predictor(model, precision="int4")
    with pytest.raises(ValueError, match="Unknown backend_hint"):
        inference.fast_predictor(model, backend_hint="fast")


def test_fast_predictor_keeps_top1_on_real_photos(shared_data):
    weights = pytest.importorskip("keras_vit.weights")
    from keras_vit.images import load_image

    model = weights.load_pretrained(os.path.join(shared_data, "deit_tiny_patch16_224"))
    paths = sorted(glob.glob(os.path.join(shared_data, "imagenet20", "*.jpg")))
    images = np.stack([load_image(p, 224) for p in paths]).astype("float32")
    reference = np.asarray(model.predict_on_batch(images))
    fast = inference.fast_predictor(model, precision="bfloat16")(images)
    assert np.array_equal(fast.argmax(-1), reference.argmax(-1))
    # bfloat16 keeps ~3 significant digits; over 12 blocks the logits move by a few percent.
    # Measured: 2.1e-2 on Zen 5 (native avx512_bf16), 3.7e-2 on Zen 3 (no native bfloat16).
    assert np.linalg.norm(fast - reference) / np.linalg.norm(reference) < 5e-2
