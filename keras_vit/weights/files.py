"""Reading checkpoint files: the container (Google `.npz`, safetensors, a sharded safetensors index),
told by its first bytes and never by its name, then the format, told by the tensor names
(`formats.FORMATS`, first match wins). Pickles (`.pth`, `.bin`, ...) are refused, never loaded;
NaN or inf in a weight is refused too.
"""

import json
import os
import zipfile

import numpy as np

from keras_vit.weights import formats

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")
# The checkpoint file of a folder that holds several (a timm CLIP repo has both).
PREFERRED_WEIGHT_FILES = ("model.safetensors", "open_clip_model.safetensors")


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
    check_finite(tensors, path)
    keys, config = set(tensors), configs.get("config.json", {})
    form = next((f for f in formats.FORMATS if f.matches(keys, config)), None)
    if form is None:
        names = [f.__name__.rsplit(".", 1)[-1] for f in formats.FORMATS]
        raise ValueError(
            f"{files[0]!r} is not a ViT checkpoint this library knows: its tensor names match none "
            f"of the formats tried ({', '.join(names)}), which expect "
            f"{'; or '.join(f.EXPECTED for f in formats.FORMATS)}. It has {sorted(keys)[:5]} ...")
    checkpoint = form.convert(tensors, config, configs.get("preprocessor_config.json"), files[0],
                              num_heads, image_size)
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


def check_finite(tensors, path):
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
    # safetensors first: its first byte is the low byte of the header length, 0x80 (a pickle's
    # protocol opcode) for one header size in 32.
    if len(head) >= 9 and head[8:9] == b"{" and not path.endswith(PICKLE_SUFFIXES):
        header_size = int.from_bytes(head[:8], "little")
        if 8 + header_size > size:
            raise ValueError(f"{path!r} is a truncated safetensors file: its header says "
                             f"{header_size} header bytes, the file has {size} bytes in all.")
        return "safetensors"
    if head[:1] == b"\x80" or path.endswith(PICKLE_SUFFIXES):
        _refuse_pickle(path)
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
