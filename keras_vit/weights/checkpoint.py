"""What every checkpoint format converts to, and the pieces the converters share.

A converter (`formats/`) turns a file's tensors into a `Checkpoint`: `{keras variable path: array}`
(the paths in `keras_vit.layers`' docstring) with the architecture and preprocessing the file says.
Its helpers live here: `Tensors` (takes tensors out by name, so leftovers are caught), the
position-embedding and patch-grid handling, the depth and declared-architecture checks, and the
readers of config.json and preprocessor_config.json values, each with a clear error for a bad one.
"""

import dataclasses
import logging
import re

import numpy as np

from keras_vit import layers as L
from keras_vit import models as M
from keras_vit import resnet
from keras_vit.config import INTERPOLATIONS

logger = logging.getLogger("keras_vit")

# The standard ViT widths and their head counts (Ti, S, B, L, H), for checkpoints whose tensors
# cannot tell the number of heads and that come without a config.
STANDARD_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
STANDARD_DEPTHS = {192: 12, 384: 12, 768: 12, 1024: 24, 1280: 32}  # to flag files missing blocks


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
    source_format: str  # "google_npz", "big_vision", "huggingface", "timm" or "keras" (a saved model)
    resample_method: str  # how the source resamples position embeddings
    antialias: bool = False
    path: str = ""
    include_preprocessing: bool = True  # False only for a saved model that takes normalised inputs
    # How the source's evaluation prepares an image (the fraction of the resized image's short side
    # that is centre-cropped, and the resampling filter); set by every format.
    crop_pct: float = M.DEFAULTS["crop_pct"]
    interpolation: str = M.DEFAULTS["interpolation"]


class Tensors:
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


def infer_grid(length, num_prefix, patch, requested, path):
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


def position_embedding(tensors, key, path):
    """The source's position embedding, `(entries, D)` or `(1, entries, D)`."""
    pos = tensors.take(key, "position_embedding/embedding")
    if pos.ndim not in (2, 3) or (pos.ndim == 3 and pos.shape[0] != 1):
        raise ValueError(f"Checkpoint {path!r}: the position embedding {key!r} has shape "
                         f"{pos.shape}; expected (entries, width) or (1, entries, width).")
    return pos


def canonical_position_embedding(pos, grid, num_prefix, path):
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


def fold_prefix(state, prefix_pos, num_kept, num_registers):
    """The first `num_kept` entries (class and distillation tokens) stay in the position
    embedding; register entries are added to the register tokens, because this model adds no
    position to registers (the sum is what the source computes)."""
    if num_registers:
        state["register_tokens/tokens"] = state["register_tokens/tokens"] + prefix_pos[:, num_kept:]
    return prefix_pos[:, :num_kept]


def add_backbone(state, converted):
    """Puts a hybrid's ResNet (`resnet.from_npz / from_timm`'s `(state, config)`) under the
    model's `backbone/` layer. Returns `(config or None, stride)`: image pixels per pixel of the
    feature map the patches are cut from (1 without a backbone)."""
    backbone_state, backbone = converted
    if backbone is None:
        return None, 1
    state.update({"backbone/" + path: value for path, value in backbone_state.items()})
    return backbone, resnet.backbone_stride(backbone["block_units"])


def block_count(keys, pattern, example, path):
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


def check_declared(path, declared, architecture):
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


def _is_square(n):
    return n > 0 and int(round(np.sqrt(n))) ** 2 == n


def config_section(config, key, path):
    """`config[key]` as a dict ({} when absent): a config of the wrong shape is a clear error."""
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path!r}: '{key}' in its config.json must be an object, got {value!r:.100}.")
    return value


def config_int(config, key, path):
    """A non-negative int from a config (None when absent); anything else is a clear error."""
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{path!r}: '{key}' in its config.json must be a non-negative int, got "
                         f"{value!r:.100}.")
    return value


def torch_linear(tensors, name, needed_for):
    """PyTorch Linear (out, in) -> keras Dense kernel (in, out) and bias."""
    kernel = tensors.take(name + ".weight", needed_for + "/kernel").T
    return kernel, tensors.take(name + ".bias", needed_for + "/bias")


def grid_from_config(config, key, patch, path):
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


def processor_normalization(processor, path):
    """`(mean, std)` that a Hugging Face preprocessor_config.json applies after scaling pixels to
    [0, 1]; None without the file or without statistics in it."""
    if processor is None:
        return None
    if processor.get("do_normalize", True) is False:
        return 0.0, 1.0  # the model was fed pixels / 255 as they are
    if "image_mean" not in processor and "image_std" not in processor:
        return None
    return tuple(config_floats(processor, key, path, "preprocessor_config.json")
                 for key in ("image_mean", "image_std"))


def config_floats(config, key, path, source="config.json"):
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


def interpolation_name(value, key, path, source, pil_codes=False):
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


def crop_fraction(value, key, path, source):
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


def processor_preprocessing(processor, default, path):
    """`(crop_pct, interpolation)` of a Hugging Face preprocessor_config.json: its `crop_pct`, else
    the centre crop's share of the resize (DeiT: 224 of 256 = 0.875; no crop: 1.0), and its PIL
    `resample` code. `default`: the processor class's own, for what the file does not say."""
    if processor is None:
        return default
    source = "preprocessor_config.json"
    interpolation = default[1] if processor.get("resample") is None else interpolation_name(
        processor["resample"], "resample", path, source, pil_codes=True)
    if processor.get("crop_pct") is not None:
        return crop_fraction(processor["crop_pct"], "crop_pct", path, source), interpolation
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


def infer_heads(configured, hidden, path):
    if configured:
        return int(configured)
    if hidden in STANDARD_HEADS:
        return STANDARD_HEADS[hidden]
    raise ValueError(f"Checkpoint {path!r} has width {hidden} and no config that gives the number "
                     f"of attention heads: pass num_heads=... (the standard widths are "
                     f"{STANDARD_HEADS}).")


def default_class_names(num_classes):
    """Every published 1000-class ViT is an ImageNet-1k classifier: use its names."""
    if num_classes == 1000:
        from keras_vit import labels

        return list(labels.imagenet_class_names())
    return None
