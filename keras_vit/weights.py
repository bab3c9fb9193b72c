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
This module needs NumPy and `safetensors` only (no TensorFlow).
"""

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import time
import zipfile

import numpy as np

from keras_vit import layers as L
from keras_vit import models as M
from keras_vit import resnet
from keras_vit.config import INTERPOLATIONS
from keras_vit.fileio import write_text

logger = logging.getLogger("keras_vit")

# The standard ViT widths and their head counts (Ti, S, B, L, H), for checkpoints whose tensors
# cannot tell the number of heads and that come without a config.
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
STANDARD_DEPTHS = {192: 12, 384: 12, 768: 12, 1024: 24, 1280: 32}  # to flag files missing blocks
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")
# The checkpoint file of a folder that holds several (a timm CLIP repo has both).
PREFERRED_WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors")


# ----------------------------------------------------------------------------------------------
# Registry of published weights


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """A published checkpoint: where it is, what it holds, and its SHA-256 once pinned."""

    url: str
    resolution: int
    num_classes: int
    description: str
    sha256: str = None  # None: not pinned yet; the downloaded file's hash is logged

    @property
    def fname(self):
        """Cache file name; the paper's folders reuse base names, so the folder is part of it."""
        folder, name = self.url.replace("%2B", "+").split("/")[-2:]
        return name if folder == "augreg" else f"{folder}_{name}"

    @property
    def on_hub(self):
        """A Hugging Face Hub repository (`hf://...`): fetched and verified by its client."""
        return self.url.startswith("hf://")

    @property
    def names(self):
        """What `load_pretrained` finds the entry by besides `VARIANT:NAME`: its URL and file name
        (and cache name); a Hub entry also by its timm model name, with and without the tag
        (`deit_tiny_patch16_224.fb_in1k`, `deit_tiny_patch16_224`)."""
        last = self.url.rsplit("/", 1)[-1].replace("%2B", "+")
        return (self.url, last, last.split(".")[0]) if self.on_hub else (self.url, last, self.fname)


_GCS = "https://storage.googleapis.com/vit_models"
_AUGREG = {  # variant: (pre-training file stem, 224px fine-tuned stem, 384px fine-tuned stem)
    # Pre-training and 384px: the recommended checkpoints of google-research/vision_transformer's
    # README; 224px: the ones timm ships.
    "Ti/16": ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
              "--imagenet2012-steps_20k-lr_0.03-res_224", "--imagenet2012-steps_20k-lr_0.03-res_384"),
    "S/16": ("S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
             "--imagenet2012-steps_20k-lr_0.03-res_224", "--imagenet2012-steps_20k-lr_0.03-res_384"),
    "S/32": ("S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0", None,
             "--imagenet2012-steps_20k-lr_0.01-res_384"),
    "B/16": ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
             "--imagenet2012-steps_20k-lr_0.01-res_224", "--imagenet2012-steps_20k-lr_0.03-res_384"),
    "B/32": ("B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", None,
             "--imagenet2012-steps_20k-lr_0.01-res_384"),
    "B/8": ("B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
            "--imagenet2012-steps_20k-lr_0.01-res_224", None),
    "L/16": ("L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0", None,
             "--imagenet2012-steps_20k-lr_0.01-res_384"),
    # The hybrids (the README's R+Ti/16, R26+S/32 and R50+L/32 rows).
    "R+Ti/16": ("R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
                "--imagenet2012-steps_20k-lr_0.03-res_224", "--imagenet2012-steps_20k-lr_0.03-res_384"),
    "R26+S/32": ("R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", None,
                 "--imagenet2012-steps_20k-lr_0.01-res_384"),
    "R50+L/32": ("R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1",
                 "--imagenet2012-steps_20k-lr_0.01-res_224", "--imagenet2012-steps_20k-lr_0.01-res_384"),
}
# 224px fine-tunes that timm ships from other pre-training runs than the recommended ones.
_AUGREG_224_OTHER = {
    "S/32": "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "B/32": "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224",
    "L/16": "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "R26+S/32": "R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.03-res_224",
}
# The paper's hybrids in its folders (R50+ViT-B/16 is the one its README announces; the
# ImageNet-21k folder also holds R50+ViT-L/32).
_PAPER_HYBRIDS = {"R50+B/16": ("R50%2BViT-B_16.npz", True), "R50+L/32": ("R50%2BViT-L_32.npz", False)}
# DeiT (Touvron et al., 2020): the official weights are pickles (dl.fbaipublicfiles.com/deit/*.pth),
# which are never loaded; timm's Hub repositories publish the same weights as safetensors, with a
# config.json holding the architecture and ImageNet mean/std. variant: timm size name.
_DEIT_SIZES = {"Ti/16": "tiny", "S/16": "small", "B/16": "base"}
_AUGREG_IN1K = {  # AugReg trained on ImageNet-1k only
    "S/16": "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224",
    "B/16": "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
    "B/32": "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224",
}


def _build_registry():
    registry = {}
    for variant in ("B/16", "B/32", "L/16", "L/32", "H/14"):
        file = f"ViT-{variant.replace('/', '_')}.npz"
        registry[variant, "imagenet21k"] = WeightsEntry(
            f"{_GCS}/imagenet21k/{file}", 224, 21843,
            "ViT paper, ImageNet-21k pre-training (zero head: for fine-tuning)")
        if variant != "H/14":
            registry[variant, "imagenet21k+imagenet2012"] = WeightsEntry(
                f"{_GCS}/imagenet21k%2Bimagenet2012/{file}", 384, 1000,
                "ViT paper, ImageNet-21k pre-training, ImageNet-1k fine-tuning at 384px")
    for variant, (file, fine_tuned) in _PAPER_HYBRIDS.items():
        registry[variant, "imagenet21k"] = WeightsEntry(
            f"{_GCS}/imagenet21k/{file}", 224, 21843,
            "ViT paper hybrid, ImageNet-21k pre-training (zero head: for fine-tuning)")
        if fine_tuned:
            registry[variant, "imagenet21k+imagenet2012"] = WeightsEntry(
                f"{_GCS}/imagenet21k%2Bimagenet2012/{file}", 384, 1000,
                "ViT paper hybrid, ImageNet-21k pre-training, ImageNet-1k fine-tuning at 384px")
    for variant, size in _DEIT_SIZES.items():
        resolutions = (224, 384) if variant == "B/16" else (224,)
        for resolution, distilled in ((r, d) for r in resolutions for d in (False, True)):
            name = "imagenet1k" + ("_384" if resolution == 384 else "") + ("_distilled" if distilled else "")
            registry[variant, name] = WeightsEntry(
                f"hf://timm/deit_{size}{'_distilled' if distilled else ''}_patch16_{resolution}"
                f".fb_in1k", resolution, 1000,
                f"DeiT{', distilled (two heads)' if distilled else ''}, ImageNet-1k only at "
                f"{resolution}px (timm's safetensors of Facebook's weights)")
    for variant in ("B/16", "L/16"):
        file = f"ViT-{variant.replace('/', '_')}-224.npz"
        registry[variant, "imagenet21k+imagenet2012_224"] = WeightsEntry(
            f"{_GCS}/imagenet21k%2Bimagenet2012/{file}", 224, 1000,
            "ViT paper, ImageNet-21k pre-training, ImageNet-1k fine-tuning at 224px")
    for variant, (stem, ft224, ft384) in _AUGREG.items():
        registry[variant, "augreg_in21k"] = WeightsEntry(
            f"{_GCS}/augreg/{stem}.npz", 224, 21843, "AugReg, ImageNet-21k pre-training")
        stem224 = stem + ft224 if ft224 else _AUGREG_224_OTHER[variant]
        registry[variant, "augreg_in21k_ft_in1k"] = WeightsEntry(
            f"{_GCS}/augreg/{stem224}.npz", 224, 1000,
            "AugReg, ImageNet-21k pre-training, ImageNet-1k fine-tuning at 224px")
        if ft384:
            registry[variant, "augreg_in21k_ft_in1k_384"] = WeightsEntry(
                f"{_GCS}/augreg/{stem}{ft384}.npz", 384, 1000,
                "AugReg, ImageNet-21k pre-training, ImageNet-1k fine-tuning at 384px")
    for variant, stem in _AUGREG_IN1K.items():
        registry[variant, "augreg_in1k"] = WeightsEntry(
            f"{_GCS}/augreg/{stem}.npz", 224, 1000, "AugReg, ImageNet-1k only")
    # The paper published no Ti/S/B-8 models and no R+Ti/16, R26+S/32 or fine-tuned R50+L/32:
    # their paper-style names point at AugReg's.
    for variant in ("Ti/16", "S/16", "S/32", "B/8", "R+Ti/16", "R26+S/32", "R50+L/32"):
        registry.setdefault((variant, "imagenet21k"), registry[variant, "augreg_in21k"])
        fine_tuned = registry.get((variant, "augreg_in21k_ft_in1k_384"),
                                  registry[variant, "augreg_in21k_ft_in1k"])
        registry[variant, "imagenet21k+imagenet2012"] = fine_tuned
    return registry


REGISTRY = _build_registry()


def describe_registry():
    """Printable lines, one per registered checkpoint (`keras-vit info` shows them)."""
    lines = ["Registered weights (variant, name, resolution, classes, SHA-256, URL):"]
    for (variant, name), entry in sorted(REGISTRY.items()):
        pinned = entry.sha256[:12] if entry.sha256 else "by the Hub" if entry.on_hub else "not pinned"
        lines.append(f"  {variant:<8} {name:<30} {entry.resolution}px {entry.num_classes:>6} classes"
                     f"  sha256: {pinned:<12}  {entry.url}")
    lines.append("Use them as keras_vit.ViTB16(weights='imagenet21k') or "
                 "keras_vit.load_pretrained('B/16:imagenet21k'); local files load by path.")
    return lines


def registry_entry(variant, name):
    """The `WeightsEntry` for `(variant, name)`; ValueError listing the valid names otherwise."""
    if (variant, name) not in REGISTRY:
        names = sorted(n for v, n in REGISTRY if v == variant)
        raise ValueError(
            f"No registered weights {name!r} for {_display_name(variant)}: expected one of {names}"
            + ("" if names else " (none are registered for this variant)")
            + ", or a local checkpoint path."
        )
    return REGISTRY[variant, name]


def _display_name(variant):
    return variant if variant in M.HYBRID_VARIANTS else f"ViT-{variant}"  # "R50+B/16", "ViT-B/16"


def cache_folder():
    """Where registered checkpoints are cached: `$KERAS_HOME/keras_vit` (default `~/.keras/keras_vit`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras_vit")


def fetch(entry):
    """The local path of a registered checkpoint: `download(entry)`, or for a Hub entry the
    snapshot `keras_vit.hub` fetches (the client verifies each file against the Hub's SHA-256)."""
    if entry.on_hub:
        from keras_vit import hub

        return hub.snapshot(entry.url)
    return download(entry)


def download(entry):
    """Downloads a registered checkpoint once into `cache_folder()` and verifies it.

    The file arrives under a temporary name and is moved into place only when complete and
    verified, so a killed download never leaves a file that looks cached. An entry without a
    published SHA-256 is pinned on first use: the complete file's hash is written beside it
    (`<file>.sha256`) *before* the file is moved in, so a cached file without its pin was not
    completed by this code (an older, interrupted download) and is fetched again, never pinned.
    """
    folder = cache_folder()
    path = os.path.join(folder, entry.fname)
    pin = path + ".sha256"
    if os.path.isfile(path):
        expected = entry.sha256 or _read_pin(pin)
        if expected:
            _verify_hash(path, expected, entry.url, None if entry.sha256 else pin, True)
            return path
        logger.warning("%s has no pinned SHA-256 (%s absent): an interrupted download? Downloading "
                       "it again.", path, pin)
    os.makedirs(folder, exist_ok=True)
    _remove_stale_partials(folder, entry.fname)
    partial = f"{path}.{os.urandom(4).hex()}.part"  # one per download: concurrent ones don't mix
    open(partial, "xb").close()  # a cache folder we cannot write to fails here, not as "offline"
    try:
        try:
            _fetch(entry.url, partial)
        except Exception as error:
            raise ConnectionError(
                f"Could not download {entry.url} ({error}). Without network access, fetch the file "
                f"elsewhere and pass its local path instead of the name, e.g. "
                f"keras_vit.load_pretrained('/path/to/{entry.fname}')."
            ) from None
        expected = entry.sha256 or _read_pin(pin)
        if expected:
            _verify_hash(partial, expected, entry.url, None if entry.sha256 else pin, False)
        else:
            digest = _sha256(partial)
            write_text(pin, digest + "\n")
            logger.warning("%s has no SHA-256 in keras_vit's registry: pinned the downloaded file's "
                           "SHA-256 %s in %s; later loads are verified against it.", entry.url,
                           digest, pin)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def _fetch(url, destination):
    """Streams `url` into `destination` (a progress bar on the console); a short read is an error."""
    import urllib.request

    from keras.utils import Progbar

    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as file:
        total = int(response.headers.get("Content-Length") or 0) or None  # None: not told
        progress, received = Progbar(total, unit_name="byte"), 0
        for block in iter(lambda: response.read(1 << 20), b""):
            file.write(block)
            received += len(block)
            progress.update(received)
    if total is not None and received != total:
        raise ConnectionError(f"the transfer ended after {received} of {total} bytes")


def _remove_stale_partials(folder, fname, max_age_s=3600):
    """Temporary files of downloads killed over an hour ago (a live one keeps writing to its own)."""
    for name in os.listdir(folder):
        partial = os.path.join(folder, name)
        if (name.startswith(fname + ".") and name.endswith(".part") and os.path.isfile(partial)
                and time.time() - os.path.getmtime(partial) > max_age_s):
            os.remove(partial)


def _read_pin(pin):
    if not os.path.isfile(pin):
        return None
    with open(pin, encoding="utf-8") as file:
        return file.read().strip()


def _verify_hash(path, expected, url, pin, cached):
    """`pin`: the pin file `expected` came from, None for a hash published in the registry."""
    digest = _sha256(path)
    if digest == expected:
        return
    source = f"{expected} was pinned in {pin} at its first download" if pin else \
        f"keras_vit's registry publishes {expected}"
    if cached:
        raise ValueError(f"The cached checkpoint {path} has SHA-256 {digest}, but {source} from "
                         f"{url}: the cached file is corrupt or was changed. Delete {path} to "
                         f"download it again" + (f" (and {pin} if the file changed upstream)."
                                                 if pin else "."))
    raise ValueError(f"The file downloaded from {url} has SHA-256 {digest}, but {source}: it "
                     f"changed upstream or in transit, and was not cached."
                     + (f" Delete {pin} to trust the new file." if pin else ""))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _variant_of(config):
    """`"B/16"` for a ViT kwargs dict with that patch, width and depth (`"R50+B/16"` with the
    hybrid's backbone too); None otherwise."""
    patch = L._pair(config.get("patch_size", 16), "patch_size")
    for variant in (*M.VARIANTS, *M.HYBRID_VARIANTS):
        wanted = M.variant_config(variant)
        if (patch == L._pair(wanted["patch_size"], "patch_size")
                and (config.get("hidden_size"), config.get("num_layers"))
                == (wanted["hidden_size"], wanted["num_layers"])
                and _backbone_shape(config.get("backbone")) == _backbone_shape(wanted.get("backbone"))):
            return variant
    return None


def _backbone_shape(backbone):
    """A hybrid's backbone config without its numerics (which follow the checkpoint's source):
    `{"block_units": [...], "width_factor": w}`; None without a backbone."""
    if not isinstance(backbone, dict):
        return backbone  # None, or a bad value the model names when it is built
    return {"block_units": list(backbone.get("block_units", ())),
            "width_factor": backbone.get("width_factor", 1)}


def _resolve(path_or_name):
    """`(path, variant)`: a local path as it is (variant None); `"hf://ORG/NAME[@REVISION]"` -> its
    folder in the Hugging Face cache (variant None); `"B/16:imagenet21k"` or a registered file name
    -> the downloaded path and the variant it is registered for."""
    path = os.fspath(path_or_name)
    from keras_vit import hub  # imports huggingface_hub only for hf:// ids

    if hub.is_hub_id(path):
        return hub.snapshot(path), None
    if os.path.exists(path):
        return path, None
    if ":" in path:
        variant, name = path.split(":", 1)
        if variant in M.VARIANTS or variant in M.HYBRID_VARIANTS:
            return fetch(registry_entry(variant, name)), variant
    for (variant, _), entry in REGISTRY.items():
        if path in entry.names:
            return fetch(entry), variant
    raise FileNotFoundError(
        f"No checkpoint at {path!r}: expected a local file or folder (Google .npz, Hugging Face "
        f"folder or .safetensors, timm .safetensors, a .keras model), 'hf://ORG/NAME[@REVISION]' "
        f"(the Hugging Face Hub), 'VARIANT:NAME' such as 'B/16:imagenet21k', or a registered file "
        f"or timm model name (keras_vit.weights.describe_registry() lists them)."
    )


# ----------------------------------------------------------------------------------------------
# Reading files


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint converted to keras_vit's variable paths, with what it says about itself.

    `architecture` holds `VisionTransformer` kwargs (patch_size, hidden_size, num_layers,
    num_heads, mlp_dim, image_size, num_classes (None without a head), representation_size,
    pooling, class_token, num_registers, layer_scale_init_value, backbone (a hybrid's ResNet with
    its source's numerics, else None), distilled, distillation_head). A hybrid's `patch_size` is
    on the ResNet's feature map.
    """

    state: dict
    architecture: dict
    normalization: tuple  # (mean, std) of [0, 1] pixels
    layer_norm_epsilon: float
    class_names: list
    source_format: str  # "google_npz", "big_vision", "huggingface" or "timm"
    resample_method: str  # how the source resamples position embeddings
    antialias: bool = False
    path: str = ""
    include_preprocessing: bool = True  # False only for a saved model that takes normalised inputs
    # How the source's evaluation prepares an image (the fraction of the resized image's short side
    # that is centre-cropped, and the resampling filter); set by every format.
    crop_pct: float = M.DEFAULTS["crop_pct"]
    interpolation: str = M.DEFAULTS["interpolation"]


def read_checkpoint(path, num_heads=None, image_size=None):
    """Reads a checkpoint file or folder into a `Checkpoint`; the format comes from its contents.

    `num_heads` is needed only where neither the tensors nor a config tell it (a timm or Hugging
    Face file of a non-standard width without its config.json). `image_size` is the size the model
    is wanted at: it tells the patch grid of a rectangular checkpoint that has no config (its
    position embedding is a flat list of entries), when its patch count matches.

    >>> ckpt = read_checkpoint("deit_tiny_patch16_224/model.safetensors")
    >>> ckpt.architecture["hidden_size"], ckpt.source_format  # (192, 'timm')
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint file or folder at {path!r}.")
    files, folder, weight_map = ([path], os.path.dirname(path), None)
    if os.path.isdir(path):
        files, weight_map = _weight_files_in(path)
        folder = path
    configs = {name: _read_json(os.path.join(folder, name))
               for name in ("config.json", "preprocessor_config.json")
               if os.path.isfile(os.path.join(folder, name))}
    kind = _sniff(files[0])
    tensors = _read_npz(files[0]) if kind == "npz" else _read_safetensors(files, weight_map)
    _check_finite(tensors, path)
    keys = set(tensors)
    processor = configs.get("preprocessor_config.json")
    if kind == "npz":
        checkpoint = _from_google(tensors, files[0], image_size)
    elif any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        checkpoint = _from_huggingface(tensors, configs.get("config.json", {}), processor, files[0],
                                       num_heads, image_size)
    elif "patch_embed.proj.weight" in keys:
        checkpoint = _from_timm(tensors, configs.get("config.json", {}), processor, files[0],
                                num_heads, image_size)
    else:
        raise ValueError(
            f"{files[0]!r} is a safetensors file but not a ViT checkpoint this library knows: "
            f"expected Hugging Face keys ('vit.embeddings.patch_embeddings.projection.weight', "
            f"'deit.embeddings...', ...) or timm keys ('patch_embed.proj.weight', ...); it has "
            f"{sorted(keys)[:5]} ..."
        )
    checkpoint.path = path
    return checkpoint


def _weight_files_in(folder):
    """`(files, weight_map)`: the checkpoint files of a folder, and a sharded checkpoint's index."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):  # sharded Hugging Face checkpoint
        weight_map = _read_json(index).get("weight_map")
        if not (isinstance(weight_map, dict) and weight_map
                and all(isinstance(v, str) and v for v in weight_map.values())):
            raise ValueError(f"{index!r} is not a usable shard index: its 'weight_map' must be a "
                             f"non-empty object mapping tensor names to shard files, got "
                             f"{weight_map!r:.200}.")
        files = []
        for shard in sorted(set(weight_map.values())):
            # Lexical check: the HF cache's shards are symlinks into its blobs/ folder, legitimately.
            normalised = os.path.normpath(shard)
            if (os.path.isabs(shard) or os.path.splitdrive(shard)[0]
                    or normalised == os.pardir or normalised.startswith(os.pardir + os.sep)):
                raise ValueError(f"{index!r} names the shard {shard!r}, a path outside the folder "
                                 f"{folder!r}: refused (shards must be files inside it).")
            files.append(os.path.join(folder, normalised))
            if not os.path.isfile(files[-1]):
                raise FileNotFoundError(f"{index!r} names the shard {shard!r}, which {folder!r} "
                                        f"lacks.")
        return files, {name: os.path.join(folder, os.path.normpath(shard))
                       for name, shard in weight_map.items()}
    for name in PREFERRED_WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return [os.path.join(folder, name)], None
    found = sorted(os.listdir(folder))
    weights = [f for f in found if f.endswith((".safetensors", ".npz"))]
    if len(weights) == 1:
        return [os.path.join(folder, weights[0])], None
    pickles = [f for f in found if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        _refuse_pickle(os.path.join(folder, pickles[0]))
    raise FileNotFoundError(
        f"Folder {folder!r} holds no single checkpoint: expected model.safetensors (Hugging Face, "
        f"timm) or one .npz / .safetensors file, found {found}."
    )


def _read_json(path):
    """A JSON file that must hold an object (config.json, preprocessor_config.json, shard index)."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"Could not read the JSON file {path!r}: {error}") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path!r} must hold a JSON object ({{...}}), but holds a "
                         f"{type(content).__name__}: {content!r:.100}.")
    return content


def _section(config, key, path):
    """`config[key]` as a dict ({} when absent): a config of the wrong shape is a clear error."""
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path!r}: '{key}' in its config.json must be an object, got {value!r:.100}.")
    return value


def _config_int(config, key, path):
    """A non-negative int from a config (None when absent); anything else is a clear error."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{path!r}: '{key}' in its config.json must be a non-negative int, got "
                         f"{value!r:.100}.")
    return value


def _check_finite(tensors, path):
    """NaN or inf in a weight makes every prediction NaN: refuse the file, naming the tensors."""
    bad = {}
    for name, value in tensors.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad[name] = f"{value.size - int(np.isfinite(value).sum())} of {value.size}"
    if bad:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(bad.items())[:10])
        raise ValueError(f"{path!r} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), "
                         f"which would make every prediction NaN: {listed}"
                         f"{' ...' if len(bad) > 10 else ''}.")


def _refuse_pickle(path):
    raise ValueError(
        f"{path!r} is a pickle-based PyTorch checkpoint. keras_vit never unpickles files (a pickle "
        f"can run arbitrary code). Convert it to safetensors first, e.g. in PyTorch: "
        f"`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')`, "
        f"or download the model.safetensors that Hugging Face / timm publish."
    )


def _sniff(path):
    """'npz' or 'safetensors' from the first bytes; clear errors for pickles, text and truncation."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:
            raise ValueError(f"{path!r} is a truncated or corrupt zip/.npz file: {error}.") from None
        if any(n.endswith(".pkl") for n in names):
            _refuse_pickle(path)
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        if {"config.json", "metadata.json"} <= set(names):
            raise ValueError(f"{path!r} is a Keras model archive: Keras loads it only under a "
                             f"name ending in .keras; rename it.")
        raise ValueError(f"{path!r} is a zip file but not an .npz checkpoint: it holds {names[:5]}.")
    if head[:1] == b"\x80" or path.endswith(PICKLE_SUFFIXES):
        _refuse_pickle(path)
    if len(head) >= 9 and head[8:9] == b"{":
        header_size = int.from_bytes(head[:8], "little")
        if 8 + header_size > size:
            raise ValueError(f"{path!r} is a truncated safetensors file: its header says "
                             f"{header_size} header bytes, the file has {size} bytes in all.")
        return "safetensors"
    raise ValueError(
        f"{path!r} is not a checkpoint: expected a Google .npz (zip) or a .safetensors file, got a "
        f"file of {size} bytes starting with {head[:12]!r}."
    )


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"Could not read {path!r} as .npz (truncated, corrupt, or holding "
                         f"pickled objects, which are not loaded): {error}") from None


def _read_safetensors(paths, weight_map=None):
    """The tensors of one file or of shards; `weight_map` (a shard index: tensor -> shard path)
    must describe the shards exactly, so that a lost or duplicated tensor is caught here."""
    from safetensors.numpy import load_file

    tensors, where = {}, {}
    for path in paths:
        try:
            shard = load_file(path)
        except Exception as error:  # safetensors' own error type varies between versions
            raise ValueError(f"Could not read {path!r} as safetensors (truncated or corrupt, or a "
                             f"dtype NumPy lacks, such as bfloat16: save it as float32): "
                             f"{error}") from None
        twice = sorted(set(shard) & set(tensors))
        if twice:
            raise ValueError(f"The shards {where[twice[0]]!r} and {path!r} both hold {twice[:5]}.")
        tensors.update(shard)
        where.update(dict.fromkeys(shard, path))
    if weight_map is not None and where != weight_map:
        lost = sorted(k for k in weight_map if where.get(k) != weight_map[k])
        unlisted = sorted(set(where) - set(weight_map))
        raise ValueError(
            f"The shards in {os.path.dirname(paths[0])!r} do not match their index "
            f"(model.safetensors.index.json): "
            + (f"{len(lost)} tensor(s) not in the shard the index names: "
               f"{[(k, weight_map[k]) for k in lost[:5]]}" if lost else "")
            + ("; " if lost and unlisted else "")
            + (f"{len(unlisted)} tensor(s) the index does not list: {unlisted[:5]}" if unlisted else "")
            + ".")
    return tensors


class _Tensors:
    """The source's tensors; `take` removes one (a clear error when absent), so what is left at
    the end is unexpected."""

    def __init__(self, tensors, path):
        self.tensors = dict(tensors)
        self.path = path

    def __contains__(self, key):
        return key in self.tensors

    def take(self, key, needed_for):
        if key not in self.tensors:
            raise ValueError(f"Checkpoint {self.path!r} lacks the tensor {key!r} (needed for "
                             f"{needed_for}).")
        return np.asarray(self.tensors.pop(key))

    def check_consumed(self, source_format):
        if self.tensors:
            names = sorted(self.tensors)
            raise ValueError(
                f"Checkpoint {self.path!r} ({source_format}) has {len(names)} tensor(s) this "
                f"architecture has no place for: {names[:10]}"
                f"{' ...' if len(names) > 10 else ''} (shapes "
                f"{[tuple(np.shape(self.tensors[n])) for n in names[:3]]}...)."
            )


def _infer_grid(length, num_prefix, patch, requested, path):
    """The patch grid of a position embedding of `length` entries whose file has no config.

    Its first `num_prefix` entries may be for the class/register tokens (or may be absent, as in
    big_vision). A square count is a square grid; otherwise the grid of the `requested` image size
    when its patch count matches (a rectangular checkpoint: the entries carry no shape).
    """
    counts = [length - num_prefix, length] if num_prefix else [length]
    for count in counts:
        if _is_square(count):
            side = int(round(np.sqrt(count)))
            return side, side
    if requested is not None:
        height, width = L._pair(requested, "image_size")
        wanted = (height // patch[0], width // patch[1])
        if height % patch[0] == 0 and width % patch[1] == 0 and wanted[0] * wanted[1] in counts:
            return wanted
    asked = "" if requested is None else (
        f"; the requested image_size {requested} gives a {wanted[0]}x{wanted[1]} grid "
        f"({wanted[0] * wanted[1]} patches of {patch[0]}x{patch[1]})")
    raise ValueError(
        f"Cannot infer the patch grid of {path!r}: its position embedding has {length} entries"
        + (f" ({length - num_prefix} after {num_prefix} class/register entries)" if num_prefix else "")
        + f", not a square grid{asked}. Pass image_size=(height, width) whose grid of "
        f"{patch[0]}x{patch[1]} patches has that many entries, or put the image size in a config.json."
    )


def _position_embedding(tensors, key, path):
    """The source's position embedding, `(entries, D)` or `(1, entries, D)`."""
    pos = tensors.take(key, "position_embedding/embedding")
    if pos.ndim not in (2, 3) or (pos.ndim == 3 and pos.shape[0] != 1):
        raise ValueError(f"Checkpoint {path!r}: the position embedding {key!r} has shape "
                         f"{pos.shape}; expected (entries, width) or (1, entries, width).")
    return pos


def _canonical_position_embedding(pos, grid, num_prefix, path):
    """Splits a source position embedding into (prefix entries, grid entries).

    `num_prefix` is how many leading tokens (class, registers) the model puts before the patches.
    Sources that add the position embedding before prepending those tokens (big_vision, timm's
    `no_embed_class`) have none for them: they get zeros, which computes the same thing.
    """
    count = grid[0] * grid[1]
    if pos.ndim == 2:
        pos = pos[None]
    if pos.shape[1] == count + num_prefix:
        return pos[:, :num_prefix], pos[:, num_prefix:]
    if pos.shape[1] == count:
        return np.zeros((1, num_prefix, pos.shape[-1]), pos.dtype), pos
    raise ValueError(f"Checkpoint {path!r}: position embedding of shape {pos.shape} fits neither "
                     f"{count} patches ({grid[0]}x{grid[1]}) nor {count + num_prefix} tokens.")


def _fold_prefix(state, prefix_pos, num_kept, num_registers):
    """The first `num_kept` entries (class and distillation tokens) stay in the position
    embedding; register entries are added to the register tokens, because this model adds no
    position to registers (the sum is what the source computes)."""
    if num_registers:
        state["register_tokens/tokens"] = state["register_tokens/tokens"] + prefix_pos[:, num_kept:]
    return prefix_pos[:, :num_kept]


def _add_backbone(state, converted):
    """Puts a hybrid's ResNet (`resnet.from_npz / from_timm`'s `(state, config)`) under the
    model's `backbone/` layer. Returns `(config or None, stride)`: image pixels per pixel of the
    feature map the patches are cut from (1 without a backbone)."""
    backbone_state, backbone = converted
    if backbone is None:
        return None, 1
    state.update({"backbone/" + path: value for path, value in backbone_state.items()})
    return backbone, resnet.backbone_stride(backbone["block_units"])


def _block_count(keys, pattern, example, path):
    """The depth: the encoder block indices found in `keys` (`pattern`'s group 1) must run 0..N-1;
    a gap means blocks are missing from the file (`example` names their keys, e.g. 'blocks.{}.')."""
    indices = {int(m.group(1)) for m in map(re.compile(pattern).match, keys) if m}
    if not indices:
        raise ValueError(f"Checkpoint {path!r} has no encoder blocks (no {example.format('N')}* "
                         f"tensors).")
    missing = sorted(set(range(max(indices, default=-1) + 1)) - indices)
    if missing:
        raise ValueError(f"Checkpoint {path!r} lacks encoder block(s) {missing}: no "
                         f"{[example.format(i) + '*' for i in missing[:5]]} tensors, though it has "
                         f"blocks up to {max(indices)}. The file is incomplete.")
    return len(indices)


def _check_declared(path, declared, architecture):
    """What a config declares must be what the tensors hold: otherwise a file that lost its last
    blocks would load as a shallower model. Without a declared depth, the inferred one is logged,
    and a standard width with another than its standard depth is warned about."""
    names = {"num_layers": "encoder blocks", "hidden_size": "width (hidden_size)",
             "patch_size": "patch size", "mlp_dim": "MLP width (mlp_dim)",
             "num_classes": "classes in the head", "distilled": "distillation token",
             "block_units": "ResNet units per stage"}
    backbone = architecture.get("backbone")
    wrong = []
    for key, value in declared.items():
        found = architecture[key] if key != "block_units" else (
            list(backbone["block_units"]) if backbone else "no ResNet")
        if key == "patch_size" and value is not None:
            value = L._pair(value, "patch_size")
        if key == "num_classes" and value == 0:
            value = None  # timm: num_classes 0 is a model without a head
        if value is not None and value != found:
            wrong.append(f"{names[key]}: {value} declared, {found} in the tensors")
    if wrong:
        raise ValueError(f"Checkpoint {path!r} does not hold what its config.json declares "
                         f"({'; '.join(wrong)}): the file is incomplete or belongs to another model.")
    if declared.get("num_layers") is not None:
        return
    depth, width = architecture["num_layers"], architecture["hidden_size"]
    logger.info("%s: no config declares the depth; inferred %d encoder blocks from the tensors.",
                path, depth)
    if width in STANDARD_DEPTHS and depth != STANDARD_DEPTHS[width]:
        logger.warning("%s holds %d encoder blocks of width %d, where the standard ViT of that width "
                       "has %d: if the file is incomplete, the model is shallower than its source.",
                       path, depth, width, STANDARD_DEPTHS[width])


# ----------------------------------------------------------------------------------------------
# Google: vision_transformer / AugReg .npz and big_vision .npz


def _from_google(raw, path, image_size=None):
    big_vision = any(k.startswith("params/") for k in raw) or "pos_embedding" in raw
    prefix = "params/" if any(k.startswith("params/") for k in raw) else ""
    if any(k.startswith(prefix + "img/") for k in raw):  # two-tower (LiT / SigLIP): image tower
        prefix += "img/"
    tensors = _Tensors({k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}, path)
    _unstack_scanned_blocks(tensors)
    state = {}
    # A hybrid (vit_jax's R50+ViT-B_16, AugReg's R_Ti_16 ...): the ResNet comes first, and
    # `embedding` cuts patches from its feature map.
    backbone, stride = _add_backbone(state, resnet.from_npz(tensors.tensors, path))
    kernel = tensors.take("embedding/kernel", "patch_embedding/projection/kernel")
    patch, hidden = (int(kernel.shape[0]), int(kernel.shape[1])), int(kernel.shape[-1])
    state["patch_embedding/projection/kernel"] = kernel
    state["patch_embedding/projection/bias"] = tensors.take("embedding/bias", "patch_embedding")
    has_class = "cls" in tensors
    if has_class:
        state["class_token/token"] = tensors.take("cls", "class_token/token")
    pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding",
                                "Transformer/pos_embedding") if k in tensors), "pos_embedding")
    pos = _position_embedding(tensors, pos_key, path)
    grid = _infer_grid(pos.shape[-2], int(has_class), (patch[0] * stride, patch[1] * stride),
                       image_size, path)
    class_pos, grid_pos = _canonical_position_embedding(pos, grid, int(has_class), path)
    state["position_embedding/embedding"] = np.concatenate([class_pos, grid_pos], axis=1)

    depth = _block_count(tensors.tensors, r"Transformer/encoderblock_(\d+)/",
                         "Transformer/encoderblock_{}/", path)
    heads = mlp_dim = None
    for i in range(depth):
        heads, mlp_dim = _google_block(tensors, f"Transformer/encoderblock_{i}/",
                                       f"encoderblock_{i}/", state)
    state["encoder_norm/gamma"] = tensors.take("Transformer/encoder_norm/scale", "encoder_norm")
    state["encoder_norm/beta"] = tensors.take("Transformer/encoder_norm/bias", "encoder_norm")
    pooling = "token" if has_class else "gap"
    if "MAPHead_0/probe" in tensors:
        pooling = "map"
        _google_map_head(tensors, state)
    representation_size = _dense(tensors, "pre_logits", "pre_logits", state)
    num_classes = _dense(tensors, "head", "head", state)
    tensors.check_consumed("Google .npz")
    architecture = dict(
        patch_size=patch, hidden_size=hidden, num_layers=depth, num_heads=heads, mlp_dim=mlp_dim,
        image_size=(grid[0] * patch[0] * stride, grid[1] * patch[1] * stride),
        num_classes=num_classes, representation_size=representation_size, pooling=pooling,
        class_token=has_class, num_registers=0, layer_scale_init_value=None, backbone=backbone,
        distilled=False, distillation_head=True)
    _check_declared(path, {}, architecture)  # Google files come without a config
    # The original evaluation resizes the whole image to the model's size without a crop, bilinear
    # (tf.image.resize's default): google-research/vision_transformer vit_jax/input_pipeline.py,
    # `im = tf.image.resize(im, [crop_size, crop_size])` in test mode; AugReg's fine-tunes were
    # made with it. (big_vision's from-scratch ImageNet configs crop 224 of 256 instead: the file
    # cannot tell, so pass crop_pct=0.875 for those.)
    return Checkpoint(state, architecture, M.GOOGLE_NORMALIZATION, L.LAYER_NORM_EPSILON,
                      _default_class_names(num_classes),
                      "big_vision" if big_vision else "google_npz", "bilinear", crop_pct=1.0,
                      interpolation="bilinear")


def _is_square(n):
    return n > 0 and int(round(np.sqrt(n))) ** 2 == n


def _unstack_scanned_blocks(tensors):
    """big_vision's `scan=True` stores all blocks as one `encoderblock` with a leading depth axis."""
    scanned = [k for k in tensors.tensors if k.startswith("Transformer/encoderblock/")]
    for key in scanned:
        stacked = tensors.tensors.pop(key)
        rest = key[len("Transformer/encoderblock/"):]
        for i, value in enumerate(stacked):
            tensors.tensors[f"Transformer/encoderblock_{i}/{rest}"] = value


def _google_block(tensors, src, dst, state):
    """One encoder block. The vision_transformer code names its modules LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3; big_vision LayerNorm_0/1,
    MultiHeadDotProductAttention_0, MlpBlock_0: the order of the indices is what counts."""
    names = {k[len(src):].split("/")[0] for k in tensors.tensors if k.startswith(src)}

    def modules(kind):
        return sorted((n for n in names if n.startswith(kind + "_")), key=lambda n: int(n.split("_")[-1]))

    norms, attention, mlp = (modules("LayerNorm"), modules("MultiHeadDotProductAttention"),
                             modules("MlpBlock"))
    if len(norms) != 2 or len(attention) != 1 or len(mlp) != 1:
        raise ValueError(f"Checkpoint {tensors.path!r}: block {src!r} should hold 2 LayerNorm, 1 "
                         f"MultiHeadDotProductAttention and 1 MlpBlock modules, found {sorted(names)}.")
    for norm, name in zip(norms, ("norm1", "norm2")):
        state[dst + name + "/gamma"] = tensors.take(f"{src}{norm}/scale", dst + name)
        state[dst + name + "/beta"] = tensors.take(f"{src}{norm}/bias", dst + name)
    attn = f"{src}{attention[0]}/"
    # q/k/v kernels are (hidden, heads, head_dim): flattening the last two axes is head-major.
    kernels, biases = [], []
    for part in ("query", "key", "value"):
        kernel = tensors.take(attn + part + "/kernel", dst + "attention/qkv/kernel")
        kernels.append(kernel.reshape(kernel.shape[0], -1))
        biases.append(tensors.take(attn + part + "/bias", dst + "attention/qkv/bias").reshape(-1))
    heads = int(kernel.shape[1])
    state[dst + "attention/qkv/kernel"] = np.concatenate(kernels, axis=1)
    state[dst + "attention/qkv/bias"] = np.concatenate(biases)
    out = tensors.take(attn + "out/kernel", dst + "attention/proj/kernel")  # (heads, head_dim, D)
    state[dst + "attention/proj/kernel"] = out.reshape(-1, out.shape[-1])
    state[dst + "attention/proj/bias"] = tensors.take(attn + "out/bias", dst + "attention/proj")
    _dense(tensors, f"{src}{mlp[0]}/Dense_0", dst + "mlp/fc1", state)
    _dense(tensors, f"{src}{mlp[0]}/Dense_1", dst + "mlp/fc2", state)
    return heads, int(state[dst + "mlp/fc1/kernel"].shape[1])


def _google_map_head(tensors, state):
    """big_vision's MAPHead_0 maps one-to-one onto keras' MultiHeadAttention layout."""
    src = "MAPHead_0/"
    state["map_head/probe"] = tensors.take(src + "probe", "map_head/probe")
    attn = src + "MultiHeadDotProductAttention_0/"
    for part, name in (("query", "query"), ("key", "key"), ("value", "value"),
                       ("out", "attention_output")):
        for kind in ("kernel", "bias"):
            state[f"map_head/attention/{name}/{kind}"] = tensors.take(
                f"{attn}{part}/{kind}", f"map_head/attention/{name}/{kind}")
    state["map_head/norm/gamma"] = tensors.take(src + "LayerNorm_0/scale", "map_head/norm")
    state["map_head/norm/beta"] = tensors.take(src + "LayerNorm_0/bias", "map_head/norm")
    _dense(tensors, src + "MlpBlock_0/Dense_0", "map_head/mlp/fc1", state)
    _dense(tensors, src + "MlpBlock_0/Dense_1", "map_head/mlp/fc2", state)


def _dense(tensors, src, dst, state):
    """Flax Dense (kernel is already (in, out)); returns its width, or None when absent."""
    if src + "/kernel" not in tensors:
        return None
    state[dst + "/kernel"] = tensors.take(src + "/kernel", dst + "/kernel")
    state[dst + "/bias"] = tensors.take(src + "/bias", dst + "/bias")
    return int(state[dst + "/kernel"].shape[1])


# ----------------------------------------------------------------------------------------------
# Hugging Face transformers ViT and DeiT


# Block sub-module names: the hub's files (and save_pretrained) | transformers >= 5 in memory.
_HF_BLOCK = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "q": ("attention.attention.query", "attention.q_proj"),
    "k": ("attention.attention.key", "attention.k_proj"),
    "v": ("attention.attention.value", "attention.v_proj"),
    "attention/proj": ("attention.output.dense", "attention.o_proj"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "mlp/fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp/fc2": ("output.dense", "mlp.fc2"),
}


def _from_huggingface(raw, config, processor, path, num_heads=None, image_size=None):
    """ViT (`vit.` prefix) and DeiT (`deit.`: a distillation token after the class token, with
    `cls_classifier` + `distillation_classifier` in DeiTForImageClassificationWithTeacher, or one
    `classifier` on the class token in DeiTForImageClassification)."""
    prefix = next((p for p in ("vit.", "deit.") if any(k.startswith(p) for k in raw)), "")
    tensors = _Tensors({(k[len(prefix):] if k.startswith(prefix) else k): v
                        for k, v in raw.items()}, path)
    state = {}
    weight = tensors.take("embeddings.patch_embeddings.projection.weight", "patch_embedding")
    state["patch_embedding/projection/kernel"] = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    state["patch_embedding/projection/bias"] = tensors.take(
        "embeddings.patch_embeddings.projection.bias", "patch_embedding/projection/bias")
    hidden, patch = int(weight.shape[0]), (int(weight.shape[2]), int(weight.shape[3]))
    state["class_token/token"] = tensors.take("embeddings.cls_token", "class_token/token")
    distilled = "embeddings.distillation_token" in tensors
    if distilled:
        state["distillation_token/tokens"] = tensors.take("embeddings.distillation_token",
                                                          "distillation_token/tokens")
    num_prefix = 1 + int(distilled)
    pos = _position_embedding(tensors, "embeddings.position_embeddings", path)
    grid = (_grid_from_config(config, "image_size", patch, path)
            or _infer_grid(pos.shape[-2], num_prefix, patch, image_size, path))
    prefix_pos, grid_pos = _canonical_position_embedding(pos, grid, num_prefix, path)
    state["position_embedding/embedding"] = np.concatenate([prefix_pos, grid_pos], axis=1)

    legacy = any(k.startswith("encoder.layer.") for k in tensors.tensors)
    block_prefix = "encoder.layer." if legacy else "layers."
    depth = _block_count(tensors.tensors, re.escape(block_prefix) + r"(\d+)\.",
                         block_prefix + "{}.", path)
    for i in range(depth):
        src, dst = f"{block_prefix}{i}.", f"encoderblock_{i}/"
        names = {key: src + pair[0 if legacy else 1] for key, pair in _HF_BLOCK.items()}
        for norm in ("norm1", "norm2"):
            state[dst + norm + "/gamma"] = tensors.take(names[norm] + ".weight", dst + norm)
            state[dst + norm + "/beta"] = tensors.take(names[norm] + ".bias", dst + norm)
        qkv = [_torch_linear(tensors, names[p], dst + "attention/qkv") for p in "qkv"]
        state[dst + "attention/qkv/kernel"] = np.concatenate([k for k, _ in qkv], axis=1)
        state[dst + "attention/qkv/bias"] = np.concatenate([b for _, b in qkv])
        for name in ("attention/proj", "mlp/fc1", "mlp/fc2"):
            state[dst + name + "/kernel"], state[dst + name + "/bias"] = _torch_linear(
                tensors, names[name], dst + name)
    state["encoder_norm/gamma"] = tensors.take("layernorm.weight", "encoder_norm")
    state["encoder_norm/beta"] = tensors.take("layernorm.bias", "encoder_norm")
    representation_size = num_classes = None
    if "pooler.dense.weight" in tensors:  # ViTModel's pooler: tanh(Dense(class token)) = pre_logits
        state["pre_logits/kernel"], state["pre_logits/bias"] = _torch_linear(
            tensors, "pooler.dense", "pre_logits")
        representation_size = int(state["pre_logits/kernel"].shape[1])
    if distilled and "cls_classifier.weight" in tensors:  # ...WithTeacher: a head on each token
        heads = (("head", "cls_classifier"), ("head_dist", "distillation_classifier"))
    else:
        heads = (("head", "classifier"),) if "classifier.weight" in tensors else ()
    for name, source in heads:
        state[name + "/kernel"], state[name + "/bias"] = _torch_linear(tensors, source, name)
    if heads:
        num_classes = int(state["head/kernel"].shape[1])
    tensors.check_consumed("Hugging Face DeiT" if prefix == "deit." else "Hugging Face ViT")
    if config.get("hidden_act", "gelu") != "gelu":
        logger.warning("%s: hidden_act is %r; keras_vit computes the exact GELU, so outputs will "
                       "differ slightly from the source model.", path, config["hidden_act"])
    heads = _heads(_config_int(config, "num_attention_heads", path) or num_heads, hidden, path)
    architecture = dict(
        patch_size=patch, hidden_size=hidden, num_layers=depth, num_heads=heads,
        mlp_dim=int(state["encoderblock_0/mlp/fc1/kernel"].shape[1]),
        image_size=(grid[0] * patch[0], grid[1] * patch[1]), num_classes=num_classes,
        representation_size=representation_size, pooling="token", class_token=True,
        num_registers=0, layer_scale_init_value=None, backbone=None, distilled=distilled,
        distillation_head=not distilled or "head_dist/kernel" in state)
    _check_declared(path, {"num_layers": _config_int(config, "num_hidden_layers", path),
                           "hidden_size": _config_int(config, "hidden_size", path),
                           "patch_size": _config_int(config, "patch_size", path),
                           "mlp_dim": _config_int(config, "intermediate_size", path)}, architecture)
    statistics = _processor_normalization(processor, path)
    normalization = statistics or M.GOOGLE_NORMALIZATION  # ViTImageProcessor's default: 0.5, 0.5
    if statistics is None and prefix == "deit.":
        # DeiT trains on ImageNet mean/std (facebook/deit-* ship them in preprocessor_config.json;
        # DeiTImageProcessor's own default would be 0.5).
        logger.info("%s: a DeiT checkpoint without preprocessor_config.json: assuming DeiT's "
                    "ImageNet mean/std.", path)
        normalization = M.IMAGENET_NORMALIZATION
    epsilon = config.get("layer_norm_eps", 1e-12)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"{path!r}: 'layer_norm_eps' in its config.json must be a positive "
                         f"number, got {epsilon!r:.100}.")
    # What the file does not say is its processor class's default: DeiTImageProcessor resizes to
    # 256 and crops 224, bicubic; ViTImageProcessor resizes to the model's size, bilinear.
    crop_pct, interpolation = _processor_preprocessing(
        processor, (224 / 256, "bicubic") if prefix == "deit." else (1.0, "bilinear"), path)
    return Checkpoint(state, architecture, normalization, float(epsilon),
                      _hf_class_names(config, num_classes, path), "huggingface", "bicubic",
                      antialias=False,  # HF's interpolate_pos_encoding has no antialias
                      crop_pct=crop_pct, interpolation=interpolation)


def _torch_linear(tensors, name, needed_for):
    """PyTorch Linear (out, in) -> keras Dense kernel (in, out) and bias."""
    kernel = tensors.take(name + ".weight", needed_for + "/kernel").T
    return kernel, tensors.take(name + ".bias", needed_for + "/bias")


def _grid_from_config(config, key, patch, path):
    """The patch grid of the image size a config gives under `key`; None when it gives none."""
    image_size = config.get(key)
    if image_size is None:
        return None
    try:
        height, width = L._pair(tuple(image_size) if isinstance(image_size, list) else image_size,
                                "image_size")
    except ValueError:
        raise ValueError(f"{path!r}: '{key}' in its config.json must be an int or a [height, "
                         f"width] pair of ints, got {image_size!r:.100}.") from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{path!r}: '{key}' in its config.json must be positive, got {image_size}.")
    return height // patch[0], width // patch[1]


def _processor_normalization(processor, path):
    """`(mean, std)` that a Hugging Face preprocessor_config.json applies after scaling pixels to
    [0, 1]; None without the file or without statistics in it."""
    if processor is None:
        return None
    if processor.get("do_normalize", True) is False:
        return 0.0, 1.0  # the model was fed pixels / 255 as they are
    if "image_mean" not in processor and "image_std" not in processor:
        return None
    return tuple(_config_floats(processor, key, path, "preprocessor_config.json")
                 for key in ("image_mean", "image_std"))


def _config_floats(config, key, path, source="config.json"):
    """A number or a list of 1 or 3 numbers (per-channel mean/std) from a config."""
    value = config.get(key)
    flat = value if isinstance(value, list) else [value]
    if len(flat) not in (1, 3) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise ValueError(f"{path!r}: '{key}' in its {source} must be a number or a list of 3 "
                         f"numbers, got {value!r:.100}.")
    return value


# PIL's resampling filters by the codes a preprocessor_config.json's `resample` holds.
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Filters keras_vit's image pipelines lack -> the closest one they have.
_CLOSEST_INTERPOLATION = {"lanczos": "bicubic", "box": "bilinear", "hamming": "bilinear"}


def _interpolation(value, key, path, source, pil_codes=False):
    """A source's resampling filter (a name; a PIL code with `pil_codes`, as Hugging Face stores
    it) as one of `config.INTERPOLATIONS`."""
    if pil_codes:
        name = _PIL_FILTERS.get(value) if type(value) is int else None
    else:
        name = value if isinstance(value, str) else None
    if name in INTERPOLATIONS:
        return name
    if name in _CLOSEST_INTERPOLATION:
        logger.warning("%s: its %s resizes images with the %s filter (%s %r), which keras_vit's "
                       "image pipelines lack: using %s, the closest they have; predictions may "
                       "differ slightly from the source's.", path, source, name, key, value,
                       _CLOSEST_INTERPOLATION[name])
        return _CLOSEST_INTERPOLATION[name]
    raise ValueError(f"{path!r}: '{key}' in its {source} must be "
                     + ("a PIL resampling code 0-5" if pil_codes else
                        f"one of {list(INTERPOLATIONS) + list(_CLOSEST_INTERPOLATION)}")
                     + f", got {value!r:.100}.")


def _crop_fraction(value, key, path, source):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{path!r}: '{key}' in its {source} must be a number in (0, 1], got "
                         f"{value!r:.100}.")
    return float(value)


def _processor_side(processor, key, path):
    """The short side a preprocessor_config.json's `size` or `crop_size` gives: an int, [h, w]
    (older files), {"shortest_edge": n} or {"height": h, "width": w}; None when absent."""
    value = processor.get(key)
    if value is None:
        return None
    if isinstance(value, dict):
        sides = [value.get("shortest_edge")] if "shortest_edge" in value else [
            value.get("height"), value.get("width")]
    else:
        sides = value if isinstance(value, list) and len(value) == 2 else [value]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
        raise ValueError(f"{path!r}: '{key}' in its preprocessor_config.json must be a positive "
                         f"int, [height, width], {{'shortest_edge': n}} or {{'height': h, "
                         f"'width': w}}, got {value!r:.100}.")
    return min(sides)


def _processor_preprocessing(processor, default, path):
    """`(crop_pct, interpolation)` of a Hugging Face preprocessor_config.json: its `crop_pct`, else
    the centre crop's share of the resize (DeiT: 224 of 256 = 0.875; no crop: 1.0), and its PIL
    `resample` code. `default`: the processor class's own, for what the file does not say."""
    if processor is None:
        return default
    source = "preprocessor_config.json"
    interpolation = default[1] if processor.get("resample") is None else _interpolation(
        processor["resample"], "resample", path, source, pil_codes=True)
    if processor.get("crop_pct") is not None:
        return _crop_fraction(processor["crop_pct"], "crop_pct", path, source), interpolation
    if not processor.get("do_center_crop", default[0] < 1):
        return 1.0, interpolation  # the whole image, resized to the model's size
    resized = _processor_side(processor, "size", path) if processor.get("do_resize", True) else None
    cropped = _processor_side(processor, "crop_size", path)
    if resized is None or cropped is None:
        if processor.get("size") is not None or processor.get("crop_size") is not None:
            logger.info("%s: its %s does not say both the resize and the crop (size %r, crop_size "
                        "%r, do_resize %r): assuming crop_pct %s.", path, source,
                        processor.get("size"), processor.get("crop_size"),
                        processor.get("do_resize", True), default[0])
        return default[0], interpolation
    if cropped > resized:
        logger.warning("%s: its %s crops %d pixels from images resized to %d (the processor pads "
                       "them): using crop_pct 1.0, the whole image.", path, source, cropped,
                       resized)
        return 1.0, interpolation
    return cropped / resized, interpolation


def _heads(configured, hidden, path):
    if configured:
        return int(configured)
    if hidden in STANDARD_HEADS:
        return STANDARD_HEADS[hidden]
    raise ValueError(f"Checkpoint {path!r} has width {hidden} and no config that gives the number "
                     f"of attention heads: pass num_heads=... (the standard widths are "
                     f"{STANDARD_HEADS}).")


def _hf_class_names(config, num_classes, path):
    labels = _section(config, "id2label", path)
    names = [labels.get(str(i), labels.get(i)) for i in range(num_classes or 0)]
    # transformers fills id2label with LABEL_0, LABEL_1, ... when a model has no names.
    if num_classes and all(names) and names != [f"LABEL_{i}" for i in range(num_classes)]:
        return names
    return _default_class_names(num_classes)


def _default_class_names(num_classes):
    """Every published 1000-class ViT is an ImageNet-1k classifier: use its names."""
    if num_classes == 1000:
        from keras_vit import labels

        return list(labels.imagenet_class_names())
    return None


# ----------------------------------------------------------------------------------------------
# timm


# timm model names that fix an architecture: family_size_patchN_resolution.
_TIMM_NAME = re.compile(r"(?:vit|deit|deit3)_(tiny|small|base|large|huge)(_distilled)?_patch(\d+)_\d+")
_TIMM_SIZES = {"tiny": (192, 12), "small": (384, 12), "base": (768, 12), "large": (1024, 24),
               "huge": (1280, 32)}
# timm's hybrids: vit_{size}_r{resnet}_s{nominal stride}[_p{patch}]_{resolution}, their ResNet
# units per stage (timm's vision_transformer_hybrid.py); the patch is 1 unless `_p` says.
_TIMM_HYBRID_NAME = re.compile(r"vit_(tiny|small|base|large)_r(\d*)_s(\d+)(?:_p(\d+))?_\d+")
_TIMM_HYBRID_UNITS = {("", "16"): [], ("26", "32"): [2, 2, 2, 2], ("50", "16"): [3, 4, 9],
                      ("50", "32"): [3, 4, 6, 3]}


def _timm_name_implies(name):
    """The architecture a standard timm model name fixes: `deit_tiny_distilled_patch16_224` ->
    width 192, 12 blocks, patch 16, distilled; `vit_base_r50_s16_224` -> width 768, 12 blocks,
    patch 1 on the feature map of ResNet units [3, 4, 9]. {} for other names."""
    plain, hybrid = _TIMM_NAME.fullmatch(name), _TIMM_HYBRID_NAME.fullmatch(name)
    if plain:
        width, depth = _TIMM_SIZES[plain.group(1)]
        return {"num_layers": depth, "hidden_size": width, "patch_size": int(plain.group(3)),
                "distilled": bool(plain.group(2))}
    if hybrid and (hybrid.group(2), hybrid.group(3)) in _TIMM_HYBRID_UNITS:
        width, depth = _TIMM_SIZES[hybrid.group(1)]
        return {"num_layers": depth, "hidden_size": width, "patch_size": int(hybrid.group(4) or 1),
                "distilled": False,
                "block_units": _TIMM_HYBRID_UNITS[hybrid.group(2), hybrid.group(3)]}
    return {}


def _timm_declared(config, path):
    """The architecture a timm config.json declares: model_args, num_features, num_classes, and
    what a standard model name (`deit_tiny_patch16_224`: width 192, 12 blocks) implies."""
    model_args = _section(config, "model_args", path)
    declared = {"num_layers": _config_int(model_args, "depth", path),
                "hidden_size": (_config_int(model_args, "embed_dim", path)
                                or _config_int(config, "num_features", path)),
                "patch_size": _config_int(model_args, "patch_size", path),
                "num_classes": _config_int(config, "num_classes", path)}
    for key, value in _timm_name_implies(str(config.get("architecture", ""))).items():
        if declared.get(key) is not None and declared[key] != value:
            raise ValueError(f"{path!r}: its config.json names the model "
                             f"{config['architecture']!r} but declares {key} {declared[key]}.")
        declared[key] = value
    return declared


def _from_timm(raw, config, processor, path, num_heads=None, image_size=None):
    tensors = _Tensors(raw, path)
    if "fc_norm.weight" in tensors:
        raise ValueError(
            f"Checkpoint {path!r} normalises after pooling (timm's fc_norm, with global_pool='avg'); "
            f"keras_vit's ViT normalises before pooling (encoder_norm), so it cannot hold it."
        )
    state = {}
    # A hybrid (vit_base_r50_s16_224 ...): `patch_embed.backbone` is the ResNet, `patch_embed.proj`
    # cuts patches from its feature map.
    backbone, stride = _add_backbone(state, resnet.from_timm(tensors.tensors, source=path))
    weight = tensors.take("patch_embed.proj.weight", "patch_embedding/projection/kernel")
    state["patch_embedding/projection/kernel"] = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    state["patch_embedding/projection/bias"] = tensors.take("patch_embed.proj.bias", "patch_embedding")
    hidden, patch = int(weight.shape[0]), (int(weight.shape[2]), int(weight.shape[3]))
    pixel_patch = (patch[0] * stride, patch[1] * stride)
    has_class, distilled = "cls_token" in tensors, "dist_token" in tensors
    if distilled and (not has_class or "reg_token" in tensors):
        raise ValueError(f"Checkpoint {path!r} has a distillation token (dist_token) "
                         f"{'without a class token' if not has_class else 'and register tokens'}: "
                         f"timm's distilled DeiT puts it right after the class token, and "
                         f"keras_vit holds only that layout.")
    if has_class:
        state["class_token/token"] = tensors.take("cls_token", "class_token/token")
    if distilled:
        state["distillation_token/tokens"] = tensors.take("dist_token", "distillation_token/tokens")
    num_registers = 0
    if "reg_token" in tensors:
        state["register_tokens/tokens"] = tensors.take("reg_token", "register_tokens/tokens")
        num_registers = int(state["register_tokens/tokens"].shape[1])
    pretrained = _section(config, "pretrained_cfg", path)
    model_args = _section(config, "model_args", path)
    input_size = pretrained.get("input_size")
    if input_size is not None and not (isinstance(input_size, list) and len(input_size) == 3):
        raise ValueError(f"{path!r}: 'pretrained_cfg.input_size' in its config.json must be "
                         f"[channels, height, width], got {input_size!r:.100}.")
    pretrained_size = {"input_size": None if input_size is None or None in input_size else input_size[1:]}
    pos = _position_embedding(tensors, "pos_embed", path)
    num_prefix = int(has_class) + int(distilled) + num_registers
    grid = (_grid_from_config(model_args, "img_size", pixel_patch, path)
            or _grid_from_config(pretrained_size, "input_size", pixel_patch, path)
            or _infer_grid(pos.shape[-2], num_prefix, pixel_patch, image_size, path))
    prefix_pos, grid_pos = _canonical_position_embedding(pos, grid, num_prefix, path)
    class_pos = _fold_prefix(state, prefix_pos, int(has_class) + int(distilled), num_registers)
    state["position_embedding/embedding"] = np.concatenate([class_pos, grid_pos], axis=1)

    depth = _block_count(tensors.tensors, r"blocks\.(\d+)\.", "blocks.{}.", path)
    layer_scale = None
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoderblock_{i}/"
        for norm in ("norm1", "norm2"):
            state[dst + norm + "/gamma"] = tensors.take(src + norm + ".weight", dst + norm)
            state[dst + norm + "/beta"] = tensors.take(src + norm + ".bias", dst + norm)
        for src_name, name in (("attn.qkv", "attention/qkv"), ("attn.proj", "attention/proj"),
                               ("mlp.fc1", "mlp/fc1"), ("mlp.fc2", "mlp/fc2")):
            state[dst + name + "/kernel"], state[dst + name + "/bias"] = _torch_linear(
                tensors, src + src_name, dst + name)
        for j in (1, 2):
            if f"{src}ls{j}.gamma" in tensors:
                layer_scale = 1e-5  # the value is replaced by the loaded gamma
                state[f"{dst}layer_scale{j}/gamma"] = tensors.take(
                    f"{src}ls{j}.gamma", f"{dst}layer_scale{j}/gamma")
    state["encoder_norm/gamma"] = tensors.take("norm.weight", "encoder_norm")
    state["encoder_norm/beta"] = tensors.take("norm.bias", "encoder_norm")
    global_pool = config.get("global_pool", "token" if has_class else "avg")
    pooling = {"token": "token", "avg": "gap", "map": "map"}.get(global_pool) \
        if isinstance(global_pool, str) else None
    heads = _heads(_config_int(model_args, "num_heads", path) or num_heads, hidden, path)
    if "attn_pool.latent" in tensors:
        pooling = "map"
        _timm_map_head(tensors, state, heads)
    if pooling is None:
        raise ValueError(f"Checkpoint {path!r}: timm global_pool {global_pool!r} is not supported; "
                         f"expected 'token', 'avg' or 'map'.")
    num_classes = None
    for name in ("head", "head_dist") if distilled else ("head",):  # head_dist: the dist token's
        if name + ".weight" in tensors:
            state[name + "/kernel"], state[name + "/bias"] = _torch_linear(tensors, name, name)
            num_classes = num_classes or int(state[name + "/kernel"].shape[1])
    tensors.check_consumed("timm")
    architecture = dict(
        patch_size=patch, hidden_size=hidden, num_layers=depth, num_heads=heads,
        mlp_dim=int(state["encoderblock_0/mlp/fc1/kernel"].shape[1]),
        image_size=(grid[0] * pixel_patch[0], grid[1] * pixel_patch[1]), num_classes=num_classes,
        representation_size=None, pooling=pooling, class_token=has_class,
        num_registers=num_registers, layer_scale_init_value=layer_scale, backbone=backbone,
        distilled=distilled, distillation_head=not distilled or "head_dist/kernel" in state)
    _check_declared(path, _timm_declared(config, path), architecture)
    normalization = pretrained if "mean" in pretrained else config
    statistics = _processor_normalization(processor, path)
    if normalization.get("mean") is not None and normalization.get("std") is not None:
        mean, std = (_config_floats(normalization, key, path) for key in ("mean", "std"))
    elif statistics is not None:
        mean, std = statistics
    else:
        logger.info("%s has no mean/std in a config.json or preprocessor_config.json: assuming "
                    "[-1, 1] inputs (mean = std = 0.5, timm's default for Google-trained ViTs).",
                    path)
        mean, std = M.GOOGLE_NORMALIZATION
    names = config.get("label_names")
    if num_classes and names is not None and not (
            isinstance(names, list) and len(names) == num_classes
            and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path!r}: 'label_names' in its config.json must be a list of "
                         f"{num_classes} strings (one per head output), got {names!r:.100}.")
    # timm's data config: pretrained_cfg's crop_pct and interpolation, else its defaults (0.875,
    # bicubic); a preprocessor_config.json beside the file fills what the config.json lacks.
    crop_pct, interpolation = _processor_preprocessing(processor, (0.875, "bicubic"), path)
    for section, where in ((config, ""), (pretrained, "pretrained_cfg.")):  # pretrained_cfg wins
        if section.get("crop_pct") is not None:
            crop_pct = _crop_fraction(section["crop_pct"], where + "crop_pct", path, "config.json")
        if section.get("interpolation") is not None:
            interpolation = _interpolation(section["interpolation"], where + "interpolation", path,
                                           "config.json")
    return Checkpoint(state, architecture, (mean, std), L.LAYER_NORM_EPSILON,
                      list(names) if num_classes and names else _default_class_names(num_classes), "timm",
                      "bicubic", antialias=True, crop_pct=crop_pct, interpolation=interpolation)


def _timm_map_head(tensors, state, heads):
    """timm's AttentionPoolLatent: q and fused kv PyTorch Linears -> keras MultiHeadAttention."""
    latent = tensors.take("attn_pool.latent", "map_head/probe")
    hidden = latent.shape[-1]
    state["map_head/probe"] = latent
    q_kernel, q_bias = _torch_linear(tensors, "attn_pool.q", "map_head/attention/query")
    kv_kernel, kv_bias = _torch_linear(tensors, "attn_pool.kv", "map_head/attention/key")
    for name, kernel, bias in (("query", q_kernel, q_bias),
                               ("key", kv_kernel[:, :hidden], kv_bias[:hidden]),
                               ("value", kv_kernel[:, hidden:], kv_bias[hidden:])):
        state[f"map_head/attention/{name}/kernel"] = kernel.reshape(hidden, heads, -1)
        state[f"map_head/attention/{name}/bias"] = bias.reshape(heads, -1)
    kernel, bias = _torch_linear(tensors, "attn_pool.proj", "map_head/attention/attention_output")
    state["map_head/attention/attention_output/kernel"] = kernel.reshape(heads, -1, hidden)
    state["map_head/attention/attention_output/bias"] = bias
    state["map_head/norm/gamma"] = tensors.take("attn_pool.norm.weight", "map_head/norm")
    state["map_head/norm/beta"] = tensors.take("attn_pool.norm.bias", "map_head/norm")
    for name in ("fc1", "fc2"):
        state[f"map_head/mlp/{name}/kernel"], state[f"map_head/mlp/{name}/bias"] = _torch_linear(
            tensors, f"attn_pool.mlp.{name}", f"map_head/mlp/{name}")


# ----------------------------------------------------------------------------------------------
# Building models


def load_pretrained(path_or_name, image_size=None, num_classes=None, include_top=True,
                    resample_method=None, **kwargs):
    """Builds the architecture a checkpoint holds (`VisionTransformer`) and loads it.

    Args:
        path_or_name: a local checkpoint (Google `.npz`; Hugging Face folder or `.safetensors`;
            timm `.safetensors`, with its config.json beside it; a `.keras` model), a Hub
            repository `"hf://ORG/NAME[@REVISION]"` (`keras_vit.hub`: needs huggingface_hub),
            `"B/16:imagenet21k"`, `"R50+B/16:imagenet21k"`, or a registered file or timm model
            name (`"deit_tiny_distilled_patch16_224"`). Hybrids (a ResNet's feature map as the
            token grid: vit_jax's `R50+ViT-B_16.npz`, AugReg's `R_Ti_16-...`, timm's
            `vit_base_r50_s16_224`) and distilled DeiT (timm's `dist_token` + `head_dist`,
            transformers' DeiT folders) are read from the file like any ViT.
        image_size: None keeps the checkpoint's; another size resamples the position embeddings.
        num_classes: None keeps the checkpoint's head; another count gets a new zero head.
        include_top: False drops the head (and pre_logits) and returns pooled features.
        resample_method: `"bilinear"` / `"bicubic"`; None uses the checkpoint source's own.
        **kwargs: other `VisionTransformer` arguments (dropout_rate, dtype, name, ...); an
            unknown one is a TypeError. Those the checkpoint knows (normalisation, `crop_pct`,
            `interpolation`, ...) follow it unless passed.

    A `.keras` file with none of these arguments is returned as saved (`load_keras_model`); with
    them, a saved `VisionTransformer` is rebuilt like any checkpoint.

    >>> model = keras_vit.load_pretrained("deit_tiny_patch16_224/model.safetensors")
    """
    explicit = {"image_size", "num_classes", "include_top", "resample_method"}
    _check_keywords("load_pretrained", kwargs, _MODEL_ARGS - explicit, also=explicit)
    _check_load_values(image_size, num_classes, include_top, resample_method)
    _check_preprocessing(kwargs)
    path, variant = _resolve(path_or_name)
    if _is_keras_file(path) and (image_size, num_classes, include_top, resample_method,
                                 kwargs) == (None, None, True, None, {}):
        return load_keras_model(path)
    checkpoint = _read_any(path, kwargs.get("num_heads"), image_size)
    if variant is not None:
        _check_architecture(checkpoint, M.variant_config(variant), _display_name(variant),
                            "the registered checkpoint is incomplete or not the one registered")
    config = dict(checkpoint.architecture)
    asked = {k: kwargs[k] for k in (*M.ARCHITECTURE_ARGS, "backbone") if k in kwargs}
    _check_architecture(checkpoint, {**config, **asked}, "the arguments",
                        "leave them out to build the checkpoint's own architecture")
    if num_classes is None and include_top:
        if checkpoint.architecture["num_classes"] is None:
            raise ValueError(f"{path_or_name!r} has no classification head: pass num_classes=N for "
                             f"a new (zero) head, or include_top=False for features.")
        num_classes = checkpoint.architecture["num_classes"]
    config.update(image_size=config["image_size"] if image_size is None else image_size,
                  num_classes=num_classes or 0, include_top=include_top, **kwargs)
    return _build(checkpoint, config, resample_method, given=set(kwargs))


def build_with_weights(config, weights, resample_method=None, given=None):
    """`keras_vit.ViT(weights=...)`: builds `config` (ViT kwargs) and loads `weights` into it.

    `weights` is a registered name (found from config's patch/width/depth, e.g. `"imagenet21k"`
    for ViT-B/16), a local checkpoint path, a `.keras` model or `"hf://ORG/NAME[@REVISION]"`.
    The checkpoint's architecture must equal config's (a hybrid's ResNet units too). `given`
    names the config keys the caller chose (None: all of config's); the others that a checkpoint
    knows (pooling, representation_size, class_token, distilled, normalisation, crop_pct and
    interpolation, LayerNorm epsilon, a ResNet's numerics, class names, ...) come from the
    checkpoint. A chosen pooling the checkpoint cannot give ('token' without a class token, 'map'
    without a MAP head) is a ValueError. With `distilled=True`, a registered name that has a
    distilled checkpoint too (`"imagenet1k"` for DeiT) means that one.
    """
    _check_keywords("build_with_weights", config, _MODEL_ARGS)
    given = set(config) if given is None else set(given)
    _check_preprocessing(config)
    path = os.fspath(weights)
    # Registered names ("imagenet21k", "augreg_in21k_ft_in1k") have no slash and no file suffix.
    if not os.path.exists(path) and not re.search(r"[/\\]|\.(npz|safetensors|keras)$", path):
        variant = _variant_of(config)
        if variant is None:
            raise ValueError(
                f"weights={weights!r} is not a local file, and the architecture (patch_size "
                f"{config.get('patch_size')}, hidden_size {config.get('hidden_size')}, num_layers "
                f"{config.get('num_layers')}, backbone {config.get('backbone')}) is none of the "
                f"registered variants {sorted(M.VARIANTS) + sorted(M.HYBRID_VARIANTS)}: pass a "
                f"checkpoint path."
            )
        if config.get("distilled") and (variant, path + "_distilled") in REGISTRY:
            path += "_distilled"
        path = fetch(registry_entry(variant, path))
    path, _ = _resolve(path)
    checkpoint = _read_any(path, config.get("num_heads"), config.get("image_size"))
    _check_architecture(checkpoint, {**_MODEL_DEFAULTS, **config}, "the model",
                        "use keras_vit.load_pretrained(...) to build the checkpoint's own "
                        "architecture")
    return _build(checkpoint, dict(config), resample_method, given)


def load_model_or_checkpoint(path):
    """What `keras-vit info / explain / export` load: a `.keras` model as saved, or a checkpoint
    built as `load_pretrained(path)` builds it."""
    return load_pretrained(path)


def load_keras_model(path):
    """A `.keras` model file, loaded with safe_mode on (no code from the file runs) and
    compile=False: the weights and the architecture, not the training state. A model trained with
    a user's own loss or schedule thus loads anywhere; `model.compile(...)` to train it again."""
    import keras

    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a complete .keras file (a zip archive): it is truncated "
                         f"or corrupt ({os.path.getsize(path)} bytes).")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, OSError, KeyError, ...
        raise ValueError(f"Could not load the Keras model {path!r}: {type(error).__name__}: "
                         f"{error}") from error
    _check_finite(_variables(model), path)
    return model


def _variables(model):
    import keras

    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def _is_keras_file(path):
    return os.path.isfile(path) and path.endswith(".keras")


def _read_any(path, num_heads, image_size):
    """A `Checkpoint` from a checkpoint file or folder, or from a `.keras` VisionTransformer."""
    if not _is_keras_file(path):
        return read_checkpoint(path, num_heads, image_size)
    model = load_keras_model(path)
    if not isinstance(model, M.VisionTransformer):
        raise ValueError(f"{path!r} holds a {type(model).__name__}, not a keras_vit "
                         f"VisionTransformer: load it with keras_vit.load_pretrained({path!r}) "
                         f"and no other arguments.")
    architecture = {key: getattr(model, key) for key in (
        "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "image_size",
        "num_classes", "representation_size", "pooling", "class_token", "num_registers",
        "layer_scale_init_value", "backbone", "distilled", "distillation_head")}
    # Trained models carry no record of their weights' source: bicubic, as timm and HF resample.
    return Checkpoint(_variables(model), architecture,
                      (model.normalization_mean, model.normalization_std),
                      model.layer_norm_epsilon, model.class_names, "keras", "bicubic", path=path,
                      include_preprocessing=model.include_preprocessing,
                      crop_pct=model.crop_pct, interpolation=model.interpolation)


# The arguments of `VisionTransformer`: what a model config may hold, and their defaults.
_MODEL_DEFAULTS = {**M.DEFAULTS, "name": None, "dtype": None, "trainable": True}
_MODEL_ARGS = set(_MODEL_DEFAULTS)


def _check_keywords(function, given, valid, also=()):
    """An unknown keyword is a TypeError naming it and the nearest valid one (a misspelt
    `imagesize=384` would otherwise be swallowed)."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        known = sorted(set(valid) | set(also))
        hints = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
        raise TypeError(f"{function}() got unknown keyword argument(s) {unknown}: "
                        + "; ".join(f"did you mean {hint[0]!r} for {key!r}?" if hint else
                                    f"{key!r} is none of {known}" for key, hint in hints.items()))


def _check_load_values(image_size, num_classes, include_top, resample_method):
    """Bad values fail before a (possibly large) checkpoint is read."""
    if image_size is not None:
        size = L._pair(image_size, "image_size")
        if min(size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}.")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, (int, np.integer)) or num_classes <= 0):
        raise ValueError(f"num_classes must be a positive int or None (the checkpoint's head), got "
                         f"{num_classes!r}; include_top=False drops the head.")
    if not isinstance(include_top, bool):
        raise ValueError(f"include_top must be True or False, got {include_top!r}.")
    if resample_method not in (None, "bilinear", "bicubic"):
        raise ValueError(f"resample_method must be 'bilinear', 'bicubic' or None (the checkpoint "
                         f"source's own), got {resample_method!r}.")


def _check_preprocessing(config):
    """A bad crop_pct or interpolation fails before a (possibly large) checkpoint is read, with the
    model config's own message."""
    M.ModelConfig(**{key: config[key] for key in ("crop_pct", "interpolation") if key in config})


def _check_architecture(checkpoint, wanted, asker, advice):
    """The checkpoint must hold the architecture `wanted` (a ViT config) asks for; the depth is
    named on its own, since a file that lost its last blocks differs only there."""
    found = checkpoint.architecture
    differ = {k: (wanted.get(k), found[k]) for k in M.ARCHITECTURE_ARGS
              if (L._pair(wanted.get(k), k) if k == "patch_size" else wanted.get(k)) != found[k]}
    if _backbone_shape(wanted.get("backbone")) != _backbone_shape(found["backbone"]):
        differ["backbone"] = (_backbone_shape(wanted.get("backbone")),
                              _backbone_shape(found["backbone"]))
    if not differ:
        return
    depth = ""
    if "num_layers" in differ:
        depth = (f" It has {found['num_layers']} encoder blocks where {asker} has "
                 f"{wanted.get('num_layers')}.")
    listed = "; ".join(f"{k} {asked} asked, {held} in the checkpoint"
                       for k, (asked, held) in differ.items())
    raise ValueError(f"The checkpoint {checkpoint.path!r} does not hold the architecture of "
                     f"{asker} ({listed}).{depth} {advice[0].upper()}{advice[1:]}.")


def _build(checkpoint, config, resample_method, given):
    """Builds `VisionTransformer(**config)` and assigns the checkpoint, adapting what the config
    changes: image size (position embeddings resampled), heads (kept, new or dropped), pooling.

    `given`: the config keys the caller chose; the checkpoint sets the others it knows."""
    state = dict(checkpoint.state)
    arch = checkpoint.architecture
    source = checkpoint.path
    for key, value in (("class_token", arch["class_token"]), ("num_registers", arch["num_registers"]),
                       ("layer_scale_init_value", arch["layer_scale_init_value"]),
                       ("pooling", arch["pooling"]), ("distilled", arch["distilled"]),
                       ("distillation_head", arch["distillation_head"]),
                       ("normalization_mean", checkpoint.normalization[0]),
                       ("normalization_std", checkpoint.normalization[1]),
                       ("layer_norm_epsilon", checkpoint.layer_norm_epsilon),
                       ("include_preprocessing", checkpoint.include_preprocessing),
                       ("crop_pct", checkpoint.crop_pct),
                       ("interpolation", checkpoint.interpolation)):
        if key not in given:
            config[key] = value
    if arch["backbone"]:  # the units were checked; the numerics are the source's unless chosen
        config["backbone"] = {**arch["backbone"], **(config.get("backbone") or {})}
    if bool(config["distilled"]) != arch["distilled"]:
        raise ValueError(f"distilled={config['distilled']!r} was asked, but {source!r} "
                         f"{'is' if arch['distilled'] else 'is not'} a distilled DeiT checkpoint "
                         f"(a distillation token after the class token): leave distilled unset to "
                         f"follow the checkpoint.")
    if config["pooling"] == "token" and not arch["class_token"]:
        raise ValueError(f"pooling='token' pools the class token, and {source!r} has none (its "
                         f"pooling is {arch['pooling']!r}): pass pooling={arch['pooling']!r}, or "
                         f"leave pooling unset to use the checkpoint's.")
    if config["pooling"] == "map" and "map_head/probe" not in state:
        raise ValueError(f"pooling='map' needs a MAP head, and {source!r} has none (its pooling is "
                         f"{arch['pooling']!r}).")
    if config["pooling"] != "map" and "map_head/probe" in state:
        logger.info("%s: pooling=%r, so the checkpoint's MAP head is not used.", source,
                    config["pooling"])
        state = {k: v for k, v in state.items() if not k.startswith("map_head/")}

    include_top = config.get("include_top", True)
    keep_head = include_top and arch["num_classes"] == config.get("num_classes")
    two_heads = config["distilled"] and config["distillation_head"]
    if keep_head and config["distilled"] and two_heads != arch["distillation_head"]:
        if two_heads:
            raise ValueError(f"{source!r} has no distillation head (a distilled backbone with the "
                             f"class token's head alone, as transformers' "
                             f"DeiTForImageClassification): pass distillation_head=False, or "
                             f"leave it unset to follow the checkpoint.")
        logger.warning("%s: distillation_head=False, so the checkpoint's distillation head is not "
                       "loaded: the model predicts with the class token's head alone.", source)
        state = {k: v for k, v in state.items() if not k.startswith("head_dist/")}
    if keep_head and config["pooling"] != arch["pooling"]:
        logger.warning("%s: its head was trained on %r pooling, the model pools with %r: the kept "
                       "head's predictions are not the checkpoint's until it is fine-tuned.",
                       source, arch["pooling"], config["pooling"])
    heads = ("head/", "head_dist/", "pre_logits/")
    if not keep_head:
        dropped = [k for k in state if k.startswith(heads)]
        state = {k: v for k, v in state.items() if k not in dropped}
        if "representation_size" not in given:  # the paper fine-tunes without the pre-logits layer
            config["representation_size"] = None
        if include_top:
            held = f"{arch['num_classes']} classes" if arch["num_classes"] else "no head"
            logger.warning("%s has %s, the model %d classes: the head%s re-initialised (zeros, "
                           "as the ViT paper does for fine-tuning)%s.", source, held,
                           config["num_classes"], "s are" if two_heads else " is",
                           ", pre_logits dropped" if arch["representation_size"] else "")
        elif dropped:
            logger.info("include_top=False: the checkpoint's %s not loaded.",
                        "head and pre_logits are" if arch["representation_size"] else "head is")
    elif "representation_size" not in given:
        config["representation_size"] = arch["representation_size"]
    if keep_head and "class_names" not in given:
        config["class_names"] = checkpoint.class_names

    from keras_vit.models import VisionTransformer

    model = VisionTransformer(**config)
    old_grid = _token_grid(arch)
    if old_grid != tuple(model.grid_size):
        method = resample_method or checkpoint.resample_method
        logger.warning("%s: position embeddings resampled from a %dx%d to a %dx%d grid (%s), for "
                       "image size %s.", source, *old_grid, *model.grid_size, method,
                       model.image_size)
        state["position_embedding/embedding"] = L.resample_position_embeddings(
            state["position_embedding/embedding"], old_grid, model.grid_size,
            model.get_layer("position_embedding").num_prefix_tokens, method, checkpoint.antialias)
    new = ()
    if include_top and not keep_head:
        new = heads if config.get("representation_size") else heads[:2]
    assign_state(model, state, reinitialise=new, source=source)
    if new:  # a new head starts at zeros, as the paper's fine-tuning
        for variable in model.weights:
            if variable.path.startswith(heads[:2]):
                variable.assign(np.zeros(variable.shape, variable.dtype))
    if keep_head and not np.any(state["head/kernel"]):
        logger.warning("%s: the classification head is all zeros (an ImageNet-21k pre-training "
                       "checkpoint): its predictions are meaningless. Fine-tune it, e.g. with "
                       "num_classes=N.", source)
    return model


def _token_grid(architecture):
    """The patch grid of an architecture: a hybrid's patches are cut from the ResNet's feature map."""
    backbone = architecture.get("backbone")
    stride = resnet.backbone_stride(backbone["block_units"]) if backbone else 1
    return tuple(size // (patch * stride) for size, patch in
                 zip(architecture["image_size"], architecture["patch_size"]))


def assign_state(model, state, reinitialise=(), source="checkpoint"):
    """Assigns `{variable path: array}` to `model` by `variable.path`, strictly: every variable
    (except paths starting with `reinitialise`) must be filled, no tensor left over, shapes equal."""
    variables = {v.path: v for v in model.weights}
    missing = [p for p in variables if p not in state and not p.startswith(tuple(reinitialise))]
    unexpected = [p for p in state if p not in variables]
    if missing or unexpected:
        raise ValueError(
            f"{source!r} does not fit the model: "
            + (f"missing {[(p, tuple(variables[p].shape)) for p in missing]}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {[(p, tuple(np.shape(state[p]))) for p in unexpected]}" if unexpected else "")
            + "."
        )
    mismatched = [(p, tuple(variables[p].shape), tuple(np.shape(v))) for p, v in state.items()
                  if tuple(variables[p].shape) != tuple(np.shape(v))]
    if mismatched:
        raise ValueError(f"{source!r} does not fit the model: shape mismatches (variable, expected, "
                         f"checkpoint): {mismatched}.")
    for path, value in state.items():
        variables[path].assign(np.asarray(value, dtype=variables[path].dtype))
