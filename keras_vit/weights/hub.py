"""Checkpoints on the Hugging Face Hub, `hf://ORG/NAME[@REVISION]`, through its official client.

    model = keras_vit.load_pretrained("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")
    model = keras_vit.ViTB16(weights="hf://google/vit-base-patch16-224")
    model = keras_vit.load_pretrained("hf://timm/deit_tiny_patch16_224.fb_in1k@refs/pr/1")

The revision is a branch, tag, commit or pull request. Only what the loader reads is fetched: the
safetensors weights (one file, or an index and its shards), `config.json` and
`preprocessor_config.json`; never a pickle (`pytorch_model.bin`, `*.pth`). `huggingface_hub` does
the rest as it does for transformers and timm, whose cache it shares: `HF_HOME` / `HF_HUB_CACHE`,
offline mode (`HF_HUB_OFFLINE=1`: the cache only), and the token (`HF_TOKEN`, `hf auth login`) for
gated and private repositories. It is optional: `pip install "keras-vision-transformer[hub]"`.
"""

import logging
import os
import re

from keras_vit.weights.files import PICKLE_SUFFIXES, PREFERRED_WEIGHT_FILES

logger = logging.getLogger("keras_vit")

PREFIX = "hf://"
EXPECTED = ("'hf://ORG/NAME' or 'hf://ORG/NAME@REVISION' (a branch, tag or commit), e.g. "
            "'hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k'")
INSTALL = 'pip install "keras-vision-transformer[hub]"'
# What the loader reads beside the weights; a shard index names the shards.
METADATA = ("config.json", "preprocessor_config.json", "model.safetensors.index.json")
# The Hub's rule for each half of a repo id (huggingface_hub's validate_repo_id): word characters,
# '-' and '.', at most 96, neither first nor last '-' or '.'; no '--' or '..' anywhere.
_NAME = r"\w(?:[\w.-]{0,94}\w)?"
# A revision is a git ref name or commit: no whitespace, none of ~^:?*[\ and no '..' (git's own
# rule), which also keeps the client's refs/<revision> cache file inside its folder.
_ID = re.compile(rf"({_NAME}/{_NAME})(?:@([^\s~^:?*\[\\/][^\s~^:?*\[\\]*))?")


def is_hub_id(value):
    """Whether `value` names a Hub checkpoint (`hf://...`), well-formed or not; `hf:/...` (the
    form a pathlib.Path makes of it) that is no local file counts too, to be named as malformed."""
    return isinstance(value, str) and (value.startswith(PREFIX) or (
        value.startswith("hf:") and not os.path.exists(value)))


def parse(spec):
    """`"hf://ORG/NAME@REVISION"` -> `("ORG/NAME", "REVISION")` (revision None when absent)."""
    match = _ID.fullmatch(spec[len(PREFIX):]) if spec.startswith(PREFIX) else None
    repo_id, revision = match.groups("") if match else ("", "")
    if not match or "--" in repo_id or ".." in repo_id or ".." in revision:
        raise ValueError(f"{spec!r} is not a Hugging Face Hub id: expected {EXPECTED}.")
    return repo_id, revision or None


def snapshot(spec):
    """The local folder, in the client's cache, that holds `spec`'s weights and configs.

    Online, the repository's file list decides what to fetch (a repository with pickles only is
    refused before anything is downloaded). Offline, or when the Hub cannot be reached, the cached
    snapshot of the revision is used, as the client itself does.
    """
    repo_id, revision = parse(spec)
    hub = _client()
    from huggingface_hub import utils as errors  # every client version exports its errors there

    where = dict(repo_id=repo_id, revision=revision, cache_dir=_cache_dir())
    if _offline():
        return _cached(hub, errors, spec, where, "offline mode is on (HF_HUB_OFFLINE=1)")
    try:
        files = hub.HfApi().list_repo_files(repo_id, revision=revision)
    except errors.RevisionNotFoundError:
        raise FileNotFoundError(f"{spec!r}: the repository {repo_id!r} has no revision "
                                f"{revision!r} (expected a branch, tag or commit of it).") from None
    except errors.GatedRepoError:
        raise PermissionError(f"{spec!r} is a gated repository: accept its conditions on "
                              f"https://huggingface.co/{repo_id} and log in with that account "
                              f"(`hf auth login`, or the HF_TOKEN variable).") from None
    except errors.RepositoryNotFoundError:  # or private: the Hub does not tell them apart
        raise FileNotFoundError(f"{spec!r}: no repository {repo_id!r} on the Hugging Face Hub that "
                                f"this machine may read (for a private one, log in with an account "
                                f"that has access: `hf auth login` or HF_TOKEN).") from None
    except Exception as error:  # network down, Hub error: the transport's types vary by version
        return _cached(hub, errors, spec, where, f"the Hub could not be reached "
                                                 f"({type(error).__name__}: {_first_line(error)})")
    return _download(hub, spec, files, where)


def _client():
    try:
        import huggingface_hub
    except ImportError as error:
        raise ImportError(f"Loading 'hf://' checkpoints needs the huggingface_hub client, which is "
                          f"not installed ({error}): {INSTALL}") from error
    return huggingface_hub


def _cache_dir():
    """The cache folder as the environment says now. huggingface_hub reads HF_HOME and HF_HUB_CACHE
    once, when it is imported, and would miss a later change (in a notebook, in a test)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache and os.environ.get("HF_HOME"):
        cache = os.path.join(os.environ["HF_HOME"], "hub")
    return os.path.expanduser(os.path.expandvars(cache)) if cache else None  # None: the client's


def _offline():
    """HF_HUB_OFFLINE as set now, or as the client read it at import."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    return now or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0]


def _download(hub, spec, files, where):
    """Fetches the files the loader reads, chosen from the repository's file list `files`."""
    top = {f for f in files if "/" not in f}  # sub-folders hold other formats (onnx/, ...)
    weights = sorted(f for f in top if f.endswith(".safetensors"))
    if not weights:
        _refuse(spec, sorted(files), "the repository")
    if "model.safetensors.index.json" not in top:  # one checkpoint file: the loader's choice
        preferred = [f for f in PREFERRED_WEIGHT_FILES if f in weights]
        if not preferred and len(weights) > 1:
            raise ValueError(f"{spec!r} holds several safetensors files {weights} and neither a "
                             f"shard index nor one of {list(PREFERRED_WEIGHT_FILES)}: which is "
                             f"the checkpoint is unclear.")
        weights = preferred[:1] or weights
    wanted = [f for f in METADATA if f in top] + weights
    folder = hub.snapshot_download(**where, allow_patterns=wanted)
    logger.info("%s: %s in %s", spec, ", ".join(wanted), folder)
    return folder


def _cached(hub, errors, spec, where, unreachable):
    """The cached snapshot of `spec`'s revision; a clear error when it is absent or weightless."""
    try:
        # The metadata patterns let the client refuse a snapshot whose download it knows is
        # incomplete; the weights are checked below (and whole: the client moves them in complete).
        folder = hub.snapshot_download(**where, allow_patterns=list(METADATA),
                                       local_files_only=True)
    except errors.LocalEntryNotFoundError as error:
        from huggingface_hub import constants

        cache = where["cache_dir"] or constants.HF_HUB_CACHE
        missing = f"is not in the Hugging Face cache {cache!r}" + (
            f" at revision {where['revision']!r}" if where["revision"] else "")
        if getattr(error, "snapshot_path", None):  # the client's IncompleteSnapshotError
            missing = f"is incomplete in the Hugging Face cache ({_first_line(error)})"
        raise FileNotFoundError(f"{spec!r} {missing}, and {unreachable}, so it cannot be "
                                f"downloaded. Load it once with network access, or pass a local "
                                f"folder.") from None
    names = sorted(os.listdir(folder))
    if not any(n.endswith(".safetensors") for n in names):
        if any(n.endswith(PICKLE_SUFFIXES) for n in names):
            _refuse(spec, names, f"its cached snapshot {folder!r}")
        raise FileNotFoundError(f"The cached snapshot of {spec!r} ({folder!r}) holds no "
                                f"safetensors weights (it has {names}), and {unreachable}, so they "
                                f"cannot be fetched.")
    return folder


def _refuse(spec, names, where):
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    what = (f"only pickle-based PyTorch files {pickles}, which keras_vit never loads (unpickling "
            f"can run arbitrary code)" if pickles else "no weights in a format keras_vit reads")
    raise ValueError(
        f"{spec!r} has no safetensors weights: {where} holds {what} (its files: {names[:20]}"
        f"{' ...' if len(names) > 20 else ''}). A revision may have them: the Hub's conversion bot "
        f"opens pull requests that add model.safetensors ('{spec.split('@')[0]}@refs/pr/N'); or "
        f"convert the weights yourself (in PyTorch: safetensors.torch.save_file).")
