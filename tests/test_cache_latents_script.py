"""scripts/cache_latents.py on the synthetic SurgVU sample and a tiny world model: the cache it builds is the one
train_hf.py would look for (same place, same key), a second run keeps it (`--verify_cache full` rewriting only a
corrupted shard), and its printed sizes are the arithmetic they claim to be."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

SCRIPT_OPTIONS = {"--data_root", "--dataset_cache_dir", "--pretrained_checkpoint", "--device", "--num_workers",
                  "--batch_size"}


def script_inputs(train_inputs: list[str]) -> list[str]:
    """The training options this script shares (data, model, device, workers, batch size)."""
    pairs = zip(train_inputs[::2], train_inputs[1::2])
    return [value for option, argument in pairs if option in SCRIPT_OPTIONS for value in (option, argument)]


def cache_latents(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/cache_latents.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"})


def number(text: str) -> int:
    return int(text.replace(",", ""))


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def splits_and_model(args: list[str]):
    from training_surgical_wm.arguments import DataArguments, ModelArguments
    from training_surgical_wm.data import dataset_entry, load_dataset_splits
    from training_surgical_wm.world_model import load_world_model

    data_args = DataArguments(data_root=option(args, "--data_root"),
                              dataset_cache_dir=option(args, "--dataset_cache_dir"))
    dataset = load_dataset_splits(data_args)
    model = load_world_model(ModelArguments(pretrained_checkpoint=option(args, "--pretrained_checkpoint")),
                             dataset_entry(data_args).action_spec(dataset))
    return dataset, model, data_args


def check_printed_sizes(stdout: str, latent_shape: tuple[int, int, int], precision: str, fps: float = 4.0,
                        frames_per_clip: int = 8) -> None:
    from dataset_surgvu.latent_cache import bytes_per_clip

    expected = bytes_per_clip(latent_shape, precision)
    (printed,) = re.findall(r"^bytes per clip: ([\d,]+) \(" + precision, stdout, flags=re.M)
    assert number(printed) == expected

    match = re.search(r"^SurgVU projection \((\d+) h of video at ([\d.]+) fps, " + precision + r"\): "
                      r"\d+ h x 3600 s/h x [\d.]+ fps = ([\d,]+) frames; [\d,]+ / (\d+) frames per clip = ([\d,]+) "
                      r"clips; [\d,]+ x ([\d,]+) B = ([\d,]+) B = ([\d.]+) (GB|TB)$", stdout, flags=re.M)
    assert match, stdout
    hours, printed_fps, frames, per_clip_frames, clips, per_clip, total, scaled, unit = match.groups()
    assert (int(hours), float(printed_fps), int(per_clip_frames)) == (840, fps, frames_per_clip)
    assert number(frames) == 840 * 3600 * fps
    assert number(clips) == number(frames) // frames_per_clip  # non-overlapping clips
    assert number(per_clip) == expected
    assert number(total) == number(clips) * expected
    assert scaled == f"{number(total) / (1e12 if unit == 'TB' else 1e9):.2f}"


def test_builds_the_cache_train_hf_looks_for(train_inputs, tmp_path):
    from dataset_surgvu.latent_cache import MANIFEST, LatentCache
    from dataset_surgvu import ClipTransform
    from dataset_surgvu.latent_cache import latent_cache_key

    output_dir = tmp_path / "run"
    args = script_inputs(train_inputs) + ["--output_dir", str(output_dir), "--cache_shard_size", "4"]
    result = cache_latents(args)
    assert result.returncode == 0, result.stderr

    dataset, model, data_args = splits_and_model(args)
    transform = ClipTransform(crop_size=model.config.encoder_config.crop_size)
    for name, split in dataset.items():
        directory = output_dir / "latent_cache" / name / split._fingerprint  # train_hf's default place
        manifest = json.loads((directory / MANIFEST).read_text())
        assert manifest["num_clips"] == len(split)
        assert len(manifest["shards"]) == math.ceil(len(split) / 4)
        assert len(list(directory.glob("shard-*.safetensors"))) == math.ceil(len(split) / 4)
        # The key train_hf computes for this run opens it: training reuses it instead of building again.
        key = latent_cache_key(model, split, transform, fps=data_args.fps, frames_per_clip=data_args.frames_per_clip,
                               precision=data_args.cache_precision, autocast="no")  # a CPU run's mixed precision
        assert len(LatentCache(directory, key)) == len(split)
        assert re.search(rf"^{name}: {math.ceil(len(split) / 4)} shard\(s\) .* \({math.ceil(len(split) / 4)} "
                         r"written now, 0 kept", result.stdout, flags=re.M), result.stdout

    config = model.config
    latent_shape = (8 // config.frames_per_step, config.tokens_per_step, config.latent_dim)
    check_printed_sizes(result.stdout, latent_shape, "float16")
    total = sum(len(split) for split in dataset.values())
    names = re.escape(" + ".join(dataset))  # every split: train, validation and test
    assert re.search(rf"^this dataset \({names}\): {total:,} clips x ", result.stdout, flags=re.M)

    # One shard's bytes changed in place, its size and mtime kept: only --verify_cache full can tell, and rewrites it.
    caches = {name: output_dir / "latent_cache" / name / split._fingerprint for name, split in dataset.items()}
    victim = caches["train"] / "shard-00000.safetensors"
    before = victim.stat()
    victim.write_bytes(victim.read_bytes()[:-100] + bytes(100))
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    touched = caches["validation"] / "shard-00000.safetensors"  # intact: kept, not written
    os.utime(touched, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    again = cache_latents(args + ["--verify_cache", "full"])  # the rest verified and kept, nothing else rewritten
    assert again.returncode == 0, again.stderr
    assert f"{victim}: checksum mismatch (corrupted): rebuilding it" in again.stderr
    shards = {name: math.ceil(len(split) / 4) for name, split in dataset.items()}
    assert re.search(rf"^train: {shards['train']} shard\(s\) .* \(1 written now, {shards['train'] - 1} kept",
                     again.stdout, flags=re.M), again.stdout
    assert re.search(rf"^validation: {shards['validation']} shard\(s\) .* \(0 written now, "
                     rf"{shards['validation']} kept", again.stdout, flags=re.M), again.stdout


def test_int8_cache_of_one_split_in_cache_dir(train_inputs, tmp_path):
    cache_dir = tmp_path / "latents"
    args = script_inputs(train_inputs) + ["--cache_dir", str(cache_dir), "--split", "train", "--cache_precision",
                                          "int8", "--fps", "2", "--output_dir", str(tmp_path / "unused")]
    result = cache_latents(args)
    assert result.returncode == 0, result.stderr
    assert len(list((cache_dir / "train").glob("*/manifest.json"))) == 1
    assert not (cache_dir / "validation").exists() and not (tmp_path / "unused").exists()

    from configuration_surgical_wm import SurgicalWorldModelConfig

    config = SurgicalWorldModelConfig.from_pretrained(option(args, "--pretrained_checkpoint"))
    latent_shape = (8 // config.frames_per_step, config.tokens_per_step, config.latent_dim)
    check_printed_sizes(result.stdout, latent_shape, "int8", fps=2.0)


@pytest.mark.parametrize("flag, reason", [("--no_cache", "--no_cache"), ("--finetune_encoder", "the encoder trains")])
def test_refuses_a_run_the_cache_cannot_serve(train_inputs, tmp_path, flag, reason):
    result = cache_latents(script_inputs(train_inputs) + ["--output_dir", str(tmp_path), flag])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0], result.stderr
    assert not (tmp_path / "latent_cache").exists()
