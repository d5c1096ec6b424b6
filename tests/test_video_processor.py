"""The video processor every export ships (video_processing_surgical_wm.py): what `AutoVideoProcessor` loads from an
export is the training transform, and the video-classification pipeline labels a video file with a probe's export,
also on a machine without FFmpeg."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import no_ffmpeg
from dataset_surgvu import ClipTransform, decode_clip, get_build_metadata, load_surgvu, probe_video
from dataset_surgvu.builder import sample_frame_indices
from dataset_surgvu.transforms import vjepa2_preprocess
from train_probe import ProbeArguments, load_probe_model
from training_surgical_wm.export import export_model, recorded_crop, video_processor


PROCESSOR_FILES = {"video_preprocessor_config.json", "video_processing_surgical_wm.py"}


@pytest.fixture(scope="module")
def sample(surgvu_sample, tmp_path_factory):
    """The sample built as training builds it."""
    root, _ = surgvu_sample
    return load_surgvu(root, cache_dir=tmp_path_factory.mktemp("processor-arrow"), test_fraction=0)


@pytest.fixture(scope="module")
def first_clip(sample):
    """A training row whose clip starts the video: the clip the pipeline classifies."""
    split = sample["train"]
    return next(split[index] for index in range(len(split)) if split[index]["frame_indices"][0] == 0)


def load_processor(folder):
    from transformers import AutoVideoProcessor

    return AutoVideoProcessor.from_pretrained(str(folder), trust_remote_code=True)


def test_the_world_model_export_ships_the_training_preprocessing(world_model_dir, sample, first_clip):
    assert PROCESSOR_FILES <= set(os.listdir(world_model_dir))
    saved = json.loads(open(os.path.join(world_model_dir, "video_preprocessor_config.json")).read())
    assert saved["auto_map"] == {"AutoVideoProcessor": "video_processing_surgical_wm.SurgicalWorldModelVideoProcessor"}
    processor = load_processor(world_model_dir)
    assert type(processor).__module__.startswith("transformers_modules")  # the export's own file, not this clone's
    assert (processor.fps, processor.crop_size.height, processor.num_frames) == (4.0, 64, None)

    split = sample["train"]
    transform = ClipTransform(crop_size=64)
    checked = 0
    for row in (first_clip, split[len(split) - 1]):  # a clip at a video's start, one further in
        expected = transform(row)["pixel_values_videos"]  # (8, 3, 64, 64)
        # The file: every step of the video at the model's fps, the row's clip among them.
        whole = processor(row["video_path"], return_tensors="pt", return_metadata=True)
        indices = list(whole["video_metadata"][0].frames_indices)
        info = probe_video(row["video_path"])
        assert indices == sample_frame_indices(info.num_frames, info.fps, 4.0).tolist()
        start = indices.index(row["frame_indices"][0])
        assert indices[start : start + 8] == row["frame_indices"]
        torch.testing.assert_close(whole["pixel_values_videos"][0, start : start + 8], expected, rtol=0, atol=1e-6)
        # The same decoded frames, given as an array: the same crop box and tensors.
        frames = decode_clip(row["video_path"], row["frame_indices"])  # (8, H, W, 3)
        assert processor.picture_box(frames.permute(0, 3, 1, 2), True, 0.08, True, 24.0) == tuple(row["crop_box"])
        given = processor(frames.numpy(), do_sample_frames=False, return_tensors="pt")["pixel_values_videos"]
        torch.testing.assert_close(given[0], expected, rtol=0, atol=1e-6)
        # ...and as a batched tensor (B, T, 3, H, W), the second video played backwards.
        batch = torch.stack([frames, frames.flip(0)]).permute(0, 1, 4, 2, 3)
        batched = processor(batch, do_sample_frames=False, return_tensors="pt")["pixel_values_videos"]
        torch.testing.assert_close(batched, torch.stack([expected, expected.flip(0)]), rtol=0, atol=1e-6)
        checked += 1
    transform.close()
    assert checked == 2
    # The crop matters: without it the tensors differ, so the comparisons above can fail.
    uncropped = vjepa2_preprocess(frames.permute(0, 3, 1, 2), 64)
    assert (uncropped - expected).abs().max() > 0.1


def test_processor_output_is_what_the_world_model_encodes(world_model_dir, first_clip):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(world_model_dir, trust_remote_code=True).eval()
    processor = load_processor(world_model_dir)
    pixels = processor(first_clip["video_path"], num_frames=4, return_tensors="pt")["pixel_values_videos"]
    assert pixels.shape == (1, 4, 3, 64, 64)
    with torch.no_grad():
        latents = model.encode(pixels)
        predicted = model.predict(latents, torch.zeros(1, 4, model.config.action_dim))
    assert latents.shape == (1, 4, model.config.tokens_per_step, model.config.latent_dim)
    assert predicted.shape == (1, 4, model.config.tokens_per_step, model.config.latent_dim)
    assert torch.isfinite(predicted).all()


def test_bad_videos_are_one_clear_error(world_model_dir, surgvu_sample, first_clip, tmp_path):
    root, manifest = surgvu_sample
    processor = load_processor(world_model_dir)
    corrupt = next(root / part["path"] for case in manifest["cases"].values() for part in case["parts"]
                   if part["corrupt"])
    with pytest.raises(ValueError, match=re.escape(f"{corrupt}: cannot be decoded")):
        processor(str(corrupt))
    missing = tmp_path / "missing.mp4"
    with pytest.raises(ValueError, match=f"{missing}: no such video file"):
        processor(str(missing))
    steps = len(processor(first_clip["video_path"], return_tensors="pt")["pixel_values_videos"][0])
    with pytest.raises(ValueError, match=f"the video has {steps} steps at 4 fps .* fewer than the {steps + 1} of a clip"):
        processor(first_clip["video_path"], num_frames=steps + 1)
    with pytest.raises(ValueError, match="without their video's frame rate"):
        processor(torch.zeros(8, 3, 40, 60, dtype=torch.uint8))


def test_an_export_without_a_processor_still_loads(world_model_dir, tmp_path):
    from transformers import AutoModel

    old = tmp_path / "old-export"
    shutil.copytree(world_model_dir, old, ignore=shutil.ignore_patterns(*PROCESSOR_FILES))
    assert isinstance(AutoModel.from_pretrained(str(old), trust_remote_code=True), torch.nn.Module)
    with pytest.raises(OSError, match="video_preprocessor_config.json"):
        load_processor(old)


PIPELINE = textwrap.dedent("""
    import json, sys
    from transformers import pipeline
    classify = pipeline("video-classification", model=sys.argv[1], trust_remote_code=True)
    assert type(classify.video_processor).__module__.startswith("transformers_modules"), type(classify.video_processor)
    print(json.dumps(classify(sys.argv[2], top_k=3)))
""")


def test_the_pipeline_labels_a_video_file_with_a_probe_export(world_model_dir, sample, first_clip, accelerator,
                                                               tmp_path):
    probe = load_probe_model(ProbeArguments(world_model=world_model_dir, target="task", probe_num_layers=1), None)
    with torch.no_grad():  # a "trained" head: scores far from uniform, whose order a wrong input would change
        probe.classifier.bias.add_(torch.linspace(-2.0, 2.0, probe.config.num_labels))
        probe.classifier.weight.mul_(20.0)
    probe.config.num_frames = 8  # as scripts/train_probe.py records its clips
    crop = recorded_crop(get_build_metadata(sample))
    assert crop == {"crop_tool_band": True, "tool_band_fraction": 0.08, "crop_black_margins": True}
    export = tmp_path / "probe"
    export_model(accelerator, probe, export, {"global_step": 0}, "card\n",
                 processor=video_processor(probe.config, crop, num_frames=8))
    assert PROCESSOR_FILES <= set(os.listdir(export))

    # The label of the video's first clip, as training computes it.
    probe.eval()
    with torch.no_grad():
        pixels = ClipTransform(crop_size=64)(first_clip)["pixel_values_videos"]
        scores = probe(pixels[None]).logits[0].softmax(-1)
    top = scores.topk(3)
    expected = [(probe.config.id2label[int(index)], float(score)) for score, index in zip(*top)]

    # A fresh process away from this clone, where torchcodec cannot load FFmpeg (tests/no_ffmpeg).
    result = subprocess.run([sys.executable, "-c", PIPELINE, str(export), first_clip["video_path"]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": no_ffmpeg.FOLDER, "HF_HUB_OFFLINE": "1",
                                 "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result.returncode == 0, result.stderr[-4000:]
    labels = json.loads(result.stdout.strip().splitlines()[-1])
    assert [item["label"] for item in labels] == [label for label, _ in expected]
    assert [item["score"] for item in labels] == pytest.approx([score for _, score in expected], abs=1e-5)
    assert {item["label"] for item in labels} <= set(probe.config.id2label.values())
