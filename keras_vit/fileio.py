"""Atomic file writes: a temporary name in the same folder, then `os.replace`.

A run killed while writing leaves the previous file whole (or no file), never a truncated one.
"""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path beside `path` (ending in `suffix`, for writers that check the
    extension, e.g. `.keras`); on success it replaces `path`, on any error it is removed.

    >>> with atomic_path("run/model.keras", suffix=".keras") as tmp:
    ...     model.save(tmp)
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
                               dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would carry over to the final file
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Writes `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path, data):
    """Writes `data` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)

