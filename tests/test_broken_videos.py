"""Videos that break after the dataset was prepared: their clips are skipped and counted in training, the latent
cache build and the evaluation, each file named once, and `--max_bad_clips` stops a run with one line."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from conftest import REPO_ROOT, train
from dataset_surgvu import BrokenClip, ClipTransform, SurgVUClips, collate_clips, load_surgvu
from dataset_surgvu.latent_cache import LatentClips, build_latent_cache, latent_cache_key
from modeling_surgical_wm import SurgicalWorldModel

pytestmark = pytest.mark.slow


# No test split: the sample's 3 labelled cases stay 2 for training (so one broken video leaves the other's clips) and 1
# for validation.
SPLIT = {"test_fraction": 0.0}


def run_options(world_model_dir, root, arrow) -> list[str]:
    return ["--data_root", str(root), "--dataset_cache_dir", str(arrow), "--pretrained_checkpoint", world_model_dir,
            "--device", "cpu", "--report_to", "none", "--num_workers", "0", "--batch_size", "2",
            "--learning_rate", "1e-3", "--warmup_epochs", "0", "--seed", "7", "--num_epochs", "1", "--no_cache",
            "--test_fraction", "0"]


def prepared_copy(sample_root, folder: Path) -> tuple[Path, Path, str, int]:
    """A copy of the sample with its dataset built: (root, Arrow cache, the training video with the most clips,
    its number of clips)."""
    root, arrow = folder / "sample", folder / "arrow"
    shutil.copytree(sample_root, root)
    video, clips = Counter(load_surgvu(root, cache_dir=arrow, **SPLIT)["train"]["video_path"]).most_common(1)[0]
    return root, arrow, video, clips


def break_video(path: str) -> None:
    """Cuts the file to a tenth of its bytes, then pads it back with zeros and restores its modification time: the
    dataset's build still matches the files, so only decoding finds the damage."""
    stat = os.stat(path)
    with open(path, "r+b") as handle:
        handle.truncate(stat.st_size // 10)
        handle.truncate(stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture(scope="module")
def broken_sample(surgvu_sample, tmp_path_factory):
    """A prepared copy of the sample whose most used training video broke afterwards."""
    root, arrow, video, clips = prepared_copy(surgvu_sample[0], tmp_path_factory.mktemp("broken"))
    break_video(video)
    return root, arrow, video, clips


def test_collate_leaves_broken_clips_out_and_lists_them():
    items = [{"x": torch.tensor([float(i)]), "sample_id": torch.tensor(i)} for i in range(3)]
    plain = collate_clips(items)
    expected = default_collate(items)
    assert plain.keys() == expected.keys() and all(torch.equal(plain[k], expected[k]) for k in expected)

    lost = [items[0], BrokenClip("a.mp4", "cut", 1), items[2], BrokenClip("b.mp4", "gone", 3)]
    batch = collate_clips(lost)
    assert batch["sample_id"].tolist() == [0, 2] and batch["x"].flatten().tolist() == [0.0, 2.0]
    assert batch["broken_clips"] == [("a.mp4", "cut"), ("b.mp4", "gone")]
    assert collate_clips([BrokenClip("a.mp4", "cut", 1)]) == {"broken_clips": [("a.mp4", "cut")]}


def test_max_bad_clips_must_be_a_fraction_or_a_count():
    from training_surgical_wm.arguments import parse_training_arguments

    assert parse_training_arguments(["--max_bad_clips", "3"])[2].max_bad_clips == 3
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(SystemExit, match="--max_bad_clips must be a fraction below 1 or a whole count, got"):
            parse_training_arguments(["--max_bad_clips", bad])


def test_a_video_cut_while_training_runs_is_skipped_counted_and_named_once(surgvu_sample, world_model_dir,
                                                                            tmp_path):
    root, arrow, video, clips = prepared_copy(surgvu_sample[0], tmp_path)
    samples, log = tmp_path / "samples", tmp_path / "log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, "train_hf.py", *run_options(world_model_dir, root, arrow), "--max_bad_clips", "0.9",
             "--output_dir", str(tmp_path / "run"), "--sample_log", str(samples)],
            cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"},
        )
        deadline = time.time() + 300
        while not Path(f"{samples}.rank0").exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.truncate(video, os.path.getsize(video) // 10)  # the first step has begun: cut the file under the run
        returncode = process.wait(timeout=300)
    output = log.read_text()
    assert returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert output.count(f"{video}: cannot be decoded, its clips are skipped") == 1, output[-3000:]
    epoch = next(line for line in output.splitlines() if "Epoch 1/1" in line)
    skipped = re.search(r"skipped undecodable clips: (\d+) train, (\d+) validation", epoch)
    assert skipped is not None, epoch
    assert 1 <= int(skipped.group(1)) <= clips and skipped.group(2) == "0"
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_more_broken_clips_than_max_bad_clips_stop_the_run_with_one_line(broken_sample, world_model_dir, tmp_path):
    root, arrow, video, clips = broken_sample
    result = train([*run_options(world_model_dir, root, arrow), "--max_bad_clips", "2",
                    "--output_dir", str(tmp_path / "run")])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    stop = re.fullmatch(rf"error: stopping: (\d+) train clip\(s\) failed to decode this epoch, more than "
                        rf"--max_bad_clips 2 allows \(2\): {re.escape(video)} \((\d+) clips\)\. .*", errors[0])
    assert stop is not None, errors[0]
    assert stop.group(1) == stop.group(2) and 2 < int(stop.group(1)) <= min(clips, 4)
    assert not (tmp_path / "run" / "final").exists()


def test_two_processes_skip_broken_clips_together_and_end_identical(broken_sample, world_model_dir, tmp_path):
    root, arrow, video, clips = broken_sample
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_2proc.yaml")]
    samples = tmp_path / "samples"
    result = train([*run_options(world_model_dir, root, arrow), "--max_bad_clips", "0.9", "--num_epochs", "2",
                    "--output_dir", str(tmp_path / "run"), "--sample_log", str(samples)],
                   env={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}, launcher=accelerate)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stderr and "Traceback" not in result.stderr
    # With this seed some process's whole batch is broken at some step: it runs a stand-in, every process skips.
    assert "skipped, a process had no decodable clip in its batch" in result.stderr
    named = [line for line in result.stderr.splitlines() if f"{video}: cannot be decoded" in line]
    assert 1 <= len(named) <= 2 and len({line.split("]")[0] for line in named}) == len(named)  # once per process
    epochs = [re.search(r"skipped undecodable clips: (\d+) train", line)
              for line in result.stderr.splitlines() if "Epoch " in line]
    assert len(epochs) == 2 and all(found is not None and 1 <= int(found.group(1)) <= clips for found in epochs)
    finals = [Path(f"{samples}.rank{rank}").read_text().splitlines()[-1] for rank in (0, 1)]
    assert finals[0].startswith("final weights ") and finals[0] == finals[1]


def test_the_evaluation_skips_and_counts_the_broken_clips(broken_sample, world_model_dir, tmp_path):
    root, arrow, video, clips = broken_sample
    result = subprocess.run(
        [sys.executable, "scripts/evaluate_surgical_model.py", "--checkpoint", world_model_dir, "--data_root",
         str(root), "--dataset_cache_dir", str(arrow), "--test_fraction", "0", "--split", "train",
         "--allow_selection_split", "--num_workers", "0", "--device", "cpu",
         "--output", str(tmp_path / "report.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stdout.count(f"{video}: cannot be decoded") == 1, result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped_clips"] == {"clips": clips, "files": {video: clips}}
    train_clips = len(load_surgvu(root, cache_dir=arrow, **SPLIT)["train"])
    assert report["world_model"]["num_clips"] == train_clips - clips


def test_the_cache_build_records_broken_clips_and_never_retries_them(accelerator, broken_sample, world_model_dir,
                                                                     tmp_path):
    root, arrow, video, _ = broken_sample
    split = load_surgvu(root, cache_dir=arrow, **SPLIT)["train"]
    model = SurgicalWorldModel.from_pretrained(world_model_dir).eval()

    class CountingTransform(ClipTransform):
        calls = 0

        def __call__(self, example):
            CountingTransform.calls += 1
            return super().__call__(example)

    transform = CountingTransform(crop_size=model.config.encoder_config.crop_size)
    key = latent_cache_key(model, split, transform, fps=4.0, frames_per_clip=8, precision="float16", autocast="no")
    options = {"shard_size": 4, "batch_size": 3, "num_workers": 0}
    cache = build_latent_cache(accelerator, model, split, transform, tmp_path / "cache", key, **options)
    broken = [index for index, path in enumerate(split["video_path"]) if path == video]
    assert cache.broken_clips == {index: video for index in broken}
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["broken_clips"] == {str(index): video for index in broken}

    clips = LatentClips(split, cache)
    assert [index for index in range(len(split)) if isinstance(clips[index], BrokenClip)] == broken
    good = next(index for index in range(len(split)) if index not in broken)
    with torch.no_grad():
        expected = model.encode(SurgVUClips(split, transform)[good]["pixel_values_videos"][None])[0]
    torch.testing.assert_close(clips[good]["latents"], expected, rtol=2e-3, atol=2e-3)

    CountingTransform.calls = 0
    again = build_latent_cache(accelerator, model, split, transform, tmp_path / "cache", key, **options)
    assert CountingTransform.calls == 0 and again.broken_clips == cache.broken_clips


def test_validation_gathers_each_clip_once_and_skips_a_batch_no_process_decoded(accelerator):
    from training_surgical_wm.data import CheckedBatch, gather_clip_values

    seen = set()
    intact = {"sample_id": torch.tensor([0, 1]), "value": torch.tensor([10.0, 11.0])}
    got = gather_clip_values(accelerator, CheckedBatch(intact, False, False, False), intact, seen)
    assert got["sample_id"].tolist() == [0, 1] and got["value"].tolist() == [10.0, 11.0]
    # A batch that lost clips somewhere: gathered as objects; clip 1 again (the padding of the last batch) is dropped.
    lost = {"sample_id": torch.tensor([1, 2]), "value": torch.tensor([11.0, 12.0])}
    got = gather_clip_values(accelerator, CheckedBatch(lost, False, False, True), lost, seen)
    assert got["sample_id"].tolist() == [2] and got["value"].tolist() == [12.0]
    assert seen == {0, 1, 2}
    # This process ran a stand-in and no other process had a clip: nothing to record.
    assert gather_clip_values(accelerator, CheckedBatch(lost, True, True, True), lost, seen) is None
