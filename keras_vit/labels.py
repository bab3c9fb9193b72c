"""Class names: ImageNet-1k's, and reading a user's label file."""

import functools
import os

_IMAGENET_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")


@functools.lru_cache(maxsize=None)
def imagenet_class_names():
    """The 1000 ImageNet-1k class names in index order (`"tench"`, `"goldfish"`, ...).

    From KerasHub's ImageNet label table (Apache-2.0), shipped with the package so that it works
    offline.
    """
    with open(_IMAGENET_FILE, encoding="utf-8") as f:
        return tuple(line.strip() for line in f if line.strip())


def read_class_names(path):
    """One class name per line (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]
