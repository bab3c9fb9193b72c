"""The registry of published checkpoints: what `weights="imagenet21k"` and `"B/16:imagenet21k"` mean.

    >>> registry_entry("B/16", "imagenet21k").url
    'https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz'

Each entry is a `WeightsEntry` (URL, resolution, classes, SHA-256 once published); `downloads`
fetches and verifies it, the Hub's entries go through `hub`.
"""

import dataclasses

from keras_vit import models as M


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
    paper = [(variant, f"ViT-{variant.replace('/', '_')}.npz", variant != "H/14", "ViT paper")
             for variant in ("B/16", "B/32", "L/16", "L/32", "H/14")]
    paper += [(variant, file, fine_tuned, "ViT paper hybrid")
              for variant, (file, fine_tuned) in _PAPER_HYBRIDS.items()]
    for variant, file, fine_tuned, source in paper:
        registry[variant, "imagenet21k"] = WeightsEntry(
            f"{_GCS}/imagenet21k/{file}", 224, 21843,
            f"{source}, ImageNet-21k pre-training (zero head: for fine-tuning)")
        if fine_tuned:
            registry[variant, "imagenet21k+imagenet2012"] = WeightsEntry(
                f"{_GCS}/imagenet21k%2Bimagenet2012/{file}", 384, 1000,
                f"{source}, ImageNet-21k pre-training, ImageNet-1k fine-tuning at 384px")
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
            f"No registered weights {name!r} for {display_name(variant)}: expected one of {names}"
            + ("" if names else " (none are registered for this variant)")
            + ", or a local checkpoint path."
        )
    return REGISTRY[variant, name]


def display_name(variant):
    return variant if variant in M.HYBRID_VARIANTS else f"ViT-{variant}"  # "R50+B/16", "ViT-B/16"
