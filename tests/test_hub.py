"""`hf://ORG/NAME[@REVISION]` checkpoints through huggingface_hub, without the network.

The offline tests build a cache laid out exactly as huggingface_hub 1.x/2.x writes it (checked
against its file_download.py and _snapshot_download.py, and read back by its own `scan_cache_dir`):

    $HF_HOME/hub/models--ORG--NAME/
        blobs/<ETag>                      sha256 of an LFS file (weights), git blob sha1 of the others
        snapshots/<commit>/<file>         relative symlink -> ../../blobs/<ETag>
        refs/<revision>                   the commit hash, no newline
        trees/<commit>.json               the repository's file list (snapshot_download writes it)

The online path is tested with the client's listing and download calls replaced by fakes that
record what was asked for.
"""

import hashlib
import json
import os
import pickle
import sys

import numpy as np
import pytest
from conftest import TINY, random_images

import keras_vit
from keras_vit.weights import hub

huggingface_hub = pytest.importorskip("huggingface_hub")
pytest.importorskip("huggingface_hub.constants")  # it reads HF_HUB_OFFLINE now, not inside a test
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from test_weights import hf_state, make_hf_model, timm_from_hf, write_shards, write_timm  # noqa: E402

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
TIMM_ID, HF_ID = "timm/vit_test_patch4_32.augreg_in1k", "google/vit-test-patch4-32"


def git_blob_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def cache_repo(hf_home, repo_id, files, refs=("main",), commit=None, listed=()):
    """Writes `files` ({name: bytes}) as huggingface_hub caches a snapshot of `repo_id` (see the
    module docstring); `listed`: more files the repository has upstream that were not fetched."""
    storage = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    tree = {}
    for name, data in files.items():
        lfs = name.endswith((".safetensors", ".bin"))
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = storage / "snapshots" / commit / name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        tree[name] = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if lfs:
            tree[name].update(lfs_sha256=etag, lfs_size=len(data))
    for name in listed:
        tree[name] = {"size": 1, "blob_id": git_blob_sha1(name.encode())}
    (storage / "trees").mkdir(exist_ok=True)
    (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    for ref in refs:
        (storage / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return commit


def folder_files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """HF_HOME in the test's folder and offline mode on, set after huggingface_hub was imported
    (it reads both at import); a call to the client's listing fails the test."""
    home = tmp_path / "hf_home"
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    asked = []

    def no_network(self, repo_id, *args, **kwargs):
        asked.append(repo_id)
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)
    yield home
    assert not asked, f"the Hub was asked for {asked} in offline mode"


def reference_logits(model, images, mean, std):
    """transformers' own ViTImageProcessor (no resize) and model: the independent reference."""
    processor = transformers.ViTImageProcessor(do_resize=False, image_mean=mean, image_std=std)
    pixels = processor(list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).logits.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One random TINY model saved as a timm folder (config.json with pretrained_cfg's ImageNet
    mean/std) and as a Hugging Face folder (with a preprocessor_config.json); a second model."""
    folder = tmp_path_factory.mktemp("hub_checkpoints")
    images = random_images(2, 32, seed=4)
    out = {"images": images}
    for seed in (0, 1):
        model = make_hf_model(seed=seed)
        model.save_pretrained(folder / f"hf{seed}")
        with open(folder / f"hf{seed}" / "preprocessor_config.json", "w") as f:
            json.dump({"image_processor_type": "ViTImageProcessor", "do_normalize": True,
                       "image_mean": IMAGENET[0], "image_std": IMAGENET[1], "resample": 3}, f)
        write_timm(folder / f"timm{seed}", timm_from_hf(hf_state(folder / f"hf{seed}")), {
            "architecture": "vit_test_patch4_32", "num_classes": 10, "num_features": TINY["hidden_size"],
            "global_pool": "token",
            "model_args": {"img_size": 32, "patch_size": 4, "embed_dim": TINY["hidden_size"],
                           "depth": TINY["num_layers"], "num_heads": TINY["num_heads"]},
            "pretrained_cfg": {"tag": "augreg_in1k", "input_size": [3, 32, 32], "interpolation": "bicubic",
                               "crop_pct": 0.9, "mean": IMAGENET[0], "std": IMAGENET[1], "num_classes": 10}})
        out[f"hf{seed}"], out[f"timm{seed}"] = folder / f"hf{seed}", folder / f"timm{seed}"
        out[f"logits{seed}"] = reference_logits(model, images, *IMAGENET)
    return out


def predict(model, images):
    return model.predict(images, verbose=0)


# ------------------------------------------------------------------------------------------------
# Offline, from the client's cache


@pytest.mark.parametrize("layout", ["timm", "hf"])
def test_hub_id_loads_offline_like_the_same_files_by_path(checkpoints, hf_home, layout):
    folder = checkpoints[f"{layout}0"]
    repo_id = TIMM_ID if layout == "timm" else HF_ID
    files = folder_files(folder)
    # The repository also has pickles and other formats upstream, not fetched.
    cache_repo(hf_home, repo_id, files, listed=["pytorch_model.bin", "README.md", "onnx/model.onnx"])
    cached = huggingface_hub.scan_cache_dir(hf_home / "hub")  # the client reads the layout back
    assert not cached.warnings and [r.repo_id for r in cached.repos] == [repo_id]
    assert {f.file_name for f in next(iter(next(iter(cached.repos)).revisions)).files} == set(files)

    model = keras_vit.load_pretrained(f"hf://{repo_id}")
    by_path = keras_vit.load_pretrained(folder)
    np.testing.assert_array_equal(predict(model, checkpoints["images"]), predict(by_path, checkpoints["images"]))
    np.testing.assert_allclose(predict(model, checkpoints["images"]), checkpoints["logits0"], atol=1e-4)
    # Both layouts give ImageNet statistics: timm's pretrained_cfg, HF's preprocessor_config.json.
    np.testing.assert_allclose(model.normalization_mean, IMAGENET[0])
    np.testing.assert_allclose(model.normalization_std, IMAGENET[1])
    # ViT(weights=...) (what ViTB16(weights=...) and `keras-vit train --weights` call) as well.
    built = keras_vit.ViT(**TINY, weights=f"hf://{repo_id}")
    np.testing.assert_array_equal(predict(built, checkpoints["images"]), predict(by_path, checkpoints["images"]))


def test_hf_hub_cache_variable_is_honoured(checkpoints, hf_home, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    cache_repo(elsewhere, TIMM_ID, folder_files(checkpoints["timm0"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(elsewhere / "hub"))
    model = keras_vit.load_pretrained(f"hf://{TIMM_ID}")
    np.testing.assert_allclose(predict(model, checkpoints["images"]), checkpoints["logits0"], atol=1e-4)


def test_revisions_branch_and_commit(checkpoints, hf_home):
    first = cache_repo(hf_home, TIMM_ID, folder_files(checkpoints["timm0"]), refs=("main",))
    second = cache_repo(hf_home, TIMM_ID, folder_files(checkpoints["timm1"]), refs=("v2", "refs/pr/1"))
    assert first != second
    images = checkpoints["images"]
    for spec, expected in ((f"hf://{TIMM_ID}", "logits0"), (f"hf://{TIMM_ID}@main", "logits0"),
                           (f"hf://{TIMM_ID}@{first}", "logits0"), (f"hf://{TIMM_ID}@v2", "logits1"),
                           (f"hf://{TIMM_ID}@{second}", "logits1"), (f"hf://{TIMM_ID}@refs/pr/1", "logits1")):
        np.testing.assert_allclose(predict(keras_vit.load_pretrained(spec), images), checkpoints[expected],
                                   atol=1e-4, err_msg=spec)
    with pytest.raises(FileNotFoundError, match=r"hf://timm/.*not in the Hugging Face cache.*revision "
                                                r"'v3'.*offline mode is on \(HF_HUB_OFFLINE=1\)"):
        keras_vit.load_pretrained(f"hf://{TIMM_ID}@v3")


def test_missing_repo_offline_names_the_id_and_offline_mode(hf_home):
    with pytest.raises(FileNotFoundError) as error:
        keras_vit.load_pretrained("hf://nobody/absent-model")
    message = str(error.value)
    assert "'hf://nobody/absent-model'" in message and str(hf_home / "hub") in message
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in message


def test_incomplete_cached_snapshot_is_refused(checkpoints, hf_home):
    if not hasattr(pytest.importorskip("huggingface_hub.errors"), "IncompleteSnapshotError"):
        pytest.skip("this huggingface_hub does not record which files a cached snapshot should hold")
    files = folder_files(checkpoints["timm0"])
    del files["config.json"]  # listed upstream, never arrived: loading would guess the mean/std
    cache_repo(hf_home, TIMM_ID, files, listed=["config.json"])
    with pytest.raises(FileNotFoundError, match=r"incomplete in the Hugging Face cache.*config.json.*"
                                                r"HF_HUB_OFFLINE=1"):
        keras_vit.load_pretrained(f"hf://{TIMM_ID}")


def test_pickle_only_repository_is_refused_without_unpickling(hf_home, tmp_path, monkeypatch):
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    files = {"config.json": b"{}", "pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes()}
    cache_repo(hf_home, "someone/pickled", files)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, no_unpickling)
    with pytest.raises(ValueError, match=r"'hf://someone/pickled' has no safetensors weights.*"
                                         r"only pickle-based PyTorch files \['pytorch_model.bin'\]"):
        keras_vit.load_pretrained("hf://someone/pickled")


@pytest.mark.parametrize("spec", ["hf://", "hf://onlyorg", "hf://a/b@", "hf://a/b/c", "hf://a--b/c",
                                  "hf://../x", "hf://a/.b", "hf://a/b@ main", "hf:// a/b",
                                  "hf://a/b@../../../x", "hf://a/b@/etc", "hf:/a/b"])
def test_bad_ids_name_the_expected_form(spec, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # the id is checked first
    for load in (keras_vit.load_pretrained, lambda w: keras_vit.ViTB16(weights=w)):
        with pytest.raises(ValueError, match=r"not a Hugging Face Hub id: expected 'hf://ORG/NAME' or "
                                             r"'hf://ORG/NAME@REVISION'") as error:
            load(spec)
        assert repr(spec) in str(error.value)


def test_ids_parse():
    assert hub.parse("hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k") == (
        "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", None)
    assert hub.parse("hf://google/vit-base-patch16-224@refs/pr/3") == ("google/vit-base-patch16-224", "refs/pr/3")


def test_absent_client_is_a_clear_import_error(checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` fails
    with pytest.raises(ImportError, match=r'needs the huggingface_hub client.*'
                                          r'pip install "keras-vision-transformer\[hub\]"'):
        keras_vit.load_pretrained(f"hf://{TIMM_ID}")
    keras_vit.load_pretrained(checkpoints["timm0"])  # local files need no client


# ------------------------------------------------------------------------------------------------
# Online (the client's listing and download replaced by fakes)


@pytest.fixture
def online(checkpoints, tmp_path, monkeypatch):
    """The repository lists `listing[0]`; snapshot_download records its arguments and caches
    what it was allowed to fetch from `files` (as the real one does, minus the network)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    state = {"listing": [], "files": {}, "calls": []}

    def list_repo_files(self, repo_id, revision=None, **kwargs):
        if isinstance(state["listing"], Exception):
            raise state["listing"]
        return list(state["listing"])

    def snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None, **kwargs):
        state["calls"].append(dict(repo_id=repo_id, revision=revision, cache_dir=cache_dir,
                                   allow_patterns=allow_patterns, **kwargs))
        if kwargs.get("local_files_only"):
            return real_snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                          allow_patterns=allow_patterns, **kwargs)
        fetched = {n: d for n, d in state["files"].items() if n in allow_patterns}
        commit = cache_repo(tmp_path / "hf_home", repo_id, fetched)
        return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"), "snapshots", commit)

    real_snapshot_download = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state


def test_online_fetches_only_safetensors_and_configs(checkpoints, online, tmp_path):
    online["files"] = folder_files(checkpoints["hf0"])
    online["listing"] = [".gitattributes", "README.md", "config.json", "flax_model.msgpack",
                         "model.safetensors", "preprocessor_config.json", "pytorch_model.bin",
                         "tf_model.h5", "onnx/model.safetensors", "model.fp16.safetensors"]
    model = keras_vit.load_pretrained(f"hf://{HF_ID}@main")
    (call,) = online["calls"]
    assert sorted(call["allow_patterns"]) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert (call["repo_id"], call["revision"], call["cache_dir"]) == (HF_ID, "main", str(tmp_path / "hf_home" / "hub"))
    np.testing.assert_allclose(predict(model, checkpoints["images"]), checkpoints["logits0"], atol=1e-4)


def test_online_sharded_and_ambiguous_listings(checkpoints, online, tmp_path):
    state = hf_state(checkpoints["hf0"])
    shards = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(sorted(state))}
    write_shards(tmp_path / "sharded", state, shards)
    (tmp_path / "sharded" / "config.json").write_bytes((checkpoints["hf0"] / "config.json").read_bytes())
    online["files"] = folder_files(tmp_path / "sharded")
    online["listing"] = [*online["files"], "pytorch_model.bin", "onnx/model.safetensors"]
    model = keras_vit.load_pretrained("hf://org/sharded")
    assert sorted(online["calls"][0]["allow_patterns"]) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json"]
    np.testing.assert_array_equal(predict(model, checkpoints["images"]),
                                  predict(keras_vit.load_pretrained(tmp_path / "sharded"), checkpoints["images"]))
    online["calls"].clear()
    online["listing"] = ["a.safetensors", "b.safetensors"]
    with pytest.raises(ValueError, match=r"several safetensors files \['a.safetensors', 'b.safetensors'\]"):
        keras_vit.load_pretrained("hf://org/ambiguous")
    assert not online["calls"]


def test_online_pickle_only_repository_is_refused_before_downloading(online):
    online["listing"] = ["config.json", "pytorch_model.bin", "README.md"]
    with pytest.raises(ValueError, match=r"only pickle-based PyTorch files \['pytorch_model.bin'\].*"
                                         r"hf://org/old@refs/pr/N"):
        keras_vit.load_pretrained("hf://org/old@v1")
    assert not online["calls"]


@pytest.mark.parametrize("kind, raised, match", [
    ("RepositoryNotFoundError", FileNotFoundError, r"'hf://org/absent@v1': no repository 'org/absent' "
                                                   r"on the Hugging Face Hub.*hf auth login"),
    ("RevisionNotFoundError", FileNotFoundError, r"'hf://org/absent@v1': the repository 'org/absent' has "
                                                 r"no revision 'v1'"),
    ("GatedRepoError", PermissionError, r"gated repository.*https://huggingface.co/org/absent.*HF_TOKEN")])
def test_online_missing_repository_revision_and_gated(online, kind, raised, match):
    from huggingface_hub import utils

    error_type = getattr(utils, kind)
    error = error_type.__new__(error_type)  # its constructor wants an HTTP response (varies by version)
    Exception.__init__(error, "404 Client Error")
    online["listing"] = error
    with pytest.raises(raised, match=match):
        keras_vit.load_pretrained("hf://org/absent@v1")
    assert not online["calls"]


def test_unreachable_hub_falls_back_to_the_cache(checkpoints, online, tmp_path):
    online["listing"] = ConnectionError("Name or service not known")
    with pytest.raises(FileNotFoundError, match=r"not in the Hugging Face cache.*the Hub could not be "
                                                r"reached \(ConnectionError: Name or service not known\)"):
        keras_vit.load_pretrained(f"hf://{TIMM_ID}")
    cache_repo(tmp_path / "hf_home", TIMM_ID, folder_files(checkpoints["timm0"]))
    model = keras_vit.load_pretrained(f"hf://{TIMM_ID}")
    np.testing.assert_allclose(predict(model, checkpoints["images"]), checkpoints["logits0"], atol=1e-4)


def test_distilled_deit_repository_like_facebooks(hf_home, tmp_path):
    """A DeiTForImageClassificationWithTeacher as facebook/deit-*-distilled-* holds it (the weights
    as save_pretrained writes them, config.json, preprocessor_config.json), from the cache."""
    config = transformers.DeiTConfig(image_size=32, patch_size=4, hidden_size=TINY["hidden_size"],
                                     num_hidden_layers=TINY["num_layers"],
                                     num_attention_heads=TINY["num_heads"],
                                     intermediate_size=TINY["mlp_dim"], num_labels=10)
    torch.manual_seed(0)
    model = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape))
    model.save_pretrained(tmp_path)
    with open(tmp_path / "preprocessor_config.json", "w") as f:
        json.dump({"image_processor_type": "DeiTImageProcessor", "image_mean": IMAGENET[0],
                   "image_std": IMAGENET[1]}, f)
    cache_repo(hf_home, "facebook/deit-test-distilled-patch4-32", folder_files(tmp_path))
    loaded = keras_vit.load_pretrained("hf://facebook/deit-test-distilled-patch4-32")
    assert loaded.distilled and loaded.distillation_head
    images = random_images(2, 32, seed=8)
    np.testing.assert_allclose(predict(loaded, images), reference_logits(model, images, *IMAGENET),
                               atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Real weights


@pytest.mark.real_data
def test_real_deit_tiny_from_a_timm_cache(shared_data, hf_home):
    from keras_vit.images import load_image

    folder = os.path.join(shared_data, "deit_tiny_patch16_224")
    files = {name: open(os.path.join(folder, name), "rb").read() for name in ("config.json", "model.safetensors")}
    cache_repo(hf_home, "timm/deit_tiny_patch16_224.fb_in1k", files, listed=["pytorch_model.bin", "README.md"])
    model = keras_vit.load_pretrained("hf://timm/deit_tiny_patch16_224.fb_in1k")
    by_path = keras_vit.load_pretrained(folder)
    images = np.stack([load_image(os.path.join(shared_data, "images", n), 224) for n in ("chelsea.png", "coffee.png")])
    logits = predict(model, images)
    np.testing.assert_array_equal(logits, predict(by_path, images))
    assert list(logits.argmax(-1)) == [285, 967]  # Egyptian cat, espresso
    np.testing.assert_allclose(model.normalization_mean, IMAGENET[0])
    # The registered DeiT-Ti/16 weights are that repository: by registered name and timm name.
    registered = keras_vit.DeiTTi16(weights="imagenet1k")
    np.testing.assert_array_equal(predict(registered, images), logits)
    assert not registered.distilled
    np.testing.assert_array_equal(predict(keras_vit.load_pretrained("deit_tiny_patch16_224"), images),
                                  logits)


def test_cli_train_weights_passes_hub_ids_through(hf_home, tmp_path, capsys):
    from keras_vit import cli

    status = cli.main(["train", "--weights", "hf://nobody/absent-model", "--epochs", "1",
                       "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and "error: 'hf://nobody/absent-model' is not in the Hugging Face cache" in err
