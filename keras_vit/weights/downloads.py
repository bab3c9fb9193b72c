"""Downloads of registered checkpoints into keras_vit's cache, verified by SHA-256.

A file arrives under a temporary `.part` name and moves into place only when complete and
verified; an entry without a published hash is pinned on its first download (`<file>.sha256`).
Hub entries (`hf://`) are fetched and verified by the Hugging Face client (`hub`).
"""

import hashlib
import logging
import os
import time

from keras_vit.fileio import write_text
from keras_vit.weights import hub

logger = logging.getLogger("keras_vit")


def cache_folder():
    """Where registered checkpoints are cached: `$KERAS_HOME/keras_vit` (default `~/.keras/keras_vit`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "keras_vit")


def fetch(entry):
    """The local path of a registered checkpoint: `download(entry)`, or for a Hub entry the
    snapshot `hub` fetches (the client verifies each file against the Hub's SHA-256)."""
    if entry.on_hub:
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
