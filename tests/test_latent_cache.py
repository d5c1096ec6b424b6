"""The latent cache: storage precision, resuming a killed build, corrupted shards, what a run re-hashes (only the
shards whose size or mtime moved, or all with verify="full"), stale keys, the evaluation's reading, and training with
the cache equal to training without it."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, train
from dataset_surgvu import ClipTransform, load_surgvu
import dataset_surgvu.latent_cache as latent_cache_module
from dataset_surgvu.latent_cache import (
    LatentCache,
    LatentCacheError,
    LatentCacheKey,
    LatentClips,
    build_latent_cache,
    bytes_per_clip,
    cached_clip_datasets,
    dequantize,
    latent_cache_key,
    latent_cache_off_reason,
    latent_cache_root,
    quantize,
)
from modeling_surgical_wm import SurgicalWorldModel
from training_surgical_wm.arguments import DataArguments, parse_training_arguments

FLOAT16_UNIT_ROUNDOFF = 2.0**-11  # float16 keeps 11 significant bits: a stored value is within this relative error


@pytest.fixture(scope="module")
def sample_split(surgvu_sample, train_inputs):
    root, _ = surgvu_sample
    cache = train_inputs[train_inputs.index("--dataset_cache_dir") + 1]
    return load_surgvu(root, cache_dir=cache)["validation"]


def build(accelerator, model, split, directory, precision="float16", shard_size=3, verify="changed", autocast=None):
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    key = latent_cache_key(model, split, transform, fps=4.0, frames_per_clip=8, precision=precision,
                           autocast=autocast or accelerator.mixed_precision)
    return build_latent_cache(accelerator, model, split, transform, directory, key, shard_size=shard_size,
                              batch_size=3, num_workers=0, verify=verify)


def split_cache(cache_root: Path, name: str) -> Path:
    """The one cache folder of split `name` under a run's cache root: `<root>/<name>/<dataset fingerprint>`."""
    folders = [path for path in (cache_root / name).iterdir() if path.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def overwrite(path: Path, keep_mtime: bool = False) -> None:
    """Zeroes the last 100 bytes of a file in place: same size, still a valid safetensors file, only a checksum can
    tell. Its modification time then moves by a second (a later write, however coarse the filesystem's clock), or,
    with `keep_mtime`, is put back as it was: what size and mtime cannot see."""
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-100:] = bytes(100)
    path.write_bytes(bytes(data))
    mtime_ns = before.st_mtime_ns if keep_mtime else before.st_mtime_ns + 10**9
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert path.stat().st_size == before.st_size


@pytest.fixture
def sha256_calls(monkeypatch):
    """The names of the files `file_sha256` hashes from now on (it still hashes them)."""
    calls = []
    original = latent_cache_module.file_sha256

    def counted(path):
        calls.append(Path(path).name)
        return original(path)

    monkeypatch.setattr(latent_cache_module, "file_sha256", counted)
    return calls


def encoded(model, split, indices):
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    pixels = torch.stack([transform(split[index])["pixel_values_videos"] for index in indices])
    with torch.no_grad():
        return model.encode(pixels)


def shard_tensors(directory):
    """Every shard's tensors, copied out of the memory-mapped files (whose bytes also hold metadata in no fixed
    order)."""
    return {path.name: {name: tensor.clone() for name, tensor in load_file(path).items()}
            for path in sorted(Path(directory).glob("shard-*.safetensors"))}


def assert_same_shards(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].keys() == expected[name].keys()
        for tensor_name in expected[name]:
            torch.testing.assert_close(got[name][tensor_name], expected[name][tensor_name], rtol=0, atol=0)


def test_float16_and_int8_storage_errors():
    latents = torch.nn.functional.layer_norm(torch.randn(4, 3, 16, 64) * 3, (64,))
    stored = dequantize(quantize(latents, "float16"))
    assert ((stored - latents).abs() <= FLOAT16_UNIT_ROUNDOFF * latents.abs() + 1e-7).all()

    packed = quantize(latents, "int8")
    assert packed["latents"].dtype == torch.int8 and packed["scales"].shape == (4, 3, 16)
    error = (dequantize(packed) - latents).abs()
    # Symmetric rounding to 127 levels: at most half a step, i.e. each token's max-abs / 254.
    assert (error <= latents.abs().amax(-1, keepdim=True) / 254 + 1e-6).all()
    assert error.mean() / latents.abs().mean() < 0.01  # measured: about 0.5% of the mean magnitude
    assert bytes_per_clip((8, 256, 1024), "float16") == 8 * 256 * 1024 * 2
    assert bytes_per_clip((8, 256, 1024), "int8") == 8 * 256 * (1024 + 4)


def test_cache_holds_what_encode_returns_and_is_memory_mapped(accelerator, world_model_dir, sample_split, tmp_path):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    cache = build(accelerator, model, sample_split, tmp_path / "f16")
    assert len(cache) == len(sample_split) and len(cache.manifest["shards"]) == -(-len(sample_split) // 3)
    reference = encoded(model, sample_split, range(len(sample_split)))
    got = torch.stack([cache[index] for index in range(len(cache))])
    assert ((got - reference).abs() <= FLOAT16_UNIT_ROUNDOFF * reference.abs() + 1e-7).all()
    assert cache.bytes_per_clip == bytes_per_clip(tuple(reference.shape[1:]), "float16")

    int8 = build(accelerator, model, sample_split, tmp_path / "int8", precision="int8")
    got = torch.stack([int8[index] for index in range(len(int8))])
    relative = ((got - reference).abs().mean() / reference.abs().mean()).item()
    assert relative < 0.01, relative  # the 8-bit mode's measured latent error, stated: under 1% of the mean |z|
    assert int8.bytes_per_clip < cache.bytes_per_clip * 0.6


def test_a_corrupted_shard_is_detected_and_rebuilt_never_read(accelerator, world_model_dir, sample_split, tmp_path,
                                                              caplog):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    directory = tmp_path / "cache"
    build(accelerator, model, sample_split, directory)
    clean = shard_tensors(directory)
    victim = directory / "shard-00001.safetensors"
    overwrite(victim)  # zeroed latent values: the file still parses, only the checksum can tell
    others = {name: (directory / name).stat().st_mtime_ns for name in clean if name != victim.name}
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        cache = build(accelerator, model, sample_split, directory)
    assert f"{victim}: checksum mismatch (corrupted): rebuilding it" in caplog.text
    assert_same_shards(shard_tensors(directory), clean)
    assert {name: (directory / name).stat().st_mtime_ns for name in others} == others  # the rest was kept
    reference = encoded(model, sample_split, [3, 4, 5])
    torch.testing.assert_close(torch.stack([cache[i] for i in (3, 4, 5)]), reference, rtol=1e-3, atol=1e-3)


def test_a_run_hashes_only_the_shards_whose_size_or_mtime_moved(accelerator, world_model_dir, sample_split, tmp_path,
                                                                sha256_calls):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    directory = tmp_path / "cache"
    cache = build(accelerator, model, sample_split, directory)
    shards = sorted(shard["file"] for shard in cache.manifest["shards"])
    assert len(shards) > 1
    assert sha256_calls == shards  # a shard is hashed once, when written
    record = json.loads((directory / "shard-00000.json").read_text())
    assert (record["size"], record["mtime_ns"]) == (os.stat(directory / shards[0]).st_size,
                                                     os.stat(directory / shards[0]).st_mtime_ns)

    sha256_calls.clear()
    again = build(accelerator, model, sample_split, directory)  # the next run: no shard bytes read for hashing
    again.check_shards()  # nor by the evaluation's check
    assert sha256_calls == []
    again.check_shards("full")
    build(accelerator, model, sample_split, directory, verify="full")
    assert sha256_calls == shards + shards

    # A touched shard (mtime moved, bytes the same) is hashed once, found intact, kept, and its record updated.
    sha256_calls.clear()
    touched = directory / shards[1]
    mtime_ns = touched.stat().st_mtime_ns + 10**9
    os.utime(touched, ns=(mtime_ns, mtime_ns))
    build(accelerator, model, sample_split, directory)
    assert sha256_calls == [shards[1]] and touched.stat().st_mtime_ns == mtime_ns
    sha256_calls.clear()
    build(accelerator, model, sample_split, directory).check_shards()
    assert sha256_calls == []


def test_a_shard_changed_in_size_and_mtime_is_found(accelerator, world_model_dir, sample_split, tmp_path, caplog):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    directory = tmp_path / "cache"
    build(accelerator, model, sample_split, directory)
    clean = shard_tensors(directory)
    victim = directory / "shard-00001.safetensors"
    size = victim.stat().st_size
    with open(victim, "ab") as handle:  # a write that went on: size and mtime both move
        handle.write(bytes(64))
    with pytest.raises(LatentCacheError, match=rf"shard-00001.safetensors: size {size + 64:,} B, recorded {size:,} B"):
        LatentCache(directory).check_shards()
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        cache = build(accelerator, model, sample_split, directory)
    assert f"{victim}: size {size + 64:,} B, recorded {size:,} B (corrupted): rebuilding it" in caplog.text
    assert_same_shards(shard_tensors(directory), clean)
    cache.check_shards("full")


def test_bytes_changed_with_size_and_mtime_kept_pass_the_default_and_fail_full(accelerator, world_model_dir,
                                                                               sample_split, tmp_path, caplog):
    """The trade-off of `--verify_cache changed`: it trusts size and mtime, so bytes rewritten in place with the
    mtime put back (or within one tick of the filesystem's clock) are read as they are; `full` finds them."""
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    directory = tmp_path / "cache"
    build(accelerator, model, sample_split, directory)
    clean = shard_tensors(directory)
    victim = directory / "shard-00001.safetensors"
    overwrite(victim, keep_mtime=True)

    LatentCache(directory).check_shards("changed")  # not detected
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        build(accelerator, model, sample_split, directory)
    assert "rebuilding" not in caplog.text
    assert not torch.equal(shard_tensors(directory)[victim.name]["latents"], clean[victim.name]["latents"])

    with pytest.raises(LatentCacheError, match="shard-00001.safetensors: checksum mismatch"):
        LatentCache(directory).check_shards("full")  # detected
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        cache = build(accelerator, model, sample_split, directory, verify="full")
    assert f"{victim}: checksum mismatch (corrupted): rebuilding it" in caplog.text
    assert_same_shards(shard_tensors(directory), clean)
    cache.check_shards("full")
    with pytest.raises(ValueError, match="verify must be one of"):
        cache.check_shards("sometimes")
    with pytest.raises(SystemExit, match="error: --verify_cache must be one of changed, full, got sometimes"):
        parse_training_arguments(["--verify_cache", "sometimes"])


def test_the_evaluation_reads_a_cache_only_of_its_key_and_with_its_shards_intact(accelerator, world_model_dir,
                                                                                sample_split, tmp_path, capsys):
    from evaluate_surgical_model import clip_sources

    from dataset_surgvu import SurgVUClips

    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    directory = tmp_path / "validation"
    data_args = DataArguments(cache_dir=str(tmp_path))  # the evaluation's key: float16, 4 fps, 8 frames, no autocast

    build(accelerator, model, sample_split, directory, autocast="bf16")  # a bf16 training run's cache
    clips, source = clip_sources(model, {"validation": sample_split}, transform, data_args)["validation"]
    assert isinstance(clips, SurgVUClips) and source == "decoded and encoded here"
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"latent cache not used ({directory}: built for another preprocessing): every clip is decoded "
                     "and encoded"]

    cache = build(accelerator, model, sample_split, directory)  # rebuilt under the evaluation's key
    clips, source = clip_sources(model, {"validation": sample_split}, transform, data_args)["validation"]
    assert isinstance(clips, LatentClips) and source == f"latent cache {directory}"
    assert torch.equal(clips[4]["latents"], cache[4])

    victim = directory / "shard-00000.safetensors"
    overwrite(victim)
    clips, source = clip_sources(model, {"validation": sample_split}, transform, data_args)["validation"]
    assert isinstance(clips, SurgVUClips)
    assert f"latent cache not used ({victim}: checksum mismatch (corrupted))" in capsys.readouterr().out


def test_the_evaluation_hashes_the_encoder_once_for_every_split_it_reads(accelerator, world_model_dir, sample_split,
                                                                        tmp_path, monkeypatch):
    """MM-OR's evaluation reads the test takes and the takes its thresholds are calibrated on: one hash of the encoder
    for both keys, and none when no cache is read."""
    from evaluate_surgical_model import clip_sources

    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    caches = {name: build(accelerator, model, sample_split, tmp_path / name) for name in ("test", "validation")}
    hashed, fingerprint = [], latent_cache_module.module_fingerprint
    monkeypatch.setattr(latent_cache_module, "module_fingerprint",
                        lambda encoder: hashed.append(1) or fingerprint(encoder))
    splits = {"test": sample_split, "validation": sample_split}
    sources = clip_sources(model, splits, transform, DataArguments(cache_dir=str(tmp_path)))
    assert len(hashed) == 1
    for name, (clips, source) in sources.items():
        assert isinstance(clips, LatentClips) and source == f"latent cache {tmp_path / name}"
        assert torch.equal(clips[2]["latents"], caches[name][2])
    sources = clip_sources(model, splits, transform, DataArguments(cache_dir=str(tmp_path), no_cache=True))
    assert len(hashed) == 1 and all(source == "decoded and encoded here" for _, source in sources.values())


def test_a_changed_encoder_or_crop_rebuilds_the_cache(accelerator, world_model_dir, surgvu_sample, sample_split,
                                                       tmp_path, caplog):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    directory = tmp_path / "cache"
    first = build(accelerator, model, sample_split, directory)
    before = shard_tensors(directory)

    with torch.no_grad():
        model.encoder.layer[0].mlp.fc1.weight.add_(0.05)  # another encoder
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        second = build(accelerator, model, sample_split, directory)
    assert "built for another encoder_hash: rebuilding" in caplog.text
    assert second.manifest["key"]["encoder_hash"] != first.manifest["key"]["encoder_hash"]
    after = shard_tensors(directory)
    assert after.keys() == before.keys()
    assert all(not torch.equal(after[name]["latents"], before[name]["latents"]) for name in before)
    torch.testing.assert_close(second[0], encoded(model, sample_split, [0])[0], rtol=1e-3, atol=1e-3)
    with pytest.raises(LatentCacheError, match="encoder_hash"):
        LatentCache(directory, LatentCacheKey(**first.manifest["key"]))

    root, _ = surgvu_sample  # another crop: the tool-name band kept, so the rows' crop boxes change
    uncropped = load_surgvu(root, cache_dir=tmp_path / "arrow", crop_tool_band=False)["validation"]
    assert uncropped[0]["crop_box"] != sample_split[0]["crop_box"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dataset_surgvu"):
        third = build(accelerator, model, uncropped, directory)
    assert "built for another dataset_fingerprint: rebuilding" in caplog.text
    torch.testing.assert_close(third[0], encoded(model, uncropped, [0])[0], rtol=1e-3, atol=1e-3)


def test_off_reasons_key_and_root_from_plain_values(world_model_dir, sample_split, tmp_path):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    assert latent_cache_off_reason(no_cache=False, encoder_frozen=True, transform=transform) is None
    assert latent_cache_off_reason(no_cache=True, encoder_frozen=True, transform=transform) == "--no_cache"
    assert latent_cache_off_reason(no_cache=False, encoder_frozen=False, transform=transform).startswith(
        "the encoder trains")
    random = type("RandomTransform", (), {"deterministic": False})()
    assert latent_cache_off_reason(no_cache=False, encoder_frozen=True, transform=random).startswith(
        "the clip transform is random")

    key = latent_cache_key(model, sample_split, transform, fps=2.0, frames_per_clip=4, precision="int8",
                           autocast="bf16")
    assert key.precision == "int8" and key.dataset_fingerprint == sample_split._fingerprint
    assert key.preprocessing == {"crop_size": transform.crop_size, "image_mean": list(transform.image_mean),
                                 "image_std": list(transform.image_std), "fps": 2.0, "frames_per_clip": 4,
                                 "frames_per_step": model.config.frames_per_step,
                                 "normalize_latents": model.config.normalize_latents, "autocast": "bf16"}
    assert latent_cache_root(None, tmp_path) == tmp_path / "latent_cache"
    assert latent_cache_root(str(tmp_path / "elsewhere"), tmp_path) == tmp_path / "elsewhere"


def test_cached_clip_datasets_of_every_split(accelerator, world_model_dir, sample_split, tmp_path, monkeypatch):
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    hashed = []  # the encoder's weights are hashed once for the keys of every split, not once per split
    fingerprint = latent_cache_module.module_fingerprint
    monkeypatch.setattr(latent_cache_module, "module_fingerprint", lambda module: hashed.append(1) or fingerprint(module))
    clips = cached_clip_datasets(accelerator, model, {"train": sample_split, "test": sample_split}, transform, tmp_path,
                                 fps=4.0, frames_per_clip=8, precision="float16", shard_size=3, batch_size=3,
                                 num_workers=0)
    assert list(clips) == ["train", "test"] and isinstance(clips["train"], LatentClips) and len(hashed) == 1
    assert clips["test"].cache.manifest["key"] == clips["train"].cache.manifest["key"]
    # Its place is the split's folder and its clips' fingerprint; the same key there is reused as it is.
    expected = build(accelerator, model, sample_split, tmp_path / "train" / sample_split._fingerprint)
    assert clips["train"].cache.manifest == expected.manifest
    item = clips["train"][1]
    assert torch.equal(item["latents"], expected[1]) and item["sample_id"].item() == 1


def encoded_clips(model, monkeypatch) -> list[int]:
    """How many clips each call of `model.encode` encodes, from now on."""
    calls, encode = [], model.encode

    def counting(pixel_values_videos):
        calls.append(len(pixel_values_videos))
        return encode(pixel_values_videos)

    monkeypatch.setattr(model, "encode", counting)
    return calls


def test_each_clip_layout_keeps_its_own_cache(accelerator, world_model_dir, surgvu_sample, sample_split, tmp_path,
                                              monkeypatch):
    """A training run on overlapping clips (`--clip_stride`) and the probes and evaluation on the builder's clips
    share one `--cache_dir`: each layout is encoded once into its own folder, and later runs of either encode
    nothing, where one folder per split made each rebuild the other's."""
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    overlapping = load_surgvu(surgvu_sample[0], clip_stride=4, cache_dir=tmp_path / "arrow")["validation"]
    assert len(overlapping) > len(sample_split) and overlapping._fingerprint != sample_split._fingerprint
    calls = encoded_clips(model, monkeypatch)
    caches = {}
    for run, split in enumerate((sample_split, overlapping, sample_split, overlapping)):
        calls.clear()
        clips = cached_clip_datasets(accelerator, model, {"validation": split}, transform, tmp_path / "cache",
                                     fps=4.0, frames_per_clip=8, precision="float16", shard_size=3, batch_size=3,
                                     num_workers=0)["validation"]
        assert clips.cache.directory == tmp_path / "cache" / "validation" / split._fingerprint
        assert sum(calls) == (len(split) if run < 2 else 0)  # built once, then reused
        caches.setdefault(split._fingerprint, clips.cache.manifest)
        assert clips.cache.manifest == caches[split._fingerprint]
    assert len(caches) == 2


def test_a_cache_in_the_split_folder_itself_is_used_where_it_is(accelerator, world_model_dir, surgvu_sample,
                                                                 sample_split, tmp_path, monkeypatch):
    """A cache built straight into `<cache_dir>/<split>` (the layout before one folder per clip layout) serves the
    clips it holds without encoding them again; another layout is built beside it and leaves it as it was."""
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    flat = build(accelerator, model, sample_split, tmp_path / "validation")
    options = dict(fps=4.0, frames_per_clip=8, precision="float16", shard_size=3, batch_size=3, num_workers=0)
    calls = encoded_clips(model, monkeypatch)
    clips = cached_clip_datasets(accelerator, model, {"validation": sample_split}, transform, tmp_path, **options)
    assert clips["validation"].cache.directory == tmp_path / "validation" and sum(calls) == 0
    overlapping = load_surgvu(surgvu_sample[0], clip_stride=4, cache_dir=tmp_path / "arrow")["validation"]
    clips = cached_clip_datasets(accelerator, model, {"validation": overlapping}, transform, tmp_path, **options)
    assert clips["validation"].cache.directory == tmp_path / "validation" / overlapping._fingerprint
    assert sum(calls) == len(overlapping)
    assert LatentCache(tmp_path / "validation").manifest == flat.manifest


def test_a_cache_of_other_clips_is_refused(accelerator, world_model_dir, sample_split, tmp_path):
    """As many clips in another order (another clip layout of the same videos) would pair each clip's labels with
    another clip's latents: the reader refuses the cache, naming both fingerprints."""
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()
    cache = build(accelerator, model, sample_split, tmp_path / "cache")
    reordered = sample_split.select(range(len(sample_split) - 1, -1, -1))
    with pytest.raises(LatentCacheError, match=f"cached for other clips .*{reordered._fingerprint}"):
        LatentClips(reordered, cache)


def test_a_killed_build_resumes_where_it_stopped(train_inputs, tmp_path):
    common = [*train_inputs, "--num_epochs", "1", "--max_train_steps", "1", "--checkpointing_steps", "100",
              "--cache_shard_size", "2"]  # batches of 2: a shard is encoded from the same batch in every run
    reference = train([*common, "--output_dir", str(tmp_path / "reference")])
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "train_hf.py", *common, "--output_dir", str(killed)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TQDM_DISABLE": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "latent_cache" / "train").glob("*/shard-00002.json")):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    cache = split_cache(killed / "latent_cache", "train")
    assert (cache / "shard-00002.json").exists() and not (cache / "manifest.json").exists(), "killed too late"
    done = {path.name: path.stat().st_mtime_ns for path in cache.glob("shard-*.safetensors")
            if (cache / path.name.replace(".safetensors", ".json")).exists()}

    resumed = train([*common, "--output_dir", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    kept = {name: (cache / name).stat().st_mtime_ns for name in done}
    assert kept == done  # the shards finished before the kill were verified and kept, not encoded again
    reference_cache = split_cache(tmp_path / "reference" / "latent_cache", "train")
    got = shard_tensors(cache)
    assert len(got) > len(done)
    assert_same_shards(got, shard_tensors(reference_cache))
    assert not list(cache.glob(".partial-*"))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["num_clips"] == sum(shard["num_clips"] for shard in manifest["shards"])


def test_training_from_the_cache_equals_training_without_it(train_inputs, tmp_path):
    """The same seeded run, cached (float16) and uncached: the predictor sees the same latents up to float16
    rounding, so every loss agrees within a tolerance derived from that rounding.

    Storing a latent z in float16 moves it by at most u|z|, with u = 2^-11 (unit roundoff). The losses are L1
    distances between latents, so at equal weights a loss moves by at most u times the mean |z| of the two sides,
    below u * 2 for layer-normed latents (mean |z| about 0.8). Over the run, the weights then drift apart by
    gradients that differ in the same proportion: the test allows 8u (= 0.0039), four times the one-step bound.
    """
    tolerance = 8 * FLOAT16_UNIT_ROUNDOFF
    # A new predictor starts at "nothing moves" (a zero output projection): 3e-3 lets two epochs move it clearly.
    common = [*train_inputs, "--num_epochs", "2", "--checkpointing_steps", "100", "--learning_rate", "3e-3"]
    runs = {}
    for name, flags in (("uncached", ["--no_cache"]), ("cached", [])):
        result = train([*common, *flags, "--output_dir", str(tmp_path / name)])
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "final" / "trainer_state.json").read_text())["history"]
        runs[name + "_log"] = result.stderr
    assert "latent cache: off (--no_cache)" in runs["uncached_log"]
    assert "the encoder and the video decoder are not run again while training" in runs["cached_log"]
    first_uncached, first_cached = runs["uncached"][0], runs["cached"][0]
    for name in ("train_loss", "train_temporal_loss", "train_contrastive_loss", "val_loss", "val_temporal_loss",
                 "val_rollout_error", "val_copy_context_error"):
        assert abs(first_cached[name] - first_uncached[name]) <= tolerance, (name, first_cached, first_uncached)
    assert abs(runs["cached"][-1]["val_loss"] - runs["uncached"][-1]["val_loss"]) <= tolerance
    # The validation loss moved by more than the tolerance during the run: the agreement is not that of two
    # models that did not learn.
    assert runs["cached"][-1]["val_loss"] < runs["cached"][0]["val_loss"] - tolerance
    differences = {name: abs(first_cached[name] - first_uncached[name]) for name in first_cached
                   if isinstance(first_cached[name], float)}
    print("largest first-epoch difference:", max(differences.items(), key=lambda item: item[1]))


def test_a_released_encoder_leaves_memory_and_comes_back_whole_in_the_export(make_tiny_config, accelerator, tmp_path):
    """Training from a complete cache drops the frozen encoder's weights: state dicts (checkpoints) leave it out and a
    checkpoint loads without it; the export writes it back from its file, tensor by tensor, byte for byte."""
    from training_surgical_wm.export import export_model
    from training_surgical_wm.world_model import release_encoder

    torch.manual_seed(0)
    model = SurgicalWorldModel(make_tiny_config())
    with torch.no_grad():
        model.predictor.output_proj.weight.normal_()  # not the zeros of a new predictor
    full = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    latents = torch.randn(1, 3, model.config.tokens_per_step, model.config.latent_dim)
    expected = model(latents=latents).predicted_latents
    model = accelerator.prepare(model)
    encoder_file = release_encoder(accelerator, model, tmp_path / "frozen_encoder.safetensors")
    assert all(parameter.is_meta for parameter in model.encoder.parameters())
    assert not any(name.startswith("encoder.") for name in model.state_dict())
    torch.testing.assert_close(model(latents=latents).predicted_latents, expected)  # a cached run needs no encoder
    model.load_state_dict({name: tensor for name, tensor in full.items() if not name.startswith("encoder.")})

    export_model(accelerator, model, tmp_path / "final", {"global_step": 1}, "card\n", encoder_file=encoder_file)
    exported = load_file(tmp_path / "final" / "model.safetensors")
    assert exported.keys() == full.keys()
    assert all(torch.equal(exported[name], full[name]) for name in full)
    reloaded = SurgicalWorldModel.from_pretrained(tmp_path / "final").eval()
    torch.testing.assert_close(reloaded(latents=latents).predicted_latents, expected)
