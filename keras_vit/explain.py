"""Seeing inside a ViT: attention maps, attention rollout, mean attention distance, position-embedding
similarity and patch-embedding filters, as arrays and as PNG pictures.

    maps = keras_vit.explain.attention_maps(model, "cat.jpg")         # (layers, heads, T, T)
    heat = keras_vit.explain.attention_rollout(model, "cat.jpg")      # (grid_h, grid_w)
    dist = keras_vit.explain.mean_attention_distance(model, images)   # (layers, heads), pixels
    sim = keras_vit.explain.position_embedding_similarity(model)      # (gh, gw, gh, gw), cosine
    keras_vit.explain.plot_patch_filters(model, "filters.png")        # paper Fig. 7 left
    keras_vit.explain.plot_all(model, ["cat.jpg"], "explain/")        # all five, as the CLI does

The model-level functions run an *attention probe*: a second functional model that re-calls the
model's own layers (same weights) and returns every block's attention weights. The model itself
is untouched. The maths (`rollout`, `attention_distance`, `cosine_similarity_grid`,
`principal_components`) are plain NumPy functions of arrays, usable on any attention weights.
Everything uses `keras.ops` / NumPy, so it runs on the TensorFlow, JAX and PyTorch backends;
matplotlib is imported only by the `plot_*` functions and draws off-screen (Agg).
"""

import math
import os
import warnings
import weakref

import keras
import numpy as np
from keras import ops

from keras_vit import layers as L
from keras_vit.fileio import atomic_path
from keras_vit.images import load_image, load_images

HEAD_FUSIONS = ("mean", "max", "min")
PAPER_NUM_FILTER_COMPONENTS = 28  # the paper's Figure 7 (left) shows 28 principal components

_PROBES = weakref.WeakKeyDictionary()  # model -> its attention probe; freed with the model


# --------------------------------------------------------------------------------------------
# The attention probe


class _AttentionTap(keras.layers.Layer):
    """Calls a `TransformerBlock` with `return_attention_scores=True` inside a functional graph.

    Calling the block itself there would give it a second node with two outputs, and Keras 3's
    functional graph check sizes every node of a layer by its first node (`op.output`, one
    tensor), so it reports the attention output as "not connected". A fresh wrapper's first node
    has both outputs. It owns no weights of its own.
    """

    def __init__(self, block, **kwargs):
        super().__init__(name=f"{block.name}_attention", dtype=block.dtype_policy, **kwargs)
        self.block = block

    def call(self, x):
        return self.block(x, training=False, return_attention_scores=True)


def attention_probe(model):
    """The functional model `images -> (layers, batch, heads, T, T)` attention weights of `model`.

    It re-calls `model`'s layers from its `images` input to its last encoder block on a new
    `keras.Input` (so it shares their weights, and the model's own forward path is unchanged),
    calling each `TransformerBlock` with `return_attention_scores=True`. Built once per model and
    cached (weakly: it goes away with the model).

    >>> keras_vit.explain.attention_probe(model)(images).shape  # (12, batch, 12, 197, 197)
    """
    probe = _PROBES.get(model)
    if probe is None:
        probe = _PROBES[model] = _build_probe(model)
    return probe


def _build_probe(model):
    _check_vit(model)
    layers = model.layers
    start = layers.index(model.get_layer("images")) + 1
    last_block = max(i for i, layer in enumerate(layers) if isinstance(layer, L.TransformerBlock))
    source = model.get_layer("images").output
    inputs = keras.Input(shape=source.shape[1:], dtype=source.dtype, name="images")
    x, attentions = inputs, []
    # The VisionTransformer graph is a chain, and `model.layers` lists it in order.
    for layer in layers[start:last_block + 1]:
        if isinstance(layer, L.TransformerBlock):
            x, weights = _AttentionTap(layer)(x)
            attentions.append(weights)
        else:
            x = layer(x)
    outputs = ops.stack(attentions, axis=0)
    return keras.Model(inputs, outputs, name=f"{model.name}_attention_probe")


def _check_vit(model):
    missing = [name for name in ("image_size", "patch_size", "grid_size", "num_prefix_tokens")
               if not hasattr(model, name)]
    if missing or not any(isinstance(layer, L.TransformerBlock) for layer in model.layers):
        raise ValueError(
            f"keras_vit.explain needs a keras_vit VisionTransformer (built with keras_vit.ViT, "
            f"loaded from a .keras file or a checkpoint), got {type(model).__name__} "
            f"{getattr(model, 'name', '')!r}."
        )


def _image_batch(model, image):
    """`image` (path, list of paths, (H, W, 3) array or (B, H, W, 3) batch) -> (float32 batch, single)."""
    height, width = model.image_size
    if isinstance(image, (str, os.PathLike)):
        image = load_image(os.fspath(image), (height, width))
    elif isinstance(image, (list, tuple)) and image and all(
        isinstance(item, (str, os.PathLike)) for item in image
    ):
        image = load_images([os.fspath(item) for item in image], (height, width))
    array = np.asarray(image)
    single = array.ndim == 3
    if single:
        array = array[None]
    if array.ndim != 4 or array.shape[1:] != (height, width, 3):
        raise ValueError(
            f"Expected an image of shape ({height}, {width}, 3), a batch (n, {height}, {width}, 3) "
            f"or image file path(s) for this {height}x{width} model, got an array of shape "
            f"{np.shape(image)}. Load files with keras_vit.images.load_image(path, "
            f"({height}, {width})) to resize and crop them."
        )
    return array.astype("float32"), single


def attention_maps(model, image, batch_size=16):
    """Attention weights of every block and head, float32 NumPy.

    Args:
        model: a keras_vit VisionTransformer.
        image: an image file path, a `(H, W, 3)` array in the model's input range ([0, 255] pixels
            with `include_preprocessing=True`), a batch `(n, H, W, 3)`, or a list of paths.
        batch_size: images per probe call (the weights take layers * heads * T^2 floats an image).

    Returns:
        `(layers, heads, T, T)` for one image, `(layers, n, heads, T, T)` for a batch; `T` counts the
        prefix tokens (class token, registers) first, then the patches row by row. Row q holds
        what token q attends to.

    >>> keras_vit.explain.attention_maps(model, "cat.jpg").shape  # (12, 3, 197, 197) for DeiT-Ti
    """
    images, single = _image_batch(model, image)
    probe = attention_probe(model)
    chunks = [ops.convert_to_numpy(probe(images[i:i + batch_size], training=False))
              for i in range(0, len(images), batch_size)]
    maps = np.concatenate(chunks, axis=1).astype("float32")
    return maps[:, 0] if single else maps


def _pooled_from_class_token(model):
    """A token-pooled model reads the class token; "gap" and "map" models read all patches."""
    return model.class_token and model.pooling in ("token", None)


# --------------------------------------------------------------------------------------------
# Attention rollout (Abnar & Zuidema, 2020)


def rollout(attentions, grid_size, num_prefix_tokens=1, head_fusion="mean", discard_ratio=0.0,
            from_class_token=True):
    """Attention rollout of Abnar & Zuidema (2020), in NumPy.

    Each layer's heads are fused (`mean`, `max` or `min`); optionally the lowest `discard_ratio`
    fraction of the fused matrix's entries is zeroed (as in jacobgil/vit-explain, to sharpen the
    map); the residual connection is modelled as `(A + I) / 2`, each row re-normalised to sum 1;
    and the layers are multiplied, first layer on the right. The map is the row of the class token
    (`from_class_token=True`, for token-pooled models) or the average of the patch-token rows
    (models that pool by averaging the patches), restricted to the patch columns: the share of the
    output that flows from each input patch. Prefix tokens (class, registers) are not in the map.

    Args:
        attentions: `(layers, heads, T, T)` for one image or `(layers, batch, heads, T, T)`.
        grid_size: `(grid_h, grid_w)` patches, with `T == num_prefix_tokens + grid_h * grid_w`.

    Returns:
        `(grid_h, grid_w)` (or `(batch, grid_h, grid_w)`), not normalised: non-negative values that
        sum to at most 1 (the rest flows from the prefix tokens).

    >>> rollout(np.full((1, 1, 5, 5), 0.2), (2, 2))  # uniform attention -> [[0.1, 0.1], [0.1, 0.1]]
    """
    attentions = np.asarray(attentions, dtype="float64")
    single = attentions.ndim == 4
    if single:
        attentions = attentions[:, None]
    _check_attentions(attentions, grid_size, num_prefix_tokens)
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown head_fusion {head_fusion!r}: expected one of {list(HEAD_FUSIONS)}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}.")
    tokens = attentions.shape[-1]
    identity = np.eye(tokens)
    result = np.broadcast_to(identity, (attentions.shape[1], tokens, tokens))
    for layer in attentions:
        fused = getattr(np, head_fusion)(layer, axis=1)  # (batch, T, T)
        if discard_ratio:
            fused = _discard_lowest(fused, discard_ratio)
        fused = (fused + identity) / 2.0
        fused = fused / fused.sum(axis=-1, keepdims=True)
        result = fused @ result
    patches = result[:, :, num_prefix_tokens:]
    heat = patches[:, 0] if from_class_token else patches[:, num_prefix_tokens:].mean(axis=1)
    heat = heat.reshape(-1, grid_size[0], grid_size[1])
    return heat[0] if single else heat


def _discard_lowest(matrices, ratio):
    """Zeroes the `ratio` fraction of smallest entries of each (T, T) matrix."""
    batch, tokens, _ = matrices.shape
    count = int(round(ratio * tokens * tokens))
    if count == 0:
        return matrices
    flat = matrices.reshape(batch, -1).copy()
    lowest = np.argpartition(flat, count - 1, axis=-1)[:, :count]
    np.put_along_axis(flat, lowest, 0.0, axis=-1)
    return flat.reshape(matrices.shape)


def _check_attentions(attentions, grid_size, num_prefix_tokens):
    """`attentions` must be (layers, batch, heads, T, T) with T = prefix + grid_h * grid_w."""
    expected = num_prefix_tokens + grid_size[0] * grid_size[1]
    if attentions.ndim != 5 or attentions.shape[-2:] != (expected, expected):
        raise ValueError(
            f"Expected attention weights of shape (layers, [batch,] heads, {expected}, {expected}) "
            f"for a {grid_size[0]}x{grid_size[1]} grid with {num_prefix_tokens} prefix token(s), "
            f"got shape {attentions.shape}."
        )


def attention_rollout(model, image, head_fusion="mean", discard_ratio=0.0, batch_size=16):
    """Attention rollout of `model` on `image`: `(grid_h, grid_w)` (or `(n, grid_h, grid_w)`).

    See `rollout` for the method and `attention_maps` for the accepted `image` forms. Token-pooled
    models use the class token's row, averaging-pooled ones the mean of the patch rows.

    >>> heat = keras_vit.explain.attention_rollout(model, "cat.jpg")  # (14, 14) for 224 / 16
    """
    maps = attention_maps(model, image, batch_size)
    return rollout(maps, model.grid_size, model.num_prefix_tokens, head_fusion, discard_ratio,
                   _pooled_from_class_token(model))


def head_attention_maps(model, image, layer=-1):
    """What each head of block `layer` attends to, from the class token: `(heads, grid_h, grid_w)`.

    For models without a token pooling (GAP, MAP) it is the average over the patch queries.
    Entries are raw attention weights to the patches (the attention to prefix tokens is left out).

    >>> keras_vit.explain.head_attention_maps(model, "cat.jpg", layer=-1).shape  # (3, 14, 14)
    """
    images, _ = _image_batch(model, image)
    maps = attention_maps(model, images[:1])[:, 0]
    layer = _layer_index(layer, len(maps))
    prefix = model.num_prefix_tokens
    patches = maps[layer][:, :, prefix:]
    heads = patches[:, 0] if _pooled_from_class_token(model) else patches[:, prefix:].mean(axis=1)
    return heads.reshape(-1, *model.grid_size)


def _layer_index(layer, num_layers):
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} does not exist: the model has {num_layers} blocks "
                         f"(0..{num_layers - 1}, or -1 for the last).")
    return layer % num_layers


# --------------------------------------------------------------------------------------------
# Mean attention distance (paper Figure 7 right, Figure 11)


def patch_distances(grid_size, patch_size):
    """`(N, N)` Euclidean distances in pixels between the centres of the `N = gh * gw` patches."""
    rows, cols = np.meshgrid(np.arange(grid_size[0]), np.arange(grid_size[1]), indexing="ij")
    centres = np.stack([rows.ravel() * patch_size[0], cols.ravel() * patch_size[1]], axis=-1)
    return np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)


def attention_distance(attentions, grid_size, patch_size, num_prefix_tokens=1):
    """Mean attention distance in pixels per layer and head, in NumPy (the paper's Figure 7 right).

    For each query patch q: `sum_k a(q, k) * distance(q, k)` over key patches k, with distances
    between patch centres in pixels; then the mean over query patches and images. Only
    patch-to-patch attention is used: the prefix tokens (class, registers) have no position, so
    their rows and columns are dropped and each query's attention to the patches is re-normalised
    to sum 1 (what it gives the class token is not a distance).

    Args:
        attentions: `(layers, batch, heads, T, T)` or `(layers, heads, T, T)`.
        grid_size, patch_size: `(h, w)` pairs; `T == num_prefix_tokens + gh * gw`.

    Returns:
        `(layers, heads)` float64.

    >>> attention_distance(maps, (14, 14), (16, 16))  # e.g. 20-120 px for a trained ViT-B/16
    """
    attentions = np.asarray(attentions, dtype="float64")
    if attentions.ndim == 4:
        attentions = attentions[:, None]
    _check_attentions(attentions, grid_size, num_prefix_tokens)
    patches = attentions[..., num_prefix_tokens:, num_prefix_tokens:]
    patches = patches / np.maximum(patches.sum(axis=-1, keepdims=True), 1e-12)
    per_query = np.einsum("lbhqk,qk->lbhq", patches, patch_distances(grid_size, patch_size))
    return per_query.mean(axis=(1, 3))


def mean_attention_distance(model, images, batch_size=16):
    """Mean attention distance of `model` in pixels, `(layers, heads)`, averaged over `images`.

    `images`: a batch `(n, H, W, 3)`, one image, or file path(s). The paper used 128 images; a few
    dozen give the same picture. See `attention_distance` for the definition.

    >>> keras_vit.explain.mean_attention_distance(model, batch).shape  # (12, 12) for ViT-B/16
    """
    batch, _ = _image_batch(model, images)
    geometry = (model.grid_size, model.patch_size, model.num_prefix_tokens)
    # Chunk by chunk, weighted by chunk size: all the weights of many images would not fit.
    totals = [attention_distance(attention_maps(model, chunk), *geometry) * len(chunk)
              for chunk in (batch[i:i + batch_size] for i in range(0, len(batch), batch_size))]
    return np.sum(totals, axis=0) / len(batch)


# --------------------------------------------------------------------------------------------
# Position embeddings (paper Figure 7 centre) and patch-embedding filters (Figure 7 left)


def cosine_similarity_grid(embeddings):
    """`(gh, gw, D)` vectors -> `(gh, gw, gh, gw)` cosine similarities: `[i, j]` is patch (i, j)'s
    similarity to every patch, as the small images of the paper's Figure 7 (centre)."""
    embeddings = np.asarray(embeddings, dtype="float64")
    if embeddings.ndim != 3:
        raise ValueError(f"Expected embeddings of shape (grid_h, grid_w, dim), got {embeddings.shape}.")
    grid_h, grid_w, dim = embeddings.shape
    flat = embeddings.reshape(-1, dim)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
    return (flat @ flat.T).reshape(grid_h, grid_w, grid_h, grid_w)


def position_embedding_similarity(model):
    """Cosine similarity between the position embeddings of the patches: `(gh, gw, gh, gw)`.

    The class token's entry is left out. `sim[i, j]` is an image of how similar patch (i, j)'s
    embedding is to every other patch's: a trained ViT learns 2-D neighbourhoods (paper Fig. 7).

    >>> keras_vit.explain.position_embedding_similarity(model)[3, 5]  # (14, 14), 1.0 at [3, 5]
    """
    _check_vit(model)
    layer = model.get_layer("position_embedding")
    embedding = ops.convert_to_numpy(layer.embedding)[0, layer.num_prefix_tokens:]
    return cosine_similarity_grid(embedding.reshape(*layer.grid_size, -1))


def principal_components(kernel, num_components=PAPER_NUM_FILTER_COMPONENTS):
    """PCA of a patch-embedding kernel `(ph, pw, 3, D)`: the D filters are the samples.

    Returns `(components (n, ph, pw, 3), explained_variance_ratio (n,))`, components as unit
    vectors (their sign is arbitrary, as in any PCA), largest variance first.
    """
    kernel = np.asarray(kernel, dtype="float64")
    if kernel.ndim != 4:
        raise ValueError(f"Expected a patch-embedding kernel (ph, pw, channels, D), got {kernel.shape}.")
    patch_h, patch_w, channels, dim = kernel.shape
    filters = kernel.reshape(-1, dim).T  # (D, ph * pw * channels)
    available = min(filters.shape)
    if not 1 <= num_components <= available:
        raise ValueError(f"num_components must be in [1, {available}] for a kernel of shape "
                         f"{kernel.shape}, got {num_components}.")
    _, singular, components = np.linalg.svd(filters - filters.mean(axis=0), full_matrices=False)
    variance = singular ** 2
    ratio = variance[:num_components] / variance.sum()
    return components[:num_components].reshape(-1, patch_h, patch_w, channels), ratio


def patch_filter_components(model, num_components=PAPER_NUM_FILTER_COMPONENTS):
    """First principal components of `model`'s patch-embedding filters (paper Figure 7, left).

    >>> components, ratio = keras_vit.explain.patch_filter_components(model)  # (28, 16, 16, 3)
    """
    _check_vit(model)
    kernel = ops.convert_to_numpy(model.get_layer("patch_embedding").projection.kernel)
    return principal_components(kernel, num_components)


# --------------------------------------------------------------------------------------------
# Pictures


def _new_figure(width, height):
    """A matplotlib Figure drawn by Agg, without pyplot (no global backend change, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    """Writes `figure` as an RGB PNG (no alpha channel: the figure is opaque, so the fourth
    channel only makes the file bigger)."""
    from PIL import Image

    path = os.fspath(path)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    # Written beside `path` and renamed over it: an interrupted run leaves the previous picture,
    # never half of one. The temporary name keeps the extension, which tells Pillow the format.
    with atomic_path(path, suffix=os.path.splitext(path)[1] or ".png") as temporary:
        Image.fromarray(pixels).save(temporary, optimize=True)
    return path


def _colorbar_axes(ax):
    """An axes beside `ax`, exactly as tall as it, for a colorbar."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    return make_axes_locatable(ax).append_axes("right", size="4%", pad=0.08)


def _display_image(model, images):
    """The first image as uint8 for display (pixels in [0, 255] even without preprocessing)."""
    image = images[0]
    if not model.include_preprocessing:
        mean, std = np.asarray(model.normalization_mean), np.asarray(model.normalization_std)
        image = (image * std + mean) * 255.0
    return np.clip(image, 0, 255).astype("uint8")


def _prediction_text(model, images):
    """`"prediction: tabby cat (41%)"` when the model has a head and class names, else None."""
    if not model.include_top or not model.class_names:
        return None
    logits = ops.convert_to_numpy(model(images[:1], training=False))[0].astype("float64")
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    best = int(np.argmax(probabilities))
    return f"prediction: {model.class_names[best]} ({probabilities[best]:.0%})"


def plot_rollout(model, image, path="rollout.png", head_fusion="mean", discard_ratio=0.0):
    """Writes the image, its attention rollout on the patch grid, and the rollout blended over the
    image (bilinearly upsampled) with a colorbar. Returns `path`.

    >>> keras_vit.explain.plot_rollout(model, "cat.jpg", "rollout.png")
    """
    images, _ = _image_batch(model, image)
    heat = attention_rollout(model, images[:1], head_fusion, discard_ratio)[0]
    picture = _display_image(model, images)
    height, width = picture.shape[:2]
    figure = _new_figure(10.0, 3.15 * height / width + 0.5)
    axes = figure.subplots(1, 3, gridspec_kw=dict(width_ratios=[1, 1, 1.05]))
    axes[0].imshow(picture)
    axes[0].set_title(_prediction_text(model, images) or "image", fontsize=10)
    axes[1].imshow(heat, cmap="inferno", interpolation="nearest")
    axes[1].set_title(f"rollout on the {heat.shape[0]}x{heat.shape[1]} patch grid", fontsize=10)
    axes[2].imshow(picture)
    overlay = axes[2].imshow(heat, cmap="jet", alpha=0.5, interpolation="bilinear",
                             extent=(0, width, height, 0))
    axes[2].set_title("rollout over the image", fontsize=10)
    colorbar = figure.colorbar(overlay, cax=_colorbar_axes(axes[2]))
    colorbar.set_label("share of the output from each patch", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    for ax in axes:
        ax.set_axis_off()
    fusion = f"{head_fusion} over heads" + (f", lowest {discard_ratio:.0%} discarded"
                                            if discard_ratio else "")
    source = "class token" if _pooled_from_class_token(model) else "mean of the patch tokens"
    figure.suptitle(f"Attention rollout (Abnar & Zuidema 2020) of the {source}: {fusion}",
                    fontsize=11)
    figure.tight_layout()
    return _save(figure, path)


def plot_attention_heads(model, image, path="heads.png", layer=-1):
    """Writes a grid of what each head of block `layer` attends to (class token's row, or the
    patches' mean row for GAP models), each blended over the image with its own colour scale.

    >>> keras_vit.explain.plot_attention_heads(model, "cat.jpg", "heads.png", layer=-1)
    """
    images, _ = _image_batch(model, image)
    maps = head_attention_maps(model, images[:1], layer)
    layer = _layer_index(layer, model.num_layers)
    picture = _display_image(model, images)
    height, width = picture.shape[:2]
    panels = len(maps) + 1
    columns = min(panels, 6)
    rows = math.ceil(panels / columns)
    figure = _new_figure(2.1 * columns, 2.1 * rows * height / width + 0.6)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    axes[0].imshow(picture)
    axes[0].set_title("image", fontsize=9)
    for head, (ax, heat) in enumerate(zip(axes[1:], maps)):
        ax.imshow(picture)
        ax.imshow(heat, cmap="jet", alpha=0.55, interpolation="nearest",
                  extent=(0, width, height, 0))
        ax.set_title(f"head {head}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    query = "the class token" if _pooled_from_class_token(model) else "the patches (mean)"
    figure.suptitle(f"Block {layer}: attention of {query} to each patch, per head "
                    f"(colour scale per head)", fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def plot_attention_distances(model, images, path="distances.png", batch_size=16):
    """Writes the paper's Figure 7 (right): mean attention distance in pixels against network
    depth, one dot per head, and the mean over heads as a line.

    >>> keras_vit.explain.plot_attention_distances(model, batch, "distances.png")
    """
    batch, _ = _image_batch(model, images)
    distances = mean_attention_distance(model, batch, batch_size)
    num_layers, num_heads = distances.shape
    depth = np.arange(1, num_layers + 1)
    figure = _new_figure(5.2, 4.0)
    ax = figure.subplots()
    ax.plot(depth, distances.mean(axis=1), color="0.6", linewidth=1, zorder=1,
            label="mean over heads")
    colours = [_head_colour(head, num_heads) for head in range(num_heads)]
    for head in range(num_heads):
        ax.scatter(depth, distances[:, head], s=16, color=colours[head], zorder=2,
                   label=f"head {head}" if num_heads <= 6 else None)
    height, width = model.image_size
    ax.set_ylim(0, max(distances.max() * 1.1, 1.0))
    ax.set_xticks(depth)
    ax.set_xlabel("Network depth (layer)")
    ax.set_ylabel("Mean attention distance (pixels)")
    ax.set_title(f"{model.name}: {num_heads} heads, {height}x{width} input, "
                 f"{len(batch)} image{'s' if len(batch) > 1 else ''}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return _save(figure, path)


def _head_colour(head, num_heads):
    from matplotlib import colormaps

    return colormaps["viridis"](head / max(num_heads - 1, 1))


def plot_position_similarity(model, path="position_similarity.png"):
    """Writes the paper's Figure 7 (centre): a gh x gw grid of small gh x gw images, the cosine
    similarity of each patch's position embedding to all the others.

    >>> keras_vit.explain.plot_position_similarity(model, "position_similarity.png")
    """
    similarity = position_embedding_similarity(model)
    grid_h, grid_w = similarity.shape[:2]
    # One mosaic image with a one-pixel gap between tiles: fast, and the tiles stay aligned.
    mosaic = np.full((grid_h * (grid_h + 1) - 1, grid_w * (grid_w + 1) - 1), np.nan)
    for i in range(grid_h):
        for j in range(grid_w):
            top, left = i * (grid_h + 1), j * (grid_w + 1)
            mosaic[top:top + grid_h, left:left + grid_w] = similarity[i, j]
    figure = _new_figure(6.4, 5.2 * mosaic.shape[0] / mosaic.shape[1] + 0.9)
    ax = figure.subplots()
    image = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    step_h, step_w = max(1, math.ceil(grid_h / 16)), max(1, math.ceil(grid_w / 16))
    ax.set_yticks([i * (grid_h + 1) + (grid_h - 1) / 2 for i in range(0, grid_h, step_h)])
    ax.set_yticklabels([str(i + 1) for i in range(0, grid_h, step_h)], fontsize=7)
    ax.set_xticks([j * (grid_w + 1) + (grid_w - 1) / 2 for j in range(0, grid_w, step_w)])
    ax.set_xticklabels([str(j + 1) for j in range(0, grid_w, step_w)], fontsize=7)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_ylabel("Input patch row")
    ax.set_xlabel("Input patch column")
    ax.set_title("Position embedding similarity", fontsize=11)
    colorbar = figure.colorbar(image, cax=_colorbar_axes(ax))
    colorbar.set_label("Cosine similarity")
    figure.tight_layout()
    return _save(figure, path)


def plot_patch_filters(model, path="filters.png", num_components=None):
    """Writes the paper's Figure 7 (left): the first principal components of the patch-embedding
    filters as RGB patches, each scaled to the full colour range.

    `num_components=None` shows 28 as the paper does (fewer when the kernel has fewer).

    >>> keras_vit.explain.plot_patch_filters(model, "filters.png")
    """
    kernel_shape = model.get_layer("patch_embedding").projection.kernel.shape
    available = min(int(np.prod(kernel_shape[:3])), int(kernel_shape[3]))
    if num_components is None:
        num_components = min(PAPER_NUM_FILTER_COMPONENTS, available)
        if num_components < PAPER_NUM_FILTER_COMPONENTS:
            warnings.warn(f"Showing {num_components} filter components instead of "
                          f"{PAPER_NUM_FILTER_COMPONENTS}: the kernel {tuple(kernel_shape)} has only "
                          f"{available}.", stacklevel=2)
    components, ratio = patch_filter_components(model, num_components)
    columns = min(7, num_components)
    rows = math.ceil(num_components / columns)
    figure = _new_figure(1.0 * columns + 0.2, 1.0 * rows + 0.6)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, component in zip(axes, components):
        low, high = component.min(), component.max()
        ax.imshow((component - low) / max(high - low, 1e-12), interpolation="nearest")
    figure.suptitle(f"RGB embedding filters (first {num_components} principal components, "
                    f"{ratio.sum():.0%} of the variance)", fontsize=10)
    figure.tight_layout(pad=0.4)
    return _save(figure, path)


def plot_all(model, images, folder="explain", layer=-1, head_fusion="mean", discard_ratio=0.0):
    """Writes the five pictures into `folder` and returns their paths, in this order:
    rollout.png and heads.png (of the first image), distances.png (over all `images`),
    position_similarity.png and filters.png. What `keras-vit explain` draws.

    Checks the model, `layer` and the images before drawing anything.

    >>> keras_vit.explain.plot_all(model, ["cat.jpg", "dog.jpg"], "explain/")
    ['explain/rollout.png', 'explain/heads.png', ...]
    """
    _check_vit(model)
    _layer_index(layer, model.num_layers)
    batch, _ = _image_batch(model, images)
    first = batch[:1]
    folder = os.fspath(folder)
    return [
        plot_rollout(model, first, os.path.join(folder, "rollout.png"), head_fusion, discard_ratio),
        plot_attention_heads(model, first, os.path.join(folder, "heads.png"), layer),
        plot_attention_distances(model, batch, os.path.join(folder, "distances.png")),
        plot_position_similarity(model, os.path.join(folder, "position_similarity.png")),
        plot_patch_filters(model, os.path.join(folder, "filters.png")),
    ]
