"""keras_vit beside other libraries' ViTs: KerasHub, Hugging Face transformers and timm.

    python benchmarks/peers.py --model ViTS16 --batch-size 8 --precision bfloat16 \\
        --peers keras_hub,hf,timm --output results.json --markdown results.md
    KERAS_BACKEND=jax python benchmarks/peers.py --model ViTB16 --batch-size 256 --peers timm

The same options, tasks, table and JSON as `keras-vit benchmark` (`keras_vit.benchmark.run_suite`:
interleaved timing, one fresh subprocess per contender for memory, MFU on GPU), with these
contenders beside keras_vit, its fast predictor and its ONNX Runtime export:
- `keras_hub`: KerasHub's `ViTBackbone` + `ViTImageClassifier` (a Keras model, same backend);
- `hf`: transformers' PyTorch `ViTForImageClassification`;
- `timm`: timm's `VisionTransformer`, eager and `torch.compile`d.
The PyTorch models run on CUDA when there is one, else on the CPU; they get the same pixels,
normalised outside the timed region. A library that is not installed is skipped, and the table
says so (`pip install -e ".[benchmark]"` adds them). They live here, not in the package: keras_vit
does not depend on them, and the command `keras-vit benchmark` measures keras_vit alone.
"""

import argparse
import sys

import numpy as np

from keras_vit import benchmark
from keras_vit.cli.benchmark import add_benchmark_arguments, run_benchmark


def keras_hub_contender(config, precision, optimizer):
    """KerasHub's `ViTBackbone` + `ViTImageClassifier` head ("token" pooling, same sizes). It has no
    in-graph normalisation, so it gets the same pixels; normalisation is one multiply-add."""
    import keras_hub

    def build(dtype):
        size = config["image_size"]
        size = (size, size) if np.isscalar(size) else tuple(size)
        backbone = keras_hub.models.ViTBackbone(
            image_shape=(*size, 3), patch_size=config["patch_size"], num_layers=config["num_layers"],
            num_heads=config["num_heads"], hidden_dim=config["hidden_size"],
            mlp_dim=config["mlp_dim"], layer_norm_epsilon=1e-6, dtype=dtype)
        return keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=config["num_classes"],
                                                   pooling="token", preprocessor=None)

    contender = benchmark.keras_contender("keras_hub ViTBackbone", "keras_hub", build, precision, optimizer)
    contender.settings["version"] = keras_hub.__version__
    return contender


def _torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_device_peak_mib():
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _torch_contender(name, library, build_model, precision, optimizer, compile_model=False):
    """A PyTorch model on normalised NCHW inputs: `inference_mode` (bf16 weights for bfloat16);
    training with float32 master weights under `autocast(bfloat16)`."""
    import torch

    device = _torch_device()
    dtype = getattr(torch, precision)

    def to_nchw(images):
        # Normalisation to [-1, 1] happens here, outside the timed region (the Keras models do it
        # inside theirs: one fused multiply-add, a negligible cost).
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)) / 127.5 - 1.0).to(
            device=device, dtype=torch.float32)

    def predict_fn(images):
        model = build_model().to(device=device, dtype=dtype).eval()
        run = torch.compile(model) if compile_model else model
        inputs = to_nchw(images).to(dtype)

        def predict(batch):
            with torch.inference_mode():
                out = run(inputs if batch is images else to_nchw(batch).to(dtype))
                return (out.logits if hasattr(out, "logits") else out).float().cpu().numpy()

        return predict

    def train_fn(images, labels):
        model = build_model().to(device=device).train()
        run = torch.compile(model) if compile_model else model
        params = model.parameters()
        opt = (torch.optim.SGD(params, lr=1e-3, momentum=0.9) if optimizer == "sgd"
               else torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05))
        inputs, targets = to_nchw(images), torch.from_numpy(labels).long().to(device)

        def step():
            with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                out = run(inputs)
                logits = out.logits if hasattr(out, "logits") else out
                loss = torch.nn.functional.cross_entropy(logits.float(), targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.item()

        return step

    settings = {"device": device, "torch": torch.__version__, "torch.compile": compile_model,
                "inference dtype": precision,
                "training": "autocast bfloat16" if precision == "bfloat16" else "float32"}
    return benchmark.Contender(name, library, settings, predict_fn, train_fn,
                               device_peak_mib=_torch_device_peak_mib)


def hf_contender(config, precision, optimizer):
    """Hugging Face transformers' PyTorch `ViTForImageClassification` of the same configuration."""
    import transformers

    size = config["image_size"]
    hf_config = transformers.ViTConfig(
        hidden_size=config["hidden_size"], num_hidden_layers=config["num_layers"],
        num_attention_heads=config["num_heads"], intermediate_size=config["mlp_dim"],
        image_size=size if np.isscalar(size) else size[0], patch_size=config["patch_size"],
        num_labels=config["num_classes"], layer_norm_eps=1e-6, hidden_act="gelu")

    def build():
        return transformers.ViTForImageClassification(hf_config)

    contender = _torch_contender("HF ViTForImageClassification", "transformers", build, precision,
                                 optimizer)
    contender.settings.update(transformers=transformers.__version__,
                              attention=getattr(hf_config, "_attn_implementation", None) or "sdpa")
    return contender


def timm_contenders(config, precision, optimizer):
    """timm's VisionTransformer (`vit_base_patch16_224` for B/16), eager and `torch.compile`d."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    def build():
        return VisionTransformer(img_size=config["image_size"], patch_size=config["patch_size"],
                                 embed_dim=config["hidden_size"], depth=config["num_layers"],
                                 num_heads=config["num_heads"],
                                 mlp_ratio=config["mlp_dim"] / config["hidden_size"],
                                 num_classes=config["num_classes"])

    contenders = [_torch_contender("timm eager", "timm", build, precision, optimizer),
                  _torch_contender("timm torch.compile", "timm", build, precision, optimizer,
                                   compile_model=True)]
    for contender in contenders:
        contender.settings["timm"] = timm.__version__
    return contenders


# `--peers` name -> builder; the memory subprocesses find these functions again in this file.
PEER_BUILDERS = {"keras_hub": keras_hub_contender, "hf": hf_contender, "timm": timm_contenders}
PEERS = (*PEER_BUILDERS, *benchmark.PEERS)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python benchmarks/peers.py",
        description="keras_vit beside KerasHub, Hugging Face and timm: speed, memory and MFU.")
    add_benchmark_arguments(parser, peers=PEERS)
    return run_benchmark(parser.parse_args(argv), builders=PEER_BUILDERS)


if __name__ == "__main__":
    sys.exit(main())
