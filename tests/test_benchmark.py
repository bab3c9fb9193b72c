"""The benchmark runs and reports (no timing asserts), the FLOP count matches a hand count, the
peers script (benchmarks/peers.py) runs the other libraries through the same machinery, and the
fast inference path computes the model's function."""

import importlib.util
import json
import os

import numpy as np
import pytest
from conftest import REPO, TINY
from test_export import assert_cli_error

import keras_vit
from keras_vit import benchmark
from keras_vit.cli import main


def load_peers_script():
    """benchmarks/peers.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("peers", os.path.join(REPO, "benchmarks", "peers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
                 "--peers", "none", "--output", str(out), "--markdown", str(md)])
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
    assert set(report["results"]["latency"]) == {"keras_vit", "keras_vit fast_predictor"}
    assert "keras_vit fast_predictor" not in report["results"]["training"]  # inference only
    table = md.read_text()
    assert "### Training step, batch 2" in table and "| keras_vit |" in table
    assert report["environment"]["cpu_cores"] >= 1 and report["environment"]["cpu"] in table


def test_benchmark_cli_points_the_moved_peers_to_the_script(capsys):
    assert_cli_error(capsys, ["benchmark", "--peers", "onnxruntime,hf,timm"],
                     r"^error: --peers hf,timm: .*moved out of keras_vit; run "
                     r"`python benchmarks/peers\.py --peers hf,timm`")
    assert_cli_error(capsys, ["benchmark", "--peers", "keras_hub"], "benchmarks/peers.py")
    assert_cli_error(capsys, ["benchmark", "--peers", "pytorch"], "Unknown peer 'pytorch'")


def test_peers_script_measures_the_other_libraries(tmp_path, capsys):
    peers = load_peers_script()
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    code = peers.main(["--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "2",
                       "--repeats", "2", "--warmup", "1", "--tasks", "latency,training",
                       "--peers", "keras_hub,hf,timm", "--no-fast", "--output", str(out),
                       "--markdown", str(md)])
    assert code == 0
    report = json.loads(out.read_text())
    table = md.read_text()
    assert table in capsys.readouterr().out  # printed as well as written
    # Peers that are installed are measured beside keras_vit; missing ones say why.
    for peer, name in (("keras_hub", "keras_hub ViTBackbone"), ("hf", "HF ViTForImageClassification"),
                       ("timm", "timm eager")):
        if importlib.util.find_spec({"hf": "transformers"}.get(peer, peer)) is None:
            assert report["skipped"][peer].startswith("not installed")
            assert f"- {peer}: not measured, not installed" in table
        else:
            for task in ("latency", "training"):
                row = report["results"][task][name]
                assert row["repeats"] == 2 and 0 < row["min_ms"] <= row["median_ms"]
            assert f"| {name} |" in table
    assert set(peers.PEERS) == {"keras_hub", "hf", "timm", "onnxruntime"}


# A model whose weights dominate what one step allocates: 6 blocks of width 384, each with
# 12 * 384^2 weights (qkv 3, projection 1, MLP 2 * 4) and 9 * 384 + 1536 biases and LayerNorm
# scales; then the 4x4x3 patch projection, class token, 65 position embeddings, the final
# LayerNorm and a 10-class head: 10.7 M parameters, 40.8 MiB in float32.
MEMORY_CONFIG = dict(TINY, hidden_size=384, num_layers=6, num_heads=6, mlp_dim=1536)
MEMORY_PARAMETERS = (6 * (12 * 384**2 + 9 * 384 + 1536) + (4 * 4 * 3 + 1) * 384 + 384 + 65 * 384
                     + 2 * 384 + (384 + 1) * 10)


def test_memory_counts_the_model_it_ran(tmp_path):
    assert keras_vit.ViT(**MEMORY_CONFIG).count_params() == MEMORY_PARAMETERS == 10_695_562
    weights_mib = 4 * MEMORY_PARAMETERS / 2**20
    out = tmp_path / "results.json"
    main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(MEMORY_CONFIG),
          "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--tasks", "memory",
          "--peers", "none", "--no-fast", "--output", str(out)])
    memory = json.loads(out.read_text())["results"]["memory"]["keras_vit"]
    grown = memory["peak_rss_mib"] - memory["rss_after_imports_mib"]
    # After the imports the subprocess builds the model, predicts and takes SGD-momentum steps:
    # weights, momentum and gradients are all resident at the update, 3x the weights. Above that,
    # TensorFlow's traced functions and kernels cost a fixed amount, far below a GiB (the measured
    # numbers are in benchmarks/RESULTS.md). Less means the peak missed the model (taken before
    # it, or in another process); far more, a unit error (KiB or bytes for MiB).
    assert 3 * weights_mib < grown < 3 * weights_mib + 1024, memory
    assert memory["device_peak_mib"] is None  # a CPU run


def test_benchmark_tflite_latency_and_size(tmp_path):
    out = tmp_path / "results.json"
    main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "2",
          "--repeats", "1", "--warmup", "0", "--tasks", "tflite", "--tflite-modes", "none,float16",
          "--peers", "none", "--no-fast", "--output", str(out)])
    rows = json.loads(out.read_text())["results"]["tflite"]
    # float32 weights of TINY (4 bytes each) plus the graph, and float16 halves the weights.
    weights_mb = 4 * keras_vit.ViT(**TINY).count_params() / 1e6
    assert weights_mb < rows["LiteRT none"]["size_mb"] < weights_mb + 0.2
    assert rows["LiteRT float16"]["size_mb"] < rows["LiteRT none"]["size_mb"] - 0.4 * weights_mb
    for row in rows.values():
        assert row["batch_size"] == 1 and row["repeats"] == 1


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
    contenders, _ = benchmark.build_contenders(MEMORY_CONFIG, "float32", "sgd", ["onnxruntime"],
                                               fast=False)
    ort_contender = contenders[-1]
    assert ort_contender.build_train is None  # inference only
    spec = {"config": MEMORY_CONFIG, "precision": "float32", "optimizer": "sgd", "fast": False,
            "threads": 1}
    memory = benchmark._memory_in_subprocess(spec, ort_contender, [2, 32, 32, 3])
    # ONNX Runtime holds the float32 weights of the file it loaded (inference: no gradients, no
    # optimizer state); its session and arena add a fixed amount, far below half a GiB.
    weights_mib = 4 * MEMORY_PARAMETERS / 2**20
    grown = memory["peak_rss_mib"] - memory["rss_after_imports_mib"]
    assert weights_mib < grown < weights_mib + 512, memory
    # The subprocess ran the file this process converted: one conversion, not one per process.
    before = dict(benchmark._ONNX_FILES)  # earlier tests' configurations may be there too
    path = ort_contender.prepare()
    assert benchmark._ONNX_FILES == before and path in before.values() and os.path.isfile(path)


@pytest.mark.slow
def test_peers_memory_subprocess_builds_the_peer_from_the_script(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "results.json"
    load_peers_script().main(["--model", "ViTTi16", "--config", json.dumps(MEMORY_CONFIG),
                              "--batch-size", "2", "--tasks", "memory", "--peers", "hf",
                              "--no-fast", "--output", str(out)])
    memory = json.loads(out.read_text())["results"]["memory"]
    assert set(memory) == {"keras_vit", "HF ViTForImageClassification"}
    # The subprocess found hf_contender in benchmarks/peers.py and ran the same-sized PyTorch
    # model: weights, gradients and momentum resident, as for keras_vit (see above).
    weights_mib = 4 * MEMORY_PARAMETERS / 2**20
    for row in memory.values():
        grown = row["peak_rss_mib"] - row["rss_after_imports_mib"]
        assert 3 * weights_mib < grown < 3 * weights_mib + 1024, memory


def test_benchmark_pipeline_beside_training(tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    main(["benchmark", "--model", "ViTTi16", "--config", json.dumps(TINY), "--batch-size", "4",
          "--repeats", "2", "--warmup", "1", "--tasks", "training,pipeline", "--peers", "none",
          "--no-fast", "--output", str(out), "--markdown", str(md)])
    report = json.loads(out.read_text())
    row = report["results"]["pipeline"]["keras_vit.data pipeline"]
    assert row["batch_size"] == 4 and row["repeats"] == 2
    assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
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


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Unknown peer 'pytorch'"):
        benchmark.build_contenders(TINY, "float32", "sgd", ["pytorch"])
    with pytest.raises(ValueError, match="Unknown peer 'hf'"):  # only benchmarks/peers.py has it
        benchmark.build_contenders(TINY, "float32", "sgd", ["hf"])
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        benchmark.resolve_config("ViTQ7")
    with pytest.raises(ValueError, match="Unknown task"):
        benchmark.run_suite(TINY, tasks=("speed",))


def test_summarize_by_hand():
    # Four timings: the median of 0.1, 0.2, 0.3, 0.6 s is 0.25 s; 8 images in 0.25 s are 32/s.
    # 5e10 FLOPs an image at 32 images/s is 1.6 TFLOP/s, 16% of a 10 TFLOP/s peak.
    row = benchmark.summarize([0.3, 0.1, 0.6, 0.2], 8, flops_per_image=5e10, peak_tflops=10.0)
    assert row == pytest.approx({"median_ms": 250.0, "min_ms": 100.0, "max_ms": 600.0,
                                 "images_per_s": 32.0, "repeats": 4, "batch_size": 8, "mfu": 0.16})
    # Without a known peak (a CPU) there is no MFU column.
    assert "mfu" not in benchmark.summarize([0.5], 1, flops_per_image=5e10)


def test_time_interleaved_round_robin():
    calls = []
    times = benchmark.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                       repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times.values()] == [3, 3]

