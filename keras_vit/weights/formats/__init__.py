"""One module per checkpoint format; `FORMATS` is the order `read_checkpoint` tries them in.

Each module has:
- `matches(keys, config=None) -> bool`: whether a file with these tensor names (and config.json,
  a dict, {} without one) is in this format. The first format that matches converts the file.
- `convert(raw, config, processor, path, num_heads=None, image_size=None) -> Checkpoint`: the
  tensors `raw` (`{name: array}`) as keras_vit variable paths, with the architecture and
  preprocessing the file says (`processor`: its preprocessor_config.json, or None).
- `EXPECTED`: the tensor names it recognises, for the error when no format matches.

A new format is one module here and one entry in `FORMATS`.
"""

from keras_vit.weights.formats import google, huggingface, timm

FORMATS = [google, huggingface, timm]
