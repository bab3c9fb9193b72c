"""Pretrained checkpoints: Google `.npz` (ViT paper, AugReg, big_vision), Hugging Face and timm.

    model = keras_vit.ViTB16(weights="imagenet21k+imagenet2012")       # registered: download, cache
    model = keras_vit.ViTB16(weights="imagenet21k", image_size=384, num_classes=10)  # fine-tuning
    model = keras_vit.load_pretrained("google-vit-base-patch16-224/")  # HF folder
    model = keras_vit.load_pretrained("deit_tiny_patch16_224/model.safetensors")     # timm file
    model = keras_vit.load_pretrained("runs/x/model.keras")  # a trained model, safe mode, as saved
    model = keras_vit.load_pretrained("hf://timm/deit_tiny_patch16_224.fb_in1k")  # the Hub (hub.py)
    model = keras_vit.R50ViTB16(weights="imagenet21k+imagenet2012")  # a hybrid (ResNet + ViT)
    model = keras_vit.DeiTTi16(distilled=True, weights="imagenet1k")  # distilled DeiT, via the Hub

Every format is converted to one canonical state dict `{keras variable path: np.ndarray}` (the
paths in `keras_vit.layers`' docstring), then assigned by `variable.path` with strict checks: no
tensor missing or left over, no block missing (a config's or the asked architecture's depth must
be the file's), no NaN/inf. The format is told by the file's contents, never by its name (a
`.keras` model, which Keras loads only under that suffix, aside); pickles (`.pth`, `.bin`) are
refused.

The modules, in the order they depend on each other:
- `registry`: the published checkpoints (`REGISTRY`, `describe_registry`, `registry_entry`);
- `checkpoint`: `Checkpoint`, what every format converts to, and the converters' shared helpers;
- `formats/`: one module per checkpoint format (`matches`, `convert`), tried in `FORMATS` order;
- `files`: reading files and folders (`read_checkpoint`: container, shards, format);
- `hub`: `hf://ORG/NAME[@REVISION]` through the Hugging Face client;
- `downloads`: the cache of registered checkpoints (`fetch`, `download`, SHA-256 pins);
- `build`: models from checkpoints (`load_pretrained`, `build_with_weights`, `assign_state`).
This package needs NumPy and `safetensors` only (no TensorFlow).
"""

from keras_vit.weights.build import (
    assign_state,
    build_with_weights,
    load_keras_model,
    load_model_or_checkpoint,
    load_pretrained,
)
from keras_vit.weights.checkpoint import STANDARD_DEPTHS, STANDARD_HEADS, Checkpoint
from keras_vit.weights.downloads import cache_folder, download, fetch
from keras_vit.weights.files import PICKLE_SUFFIXES, PREFERRED_WEIGHT_FILES, read_checkpoint
from keras_vit.weights.registry import REGISTRY, WeightsEntry, describe_registry, registry_entry

__all__ = [
    "PICKLE_SUFFIXES", "PREFERRED_WEIGHT_FILES", "REGISTRY", "STANDARD_DEPTHS", "STANDARD_HEADS",
    "Checkpoint", "WeightsEntry", "assign_state", "build_with_weights", "cache_folder",
    "describe_registry", "download", "fetch", "load_keras_model", "load_model_or_checkpoint",
    "load_pretrained", "read_checkpoint", "registry_entry",
]
